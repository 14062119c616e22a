"""Frames, rendered, thumbnails and WADO-URI against a real server, on both indexes."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
import sqlalchemy
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from tests.conftest import Server, http
from tests.dicomgen import make_dataset, multipart, uid

EVRLE = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"
JLS = "1.2.840.10008.1.2.4.80"
J2K = "1.2.840.10008.1.2.4.90"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
OCTET_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
OCTET = "multipart/related; type=application/octet-stream"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"


def parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part, split on the response's boundary."""
    media = response.headers["content-type"]
    assert media.startswith("multipart/related"), media
    boundary = media.split("boundary=")[1].split(";")[0].strip('"')
    out = []
    for chunk in response.content.split(b"--" + boundary.encode())[1:-1]:
        head, _, body = chunk.partition(b"\r\n\r\n")
        headers = dict(
            line.split(": ", 1) for line in head.decode().strip().split("\r\n") if ": " in line
        )
        out.append((headers["Content-Type"], body[:-2]))
    return out


def path_of(ds: Dataset) -> str:
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    return f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}"


def compressed(ts: str, frames: int = 3, size: int = 64, **extra: object) -> Dataset:
    ds = make_dataset(frames=frames, rows=size, columns=size, **extra)  # type: ignore[arg-type]
    ds.compress(UID(ts), generate_instance_uid=False)
    return ds


def sample(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uid(), uid(), uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@dataclass
class Archive:
    server: Server
    sources: dict[str, Dataset] = field(default_factory=dict)


def store(server: Server, *datasets: Dataset) -> None:
    body, header = multipart([part10(d) for d in datasets])
    response = http().post(f"{server.url}/studies", content=body, headers={"Content-Type": header})
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def archive(shared_server: Server) -> Archive:
    native = make_dataset(frames=3, rows=64, columns=64)
    sources = {
        "native": native,
        "rle": compressed(RLE),
        "jls": compressed(JLS),
        "j2k": compressed(J2K),
        "jpeg-lossless": sample("SC_rgb_jpeg_gdcm.dcm"),
        "jpeg-baseline": sample("SC_rgb_jpeg_dcmtk.dcm"),
        "big-endian": sample("MR_small_bigendian.dcm"),
    }
    store(shared_server, *sources.values())
    return Archive(shared_server, sources)


def reference(ds: Dataset) -> np.ndarray:
    """The source's pixels as pydicom decodes them, one entry per frame."""
    array = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return array if frames > 1 else array[np.newaxis]


def native_of(ds: Dataset, payload: bytes) -> np.ndarray:
    rows, cols, samples = ds.Rows, ds.Columns, ds.SamplesPerPixel
    dtype = np.uint8 if ds.BitsAllocated == 8 else np.uint16
    shape = (rows, cols, samples) if samples > 1 else (rows, cols)
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


@pytest.mark.parametrize(
    "name", ["native", "rle", "jls", "j2k", "jpeg-lossless", "jpeg-baseline", "big-endian"]
)
def test_octet_stream_frames_equal_the_source_pixels(archive: Archive, name: str) -> None:
    ds = archive.sources[name]
    count = int(ds.get("NumberOfFrames", 1) or 1)
    numbers = ",".join(str(n) for n in range(count, 0, -1))  # asked in reverse order
    response = http().get(
        f"{archive.server.url}{path_of(ds)}/frames/{numbers}", headers={"Accept": OCTET}
    )
    assert response.status_code == 200, response.text
    got = parts(response)
    assert [p[0] for p in got] == [f"application/octet-stream; transfer-syntax={EVRLE}"] * count
    expected = reference(ds)
    for index, (_, body) in enumerate(got):
        frame = native_of(ds, body)
        source = expected[count - 1 - index]
        if name == "jpeg-baseline":
            # Lossy source: our decoder and pydicom's agree to within rounding of the
            # colour conversion (at most 2 levels).
            assert np.abs(frame.astype(int) - source.astype(int)).max() <= 2
        else:
            assert np.array_equal(frame, source)


@pytest.mark.parametrize("name", ["rle", "jls", "j2k", "jpeg-lossless", "jpeg-baseline"])
@pytest.mark.parametrize(
    "accept",
    [
        OCTET_ANY,
        "multipart/related; type=application/octet-stream; transfer-syntax=*",
        'multipart/related; type="image/jls"; q=0.5, ' + OCTET_ANY,
    ],
)
def test_any_transfer_syntax_returns_stored_fragments(
    archive: Archive, name: str, accept: str
) -> None:
    ds = archive.sources[name]
    response = http().get(f"{archive.server.url}{path_of(ds)}/frames/1", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    ((content_type, body),) = parts(response)
    stored_ts = str(ds.file_meta.TransferSyntaxUID)
    assert content_type.endswith(f"transfer-syntax={stored_ts}")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    assert body == next(generate_frames(ds.PixelData, number_of_frames=frames))


@pytest.mark.parametrize(
    ("accept", "ts"),
    [
        ('multipart/related; type="image/jls"', JLS),
        ("multipart/related; type=image/jp2", J2K),
        ('multipart/related; type="image/dicom-rle"', RLE),
        ('multipart/related; type="image/x-dicom-rle"', RLE),
    ],
)
def test_native_frames_are_encoded_on_request(archive: Archive, accept: str, ts: str) -> None:
    ds = archive.sources["native"]
    response = http().get(f"{archive.server.url}{path_of(ds)}/frames/2", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    ((content_type, body),) = parts(response)
    assert content_type.endswith(f"transfer-syntax={ts}")
    options: Any = {
        "rows": 64, "columns": 64, "samples_per_pixel": 1, "bits_allocated": 16,
        "bits_stored": 12, "pixel_representation": 0,
        "photometric_interpretation": "MONOCHROME2", "number_of_frames": 1,
    }  # fmt: skip
    decoded, _ = get_decoder(UID(ts)).as_array(encapsulate([body]), **options)
    assert np.array_equal(decoded, reference(ds)[1])


def test_single_part_octet_stream_for_one_frame(archive: Archive) -> None:
    ds = archive.sources["rle"]
    response = http().get(
        f"{archive.server.url}{path_of(ds)}/frames/3",
        headers={"Accept": "application/octet-stream"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/octet-stream")
    assert np.array_equal(native_of(ds, response.content), reference(ds)[2])


@pytest.mark.parametrize(
    ("frames", "accept", "status"),
    [
        ("0", OCTET, 400),
        ("a", OCTET, 400),
        ("1,,2", OCTET, 400),
        ("-1", OCTET, 400),
        ("4", OCTET, 404),
        ("1,99", OCTET, 404),
        ("1", 'multipart/related; type="image/jxl"', 406),
        ("1", "text/html", 406),
        ("1,2", "application/octet-stream", 406),
    ],
)
def test_bad_frame_requests(archive: Archive, frames: str, accept: str, status: int) -> None:
    ds = archive.sources["native"]
    response = http().get(
        f"{archive.server.url}{path_of(ds)}/frames/{frames}", headers={"Accept": accept}
    )
    assert response.status_code == status, response.text
    assert response.json()["message"]
    assert http().get(f"{archive.server.root}/health").status_code == 200


def test_unknown_instance_frames_are_404(archive: Archive) -> None:
    ds = archive.sources["native"]
    path = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{uid()}"
    assert http().get(f"{archive.server.url}{path}/frames/1").status_code == 404
    wrong = f"/studies/{uid()}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    assert http().get(f"{archive.server.url}{wrong}/frames/1").status_code == 404


def test_frame_150_is_read_alone_from_a_damaged_file(shared_server: Server) -> None:
    """Every byte of the file but frame 150's is overwritten: a server that parsed the
    file, or read other frames, could not answer with frame 150 intact."""
    ds = make_dataset(frames=200, rows=16, columns=16)
    rle = compressed(RLE, frames=200, size=16)
    store(shared_server, ds, rle)
    for source in (ds, rle):
        (blob,) = (shared_server.data_dir / "blobs").rglob(f"{source.SOPInstanceUID}-*.dcm")
        data = bytearray(blob.read_bytes())
        stored = pydicom.dcmread(io.BytesIO(bytes(data)))
        if source is ds:
            keep_at = bytes(data).index(stored.PixelData) + 149 * 512
            keep = bytes(data[keep_at : keep_at + 512])
        else:
            keep = list(generate_frames(stored.PixelData, number_of_frames=200))[149]
            keep_at = bytes(data).index(keep)
        damaged = bytearray(b"\xa5" * len(data))
        damaged[keep_at : keep_at + len(keep)] = keep
        blob.write_bytes(bytes(damaged))
        response = http().get(
            f"{shared_server.url}{path_of(source)}/frames/150", headers={"Accept": OCTET}
        )
        assert response.status_code == 200, response.text
        ((_, body),) = parts(response)
        assert np.array_equal(
            np.frombuffer(body, np.uint16).reshape(16, 16), reference(source)[149]
        )


def test_frame_table_is_computed_lazily_for_older_instances(shared_server: Server) -> None:
    ds = make_dataset(frames=4, rows=16, columns=16)
    store(shared_server, ds)
    engine = sqlalchemy.create_engine(
        shared_server.database_url.replace("sqlite:///", "sqlite:///")
    )
    try:
        with engine.begin() as conn:  # as if stored before schema v3
            conn.execute(
                sqlalchemy.text("UPDATE instance SET frames = NULL WHERE sop_uid = :sop"),
                {"sop": ds.SOPInstanceUID},
            )
        response = http().get(
            f"{shared_server.url}{path_of(ds)}/frames/4", headers={"Accept": OCTET}
        )
        assert response.status_code == 200
        ((_, body),) = parts(response)
        assert np.array_equal(np.frombuffer(body, np.uint16).reshape(16, 16), reference(ds)[3])
        with engine.connect() as conn:
            kept = conn.execute(
                sqlalchemy.text("SELECT frames FROM instance WHERE sop_uid = :sop"),
                {"sop": ds.SOPInstanceUID},
            ).scalar_one()
        assert kept is not None and b'"n"' in bytes(kept)
    finally:
        engine.dispose()


def test_bulkdata_pixel_data_single_part_with_range(archive: Archive) -> None:
    ds = archive.sources["native"]
    metadata = http().get(f"{archive.server.url}{path_of(ds)}/metadata").json()[0]
    uri = metadata["7FE00010"]["BulkDataURI"]
    whole = http().get(uri, headers={"Accept": "application/octet-stream"})
    assert whole.status_code == 200 and whole.content == ds.PixelData
    ranged = http().get(
        uri, headers={"Accept": "application/octet-stream", "Range": "bytes=8192-8200"}
    )
    assert ranged.status_code == 206 and ranged.content == ds.PixelData[8192:8201]
    multi = http().get(uri, headers={"Accept": OCTET})
    assert parts(multi)[0][1] == ds.PixelData


def test_instance_retrieve_transcodes_to_jpeg_2000(archive: Archive) -> None:
    """JPEG 2000 needs at least 32 x 32 pixels with the openjpeg plugin (6 resolutions)."""
    ds = archive.sources["native"]
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={J2K}'
    response = http().get(f"{archive.server.url}{path_of(ds)}", headers={"Accept": accept})
    assert response.status_code == 200
    ((content_type, body),) = parts(response)
    assert content_type == f"application/dicom; transfer-syntax={J2K}"
    got = pydicom.dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == J2K
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(got.pixel_array, ds.pixel_array)


def test_deleted_or_replaced_instances_are_not_served_from_memory(shared_server: Server) -> None:
    ds = make_dataset(frames=2, rows=16, columns=16)
    store(shared_server, ds)
    url = f"{shared_server.url}{path_of(ds)}"
    assert http().get(f"{url}/frames/2", headers={"Accept": OCTET}).status_code == 200
    assert http().get(f"{url}/rendered").status_code == 200
    assert http().delete(url).status_code == 204
    assert http().get(f"{url}/frames/2", headers={"Accept": OCTET}).status_code == 404
    assert http().get(f"{url}/rendered").status_code == 404
    ds.PixelData = bytes(len(ds.PixelData))  # stored again, other pixels: all zero
    store(shared_server, ds)
    response = http().get(f"{url}/frames/2", headers={"Accept": OCTET})
    assert parts(response)[0][1] == bytes(512)


def test_dicomweb_client_frames_and_rendered(archive: Archive) -> None:
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(archive.server.url)
    ds = archive.sources["rle"]
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    frames = client.retrieve_instance_frames(*uids, frame_numbers=[3, 1])
    assert [native_of(ds, f).tolist() for f in frames] == [
        reference(ds)[2].tolist(),
        reference(ds)[0].tolist(),
    ]
    stored = client.retrieve_instance_frames(
        *uids, frame_numbers=[2], media_types=(("image/x-dicom-rle", RLE),)
    )
    assert stored[0] == list(generate_frames(ds.PixelData, number_of_frames=3))[1]
    rendered = client.retrieve_instance_rendered(*uids, media_types=("image/png",))
    assert Image.open(io.BytesIO(rendered)).size == (64, 64)


def test_deflated_and_pixel_less_instances(shared_server: Server) -> None:
    """Deflated frames cannot be read in place: served from an in-memory conversion.
    Objects without pixels: frames 404, rendered 406, WADO-URI the object itself."""
    deflated = make_dataset(frames=2, rows=16, columns=16)
    deflated.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1.99")
    bare = make_dataset()
    del bare.PixelData
    store(shared_server, deflated, bare)
    response = http().get(
        f"{shared_server.url}{path_of(deflated)}/frames/2", headers={"Accept": OCTET}
    )
    assert response.status_code == 200
    assert np.array_equal(native_of(deflated, parts(response)[0][1]), reference(deflated)[1])
    assert http().get(f"{shared_server.url}{path_of(bare)}/frames/1").status_code == 404
    assert http().get(f"{shared_server.url}{path_of(bare)}/rendered").status_code == 406
    query = {
        "requestType": "WADO",
        "studyUID": bare.StudyInstanceUID,
        "seriesUID": bare.SeriesInstanceUID,
        "objectUID": bare.SOPInstanceUID,
    }
    natural = http().get(f"{shared_server.root}/wado", params=query)
    assert natural.status_code == 200
    assert natural.headers["content-type"].startswith("application/dicom")


def test_truncated_stored_file_is_a_server_error_not_a_short_frame(shared_server: Server) -> None:
    ds = make_dataset(frames=4, rows=16, columns=16)
    store(shared_server, ds)
    (blob,) = (shared_server.data_dir / "blobs").rglob(f"{ds.SOPInstanceUID}-*.dcm")
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) - 700])  # frame 4 and part of frame 3 gone
    url = f"{shared_server.url}{path_of(ds)}/frames"
    response = http().get(f"{url}/4", headers={"Accept": OCTET})
    assert response.status_code == 500
    assert "shorter" in response.json()["message"]
    assert http().get(f"{url}/1", headers={"Accept": OCTET}).status_code == 200


def test_long_frame_lists_stream_in_pieces_of_about_a_mebibyte() -> None:
    """Each step of a streamed body is a worker-thread hop; part headers and frames are
    joined into pieces of about 1 MiB (a 200-frame request of 256 KB frames went from
    679 to 1,507 MB/s), with every byte kept, in order."""
    from dicomweb_server.web.responses import coalesced

    pieces = [bytes([i % 251]) * n for i, n in enumerate([100, 300_000, 60, 300_000] * 20)]
    out = list(coalesced(iter(pieces), size=1 << 20))
    assert b"".join(out) == b"".join(pieces)
    assert len(out) <= len(pieces) / 8  # 80 pieces of 12 MB in all: about 1 MiB each
    assert all(len(chunk) < (1 << 20) + 300_060 for chunk in out)
    assert list(coalesced(iter([]))) == []


def test_pieces_response_sends_every_piece_with_their_total_length() -> None:
    """A frame and its part headers go out as they are (no joined copy of the frame)."""
    import asyncio
    from collections.abc import MutableMapping

    from dicomweb_server.web.responses import PiecesResponse

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request"}

    pieces = [b"--b\r\n\r\n", b"x" * 1000, b"\r\n--b--"]
    response = PiecesResponse(pieces, media_type="multipart/related; boundary=b")
    asyncio.run(response({"type": "http"}, receive, send))
    headers = dict(sent[0]["headers"])
    assert headers[b"content-length"] == str(sum(map(len, pieces))).encode()
    assert [m["body"] for m in sent[1:]] == pieces
    assert [m["more_body"] for m in sent[1:]] == [True, True, False]
