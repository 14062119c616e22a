"""Rendered resources, thumbnails and WADO-URI against a real server, on both indexes."""

from __future__ import annotations

import io
from dataclasses import dataclass

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from tests.conftest import Server, http
from tests.dicomgen import make_dataset, uid
from tests.test_web_pixel import compressed, path_of, sample, store

PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"
# A 64x64 CT frame: a left half of 0, a right half of 2000, one pixel of 1000 at (10, 10).
_PIXELS = np.zeros((64, 64), np.uint16)
_PIXELS[:, 32:] = 2000
_PIXELS[10, 10] = 1000


def ct(photometric: str = "MONOCHROME2", **extra: object) -> Dataset:
    ds = make_dataset(rows=64, columns=64, **extra)  # type: ignore[arg-type]
    ds.PhotometricInterpretation = photometric
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = [0, 40], [2000, 400]
    ds.PixelData = _PIXELS.tobytes()
    return ds


def linear(x: float, center: float, width: float) -> int:
    """PS3.3 C.11.2.1.2.1, written out independently of the server's code."""
    if x <= center - 0.5 - (width - 1) / 2:
        return 0
    if x > center - 0.5 + (width - 1) / 2:
        return 255
    return int(np.clip(round(((x - (center - 0.5)) / (width - 1) + 0.5) * 255), 0, 255))


def pdf_instance(study: str) -> tuple[Dataset, bytes]:
    document = b"%PDF-1.4\n" + b"0123456789abcdef" * 256 + b"\n%%EOF\n"
    ds = make_dataset(study=study, sop_class=PDF_CLASS, modality="DOC")
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
                    "PixelData"):  # fmt: skip
        delattr(ds, keyword)
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = document
    return ds, document


def video_instance(study: str) -> tuple[Dataset, bytes]:
    """An MPEG-4 AVC/H.264 object (PS3.5 A.4.6): the stream in two fragments."""
    stream = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8
    ds = make_dataset(study=study, sop_class="1.2.840.10008.5.1.4.1.1.77.1.4.1", frames=25)
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "YBR_PARTIAL_420", 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([stream[:1000], stream[1000:]], has_bot=False)
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.102")
    return ds, stream


@dataclass
class Archive:
    server: Server
    mono2: Dataset
    mono1: Dataset
    rgb: Dataset
    multi: Dataset
    pdf: Dataset
    document: bytes
    video: Dataset
    stream: bytes


@pytest.fixture(scope="module")
def archive(shared_server: Server) -> Archive:
    study, series = uid(), uid()
    mono2 = ct(study=study, series=series, instance_number=1)
    mono1 = ct("MONOCHROME1", study=study, series=series, instance_number=2)
    multi = compressed("1.2.840.10008.1.2.5", frames=5, study=study, series=series)
    rgb = sample("SC_rgb_jpeg_dcmtk.dcm")
    pdf, document = pdf_instance(study)
    video, stream = video_instance(study)
    store(shared_server, mono2, mono1, multi, rgb, pdf, video)
    return Archive(shared_server, mono2, mono1, rgb, multi, pdf, document, video, stream)


def image(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def get(archive: Archive, path: str, accept: str | None = None, **params: str) -> httpx.Response:
    headers = {"Accept": accept} if accept else {}
    return http().get(f"{archive.server.url}{path}", headers=headers, params=params)


def test_rendered_jpeg_by_default_with_the_dataset_window(archive: Archive) -> None:
    response = get(archive, path_of(archive.mono2) + "/rendered")
    assert response.headers["content-type"] == "image/jpeg"
    assert image(response).size == (64, 64)
    png = np.asarray(image(get(archive, path_of(archive.mono2) + "/rendered", "image/png")))
    # First Window Center/Width (0, 2000) on Rescale -1024: -1024 -> 0, 976 -> 255.
    assert png[0, 0] == linear(-1024, 0, 2000) and png[0, 40] == linear(976, 0, 2000)
    assert png[10, 10] == linear(-24, 0, 2000)


def test_window_parameter_maps_a_known_value(archive: Archive) -> None:
    response = get(
        archive, path_of(archive.mono2) + "/rendered", "image/png", window="-24,101,linear"
    )
    png = np.asarray(image(response))
    assert png[10, 10] == linear(-24, -24, 101) == 129
    assert png[0, 0] == 0 and png[0, 63] == 255


def test_monochrome1_is_inverted(archive: Archive) -> None:
    two = np.asarray(image(get(archive, path_of(archive.mono2) + "/rendered", "image/png")))
    one = np.asarray(image(get(archive, path_of(archive.mono1) + "/rendered", "image/png")))
    assert np.array_equal(one, 255 - two)


def test_png_is_lossless_and_gif_is_served(archive: Archive) -> None:
    png = np.asarray(
        image(
            get(archive, path_of(archive.mono2) + "/rendered", "image/png", window="976,1,linear")
        )
    )
    assert set(np.unique(png)) == {0, 255}
    gif = image(get(archive, path_of(archive.mono2) + "/rendered", "image/gif"))
    assert gif.format == "GIF" and gif.size == (64, 64)


def test_viewport_scales_and_crops(archive: Archive) -> None:
    path = path_of(archive.mono2) + "/rendered"
    assert image(get(archive, path, viewport="32,16")).size == (16, 16)
    cropped = np.asarray(image(get(archive, path, "image/png", viewport="32,32,32,0,32,64")))
    assert cropped.shape == (32, 16)  # the 32x64 source region, fit into 32x32
    assert cropped.min() > 200  # only the bright right half


def test_frame_and_colour_rendering(archive: Archive) -> None:
    frame = image(get(archive, path_of(archive.multi) + "/frames/5/rendered", "image/png"))
    assert frame.size == (64, 64)
    rgb = image(get(archive, path_of(archive.rgb) + "/rendered", "image/png"))
    assert rgb.mode == "RGB"
    source = archive.rgb.pixel_array
    assert np.abs(np.asarray(rgb).astype(int) - source.astype(int)).max() <= 2


def test_multiframe_instance_as_gif_is_an_animation_of_every_frame(archive: Archive) -> None:
    """PS3.18 Table 8.7.4-1: image/gif is the multi-frame rendered type."""
    response = get(archive, path_of(archive.multi) + "/rendered", "image/gif")
    assert response.headers["content-type"] == "image/gif"
    animation = image(response)
    assert getattr(animation, "n_frames", 1) == 5
    singles = [
        np.asarray(
            image(
                get(archive, f"{path_of(archive.multi)}/frames/{n}/rendered", "image/gif")
            ).convert("L")
        )
        for n in range(1, 6)
    ]
    assert any(not np.array_equal(singles[0], other) for other in singles[1:])
    for number, single in enumerate(singles):
        animation.seek(number)
        assert np.array_equal(np.asarray(animation.convert("L")), single), number
    # Single-frame types still show the first frame; WADO-URI animates the same way.
    jpeg = image(get(archive, path_of(archive.multi) + "/rendered", "image/jpeg"))
    assert getattr(jpeg, "n_frames", 1) == 1
    uri = wado(archive, archive.multi, contentType="image/gif")
    assert getattr(image(uri), "n_frames", 1) == 5


def test_study_and_series_rendered_are_multipart(archive: Archive) -> None:
    path = f"/studies/{archive.mono2.StudyInstanceUID}/series/{archive.mono2.SeriesInstanceUID}"
    response = get(archive, path + "/rendered")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith('multipart/related; type="image/jpeg"')
    assert response.content.count(b"Content-Type: image/jpeg") == 3


def test_pdf_rendered_is_the_document_embeddable_cross_origin(archive: Archive) -> None:
    response = get(archive, path_of(archive.pdf) + "/rendered")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"
    assert response.content.rstrip(b"\0") == archive.document


def test_video_rendered_is_the_stored_stream(archive: Archive) -> None:
    response = get(archive, path_of(archive.video) + "/rendered")
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"
    assert response.content == archive.stream
    assert response.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize("which", ["video", "pdf"])
def test_documents_and_video_answer_byte_ranges(archive: Archive, which: str) -> None:
    """Browsers seek in video and pdf.js reads PDFs with Range requests."""
    ds, whole = (archive.video, archive.stream) if which == "video" else (archive.pdf, None)
    path = path_of(ds) + "/rendered"
    full = get(archive, path).content
    if whole is not None:
        assert full == whole
    for header, start, end in (("bytes=990-1009", 990, 1010), ("bytes=-7", len(full) - 7, None)):
        response = http().get(f"{archive.server.url}{path}", headers={"Range": header})
        assert response.status_code == 206
        assert response.content == full[start:end]
        assert response.headers["content-range"].endswith(f"/{len(full)}")
    outside = http().get(f"{archive.server.url}{path}", headers={"Range": "bytes=999999-"})
    assert outside.status_code == 416


@pytest.mark.parametrize(
    ("params", "accept", "status"),
    [
        ({"window": "abc"}, None, 400),
        ({"window": "1,0"}, None, 400),
        ({"window": "1,2,cubic"}, None, 400),
        ({"viewport": "0,10"}, None, 400),
        ({"viewport": "a,b"}, None, 400),
        ({"quality": "0"}, None, 400),
        ({"quality": "x"}, None, 400),
        ({"annotation": "burn"}, None, 400),
        ({"annotation": "patient,technique"}, None, 200),
        ({}, "image/webp", 406),
    ],
)
def test_bad_rendered_parameters(
    archive: Archive, params: dict[str, str], accept: str | None, status: int
) -> None:
    response = get(archive, path_of(archive.mono2) + "/rendered", accept, **params)
    assert response.status_code == status, response.text
    assert http().get(f"{archive.server.root}/health").status_code == 200


def test_thumbnails_are_cached_until_the_series_changes(archive: Archive) -> None:
    series = f"/studies/{archive.mono2.StudyInstanceUID}/series/{archive.mono2.SeriesInstanceUID}"
    cache = archive.server.data_dir / "cache" / "thumbs"
    before = set(cache.rglob("*.img")) if cache.exists() else set()
    first = get(archive, series + "/thumbnail")
    thumb = image(first)
    assert max(thumb.size) <= 128
    made = set(cache.rglob("*.img")) - before
    assert len(made) == 1
    (cached,) = made
    assert cached.read_bytes() == first.content
    again = get(archive, series + "/thumbnail")
    assert again.content == first.content
    assert set(cache.rglob("*.img")) - before == made
    store(
        archive.server,
        ct(study=archive.mono2.StudyInstanceUID, series=archive.mono2.SeriesInstanceUID),
    )
    second = get(archive, series + "/thumbnail")
    assert image(second).format == "JPEG"
    now = set(cache.rglob("*.img")) - before
    assert len(now) == 1 and now != made  # the old version's thumbnail is gone
    for path in (f"/studies/{archive.mono2.StudyInstanceUID}", path_of(archive.multi)):
        assert image(get(archive, path + "/thumbnail")).format == "JPEG"


def test_deleting_a_study_removes_its_cached_thumbnails(archive: Archive) -> None:
    """Thumbnails are pictures of the patient: they go with the study, and only with it."""
    cache = archive.server.data_dir / "cache" / "thumbs"
    doomed, kept = ct(), ct()
    for ds in (doomed, kept):
        store(archive.server, ds)
    before = set(cache.rglob("*.img")) if cache.exists() else set()
    for ds in (doomed, kept):
        study = f"/studies/{ds.StudyInstanceUID}"
        for path in (study, f"{study}/series/{ds.SeriesInstanceUID}", path_of(ds)):
            assert image(get(archive, path + "/thumbnail")).format == "JPEG"
    made = set(cache.rglob("*.img")) - before
    assert len(made) == 6
    response = http().delete(f"{archive.server.url}/studies/{doomed.StudyInstanceUID}")
    assert response.status_code == 204, response.text
    left = set(cache.rglob("*.img")) - before
    assert len(left) == 3
    assert all(p.read_bytes()[:2] == b"\xff\xd8" for p in left)
    again = get(archive, f"/studies/{kept.StudyInstanceUID}/thumbnail")
    assert set(cache.rglob("*.img")) - before == left  # the kept study's were reused
    assert image(again).format == "JPEG"
    gone = get(archive, f"/studies/{doomed.StudyInstanceUID}/thumbnail")
    assert gone.status_code == 404


# -- WADO-URI ---------------------------------------------------------------------------


def wado(archive: Archive, ds: Dataset, **params: str) -> httpx.Response:
    query = {
        "requestType": "WADO",
        "studyUID": ds.StudyInstanceUID,
        "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID,
        **params,
    }
    return http().get(f"{archive.server.root}/wado", params={k: v for k, v in query.items() if v})


@pytest.mark.parametrize(
    ("content_type", "fmt"),
    [(None, "JPEG"), ("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/gif", "GIF")],
)
def test_wado_uri_images(archive: Archive, content_type: str | None, fmt: str) -> None:
    params = {"contentType": content_type} if content_type else {}
    assert image(wado(archive, archive.mono2, **params)).format == fmt


def test_wado_uri_image_parameters(archive: Archive) -> None:
    response = wado(
        archive, archive.multi, contentType="image/png", frameNumber="3", rows="32", columns="32"
    )
    assert image(response).size == (32, 32)
    png = np.asarray(
        image(
            wado(
                archive,
                archive.mono2,
                contentType="image/png",
                windowCenter="-24",
                windowWidth="101",
            )
        )
    )
    assert png[10, 10] == 129


def test_wado_uri_dicom_with_transfer_syntax(archive: Archive) -> None:
    plain = wado(archive, archive.mono2, contentType="application/dicom")
    assert plain.status_code == 200
    assert pydicom.dcmread(io.BytesIO(plain.content)).SOPInstanceUID == archive.mono2.SOPInstanceUID
    jls = wado(
        archive,
        archive.mono2,
        contentType="application/dicom",
        transferSyntax="1.2.840.10008.1.2.4.80",
    )
    got = pydicom.dcmread(io.BytesIO(jls.content))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert np.array_equal(got.pixel_array, _PIXELS)
    fallback = wado(
        archive,
        archive.mono2,
        contentType="application/dicom",
        transferSyntax="1.2.840.10008.1.2.4.100",
    )
    assert fallback.headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2.1")


def test_wado_uri_pdf_natural_type(archive: Archive) -> None:
    response = wado(archive, archive.pdf)
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.rstrip(b"\0") == archive.document


@pytest.mark.parametrize("missing", ["requestType", "studyUID", "seriesUID", "objectUID"])
def test_wado_uri_missing_parameters_are_400(archive: Archive, missing: str) -> None:
    response = wado(archive, archive.mono2, **{missing: ""})
    assert response.status_code == 400, response.text
    assert missing in response.json()["message"]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"requestType": "WADX"}, 400),
        ({"objectUID": "1.2.x"}, 400),
        ({"objectUID": "1.2.3.4.5.6"}, 404),
        ({"contentType": "image/webp"}, 406),
        ({"contentType": "application/dicom", "anonymize": "true"}, 400),
        ({"anonymize": "yes"}, 400),
        ({"windowCenter": "40"}, 400),
        ({"frameNumber": "0"}, 400),
        ({"rows": "-3"}, 400),
        ({"transferSyntax": "1.2.840.10008.1.2.1"}, 400),
    ],
)
def test_wado_uri_bad_requests(archive: Archive, params: dict[str, str], status: int) -> None:
    response = wado(archive, archive.mono2, **params)
    assert response.status_code == status, response.text
    assert http().get(f"{archive.server.root}/health").status_code == 200


def test_palette_colour_goes_through_its_lookup_tables(shared_server: Server) -> None:
    from pydicom.pixels import apply_color_lut  # type: ignore[attr-defined]

    ds = sample("examples_palette.dcm")
    store(shared_server, ds)
    response = http().get(
        f"{shared_server.url}{path_of(ds)}/rendered", headers={"Accept": "image/png"}
    )
    rendered = np.asarray(image(response))
    expected = apply_color_lut(ds.pixel_array, ds)
    if expected.max() > 255:
        expected = expected / 257.0
    assert rendered.shape == expected.shape
    assert np.abs(rendered.astype(int) - np.round(expected).astype(int)).max() <= 1
