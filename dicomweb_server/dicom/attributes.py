"""Attribute identification and the query/retrieve level each attribute belongs to.

QIDO-RS names attributes by keyword or by tag (PS3.18 8.3.4.1); the information
model levels follow PS3.4 C.6 (Patient, Study, Series, Composite Object Instance).
"""

from __future__ import annotations

import enum
import re

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from dicomweb_server.errors import InvalidRequest

_TAG_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")


class Level(enum.IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    INSTANCE = 3


def tag_hex(tag: int) -> str:
    """The 8-digit upper-case form used as the key in DICOM JSON (PS3.18 F.2.1)."""
    return f"{tag:08X}"


def parse_attribute(name: str) -> int:
    """Resolve a keyword ('PatientName') or tag ('00100010', '0010,0010') to a tag number."""
    match = _TAG_RE.match(name)
    if match:
        return int(match.group(1) + match.group(2), 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise InvalidRequest(f"unknown attribute {name!r}: not a DICOM keyword or tag")
    return int(tag)


def parse_attribute_path(name: str) -> tuple[int, ...]:
    """Resolve a dotted path such as 'RequestAttributesSequence.ScheduledProcedureStepID'."""
    return tuple(parse_attribute(part) for part in name.split("."))


def vr_of(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def keyword_of(tag: int) -> str:
    return keyword_for_tag(tag) or tag_hex(tag)


def _tags(*keywords: str) -> frozenset[int]:
    out = set()
    for kw in keywords:
        tag = tag_for_keyword(kw)
        assert tag is not None, kw
        out.add(int(tag))
    return frozenset(out)


# Patient module (PS3.3 C.7.1.1) attributes commonly returned with studies.
PATIENT_TAGS = _tags(
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientBreedDescription",
    "ResponsiblePerson",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "QualityControlSubject",
)

# General Study and Patient Study modules (PS3.3 C.7.2.1, C.7.2.2).
STUDY_TAGS = _tags(
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "RequestingService",
    "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Occupation",
    "AdditionalPatientHistory",
    "MedicalAlerts",
    "Allergies",
    "PregnancyStatus",
    "SmokingStatus",
    "TimezoneOffsetFromUTC",
    "SpecificCharacterSet",
)

# General Series, Frame of Reference and General Equipment modules (PS3.3 C.7.3.1, C.7.4.1,
# C.7.5.1): constant across a series, so they are returned at series level.
SERIES_TAGS = _tags(
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "Laterality",
    "SeriesDate",
    "SeriesTime",
    "PerformingPhysicianName",
    "ProtocolName",
    "SeriesDescription",
    "OperatorsName",
    "BodyPartExamined",
    "PatientPosition",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "RequestAttributesSequence",
    "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepDescription",
    "PerformedProtocolCodeSequence",
    "AnatomicalOrientationType",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Manufacturer",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
    "InstitutionalDepartmentName",
    "ManufacturerModelName",
    "DeviceSerialNumber",
    "SoftwareVersions",
    "SpatialResolution",
)

SPECIFIC_CHARACTER_SET = 0x00080005
TIMEZONE_OFFSET = 0x00080201
RETRIEVE_URL = 0x00081190
INSTANCE_AVAILABILITY = 0x00080056


def level_of(tag: int) -> Level:
    """The query/retrieve level whose entity an attribute describes."""
    if tag in PATIENT_TAGS:
        return Level.PATIENT
    if tag in STUDY_TAGS:
        return Level.STUDY
    if tag in SERIES_TAGS:
        return Level.SERIES
    return Level.INSTANCE
