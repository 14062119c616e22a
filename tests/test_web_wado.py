"""WADO-RS (PS3.18 10.4) and DELETE against a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from dicomweb_server.dicom.multipart import MultipartParser, parse_content_type
from tests.conftest import Server
from tests.dicomgen import make_dataset, multipart, to_part10, uid

EVRLE = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
J2K = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"
JPEG_LS = "1.2.840.10008.1.2.4.80"
MPEG2 = "1.2.840.10008.1.2.4.100"  # no encoder: a syntax the server can never produce
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


# -- helpers ----------------------------------------------------------------------------


class _Parts:
    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, str], bytearray]] = []

    def start_part(self, headers: dict[str, str]) -> None:
        self.parts.append((headers, bytearray()))

    def write(self, data: bytes) -> None:
        self.parts[-1][1].extend(data)

    def end_part(self) -> None:
        pass


def parse_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related response, framed by our own strict parser."""
    media, params = parse_content_type(response.headers["content-type"])
    assert media == "multipart/related"
    sink = _Parts()
    parser = MultipartParser(params["boundary"], sink)
    parser.feed(response.content)
    parser.close()
    return [(headers, bytes(body)) for headers, body in sink.parts]


def sample(name: str, study: str, series: str | None = None) -> tuple[Dataset, bytes]:
    """A pydicom test file with fresh UIDs, saved in its own transfer syntax."""
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is not installed"
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or uid()
    ds.SOPInstanceUID = uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return ds, out.getvalue()


def instance_path(ds: Dataset) -> str:
    return (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def store(server: Server, parts: list[bytes]) -> None:
    body, header = multipart(parts)
    response = httpx.post(f"{server.url}/studies", content=body, headers={"Content-Type": header})
    assert response.status_code == 200, response.text


def get(server: Server, path: str, accept: str | None = None, **headers: str) -> httpx.Response:
    if accept is not None:
        headers["Accept"] = accept
    return httpx.get(f"{server.url}{path}", headers=headers, timeout=30)


def blob_files(server: Server, sop: str) -> list[Path]:
    return sorted((server.data_dir / "blobs").rglob(f"{sop}-*.dcm"))


def qido(server: Server, path: str, **params: str) -> list[dict[str, Any]]:
    response = get(server, path + ("?" + "&".join(f"{k}={v}" for k, v in params.items())))
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


def without_group_lengths(dataset: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dataset.items() if not k.endswith("0000")}


@dataclass
class Archive:
    server: Server
    study: str
    series: str
    native: list[Dataset]  # two make_dataset instances in `series`
    plan: Dataset  # rtplan.dcm, Implicit VR, sequences
    latin1: Dataset
    j2k: Dataset
    rle: Dataset
    stored: dict[str, bytes] = field(default_factory=dict)  # SOP UID -> bytes sent


@pytest.fixture(scope="module")
def archive(shared_server: Server) -> Archive:
    study, series = uid(), uid()
    native = [
        make_dataset(study=study, series=series, instance_number=i + 1, pixel_seed=i)
        for i in range(2)
    ]
    plan, plan_bytes = sample("rtplan.dcm", study)
    latin1 = make_dataset(
        study=study, charset="ISO_IR 100", patient_name="Müller^Jürgen", series_number=3
    )
    j2k, j2k_bytes = sample("JPEG2000.dcm", study)
    rle, rle_bytes = sample("MR_small_RLE.dcm", study)
    archive = Archive(shared_server, study, series, native, plan, latin1, j2k, rle)
    for ds in [*native, latin1]:
        archive.stored[ds.SOPInstanceUID] = to_part10(ds)
    archive.stored[plan.SOPInstanceUID] = plan_bytes
    archive.stored[j2k.SOPInstanceUID] = j2k_bytes
    archive.stored[rle.SOPInstanceUID] = rle_bytes
    store(shared_server, list(archive.stored.values()))
    return archive


# -- instances --------------------------------------------------------------------------


def test_dicomweb_client_retrieves_study_series_instance(archive: Archive) -> None:
    client = DICOMwebClient(archive.server.url)
    study = client.retrieve_study(archive.study)
    assert {ds.SOPInstanceUID for ds in study} == set(archive.stored)
    series = client.retrieve_series(archive.study, archive.series)
    assert [ds.SOPInstanceUID for ds in series] == [ds.SOPInstanceUID for ds in archive.native]
    assert [ds.PixelData for ds in series] == [ds.PixelData for ds in archive.native]
    one = archive.native[1]
    got = client.retrieve_instance(archive.study, archive.series, one.SOPInstanceUID)
    assert got.PixelData == one.PixelData
    assert got.file_meta.TransferSyntaxUID == EVRLE
    # Metadata and bulk data through the client, as a viewer fetches them.
    assert len(client.retrieve_study_metadata(archive.study)) == len(archive.stored)
    series_meta = client.retrieve_series_metadata(archive.study, archive.series)
    assert [m["00080018"]["Value"][0] for m in series_meta] == [
        ds.SOPInstanceUID for ds in archive.native
    ]
    uri = series_meta[1]["7FE00010"]["BulkDataURI"]
    assert client.retrieve_bulkdata(uri) == [one.PixelData]


def test_multipart_framing_and_part_headers(archive: Archive) -> None:
    response = get(archive.server, f"/studies/{archive.study}", DICOM_ANY)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/dicom"'
    )
    parts = parse_multipart(response)
    assert len(parts) == len(archive.stored)
    seen = set()
    for headers, body in parts:
        media, params = parse_content_type(headers["content-type"])
        assert media == "application/dicom"
        ds = pydicom.dcmread(io.BytesIO(body))
        # The part's transfer-syntax is the one of its File Meta (PS3.18 8.7.9).
        assert params["transfer-syntax"] == ds.file_meta.TransferSyntaxUID
        assert headers["content-location"] == archive.server.url + instance_path(ds)
        assert int(headers["content-length"]) == len(body)
        seen.add(ds.SOPInstanceUID)
    assert seen == set(archive.stored)


def test_any_transfer_syntax_returns_compressed_as_stored(archive: Archive) -> None:
    response = get(archive.server, instance_path(archive.j2k), DICOM_ANY)
    [(headers, body)] = parse_multipart(response)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={J2K}"
    assert body == archive.stored[archive.j2k.SOPInstanceUID]


@pytest.mark.parametrize("which", ["rle", "j2k"])
def test_default_decompresses_to_explicit_little_endian(archive: Archive, which: str) -> None:
    original: Dataset = getattr(archive, which)
    for accept in (None, 'multipart/related; type="application/dicom"'):
        response = get(archive.server, instance_path(original), accept)
        assert response.status_code == 200
        [(headers, body)] = parse_multipart(response)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={EVRLE}"
        got = pydicom.dcmread(io.BytesIO(body))
        assert got.file_meta.TransferSyntaxUID == EVRLE
        assert "PixelData" in got and not got.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(got.pixel_array, original.pixel_array)


def test_impossible_transfer_syntax_is_406_before_any_body(archive: Archive) -> None:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={MPEG2}'
    for path in (instance_path(archive.native[0]), f"/studies/{archive.study}"):
        response = get(archive.server, path, accept)
        assert response.status_code == 406
        assert response.headers["content-type"] == "application/json"
        assert MPEG2 in response.json()["message"]
    # With "*" as a lower-q alternative, every instance gets a syntax it can be sent in.
    accept += ', multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5'
    response = get(archive.server, f"/studies/{archive.study}", accept)
    assert response.status_code == 200
    assert len(parse_multipart(response)) == len(archive.stored)


@pytest.mark.parametrize("ts", [JPEG_LS, RLE])
def test_retrieve_transcodes_to_lossless_compression(archive: Archive, ts: str) -> None:
    """Instance and series retrieve re-encode on request; part headers say so."""
    ds = archive.native[0]
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={ts}'
    response = get(archive.server, f"/studies/{archive.study}/series/{archive.series}", accept)
    assert response.status_code == 200
    received = parse_multipart(response)
    assert len(received) == 2
    for headers, body in received:
        assert headers["content-type"] == f"application/dicom; transfer-syntax={ts}"
        got = pydicom.dcmread(io.BytesIO(body))
        assert got.file_meta.TransferSyntaxUID == ts
        if got.SOPInstanceUID == ds.SOPInstanceUID:
            assert np.array_equal(got.pixel_array, ds.pixel_array)


def test_single_part_application_dicom_for_an_instance(archive: Archive) -> None:
    ds = archive.native[0]
    response = get(archive.server, instance_path(ds), "application/dicom")
    assert response.status_code == 200
    assert response.headers["content-type"] == f"application/dicom; transfer-syntax={EVRLE}"
    assert response.content == archive.stored[ds.SOPInstanceUID]
    assert int(response.headers["content-length"]) == len(response.content)
    # A study is never a single part.
    assert get(archive.server, f"/studies/{archive.study}", "application/dicom").status_code == 406


def test_accept_query_parameter_wins_over_the_header(archive: Archive) -> None:
    """PS3.18 8.7.8.1 and Table 10.4.1-5: ``accept`` in the query, then the header."""
    ds = archive.native[0]
    quoted = quote("application/dicom; transfer-syntax=*", safe="")
    response = get(archive.server, f"{instance_path(ds)}?accept={quoted}", "application/zip")
    assert response.headers["content-type"] == f"application/dicom; transfer-syntax={EVRLE}"
    xml = quote('multipart/related; type="application/dicom+xml"', safe="")
    response = get(archive.server, f"{instance_path(ds)}/metadata?accept={xml}")
    assert parse_multipart(response)[0][0]["content-type"] == "application/dicom+xml"
    # An unsupported value in the query falls back to the header.
    response = get(archive.server, f"{instance_path(ds)}/metadata?accept=image/png")
    assert response.headers["content-type"] == "application/dicom+json"
    octets = quote("application/octet-stream", safe="")
    response = get(archive.server, f"{instance_path(ds)}/bulkdata/7FE00010?accept={octets}")
    assert (response.headers["content-type"], response.content) == (
        "application/octet-stream",
        ds.PixelData,
    )
    # Metadata is UTF-8 only (PS3.18 F.2): another charset is 406, an empty one 400.
    path = instance_path(ds) + "/metadata"
    assert get(archive.server, f"{path}?charset=utf-8").status_code == 200
    assert get(archive.server, f"{path}?charset=ISO-8859-1").status_code == 406
    assert get(archive.server, f"{path}?charset=").status_code == 400


def test_zip_of_study_and_series_holds_the_stored_files(archive: Archive) -> None:
    for path, expected in (
        (f"/studies/{archive.study}", set(archive.stored)),
        (
            f"/studies/{archive.study}/series/{archive.series}",
            {d.SOPInstanceUID for d in archive.native},
        ),
    ):
        response = get(archive.server, path, "application/zip")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive_zip:
            assert archive_zip.testzip() is None
            members = {Path(n).stem: archive_zip.read(n) for n in archive_zip.namelist()}
        assert set(members) == expected
        for sop, data in members.items():
            assert data == archive.stored[sop]  # byte-identical, including Implicit VR


# -- metadata and bulk data ---------------------------------------------------------------


def test_metadata_equals_pydicom_json(archive: Archive) -> None:
    server = archive.server
    by_level = {
        "study": get(server, f"/studies/{archive.study}/metadata"),
        "series": get(server, f"/studies/{archive.study}/series/{archive.series}/metadata"),
        "instance": get(server, instance_path(archive.plan) + "/metadata"),
    }
    for response in by_level.values():
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/dicom+json"
    assert len(by_level["study"].json()) == len(archive.stored)
    assert len(by_level["series"].json()) == 2
    # rtplan: sequences, PN, Implicit VR stored; no bulk values at all.
    [plan] = by_level["instance"].json()
    assert plan == without_group_lengths(archive.plan.to_json_dict())
    assert plan["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Last^First^mid^pre"}]}
    beams = plan["300A00B0"]["Value"]
    assert beams[0]["300A00C2"] == {"vr": "LO", "Value": ["Field 1"]}
    # Native image: everything but Pixel Data as pydicom has it.
    metadata = {m["00080018"]["Value"][0]: m for m in by_level["study"].json()}
    for ds in [*archive.native, archive.latin1]:
        ours = metadata[ds.SOPInstanceUID]
        theirs = without_group_lengths(ds.to_json_dict())
        assert {k: v for k, v in ours.items() if k != "7FE00010"} == {
            k: v for k, v in theirs.items() if k != "7FE00010"
        }
    assert metadata[archive.latin1.SOPInstanceUID]["00100010"]["Value"] == [
        {"Alphabetic": "Müller^Jürgen"}
    ]


def test_bulk_data_uris_are_absolute_and_give_the_pixel_bytes(archive: Archive) -> None:
    ds = archive.native[0]
    [meta] = get(archive.server, instance_path(ds) + "/metadata").json()
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri == f"{archive.server.url}{instance_path(ds)}/bulkdata/7FE00010"
    response = httpx.get(uri)
    assert response.status_code == 200
    [(headers, body)] = parse_multipart(response)
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-location"] == uri
    assert body == ds.PixelData
    single = httpx.get(uri, headers={"Accept": "application/octet-stream"})
    assert single.headers["content-type"] == "application/octet-stream"
    assert single.content == ds.PixelData
    ranged = httpx.get(uri, headers={"Accept": "application/octet-stream", "Range": "bytes=10-99"})
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 10-99/{len(ds.PixelData)}"
    assert ranged.content == ds.PixelData[10:100]
    suffix = httpx.get(uri, headers={"Accept": "application/octet-stream", "Range": "bytes=-8"})
    assert (suffix.status_code, suffix.content) == (206, ds.PixelData[-8:])
    # A range outside the value: 416 with the size (RFC 9110 15.5.17), not 406.
    outside = httpx.get(uri, headers={"Accept": "application/octet-stream", "Range": "bytes=9999-"})
    assert outside.status_code == 416
    assert outside.headers["content-range"] == f"bytes */{len(ds.PixelData)}"


def test_bulk_data_of_compressed_and_implicit_instances(archive: Archive) -> None:
    # Implicit VR rtplan has no bulk values; the RLE image's Pixel Data is encapsulated
    # and is sent decoded, little endian (PS3.18 Table 8.7.3-4).
    [meta] = get(archive.server, instance_path(archive.rle) + "/metadata").json()
    response = httpx.get(
        meta["7FE00010"]["BulkDataURI"], headers={"Accept": "application/octet-stream"}
    )
    assert response.status_code == 200
    expected = archive.rle.pixel_array.astype(archive.rle.pixel_array.dtype.newbyteorder("<"))
    assert response.content == expected.tobytes()


def _big_endian(ds: Dataset) -> bytes:
    """``ds`` (16-bit pixels) as a correct Explicit VR Big Endian Part 10 file."""
    ds = copy.deepcopy(ds)
    ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.add_new(0x00281201, "OW", np.arange(64, dtype=">u2").tobytes())  # small: inline
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=False)
    return out.getvalue()


def test_big_endian_instance_is_sent_little_endian(shared_server: Server) -> None:
    # Explicit VR Big Endian "shall not be used with Web Services" (PS3.18 8.7.3).
    ds = make_dataset()
    data = _big_endian(ds)
    store(shared_server, [data])
    for accept in ("application/dicom", "application/dicom; transfer-syntax=*"):
        response = get(shared_server, instance_path(ds), accept)
        assert response.status_code == 200
        got = pydicom.dcmread(io.BytesIO(response.content))
        assert got.file_meta.TransferSyntaxUID == EVRLE
        assert got.PixelData == ds.PixelData  # little-endian words again
        assert got.RedPaletteColorLookupTableData == np.arange(64, dtype="<u2").tobytes()
        assert (got.Rows, got.PatientName, got.SOPInstanceUID) == (
            ds.Rows,
            ds.PatientName,
            ds.SOPInstanceUID,
        )
    # Bulk data are little endian too (PS3.18 Table 8.7.3-4), not the stored bytes.
    [meta] = get(shared_server, instance_path(ds) + "/metadata").json()
    lut = base64.b64decode(meta["00281201"]["InlineBinary"])
    assert lut == np.arange(64, dtype="<u2").tobytes()  # PS3.18 F.2.7, little endian
    uri = meta["7FE00010"]["BulkDataURI"]
    bulk = httpx.get(uri, headers={"Accept": "application/octet-stream"})
    assert bulk.content == ds.PixelData
    assert bulk.content not in data
    # The vendor RGB sample (8-bit OB pixels) is sent with its pixels unchanged.
    sample_ds, sample_bytes = sample("ExplVR_BigEnd.dcm", uid())
    store(shared_server, [sample_bytes])
    response = get(shared_server, instance_path(sample_ds), "application/dicom")
    got = pydicom.dcmread(io.BytesIO(response.content))
    assert got.file_meta.TransferSyntaxUID == EVRLE
    assert np.array_equal(got.pixel_array, sample_ds.pixel_array)


def test_deflated_instance(shared_server: Server) -> None:
    ds, data = sample("image_dfl.dcm", uid())
    store(shared_server, [data])
    as_stored = get(shared_server, instance_path(ds), "application/dicom; transfer-syntax=*")
    assert as_stored.content == data
    response = get(shared_server, instance_path(ds), "application/dicom")
    got = pydicom.dcmread(io.BytesIO(response.content))
    assert got.file_meta.TransferSyntaxUID == EVRLE
    assert got.PixelData == ds.PixelData
    [meta] = get(shared_server, instance_path(ds) + "/metadata").json()
    bulk = httpx.get(
        meta["7FE00010"]["BulkDataURI"], headers={"Accept": "application/octet-stream"}
    )
    assert bulk.content == ds.PixelData


def test_nested_bulk_data_is_resolvable(shared_server: Server) -> None:
    ds = make_dataset()
    icon = Dataset()
    icon.Rows = icon.Columns = 4
    icon.BitsAllocated = 8
    icon.PixelData = bytes(range(16))
    ds.IconImageSequence = [icon]
    store(shared_server, [to_part10(ds)])
    [meta] = get(shared_server, instance_path(ds) + "/metadata").json()
    uri = meta["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    assert uri.endswith("/bulkdata/00880200.0.7FE00010")
    response = httpx.get(uri, headers={"Accept": "application/octet-stream"})
    assert (response.status_code, response.content) == (200, bytes(range(16)))


def test_metadata_validators_and_conditional_requests(shared_server: Server) -> None:
    study, series = uid(), uid()
    store(shared_server, [to_part10(make_dataset(study=study, series=series))])
    path = f"/studies/{study}/series/{series}/metadata"
    first = get(shared_server, path)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert etag.startswith('"') and etag.endswith('"')
    assert parsedate_to_datetime(modified).timestamp() <= time.time()
    assert get(shared_server, path, **{"If-None-Match": etag}).status_code == 304
    assert get(shared_server, path, **{"If-None-Match": f"W/{etag}"}).status_code == 304
    assert get(shared_server, path, **{"If-Modified-Since": modified}).status_code == 304
    earlier = format_datetime(parsedate_to_datetime(modified).replace(year=2000), usegmt=True)
    assert get(shared_server, path, **{"If-Modified-Since": earlier}).status_code == 200
    assert get(shared_server, path, **{"If-None-Match": '"other"'}).status_code == 200
    # Another instance in the series: a new validator, and the old one no longer matches.
    store(shared_server, [to_part10(make_dataset(study=study, series=series, instance_number=2))])
    second = get(shared_server, path, **{"If-None-Match": etag})
    assert second.status_code == 200
    assert second.headers["etag"] != etag
    assert len(second.json()) == 2
    study_etag = get(shared_server, f"/studies/{study}/metadata").headers["etag"]
    assert study_etag != second.headers["etag"]


def test_last_modified_advances_when_an_instance_is_deleted(shared_server: Server) -> None:
    study, series = uid(), uid()
    first, second = (make_dataset(study=study, series=series, instance_number=i) for i in (1, 2))
    store(shared_server, [to_part10(first), to_part10(second)])
    path = f"/studies/{study}/series/{series}/metadata"
    modified = get(shared_server, path).headers["last-modified"]
    time.sleep(1.1)  # HTTP dates have one-second resolution
    assert httpx.delete(shared_server.url + instance_path(second)).status_code == 204
    # The series changed after `modified`: a full response, not 304 (RFC 9110 13.1.3).
    assert get(shared_server, path, **{"If-Modified-Since": modified}).status_code == 200


def test_metadata_as_xml(archive: Archive) -> None:
    accept = 'multipart/related; type="application/dicom+xml"'
    response = get(archive.server, instance_path(archive.native[0]) + "/metadata", accept)
    assert response.status_code == 200
    [(headers, body)] = parse_multipart(response)
    assert headers["content-type"] == "application/dicom+xml"
    ns = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    root = ElementTree.fromstring(body)
    name = root.find("d:DicomAttribute[@tag='00100010']/d:PersonName/d:Alphabetic", ns)
    assert name is not None
    assert [e.text for e in name] == ["Doe", "John"]
    bulk = root.find("d:DicomAttribute[@tag='7FE00010']/d:BulkData", ns)
    assert bulk is not None
    assert bulk.get("uri") == (
        f"{archive.server.url}{instance_path(archive.native[0])}/bulkdata/7FE00010"
    )
    assert (
        response.headers["etag"]
        != get(archive.server, instance_path(archive.native[0]) + "/metadata").headers["etag"]
    )


# -- errors -----------------------------------------------------------------------------


def test_unknown_uids_are_404(archive: Archive) -> None:
    unknown = uid()
    ds = archive.native[0]
    for path in (
        f"/studies/{unknown}",
        f"/studies/{unknown}/metadata",
        f"/studies/{archive.study}/series/{unknown}",
        f"/studies/{archive.study}/series/{unknown}/metadata",
        f"/studies/{archive.study}/series/{archive.series}/instances/{unknown}",
        f"/studies/{archive.study}/series/{archive.series}/instances/{unknown}/metadata",
        f"/studies/{archive.study}/series/{archive.series}/instances/{unknown}/bulkdata/7FE00010",
        # A real instance under the wrong series or study is not found either.
        f"/studies/{archive.study}/series/{unknown}/instances/{ds.SOPInstanceUID}",
        f"/studies/{unknown}/series/{archive.series}/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010",
        instance_path(ds) + "/bulkdata/00420011",
    ):
        response = get(archive.server, path)
        assert response.status_code == 404, path
        assert response.json()["message"]
    for path in (f"/studies/{unknown}", instance_path(ds).replace(ds.SOPInstanceUID, unknown)):
        assert httpx.delete(archive.server.url + path).status_code == 404


# -- delete -----------------------------------------------------------------------------


def test_delete_instance_series_study(shared_server: Server) -> None:
    study, series_a, series_b = uid(), uid(), uid()
    a1, a2 = (make_dataset(study=study, series=series_a, instance_number=i) for i in (1, 2))
    b1 = make_dataset(study=study, series=series_b, series_number=2)
    store(shared_server, [to_part10(d) for d in (a1, a2, b1)])
    assert all(len(blob_files(shared_server, d.SOPInstanceUID)) == 1 for d in (a1, a2, b1))

    # One instance: 204, then 404, gone from QIDO, blob file removed.
    response = httpx.delete(shared_server.url + instance_path(a1))
    assert (response.status_code, response.content) == (204, b"")
    assert get(shared_server, instance_path(a1)).status_code == 404
    assert get(shared_server, instance_path(a1) + "/metadata").status_code == 404
    assert blob_files(shared_server, a1.SOPInstanceUID) == []
    sops = [i["00080018"]["Value"][0] for i in qido(shared_server, f"/studies/{study}/instances")]
    assert sorted(sops) == sorted([a2.SOPInstanceUID, b1.SOPInstanceUID])

    # The last instance of series A: the series row goes with it.
    assert httpx.delete(shared_server.url + instance_path(a2)).status_code == 204
    series = [s["0020000E"]["Value"][0] for s in qido(shared_server, f"/studies/{study}/series")]
    assert series == [series_b]
    assert get(shared_server, f"/studies/{study}/series/{series_a}").status_code == 404

    # The last series: the study goes too.
    assert httpx.delete(f"{shared_server.url}/studies/{study}/series/{series_b}").status_code == 204
    assert blob_files(shared_server, b1.SOPInstanceUID) == []
    assert qido(shared_server, "/studies", StudyInstanceUID=study) == []
    assert get(shared_server, f"/studies/{study}").status_code == 404
    assert get(shared_server, f"/studies/{study}/metadata").status_code == 404


def test_delete_study(shared_server: Server) -> None:
    study = uid()
    datasets = [make_dataset(study=study, series_number=i) for i in range(3)]
    store(shared_server, [to_part10(d) for d in datasets])
    assert httpx.delete(f"{shared_server.url}/studies/{study}").status_code == 204
    assert qido(shared_server, "/studies", StudyInstanceUID=study) == []
    assert qido(shared_server, "/instances", StudyInstanceUID=study) == []
    assert all(blob_files(shared_server, d.SOPInstanceUID) == [] for d in datasets)
    assert httpx.delete(f"{shared_server.url}/studies/{study}").status_code == 404


# -- a damaged archive --------------------------------------------------------------------


def test_missing_blob_file(shared_server: Server) -> None:
    study, series = uid(), uid()
    good, lost = (make_dataset(study=study, series=series, instance_number=i) for i in (1, 2))
    store(shared_server, [to_part10(good), to_part10(lost)])
    [path] = blob_files(shared_server, lost.SOPInstanceUID)
    path.unlink()

    response = get(shared_server, instance_path(lost))
    assert response.status_code >= 500
    assert response.headers["content-type"] == "application/json"
    message = response.json()["message"]
    assert "missing or unreadable" in message and lost.SOPInstanceUID in message
    assert f"instance {lost.SOPInstanceUID} unreadable" in shared_server.log()

    series_response = get(shared_server, f"/studies/{study}/series/{series}")
    assert series_response.status_code == 200
    parts = parse_multipart(series_response)
    assert [pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for _, b in parts] == [
        good.SOPInstanceUID
    ]
    warning = series_response.headers["warning"]
    assert warning.startswith("299 ") and lost.SOPInstanceUID in warning

    assert len(qido(shared_server, f"/studies/{study}/instances")) == 2
    assert len(get(shared_server, f"/studies/{study}/metadata").json()) == 2
    assert shared_server.alive()


def test_undecodable_pixel_data(shared_server: Server) -> None:
    """Compressed pixels that cannot be decoded: the instance alone is refused with a
    reason before any byte; in a series it is left out and the framing stays valid."""
    study, series = uid(), uid()
    broken, _ = sample("JPEG2000.dcm", study, series)
    broken.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])  # SOC, SIZ, junk
    out = io.BytesIO()
    broken.save_as(out, enforce_file_format=True)
    good = make_dataset(study=study, series=series)
    store(shared_server, [out.getvalue(), to_part10(good)])

    response = get(shared_server, instance_path(broken))
    assert response.status_code == 406
    assert "cannot decompress" in response.json()["message"]
    response = get(shared_server, instance_path(broken), "application/dicom")
    assert response.status_code == 406
    # Still available as stored.
    response = get(shared_server, instance_path(broken), "application/dicom; transfer-syntax=*")
    assert (response.status_code, response.content) == (200, out.getvalue())

    response = get(shared_server, f"/studies/{study}/series/{series}")
    assert response.status_code == 200
    parts = parse_multipart(response)
    assert [pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for _, b in parts] == [
        good.SOPInstanceUID
    ]
    assert f"instance {broken.SOPInstanceUID} left out" in shared_server.log()


@pytest.fixture(scope="module", autouse=True)
def _no_tracebacks(shared_server: Server) -> Iterator[None]:
    yield
    assert "Traceback" not in shared_server.log(), shared_server.log()


def _retrieve_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, datasets: list[Dataset], in_memory: bool
) -> tuple[list[tuple[dict[str, str], bytes]], list[int], list[int], list[bytes]]:
    """Store ``datasets`` (one series), retrieve the series in-process; (parts, lengths
    asked of the page cache, lengths read through a worker thread, the stored files).
    ``in_memory`` False makes every page-cache read miss, as on a cold cache."""
    from dicomweb_server.bootstrap import prepare
    from dicomweb_server.config import Settings
    from dicomweb_server.web import wado
    from dicomweb_server.web.app import create_app

    settings = Settings(data_dir=tmp_path / "data")
    prepare(settings)
    app = create_app(settings)
    monkeypatch.setattr(wado, "PIECE", 64 * 1024)  # several pieces per larger object
    from_disk: list[int] = []
    from_cache: list[int] = []
    files = [to_part10(ds) for ds in datasets]

    async def scenario() -> httpx.Response:
        async with app.router.lifespan_context(app):
            services: Any = app.state.services
            for n, data in enumerate(files):
                source = tmp_path / f"{n}.dcm"
                source.write_bytes(data)
                assert services.store.store_copy(source).stored
            retrieve = services.retrieve
            read_bytes = retrieve.read_bytes

            def counting(instance: Any, offset: int, length: int) -> bytes:
                from_disk.append(length)
                return bytes(read_bytes(instance, offset, length))

            monkeypatch.setattr(retrieve, "read_bytes", counting)
            read_now = retrieve.read_now

            def from_memory(instance: Any, offset: int, length: int) -> bytearray | None:
                from_cache.append(length)
                return read_now(instance, offset, length) if in_memory else None

            monkeypatch.setattr(retrieve, "read_now", from_memory)
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                ds = datasets[0]
                return await c.get(
                    f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}",
                    headers={"Accept": DICOM_ANY},
                )

    response = asyncio.run(scenario())
    assert response.status_code == 200
    return parse_multipart(response), from_cache, from_disk, files


def test_series_retrieve_reads_cached_files_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files in the page cache (just stored) are read without a worker thread; small and
    large instances, split across pieces, come out whole and in order."""
    study, series = uid(), uid()
    datasets = [
        make_dataset(study=study, series=series, rows=rows, columns=rows, instance_number=n)
        for n, rows in enumerate((8, 200, 16, 300), start=1)
    ]
    parts, from_cache, from_disk, files = _retrieve_in_process(
        tmp_path, monkeypatch, datasets, True
    )
    assert from_disk == []
    assert sum(from_cache) == sum(len(f) for f in files)
    assert max(from_cache) <= 64 * 1024
    assert [body for _, body in parts] == files
    assert [int(h["content-length"]) for h, _ in parts] == [len(f) for f in files]


def test_series_retrieve_reads_from_disk_in_a_thread_when_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, series = uid(), uid()
    datasets = [
        make_dataset(study=study, series=series, rows=rows, columns=rows, instance_number=n)
        for n, rows in enumerate((300, 8), start=1)
    ]
    parts, _, from_disk, files = _retrieve_in_process(tmp_path, monkeypatch, datasets, False)
    assert [body for _, body in parts] == files
    assert sum(from_disk) == sum(len(f) for f in files)
    assert max(from_disk) <= 64 * 1024


def test_the_multipart_body_ends_with_its_closing_delimiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever the sizes, every part and the closing delimiter are sent, even when the
    delimiter is what fills the last gathered piece."""
    from dicomweb_server.services.retrieve import Planned
    from dicomweb_server.storage.interfaces import StoredInstance
    from dicomweb_server.web import wado

    monkeypatch.setattr(wado, "PIECE", 1024)

    class Stub:
        blobs: dict[str, bytes] = {}

        def read_now(self, instance: StoredInstance, offset: int, length: int) -> bytearray:
            return bytearray(self.blobs[instance.blob_key][offset : offset + length])

    async def body(stub: Stub, items: list[Planned]) -> bytes:
        chunks = wado._multipart_async(stub, items, "http://x", "bnd", {})  # type: ignore[arg-type]
        return b"".join([bytes(c) async for c in chunks])

    for size in range(200, 1100):  # the delimiter lands on each side of 1024 bytes
        stub = Stub()
        stub.blobs = {f"k{n}": bytes([65 + n]) * size for n in range(2)}
        items = [
            Planned(StoredInstance("1.2", "1.3", f"1.4.{n}", "1.5", EVRLE, key, size, "h"), EVRLE)
            for n, key in enumerate(stub.blobs)
        ]
        data = asyncio.run(body(stub, items))
        assert data.endswith(b"\r\n--bnd--\r\n"), size
        assert all(blob in data for blob in stub.blobs.values()), size


def test_gathered_pieces_keep_every_byte_whatever_the_sizes() -> None:
    """Small pieces are joined up to PIECE, large ones go alone, in order; the last
    small piece (the closing delimiter) is never dropped even when it fills a batch."""
    from dicomweb_server.web import wado
    from dicomweb_server.web.responses import PIECE

    gather = wado._Gather()
    sizes = [10, PIECE - 20, 15, 5, 70_000, 3, PIECE, 1]
    pieces = [bytes([n]) * size for n, size in enumerate(sizes)]
    out: list[bytes] = []
    for piece in pieces:
        out += [bytes(p) for p in gather.add(piece)]
    if gather.batch:
        out.append(gather.rest())
    assert b"".join(out) == b"".join(pieces)
    assert all(len(p) >= 64 * 1024 or len(p) <= PIECE for p in out)
    assert len(out) < len(pieces)  # small ones were joined
