"""WADO-URI ``anonymize=yes`` over a real server (PS3.18 9.4; PS3.15 E.2 Basic Profile).

SQLite only: the index plays no part in de-identification (one instance is read and
cleaned), so one module server is enough.
"""

from __future__ import annotations

import io
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicomweb_server.dicom.deidentify import BASIC_PROFILE_ROWS, keyed_uid
from tests.conftest import Server, http, start_server
from tests.dicomgen import SC_IMAGE_STORAGE, make_dataset, multipart, to_part10, uid

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
_RESOLVED = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U*"}
ACTIONS = {k: _RESOLVED.get(a, a) for k, a in BASIC_PROFILE_ROWS}


def _item(**values: Any) -> Dataset:
    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def identified(
    study: str, series: str, sop: str, frame: str, refers_to: str | None = None
) -> Dataset:
    """A CT full of identifying attributes, one of each kind the table handles."""
    ds = make_dataset(
        study=study,
        series=series,
        sop=sop,
        patient_name="Doe^John^Q",
        patient_id="MRN-0042",
        accession="ACC-778",
        BurnedInAnnotation="NO",
        PatientAddress="1 Main Street, Springfield",
        PatientAge="054Y",
        PatientWeight="81",
        PatientTelephoneNumbers="555-0100",
        OtherPatientNames="Roe^Jack",
        PatientComments="VIP; brother of the mayor",
        AdditionalPatientHistory="prior surgery at St. Elsewhere",
        InstitutionName="Springfield General",
        InstitutionAddress="2 Hospital Road",
        InstitutionalDepartmentName="Radiology East",
        PerformingPhysicianName="Perform^Paula",
        OperatorsName="Oper^Otto",
        PhysiciansOfRecord="Record^Rita",
        NameOfPhysiciansReadingStudy="Reader^Rob",
        StationName="CT-EAST-1",
        DeviceSerialNumber="SN-4711",
        ProtocolName="Head for John Doe",
        ImageComments="John Doe, bed 3",
        StudyComments="call the patient's wife",
        ContentDate="20240102",
        ContentTime="101500",
        AcquisitionDateTime="20240102101500",
        SeriesDate="20240102",
        InstanceCreationDate="20240102",
        FrameOfReferenceUID=frame,
        SourceImageSequence=[
            _item(ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2", ReferencedSOPInstanceUID=sop)
        ],
        OtherPatientIDsSequence=[_item(PatientID="OLD-MRN-7", IssuerOfPatientID="OLDHOSP")],
        RequestAttributesSequence=[_item(RequestedProcedureID="RP-9")],
    )
    if refers_to is not None:
        ds.ReferencedImageSequence = [
            _item(
                ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
                ReferencedSOPInstanceUID=refers_to,
            )
        ]
    ds.add_new(0x00090010, "LO", "ACME MEDICAL")
    ds.add_new(0x00091001, "LO", "Doe^John private copy")
    ds.add_new(0x60003000, "OW", b"\x00" * 8)
    ds.add_new(0x60004000, "LT", "overlay says John Doe")
    return ds


@dataclass
class Site:
    server: Server
    study: str
    series: str
    first: Dataset  # referenced by second
    second: Dataset
    burned: Dataset
    capture: Dataset

    def secret(self) -> bytes:
        return (self.server.data_dir / "deidentify.key").read_bytes()


def store(server: Server, *datasets: Dataset) -> None:
    body, header = multipart([to_part10(ds) for ds in datasets])
    response = http().post(f"{server.url}/studies", content=body, headers={"Content-Type": header})
    assert response.status_code == 200, response.text


def wado(server: Server, ds: Dataset, **params: str) -> httpx.Response:
    query = {
        "requestType": "WADO",
        "studyUID": ds.StudyInstanceUID,
        "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID,
        **params,
    }
    return http().get(f"{server.root}/wado", params=query, timeout=60)


def anonymized(server: Server, ds: Dataset, **params: str) -> Dataset:
    response = wado(server, ds, contentType="application/dicom", anonymize="yes", **params)
    assert response.status_code == 200, response.text
    return pydicom.dcmread(io.BytesIO(response.content))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("anon")
    study, series, frame = uid(), uid(), uid()
    first = identified(study, series, uid(), frame)
    second = identified(study, series, uid(), frame, refers_to=first.SOPInstanceUID)
    second.InstanceNumber = 2
    burned = make_dataset(study=study, BurnedInAnnotation="YES")
    capture = make_dataset(study=study, sop_class=SC_IMAGE_STORAGE, modality="OT")
    server = start_server(tmp / "data", f"sqlite:///{tmp / 'index.sqlite3'}", "--no-dimse")
    try:
        store(server, first, second, burned, capture)
    except BaseException:
        server.stop()
        raise
    yield Site(server, study, series, first, second, burned, capture)
    server.stop()
    assert "Traceback" not in server.log(), server.log()[-5000:]


def test_every_attribute_of_the_table_gets_its_action(site: Site) -> None:
    original = site.second
    response = wado(site.server, original, contentType="application/dicom", anonymize="yes")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom")
    out = pydicom.dcmread(io.BytesIO(response.content))
    secret = site.secret()
    checked = 0
    for keyword, action in ACTIONS.items():
        if keyword not in original:
            continue
        checked += 1
        before = original[keyword].value
        if action == "X":
            assert keyword not in out, keyword
        elif action == "Z":
            assert keyword in out and not out[keyword].value, keyword
        elif action == "D":
            assert keyword in out and out[keyword].value, keyword
            assert out[keyword].value != before, keyword
        elif action == "U":
            assert out[keyword].value == keyed_uid(secret, before), keyword
    assert checked >= 30, checked
    # Sequences: removed (X), or kept with their UIDs replaced (X/Z/U*).
    assert "OtherPatientIDsSequence" not in out and "RequestAttributesSequence" not in out
    ref = out.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    assert ref == keyed_uid(secret, site.first.SOPInstanceUID)
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == out.SOPInstanceUID
    assert not any(elem.tag.is_private for elem in out.iterall())
    assert 0x60003000 not in out and 0x60004000 not in out
    # What was done is recorded.
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    codes = {
        (c.CodeValue, c.CodingSchemeDesignator) for c in out.DeidentificationMethodCodeSequence
    }
    assert ("113100", "DCM") in codes and ("113101", "DCM") in codes
    # A new SOP Instance UID (PS3.18 9.4.2.3), the file meta in step; pixels untouched.
    assert out.SOPInstanceUID != original.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.PixelData == original.PixelData
    assert out.SOPClassUID == original.SOPClassUID and out.Modality == "CT"
    # Nothing of the patient is left anywhere in the bytes.
    for text in (b"Doe", b"MRN-0042", b"ACC-778", b"Springfield", b"SN-4711", b"ACME"):
        assert text not in response.content, text


def test_the_secret_is_private_to_the_archive(site: Site) -> None:
    anonymized(site.server, site.first)
    path = site.server.data_dir / "deidentify.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(path.read_bytes()) == 32


def test_a_study_stays_coherent_across_requests(site: Site) -> None:
    first = anonymized(site.server, site.first)
    second = anonymized(site.server, site.second)
    assert first.StudyInstanceUID == second.StudyInstanceUID != site.study
    assert first.SeriesInstanceUID == second.SeriesInstanceUID != site.series
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    again = wado(site.server, site.first, contentType="application/dicom", anonymize="yes")
    assert pydicom.dcmread(io.BytesIO(again.content)).SOPInstanceUID == first.SOPInstanceUID


def test_another_archive_maps_uids_differently(site: Site, tmp_path: Path) -> None:
    other = start_server(tmp_path / "data", f"sqlite:///{tmp_path / 'index.sqlite3'}", "--no-dimse")
    try:
        store(other, site.first)
        theirs = anonymized(other, site.first)
    finally:
        other.stop()
    ours = anonymized(site.server, site.first)
    assert theirs.SOPInstanceUID != ours.SOPInstanceUID
    assert theirs.StudyInstanceUID != ours.StudyInstanceUID
    assert theirs.PixelData == ours.PixelData


def test_transfer_syntax_is_still_honoured(site: Site) -> None:
    response = wado(
        site.server,
        site.first,
        contentType="application/dicom",
        anonymize="yes",
        transferSyntax=RLE_LOSSLESS,
    )
    assert response.status_code == 200, response.text
    assert f"transfer-syntax={RLE_LOSSLESS}" in response.headers["content-type"]
    out = pydicom.dcmread(io.BytesIO(response.content))
    assert out.file_meta.TransferSyntaxUID == RLE_LOSSLESS
    assert not out.PatientName and out.PatientIdentityRemoved == "YES"
    assert np.array_equal(out.pixel_array, site.first.pixel_array)


def test_a_compressed_object_keeps_its_encapsulated_pixels(site: Site) -> None:
    path = get_testdata_file("MR_small_RLE.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    body, header = multipart([Path(path).read_bytes()])
    response = http().post(
        f"{site.server.url}/studies", content=body, headers={"Content-Type": header}
    )
    assert response.status_code == 200, response.text
    response = wado(
        site.server, ds, contentType="application/dicom", anonymize="yes", transferSyntax="*"
    )
    assert response.status_code == 200, response.text
    assert f"transfer-syntax={RLE_LOSSLESS}" in response.headers["content-type"]
    out = pydicom.dcmread(io.BytesIO(response.content))
    assert out.file_meta.TransferSyntaxUID == RLE_LOSSLESS
    assert out.PixelData == ds.PixelData  # the stored fragments, byte for byte
    assert not out.PatientName and b"CompressedSamples" not in response.content
    assert out.StudyInstanceUID == keyed_uid(site.secret(), ds.StudyInstanceUID)


@pytest.mark.parametrize("which", ["burned", "capture"])
def test_objects_with_possible_burned_in_text_are_refused(site: Site, which: str) -> None:
    ds: Dataset = getattr(site, which)
    before = wado(site.server, ds, contentType="application/dicom", transferSyntax="*")
    response = wado(site.server, ds, contentType="application/dicom", anonymize="yes")
    assert response.status_code == 403, response.text
    assert "burned-in" in response.json()["message"]
    after = wado(site.server, ds, contentType="application/dicom", transferSyntax="*")
    assert after.status_code == 200 and after.content == before.content


@pytest.mark.parametrize(
    "params",
    [
        {"contentType": "application/dicom", "anonymize": "no"},
        {"contentType": "application/dicom", "anonymize": ""},
        {"contentType": "image/jpeg", "anonymize": "yes"},
        {"anonymize": "yes"},  # the default for an image is image/jpeg
    ],
)
def test_bad_values_and_combinations_are_400(site: Site, params: dict[str, str]) -> None:
    response = wado(site.server, site.first, **params)
    assert response.status_code == 400, response.text
    assert "anonymize" in response.json()["message"]


def test_anonymize_given_twice_is_400_and_unknown_object_404(site: Site) -> None:
    query = (
        f"requestType=WADO&studyUID={site.study}&seriesUID={site.series}"
        f"&objectUID={site.first.SOPInstanceUID}&contentType=application/dicom"
        "&anonymize=yes&anonymize=yes"
    )
    assert http().get(f"{site.server.root}/wado?{query}").status_code == 400
    missing = make_dataset(study=site.study, series=site.series)
    assert (
        wado(site.server, missing, contentType="application/dicom", anonymize="yes").status_code
        == 404
    )


def test_the_stored_object_is_unchanged_and_the_access_audited(site: Site) -> None:
    anonymized(site.server, site.second)
    plain = wado(site.server, site.second, contentType="application/dicom", transferSyntax="*")
    stored = pydicom.dcmread(io.BytesIO(plain.content))
    assert str(stored.PatientName) == "Doe^John^Q"
    assert stored.SOPInstanceUID == site.second.SOPInstanceUID
    assert "PatientIdentityRemoved" not in stored
    path = site.server.data_dir / "audit" / "audit.jsonl"
    deadline = time.monotonic() + 30
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        if any(r.get("query", {}).get("anonymize") == "yes" for r in records):
            break
        time.sleep(0.1)
    hits = [r for r in records if r.get("query", {}).get("anonymize") == "yes"]
    assert hits, records[-3:]
    assert site.second.SOPInstanceUID in hits[-1]["sop_instance_uids"]
    assert hits[-1]["event_id"]["code"] == "110104"  # DICOM Instances Transferred
