"""The Basic Application Level Confidentiality Profile table on small datasets (PS3.15 E.2)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_has_tag, dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID
from pydicom.valuerep import DA

from dicomweb_server.dicom.confidentiality_table import (
    BASIC_PROFILE_TAG_ROWS,
    BEYOND_TABLE_ROWS,
)
from dicomweb_server.dicom.deidentify import (
    BASIC_PROFILE,
    BASIC_PROFILE_ROWS,
    PROTECTED,
    deidentify,
    keyed_uid,
    refusal,
)
from dicomweb_server.dicom.uids import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    is_valid_uid,
)
from dicomweb_server.errors import StorageUnavailable
from dicomweb_server.services.anonymize import load_or_create_secret
from tests.dicomgen import SC_IMAGE_STORAGE, make_dataset

SECRET = b"k" * 32


def new_uid(uid: str) -> str:
    return keyed_uid(SECRET, uid)


def cleaned(ds: Dataset) -> Dataset:
    deidentify(ds, new_uid)
    return ds


def ref_item(sop: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = sop
    return item


def test_the_table_is_well_formed() -> None:
    keywords = [k for k, _ in BASIC_PROFILE_ROWS]
    assert len(keywords) == len(set(keywords)), "a keyword appears twice"
    assert len(BASIC_PROFILE) == len(keywords)
    codes = {"X", "Z", "D", "U", "K", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}
    assert {a for _, a in BASIC_PROFILE_ROWS} <= codes
    # Every U row names a UID attribute.
    for tag, action in BASIC_PROFILE.items():
        if action == "U":
            assert dictionary_VR(tag) == "UI", hex(tag)


def test_remove_empty_and_dummy_by_the_table() -> None:
    ds = make_dataset(
        PatientAddress="1 Main St",
        OtherPatientNames="Roe^Jane",
        ImageComments="patient is John Doe",
        InstitutionName="General Hospital",
        DeviceSerialNumber="SN-4711",
        ContentDate="20240102",
        AcquisitionDateTime="20240102101500",
        PatientAge="054Y",
        AcquisitionDate="20240102",
    )
    out = cleaned(ds)
    for keyword in ("PatientAddress", "OtherPatientNames", "ImageComments", "PatientAge"):
        assert keyword not in out, keyword  # X
    for keyword in ("PatientName", "StudyDate", "AccessionNumber"):
        assert keyword in out and not out[keyword].value, keyword  # Z
    assert out.PatientID == "ANONYMIZED"  # Z/D -> D
    assert "AcquisitionDate" in out and not out.AcquisitionDate  # X/Z -> Z
    assert out.InstitutionName == "ANONYMIZED"  # X/Z/D -> D
    assert out.DeviceSerialNumber == "ANONYMIZED"
    assert out.ContentDate == "19000101"  # Z/D -> D, a valid DA
    DA(out.ContentDate)
    assert out.AcquisitionDateTime == "19000101000000"
    assert out.Modality == "CT" and out.Rows == 8  # not in the table: kept


def test_uids_replaced_consistently_also_inside_sequences() -> None:
    ds = make_dataset(FrameOfReferenceUID="1.2.3.99")
    original = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    ds.ReferencedImageSequence = [ref_item("1.2.3.4")]
    ds.SourceImageSequence = [ref_item("1.2.3.4")]
    ds.FailedSOPInstanceUIDList = ["1.2.3.4", "1.2.3.5"]
    out = cleaned(ds)
    assert out.StudyInstanceUID == new_uid(original[0])
    assert out.SeriesInstanceUID == new_uid(original[1])
    assert out.SOPInstanceUID == new_uid(original[2])
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.FrameOfReferenceUID == new_uid("1.2.3.99")
    for seq in (out.ReferencedImageSequence, out.SourceImageSequence):  # X/Z/U*: kept
        assert seq[0].ReferencedSOPInstanceUID == new_uid("1.2.3.4")
        assert seq[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # not an instance
    assert list(out.FailedSOPInstanceUIDList) == [new_uid("1.2.3.4"), new_uid("1.2.3.5")]
    assert out.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"


def test_sequences_removed_or_cleaned_and_private_attributes_gone() -> None:
    ds = make_dataset()
    other = Dataset()
    other.PatientID = "OTHER-7"
    ds.OtherPatientIDsSequence = [other]
    request = Dataset()
    request.RequestedProcedureID = "RP-1"
    ds.RequestAttributesSequence = [request]
    kept = Dataset()
    kept.CodeValue = "T-1"
    kept.PatientName = "Nested^Name"
    kept.add_new(0x00190010, "LO", "VENDOR")
    kept.add_new(0x00191001, "LO", "nested private")
    ds.AnatomicRegionSequence = [kept]
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "LO", "Doe^John again")
    observer = Dataset()
    observer.VerifyingObserverName = "Verifier^Vera"
    ds.VerifyingObserverSequence = [observer]
    out = cleaned(ds)
    assert "OtherPatientIDsSequence" not in out
    assert "RequestAttributesSequence" not in out
    assert not any(elem.tag.is_private for elem in out.iterall())
    item = out.AnatomicRegionSequence[0]  # not listed: kept, its items cleaned
    assert item.CodeValue == "T-1" and not item.PatientName
    assert len(out.VerifyingObserverSequence) == 1  # D on a sequence: one empty item
    assert len(out.VerifyingObserverSequence[0]) == 0


def test_overlay_and_curve_groups() -> None:
    ds = make_dataset()
    ds.add_new(0x60000010, "US", 8)  # Overlay Rows: not identifying, kept
    ds.add_new(0x60003000, "OW", b"\xff" * 8)
    ds.add_new(0x60024000, "LT", "overlay comment naming the patient")
    ds.add_new(0x50000005, "US", 1)  # retired curve group
    out = cleaned(ds)
    assert 0x60000010 in out
    assert 0x60003000 not in out and 0x60024000 not in out and 0x50000005 not in out


def test_records_what_was_done() -> None:
    out = cleaned(make_dataset())
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert out.DeidentificationMethod
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert out.DeidentificationMethodCodeSequence[0].CodingSchemeDesignator == "DCM"
    said_no = cleaned(make_dataset(BurnedInAnnotation="NO"))
    codes = [c.CodeValue for c in said_no.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113101"]


def test_file_meta_source_ae_title_removed() -> None:
    ds = make_dataset()
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITAL_CT1"
    out = cleaned(ds)
    assert "SourceApplicationEntityTitle" not in out.file_meta


def test_file_meta_and_preamble_are_replaced_by_ours() -> None:
    """PS3.15 E.1.1 item 7: identity can leak through the preamble and the meta header."""
    ds = make_dataset()
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITAL_CT1"
    ds.file_meta.ImplementationVersionName = "ACME_CT_SITE7"
    ds.file_meta.PrivateInformationCreatorUID = UID("1.2.3.4")
    ds.file_meta.PrivateInformation = b"PATIENT DOE^JOHN"
    ds.preamble = b"PATIENT DOE^JOHN MRN 0042".ljust(128, b" ")
    original = io.BytesIO()
    ds.save_as(original, enforce_file_format=True)
    read = pydicom.dcmread(io.BytesIO(original.getvalue()))
    assert (read.preamble or b"").startswith(b"PATIENT DOE")
    deidentify(read, new_uid)
    out = io.BytesIO()
    read.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    assert data[:128] == bytes(128) and data[128:132] == b"DICM"
    for text in (b"DOE^JOHN", b"MRN 0042", b"ACME_CT_SITE7", b"HOSPITAL_CT1"):
        assert text not in data, text
    meta = pydicom.dcmread(io.BytesIO(data)).file_meta
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert meta.MediaStorageSOPInstanceUID == read.SOPInstanceUID != ds.SOPInstanceUID
    assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert "PrivateInformation" not in meta


@pytest.mark.parametrize("implicit", [False, True])
def test_attributes_unknown_to_the_dictionary_are_removed(implicit: bool) -> None:
    """Newer standard attributes than the table (or read as UN) may identify: they go,
    sequences included, while known attributes the table does not list stay."""
    ds = make_dataset()
    ds.add_new(0x00100999, "LO", "DOE^JOHN NICKNAME")
    inner = Dataset()
    inner.PatientName = "Doe^John"
    ds.add_new(0x0040F00F, "SQ", Sequence([inner]))
    ds.add_new(0x60000010, "US", 64)  # Overlay Rows: a known repeating-group attribute
    ds.Modality = "CT"
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=implicit)
    out = cleaned(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    assert 0x00100999 not in out and 0x0040F00F not in out
    assert out.Modality == "CT" and 0x60000010 in out
    written = io.BytesIO()
    out.save_as(written, enforce_file_format=True)
    assert b"DOE^JOHN" not in written.getvalue() and b"Doe^John" not in written.getvalue()


def test_keyed_uid() -> None:
    one = keyed_uid(SECRET, "1.2.3")
    assert one == keyed_uid(SECRET, "1.2.3")
    assert one != keyed_uid(SECRET, "1.2.4")
    assert one != keyed_uid(b"x" * 32, "1.2.3")
    assert one.startswith("2.25.") and is_valid_uid(one) and len(one) <= 44


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        ({}, None),
        ({"BurnedInAnnotation": "YES"}, "burned-in annotation"),
        ({"BurnedInAnnotation": "NO"}, None),
        ({"RecognizableVisualFeatures": "YES"}, "recognizable"),
        ({"sop_class": SC_IMAGE_STORAGE}, "often carries burned-in text"),
        ({"sop_class": SC_IMAGE_STORAGE, "BurnedInAnnotation": "NO"}, None),
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.6.1"}, "often carries"),  # ultrasound
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.3.1"}, "often carries"),  # US multi-frame
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.77.1.4"}, "often carries"),  # VL photo
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.7.4"}, "often carries"),  # MF true colour SC
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.4"}, None),  # MR: not text-prone
        ({"sop_class": "1.2.840.10008.5.1.4.1.1.66"}, None),  # Raw Data, not "...1.6"
        ({"EncapsulatedDocument": b"%PDF-1.4"}, "encapsulated document"),
    ],
)
def test_refusal(extra: dict[str, object], refused: str | None) -> None:
    reason = refusal(make_dataset(**extra))  # type: ignore[arg-type]
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


def test_secret_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "deidentify.key"
    first = load_or_create_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert [p.name for p in tmp_path.iterdir()] == ["deidentify.key"]  # no temp left
    path.write_bytes(b"short")
    with pytest.raises(StorageUnavailable):
        load_or_create_secret(path)


_SAMPLE: dict[str, object] = {
    "DA": "20240102",
    "TM": "101500",
    "DT": "20240102101500",
    "AS": "054Y",
    "IS": "7",
    "DS": "1.5",
    "UI": "1.2.3.4",
    "AT": 0x00100010,
    "UR": "https://doe.example/john",
}


def _sample(vr: str) -> object:
    if vr in _SAMPLE:
        return _SAMPLE[vr]
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 7
    if vr in ("FL", "FD"):
        return 1.5
    if vr.startswith("O") or vr == "UN":
        return bytes(8)
    return "DOE_JOHN" if vr in ("CS", "AE") else "Doe^John"


def test_every_row_of_the_table_applies_and_the_result_encodes() -> None:
    """Each attribute of the table, given a value, gets its action and stays writable."""
    ds = make_dataset()
    for tag in BASIC_PROFILE:
        if tag >> 16 in (0x0000, 0x0002) or tag in ds:
            continue  # command and file meta groups are not dataset attributes
        vr = dictionary_VR(tag).split(" or ")[0]
        if vr == "SQ":
            item = Dataset()
            item.PatientName = "Doe^John"
            ds.add_new(tag, vr, [item])
        else:
            ds.add_new(tag, vr, _sample(vr))
    before = {tag: ds[tag].value for tag in BASIC_PROFILE if tag in ds}
    out = cleaned(ds)
    for tag, action in BASIC_PROFILE.items():
        if tag >> 16 in (0x0000, 0x0002):
            continue
        if action == "X":
            assert tag not in out, hex(tag)
        elif action in ("Z", "X/Z"):
            assert tag in out and not out[tag].value, hex(tag)
        elif action in ("D", "Z/D", "X/D", "X/Z/D"):
            assert tag in out and out[tag].value not in (None, "", b""), hex(tag)
            assert out[tag].value != before[tag], hex(tag)
        elif action == "U":
            assert out[tag].value == new_uid(str(before[tag])), hex(tag)
    assert "Doe" not in str([e.value for e in out.iterall() if e.VR == "PN"])
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    assert pydicom.dcmread(io.BytesIO(buffer.getvalue())).PatientIdentityRemoved == "YES"


def test_processes_racing_to_create_the_secret_agree(tmp_path: Path) -> None:
    """Several server workers start at once: every one must end up with the same key."""
    path = tmp_path / "deidentify.key"
    code = (
        "import sys; from pathlib import Path;"
        "from dicomweb_server.services.anonymize import load_or_create_secret as f;"
        "print(f(Path(sys.argv[1])).hex())"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    outputs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert outputs == {path.read_bytes().hex().encode()}
    assert [p.name for p in tmp_path.iterdir()] == ["deidentify.key"]


# --- PS3.15 Table E.1-1 (2026d), Basic Profile column, as verified ---------------------

ALL_KEYWORD_ROWS = BASIC_PROFILE_ROWS + BEYOND_TABLE_ROWS


def test_every_tag_named_is_known_and_named_once() -> None:
    """Keyword rows name attributes of pydicom's dictionary; no tag is listed twice."""
    tags = [int(tag_for_keyword(k) or 0) for k, _ in ALL_KEYWORD_ROWS]
    assert all(tags), [k for k, _ in ALL_KEYWORD_ROWS if tag_for_keyword(k) is None]
    assert all(dictionary_has_tag(t) for t in tags)
    tags += [t for t, _, _ in BASIC_PROFILE_TAG_ROWS]
    assert len(tags) == len(set(tags)), "a tag is listed twice"
    assert len(PROTECTED) == len(tags)
    for tag, name, action in BASIC_PROFILE_TAG_ROWS:
        # Once pydicom knows one of these, it belongs with the keyword rows.
        assert not dictionary_has_tag(tag), f"{tag:08X} {name}: move it to BASIC_PROFILE_ROWS"
        assert action == "X" and name
    # The table's size in PS3.15 2026d: 653 rows with a tag (and 4 group rows).
    assert len(BASIC_PROFILE_ROWS) + len(BASIC_PROFILE_TAG_ROWS) == 653


@pytest.mark.parametrize(
    ("keyword", "code"),
    [
        ("AcquisitionDateTime", "X/Z/D"),  # was X/D
        ("OperatorIdentificationSequence", "X/D"),  # was X
        ("AcquisitionContextSequence", "X/Z"),  # was X
        ("PatientID", "Z/D"),
        ("StructureSetTime", "Z"),
        ("TreatmentMachineName", "X/Z"),
        ("TreatmentSite", "X/D"),
        ("InstitutionName", "X/Z/D"),
        ("DeviceSerialNumber", "X/Z/D"),
        ("StationName", "X/Z/D"),
        ("OperatorsName", "X/Z/D"),
        ("ReferringPhysicianName", "Z"),
        ("PatientBirthDate", "Z"),
    ],
)
def test_codes_are_the_standards(keyword: str, code: str) -> None:
    assert dict(BASIC_PROFILE_ROWS)[keyword] == code


def test_rows_not_in_the_table_are_not_claimed_for_it() -> None:
    table = dict(BASIC_PROFILE_ROWS)
    # In older editions only (2013): no longer in Table E.1-1, so kept as they are.
    for keyword in ("ContextGroupExtensionCreatorUID", "CreatorVersionUID"):
        assert keyword not in table and tag_for_keyword(keyword) not in PROTECTED
    assert "ModifyingDeviceManufacturer" not in table
    # Never in the table but identifying: protected beyond it, not counted as it.
    for keyword, _ in BEYOND_TABLE_ROWS:
        assert keyword not in table


def _valued(keyword: str) -> Dataset:
    ds = make_dataset()
    tag = tag_for_keyword(keyword)
    assert tag is not None
    vr = dictionary_VR(tag).split(" or ")[0]
    if vr == "SQ":
        item = Dataset()
        item.PersonName = "Doe^John"
        item.CodeMeaning = "Doe John"
        ds.add_new(tag, vr, [item])
    else:
        ds.add_new(tag, vr, _sample(vr))
    return ds


@pytest.mark.parametrize(
    ("keyword", "outcome"),
    [
        # Rows the table lacked before it was verified: they used to be sent as they were.
        ("ClinicalTrialCoordinatingCenterName", "emptied"),
        ("ClinicalTrialProtocolEthicsCommitteeName", "dummy"),
        ("ClinicalTrialProtocolEthicsCommitteeApprovalNumber", "removed"),
        ("ClinicalTrialTimePointDescription", "removed"),
        ("IssuerOfTheContainerIdentifierSequence", "emptied"),
        ("IssuerOfTheSpecimenIdentifierSequence", "emptied"),
        ("PerformedProcedureStepStartDateTime", "removed"),
        ("ScheduledProcedureStepStartDateTime", "removed"),
        ("ProcedureStepCancellationDateTime", "removed"),
        ("ReasonForRequestedProcedureCodeSequence", "removed"),
        ("VerbalSourceIdentifierCodeSequenceTrial", "removed"),
        ("SecondaryCaptureDeviceID", "removed"),
        ("HardcopyCreationDeviceID", "removed"),
        ("DateOfDocumentOrVerbalTransactionTrial", "removed"),
        ("EthicsCommitteeApprovalEffectivenessStartDate", "removed"),
        ("DateOfLastDetectorCalibration", "dummy"),  # X/D
        ("InstructionPerformedDateTime", "dummy"),  # Z/D
        ("WaveformAnnotationSequence", "dummy"),  # X/D: one empty item
        ("UnformattedTextValue", "dummy"),
        ("TreatmentToleranceViolationDescription", "dummy"),
        ("RadiationGenerationModeDescription", "emptied"),
        ("RTTreatmentApproachLabel", "dummy"),  # X/D
        # Codes corrected: removed before, emptied or a dummy item now.
        ("AcquisitionContextSequence", "emptied"),  # X/Z
        ("OperatorIdentificationSequence", "dummy"),  # X/D
        # Rows that were right, pinned to the standard's action.
        ("InstitutionName", "dummy"),  # X/Z/D
        ("DeviceSerialNumber", "dummy"),  # X/Z/D
        ("StationName", "dummy"),  # X/Z/D
        ("OperatorsName", "dummy"),  # X/Z/D
        ("ReferringPhysicianName", "emptied"),  # Z
        ("PatientBirthDate", "emptied"),  # Z
        ("PatientBirthTime", "removed"),
        ("InstitutionAddress", "removed"),
        ("FrameOfReferenceUID", "uid"),
        # Not in the table, removed as identifying (BEYOND_TABLE_ROWS).
        ("PatientBirthDateInAlternativeCalendar", "removed"),
        ("PatientDeathDateInAlternativeCalendar", "removed"),
        ("RequestingPhysicianIdentificationSequence", "removed"),
    ],
)
def test_each_row_gets_the_standards_action(keyword: str, outcome: str) -> None:
    ds = _valued(keyword)
    before = ds[keyword].value
    out = cleaned(ds)
    if outcome == "removed":
        assert keyword not in out
        return
    assert keyword in out
    value = out[keyword].value
    if outcome == "emptied":
        assert not value
    elif outcome == "dummy":
        assert value and value != before
        if out[keyword].VR == "SQ":  # a dummy item, nothing of the original
            assert len(value) == 1 and len(value[0]) == 0
        else:
            assert "Doe" not in str(value) and "DOE" not in str(value)
    else:
        assert value == new_uid(str(before))


_UNKNOWN_VR = {0x00100012: ("PN", "Maria"), 0x00100016: ("UT", "she/her, Ms Doe")}


def _part10(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
def test_rows_pydicom_does_not_know_are_acted_on_by_tag(syntax: str) -> None:
    """Name to Use, pronouns, gender identity...: read from a file, then removed.

    pydicom 3.0 has no keyword for these rows of the table; in Implicit VR they arrive
    as UN. Left out of the table they were sent as they came.
    """
    ds = make_dataset()
    for tag, _, _ in BASIC_PROFILE_TAG_ROWS:
        vr, value = _UNKNOWN_VR.get(tag, ("LO", "Doe John"))
        ds.add_new(tag, vr, value)
    pronouns = Dataset()
    pronouns.add_new(0x00100016, "UT", "she/her")
    ds.AnatomicRegionSequence = [pronouns]  # not in the table: kept, items cleaned
    read = pydicom.dcmread(io.BytesIO(_part10(ds, syntax)))
    assert all(tag in read for tag, _, _ in BASIC_PROFILE_TAG_ROWS)
    # Removed before their raw values are read: no "VR lookup failed" warning for
    # Implicit VR (the suite turns warnings into errors), none in the server log.
    out = cleaned(read)
    for tag, name, _ in BASIC_PROFILE_TAG_ROWS:
        assert tag not in out, name
    assert 0x00100016 not in out.AnatomicRegionSequence[0]
    written = _part10(out, syntax)
    assert b"Maria" not in written and b"Doe" not in written and b"she/her" not in written
