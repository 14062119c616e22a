"""Frame tables (dicom/frames.py), pixel media negotiation and the rendering math: pure."""

from __future__ import annotations

import io
import struct

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from dicomweb_server.dicom.frames import NO_PIXELS, FrameTable, compute
from dicomweb_server.dicom.ingest import analyse
from dicomweb_server.dicom.pixel_media import OCTET_STREAM, Wanted, choose_pixel
from dicomweb_server.dicom.render import (
    Viewport,
    Window,
    apply_viewport,
    apply_window,
    parse_viewport,
    parse_window,
)
from dicomweb_server.errors import InvalidRequest, NotAcceptable
from tests.dicomgen import make_dataset

J2K = "1.2.840.10008.1.2.4.90"


def table_of(ds: Dataset) -> tuple[FrameTable, bytes]:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    encoded = analyse(io.BytesIO(data)).instance["frames"]
    table = FrameTable.decode(encoded)
    assert table is not None
    assert FrameTable.decode(table.encode()) == table
    return table, data


def frame_bytes(table: FrameTable, data: bytes, number: int) -> bytes:
    return b"".join(data[o : o + n] for o, n in table.fragments[number - 1])


def test_native_frames_by_arithmetic() -> None:
    ds = make_dataset(frames=3, rows=4, columns=5)
    table, data = table_of(ds)
    assert table.count == 3 and not table.encapsulated
    start, length, shift = table.native_span(2)
    assert (length, shift) == (40, 0)
    assert data[start : start + length] == ds.PixelData[40:80]


def test_single_bit_frames_need_not_start_on_a_byte() -> None:
    """BitsAllocated 1, 3x3 pixels: frame 2 starts at bit 9 (PS3.5 8.1.1)."""
    from dicomweb_server.dicom.frames import unshift

    bits = np.array([[1, 0, 1, 0, 1, 1, 0, 0, 1], [0, 1, 1, 1, 0, 0, 1, 0, 1]], np.uint8)
    ds = make_dataset(frames=2, rows=3, columns=3)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = np.packbits(bits.ravel(), bitorder="little").tobytes()
    table, data = table_of(ds)
    start, length, shift = table.native_span(2)
    assert shift == 1 and length == 2
    frame = unshift(data[start : start + length], shift, 9)
    assert np.array_equal(
        np.unpackbits(np.frombuffer(frame, np.uint8), bitorder="little")[:9], bits[1]
    )


def _encapsulated(fragments_per_frame: list[list[bytes]], *, with_bot: bool) -> Dataset:
    ds = make_dataset(frames=len(fragments_per_frame), rows=8, columns=8)
    ds.file_meta.TransferSyntaxUID = UID(J2K)
    items, offsets, position = [], [], 0
    for frame in fragments_per_frame:
        offsets.append(position)
        for fragment in frame:
            items.append(b"\xfe\xff\x00\xe0" + struct.pack("<I", len(fragment)) + fragment)
            position += 8 + len(fragment)
    bot = struct.pack(f"<{len(offsets)}I", *offsets) if with_bot else b""
    value = (
        b"\xfe\xff\x00\xe0" + struct.pack("<I", len(bot)) + bot + b"".join(items)
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )  # fmt: skip
    ds.PixelData = value
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    return ds


def test_basic_offset_table_groups_several_fragments_per_frame() -> None:
    frames = [
        [b"\xff\x4f\xff\x51AA", b"BBBB"],
        [b"\xff\x4f\xff\x51CC"],
        [b"\xff\x4f\xff\x51DD", b"EE"],
    ]
    table, data = table_of(_encapsulated(frames, with_bot=True))
    assert table.count == 3
    for number, frame in enumerate(frames, 1):
        assert frame_bytes(table, data, number) == b"".join(frame)


def test_without_a_table_frames_start_at_their_codestream_marker() -> None:
    frames = [[b"\xff\x4f\xff\x51AA", b"BBBB"], [b"\xff\x4f\xff\x51CC", b"DD", b"EE"]]
    table, data = table_of(_encapsulated(frames, with_bot=False))
    assert [frame_bytes(table, data, n) for n in (1, 2)] == [b"".join(f) for f in frames]


def test_unlocatable_fragments_give_no_table() -> None:
    frames = [[b"AAAA", b"BBBB", b"CCCC"], [b"DDDD"]]  # 4 fragments, 2 frames, no markers
    ds = _encapsulated(frames, with_bot=False)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert FrameTable.decode(analyse(io.BytesIO(out.getvalue())).instance["frames"]) is None


def test_one_fragment_per_frame() -> None:
    ds = make_dataset(frames=2, rows=8, columns=8)
    ds.PixelData = encapsulate([b"frame-one!", b"frame-two!"])
    ds.file_meta.TransferSyntaxUID = UID(J2K)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    table, data = table_of(ds)
    assert [frame_bytes(table, data, n) for n in (1, 2)] == [b"frame-one!", b"frame-two!"]


def test_compute_rejects_short_native_pixel_data() -> None:
    ds = make_dataset(frames=2, rows=4, columns=4)
    assert compute(io.BytesIO(b""), ds, "1.2.840.10008.1.2.1", 0, 10) is None


def test_stored_object_without_pixels_has_no_frames() -> None:
    ds = make_dataset()
    del ds.PixelData
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    assert analyse(io.BytesIO(out.getvalue())).instance["frames"] == NO_PIXELS


# -- negotiation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "first"),
    [
        (None, Wanted(OCTET_STREAM, "1.2.840.10008.1.2.1", True)),
        ("*/*", Wanted(OCTET_STREAM, "1.2.840.10008.1.2.1", True)),
        (
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            Wanted(OCTET_STREAM, "*", True),
        ),
        (
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
            Wanted(OCTET_STREAM, "*", True),
        ),
        ('multipart/related; type="image/jls"', Wanted("image/jls", None, True)),
        (
            'multipart/related; type="image/jp2"; q=0.4, multipart/related; type=image/jls; q=0.9',
            Wanted("image/jls", None, True),
        ),
        (
            "multipart/related; type=image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50",
            Wanted("image/jpeg", "1.2.840.10008.1.2.4.50", True),
        ),
        ("application/octet-stream", Wanted(OCTET_STREAM, "1.2.840.10008.1.2.1", False)),
    ],
)
def test_choose_pixel(accept: str | None, first: Wanted) -> None:
    assert choose_pixel(accept, single_allowed=True)[0] == first


@pytest.mark.parametrize(
    "accept",
    [
        "text/html",
        'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.50',
        "multipart/related; type=image/jxl",
        "multipart/related; type=image/jpeg; transfer-syntax=not-a-uid",
    ],
)
def test_choose_pixel_rejects(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        choose_pixel(accept, single_allowed=False)


# -- rendering math -----------------------------------------------------------------------


def test_linear_window_follows_ps3_3() -> None:
    values = np.array([-1000.0, 0.0, 39.5, 40.0, 1000.0])
    out = apply_window(values, Window(40, 400))
    assert out[0] == 0 and out[-1] == 255
    assert out[3] == round(((40 - 39.5) / 399 + 0.5) * 255)
    exact = apply_window(np.array([40.0]), Window(40, 400, "linear_exact"))
    assert exact[0] == round(0.5 * 255)
    sigmoid = apply_window(np.array([40.0]), Window(40, 400, "sigmoid"))
    assert sigmoid[0] == round(255 / 2)


@pytest.mark.parametrize("text", ["", "1", "1,2,3,4", "a,b", "1,0", "1,2,cubic", "nan,3", "1,inf"])
def test_bad_windows(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_window(text)


@pytest.mark.parametrize(
    "text", ["", "1", "0,10", "10,-1", "a,b", "1,2,3", "10,10,-1,0,5,5", "99999,1"]
)
def test_bad_viewports(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_viewport(text)


def test_viewport_keeps_aspect_and_flips() -> None:
    from PIL import Image

    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, :20] = 255
    image = Image.fromarray(pixels, mode="L")
    assert apply_viewport(image, Viewport(10, 10)).size == (10, 5)
    flipped = np.asarray(apply_viewport(image, Viewport(40, 20, (0, 0, -40, 20))))
    assert flipped[0, 0] == 0 and flipped[0, 39] == 255


def test_native_decode_masks_and_sign_extends_bits_stored() -> None:
    """Bits Stored 12 of 16, signed: the 4 high bits are not part of the value (PS3.5 8.1.1)."""
    from dicomweb_server.dicom.codec import decode
    from dicomweb_server.dicom.frames import PixelInfo

    values = np.array([[-2048, -1], [0, 2047]], np.int16)
    stored = (values.astype(np.uint16) & 0x0FFF) | 0xA000  # garbage above bit 11
    pixel = PixelInfo(2, 2, 1, 16, 12, 1, "MONOCHROME2", 0, 1)
    table = FrameTable("1.2.840.10008.1.2.1", pixel, (0, 64))
    assert np.array_equal(decode(table, stored.astype("<u2").tobytes()), values)
    unsigned = PixelInfo(2, 2, 1, 16, 12, 0, "MONOCHROME2", 0, 1)
    table = FrameTable("1.2.840.10008.1.2.1", unsigned, (0, 64))
    assert np.array_equal(decode(table, stored.astype("<u2").tobytes()), stored & 0x0FFF)
