"""image/jpeg frames and JPEG retrieve transcoding against a real server (PS3.18 8.7.3,
Table 8.7.3-5: image/jpeg defaults to JPEG Lossless SV1, 1.2.840.10008.1.2.4.70).

Frames are index-independent beyond the lookup, so one SQLite-backed server serves the
module. Every encoded frame is decoded by pylibjpeg (through pydicom) and compared with
the source pixels: bit for bit for lossless, within a stated error for baseline.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from tests.conftest import Server, http, start_server
from tests.dicomgen import make_dataset, uid
from tests.test_web_pixel import OCTET, parts, path_of, reference, store

LOSSLESS = "1.2.840.10008.1.2.4.70"
PROCESS_14 = "1.2.840.10008.1.2.4.57"
BASELINE = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"
J2K = "1.2.840.10008.1.2.4.90"
JPEG_FRAMES = 'multipart/related; type="image/jpeg"'
RNG = np.random.default_rng(3)
SIZE = 64
# Baseline (quality 90, 4:2:2) on smooth images with mild noise: mean and max error.
MEAN_ERROR, MAX_ERROR = 2.5, 24


def smooth(channels: int = 1) -> np.ndarray:
    """A gradient with mild noise: what photographs and most images look like."""
    ramp = np.add.outer(np.arange(SIZE) * 1.5, np.arange(SIZE) * 1.2)
    planes = [ramp + 30 * c + RNG.normal(0, 2, ramp.shape) for c in range(channels)]
    image: np.ndarray = np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)
    return image[..., 0] if channels == 1 else image


def with_pixels(frames: list[np.ndarray], bits_stored: int, signed: int = 0) -> Dataset:
    ds = make_dataset(frames=len(frames), rows=SIZE, columns=SIZE)
    sample = frames[0]
    ds.BitsAllocated = sample.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, signed
    if sample.ndim == 3:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = np.stack(frames).tobytes()
    return ds


def sources() -> dict[str, Dataset]:
    rle = make_dataset(frames=2, rows=SIZE, columns=SIZE, pixel_seed=5)
    rle.compress(UID(RLE), generate_instance_uid=False)
    j2k = make_dataset(frames=2, rows=SIZE, columns=SIZE, pixel_seed=6)
    j2k.compress(UID(J2K), generate_instance_uid=False)
    full = RNG.integers(0, 65536, (2, SIZE, SIZE), dtype=np.uint16)
    full[0, 0, :4] = (0, 32768, 0, 65535)  # differences of 32768: category 16
    negative = RNG.integers(-32768, 32768, (2, SIZE, SIZE)).astype(np.int16)
    negative[1] = np.clip(np.add.outer(np.arange(SIZE), np.arange(SIZE)) * 40 - 3000, -3000, 3000)
    return {
        "8-bit": with_pixels([smooth(), smooth()], 8),
        "12-bit": make_dataset(frames=2, rows=SIZE, columns=SIZE),
        "16-bit": with_pixels(list(full), 16),
        "16-bit signed": with_pixels(list(negative), 16, signed=1),
        "12-bit signed": with_pixels(list(negative.clip(-2048, 2047)), 12, signed=1),
        "RGB": with_pixels([smooth(3), smooth(3)], 8),
        "RLE": rle,
        "JPEG 2000": j2k,
    }


@pytest.fixture(scope="module")
def jpeg_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, dict[str, Dataset]]]:
    tmp: Path = tmp_path_factory.mktemp("jpeg")
    server = start_server(tmp / "data", f"sqlite:///{tmp / 'index.sqlite3'}", "--no-dimse")
    try:
        datasets = sources()
        store(server, *datasets.values())
        yield server, datasets
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def options(ds: Dataset) -> dict[str, Any]:
    return {
        "rows": ds.Rows, "columns": ds.Columns, "samples_per_pixel": ds.SamplesPerPixel,
        "bits_allocated": ds.BitsAllocated, "bits_stored": ds.BitsStored,
        "pixel_representation": ds.PixelRepresentation, "number_of_frames": 1,
        "photometric_interpretation": "RGB" if ds.SamplesPerPixel == 3 else "MONOCHROME2",
        "planar_configuration": 0,
    }  # fmt: skip


def decoded(ts: str, body: bytes, ds: Dataset) -> np.ndarray:
    array, _ = get_decoder(UID(ts)).as_array(encapsulate([body]), **options(ds))
    return array


def frames(server: Server, ds: Dataset, numbers: str, accept: str) -> list[tuple[str, bytes]]:
    url = f"{server.url}{path_of(ds)}/frames/{numbers}"
    response = http().get(url, headers={"Accept": accept})
    assert response.status_code == 200, response.text
    return parts(response)


@pytest.mark.parametrize(
    "name",
    ["8-bit", "12-bit", "16-bit", "16-bit signed", "12-bit signed", "RGB", "RLE", "JPEG 2000"],
)
def test_lossless_jpeg_frames_equal_the_source(
    jpeg_server: tuple[Server, dict[str, Dataset]], name: str
) -> None:
    server, datasets = jpeg_server
    ds = datasets[name]
    got = frames(server, ds, "2,1", JPEG_FRAMES)
    assert [content_type for content_type, _ in got] == [
        f"image/jpeg; transfer-syntax={LOSSLESS}"
    ] * 2
    expected = reference(ds)
    for (_, body), source in zip(got, (expected[1], expected[0]), strict=True):
        assert body[:4] == b"\xff\xd8\xff\xc3"  # SOI, SOF3: lossless Process 14
        assert np.array_equal(decoded(LOSSLESS, body, ds), source)
    if name == "16-bit signed":
        assert expected.min() < 0


def test_process_14_request_is_served_and_labelled_57(
    jpeg_server: tuple[Server, dict[str, Dataset]],
) -> None:
    server, datasets = jpeg_server
    ds = datasets["12-bit"]
    ((content_type, body),) = frames(
        server, ds, "1", f"{JPEG_FRAMES}; transfer-syntax={PROCESS_14}"
    )
    assert content_type == f"image/jpeg; transfer-syntax={PROCESS_14}"
    assert np.array_equal(decoded(PROCESS_14, body, ds), reference(ds)[0])


@pytest.mark.parametrize("name", ["8-bit", "RGB"])
def test_baseline_jpeg_frames_are_close_to_the_source(
    jpeg_server: tuple[Server, dict[str, Dataset]], name: str
) -> None:
    server, datasets = jpeg_server
    ds = datasets[name]
    got = frames(server, ds, "1,2", f"{JPEG_FRAMES}; transfer-syntax={BASELINE}")
    for (content_type, body), source in zip(got, reference(ds), strict=True):
        assert content_type == f"image/jpeg; transfer-syntax={BASELINE}"
        assert body[:4] == b"\xff\xd8\xff\xe0"  # SOI, JFIF APP0 (baseline, Pillow)
        image = np.asarray(_pillow(body)).astype(int)
        error = np.abs(image - source.astype(int))
        assert error.mean() < MEAN_ERROR and error.max() <= MAX_ERROR, (
            error.mean(),
            error.max(),
        )


def _pillow(body: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(body))


def test_baseline_of_16_bit_frames_is_406_or_the_next_choice(
    jpeg_server: tuple[Server, dict[str, Dataset]],
) -> None:
    server, datasets = jpeg_server
    ds = datasets["16-bit"]
    url = f"{server.url}{path_of(ds)}/frames/1"
    only = http().get(url, headers={"Accept": f"{JPEG_FRAMES}; transfer-syntax={BASELINE}"})
    assert only.status_code == 406
    assert "8-bit" in only.json()["message"] and LOSSLESS in only.json()["message"]
    accept = (
        f"{JPEG_FRAMES}; transfer-syntax={BASELINE}, "
        'multipart/related; type="application/octet-stream"; q=0.5'
    )
    ((content_type, body),) = parts(http().get(url, headers={"Accept": accept}))
    assert content_type.startswith("application/octet-stream")
    assert np.array_equal(np.frombuffer(body, np.uint16).reshape(SIZE, SIZE), reference(ds)[0])


def retrieve(server: Server, ds: Dataset, ts: str) -> tuple[str, Dataset]:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={ts}'
    response = http().get(f"{server.url}{path_of(ds)}", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    ((content_type, body),) = parts(response)
    return content_type, pydicom.dcmread(io.BytesIO(body))


@pytest.mark.parametrize(
    ("name", "ts"),
    [
        ("16-bit signed", LOSSLESS),
        ("RGB", LOSSLESS),
        ("JPEG 2000", LOSSLESS),
        ("12-bit", PROCESS_14),
    ],
)
def test_instance_retrieve_in_jpeg_lossless(
    jpeg_server: tuple[Server, dict[str, Dataset]], name: str, ts: str
) -> None:
    server, datasets = jpeg_server
    ds = datasets[name]
    content_type, got = retrieve(server, ds, ts)
    assert content_type == f"application/dicom; transfer-syntax={ts}"
    assert got.file_meta.TransferSyntaxUID == ts
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert "LossyImageCompression" not in got
    offsets = got.PixelData[8 : 8 + int.from_bytes(got.PixelData[4:8], "little")]
    assert len(offsets) == 4 * int(ds.NumberOfFrames)  # a Basic Offset Table, per frame
    assert np.array_equal(got.pixel_array, ds.pixel_array)


def test_instance_retrieve_in_jpeg_baseline_is_marked_lossy(
    jpeg_server: tuple[Server, dict[str, Dataset]],
) -> None:
    server, datasets = jpeg_server
    ds = datasets["RGB"]
    content_type, got = retrieve(server, ds, BASELINE)
    assert content_type == f"application/dicom; transfer-syntax={BASELINE}"
    assert got.PhotometricInterpretation == "YBR_FULL_422"
    assert got.LossyImageCompression == "01"
    assert got.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(got.LossyImageCompressionRatio) > 1
    error = np.abs(got.pixel_array.astype(int) - ds.pixel_array.astype(int))  # as RGB
    assert error.mean() < MEAN_ERROR and error.max() <= MAX_ERROR


def test_instance_retrieve_in_baseline_of_16_bit_is_406(
    jpeg_server: tuple[Server, dict[str, Dataset]],
) -> None:
    server, datasets = jpeg_server
    ds = datasets["12-bit"]
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={BASELINE}'
    response = http().get(f"{server.url}{path_of(ds)}", headers={"Accept": accept})
    assert response.status_code == 406
    assert "8-bit" in response.json()["message"]
    # With a fallback, the part comes in the next acceptable syntax.
    accept += ', multipart/related; type="application/dicom"; q=0.5'
    response = http().get(f"{server.url}{path_of(ds)}", headers={"Accept": accept})
    assert response.status_code == 200
    assert parts(response)[0][0] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"


def test_our_jpeg_lossless_instances_are_stored_and_served_as_they_are(
    jpeg_server: tuple[Server, dict[str, Dataset]],
) -> None:
    """An instance we transcoded to .70 is stored again (STOW parses our encapsulation
    and Basic Offset Table); its frames then go out as stored, and a .57 request gets
    the same bytes relabelled, since an SV1 stream is a Process 14 stream."""
    server, datasets = jpeg_server
    _, encoded = retrieve(server, datasets["16-bit signed"], LOSSLESS)
    encoded.SOPInstanceUID = uid()
    encoded.file_meta.MediaStorageSOPInstanceUID = UID(encoded.SOPInstanceUID)
    store(server, encoded)
    stored = list(generate_frames(encoded.PixelData, number_of_frames=2))
    for accept, ts in (
        (JPEG_FRAMES, LOSSLESS),
        (f"{JPEG_FRAMES}; transfer-syntax={PROCESS_14}", PROCESS_14),
    ):
        got = frames(server, encoded, "2,1", accept)
        assert got == [
            (f"image/jpeg; transfer-syntax={ts}", stored[1]),
            (f"image/jpeg; transfer-syntax={ts}", stored[0]),
        ]
    ((_, body),) = frames(server, encoded, "2", OCTET)
    expected = datasets["16-bit signed"].pixel_array[1]
    assert np.array_equal(np.frombuffer(body, np.int16).reshape(SIZE, SIZE), expected)


def test_one_frame_as_single_part_image_jpeg(
    jpeg_server: tuple[Server, dict[str, Dataset]],
) -> None:
    server, datasets = jpeg_server
    ds = datasets["RGB"]
    response = http().get(f"{server.url}{path_of(ds)}/frames/2", headers={"Accept": "image/jpeg"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"image/jpeg; transfer-syntax={LOSSLESS}"
    assert np.array_equal(decoded(LOSSLESS, response.content, ds), reference(ds)[1])


def test_series_retrieve_gives_each_instance_the_first_syntax_it_fits(
    jpeg_server: tuple[Server, dict[str, Dataset]],
) -> None:
    """PS3.18 8.7.8.2: the syntax is chosen per part. A series of an 8-bit and a 12-bit
    instance asked as Baseline, else Explicit VR Little Endian: one part each."""
    server, _ = jpeg_server
    grey = with_pixels([smooth()], 8)
    deep = make_dataset(study=grey.StudyInstanceUID, series=grey.SeriesInstanceUID)
    store(server, grey, deep)
    accept = (
        f'multipart/related; type="application/dicom"; transfer-syntax={BASELINE}, '
        'multipart/related; type="application/dicom"; q=0.5'
    )
    url = f"{server.url}/studies/{grey.StudyInstanceUID}/series/{grey.SeriesInstanceUID}"
    response = http().get(url, headers={"Accept": accept})
    assert response.status_code == 200, response.text
    got = {
        pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID: content_type
        for content_type, body in parts(response)
    }
    assert got == {
        grey.SOPInstanceUID: f"application/dicom; transfer-syntax={BASELINE}",
        deep.SOPInstanceUID: "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
    }


def test_dicomweb_client_gets_jpeg_lossless_frames(
    jpeg_server: tuple[Server, dict[str, Dataset]],
) -> None:
    from dicomweb_client.api import DICOMwebClient

    server, datasets = jpeg_server
    ds = datasets["12-bit"]
    client = DICOMwebClient(server.url)
    got = client.retrieve_instance_frames(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        frame_numbers=[2, 1],
        media_types=(("image/jpeg", LOSSLESS),),
    )
    expected = reference(ds)
    assert [decoded(LOSSLESS, frame, ds).tolist() for frame in got] == [
        expected[1].tolist(),
        expected[0].tolist(),
    ]
