"""The JPEG Lossless SV1 encoder on edge cases, each stream decoded by pylibjpeg-libjpeg
(an independent T.81 decoder) and compared bit for bit; and the baseline encoder."""

from __future__ import annotations

import io

import numpy as np
import pytest
from libjpeg.utils import decode
from PIL import Image

from dicomweb_server.dicom import codec, jpeg_encode, jpeg_lossless
from dicomweb_server.dicom.frames import FrameTable, PixelInfo
from dicomweb_server.dicom.pixel_media import JPEG_BASELINE, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1
from dicomweb_server.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN

RNG = np.random.default_rng(20261125)


def roundtrip(pixels: np.ndarray, precision: int) -> bytes:
    stream = jpeg_lossless.encode(pixels, precision)
    decoded = decode(stream)
    assert decoded.shape == pixels.shape or decoded.reshape(pixels.shape).shape == pixels.shape
    assert np.array_equal(decoded.reshape(pixels.shape), pixels)
    return stream


def markers(stream: bytes) -> list[int]:
    """Marker codes of the segments before the entropy-coded data."""
    found, at = [], 2
    while True:
        code = stream[at + 1]
        found.append(code)
        length = int.from_bytes(stream[at + 2 : at + 4], "big")
        at += 2 + length
        if code == 0xDA:
            return found


@pytest.mark.parametrize(
    ("name", "pixels", "precision"),
    [
        ("constant", np.full((10, 13), 77, np.uint8), 8),
        ("constant 16-bit zero", np.zeros((7, 5), np.uint16), 16),
        ("one category only", np.full((5, 6), 128, np.uint8), 8),  # all differences 0
        ("full-range noise", RNG.integers(0, 65536, (37, 41)).astype(np.uint16), 16),
        ("12-bit noise", RNG.integers(0, 4096, (33, 31)).astype(np.uint16), 12),
        ("1 x N", RNG.integers(0, 4096, (1, 50)).astype(np.uint16), 12),
        ("N x 1", RNG.integers(0, 4096, (50, 1)).astype(np.uint16), 12),
        ("1 x 1", np.array([[200]], np.uint8), 8),
        ("odd width", RNG.integers(0, 256, (6, 17)).astype(np.uint8), 8),
        ("2-bit", RNG.integers(0, 4, (9, 9)).astype(np.uint8), 2),
        ("RGB", RNG.integers(0, 256, (17, 23, 3)).astype(np.uint8), 8),
        ("RGB 16-bit", RNG.integers(0, 65536, (5, 7, 3)).astype(np.uint16), 16),
    ],
)
def test_lossless_round_trip(name: str, pixels: np.ndarray, precision: int) -> None:
    stream = roundtrip(pixels, precision)
    assert stream[:2] == b"\xff\xd8" and stream[-2:] == b"\xff\xd9"
    assert markers(stream) == [0xC3, 0xC4, 0xDA]  # SOF3, DHT, SOS
    sof = stream.index(b"\xff\xc3")
    assert stream[sof + 4] == precision
    sos = stream.index(b"\xff\xda")
    components = stream[sos + 4]
    assert components == (pixels.shape[2] if pixels.ndim == 3 else 1)
    ss, se, ahal = stream[sos + 5 + 2 * components : sos + 8 + 2 * components]
    assert (ss, se, ahal) == (1, 0, 0)  # predictor 1, no point transform


def test_difference_of_32768_is_category_16_without_extra_bits() -> None:
    pixels = np.tile(np.array([0, 32768, 65535, 1, 32768, 0], np.uint16), (4, 3))
    categories, _, extra_bits = jpeg_lossless._differences(pixels, 0, len(pixels), 16, 16)
    assert 16 in categories.tolist()
    assert extra_bits[categories == 16].tolist() == [0] * int((categories == 16).sum())
    roundtrip(pixels, 16)


def test_entropy_data_with_0xff_bytes_is_stuffed() -> None:
    # Large alternating differences give long all-ones runs of additional bits.
    pixels = np.tile(np.array([0, 255], np.uint8), (8, 9))
    stream = roundtrip(pixels, 8)
    sos = stream.index(b"\xff\xda")
    entropy = stream[sos + 2 + int.from_bytes(stream[sos + 2 : sos + 4], "big") : -2]
    assert b"\xff\x00" in entropy
    assert all(entropy[i + 1] == 0 for i in range(len(entropy) - 1) if entropy[i] == 0xFF)


def test_signed_values_are_coded_as_their_bit_pattern() -> None:
    signed = RNG.integers(-2048, 2048, (12, 14)).astype(np.int16)
    stream = jpeg_lossless.encode(signed, 12)
    decoded = decode(stream).astype(np.int32)
    restored = np.where(decoded >= 2048, decoded - 4096, decoded)  # sign-extend 12 bits
    assert np.array_equal(restored, signed)


def test_smooth_image_compresses() -> None:
    ramp = (np.arange(256)[None, :] + np.arange(256)[:, None] * 3).astype(np.uint16)
    stream = roundtrip(ramp & 0x0FFF, 12)
    assert len(stream) < ramp.nbytes / 4  # about 2 bits a pixel


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        jpeg_lossless.encode(np.zeros((4, 4), np.uint16), 17)
    with pytest.raises(ValueError):
        jpeg_lossless.encode(np.zeros((4, 4, 2), np.uint8), 8)


def pixel(bits_allocated: int, bits_stored: int, samples: int = 1, signed: int = 0) -> PixelInfo:
    photometric = "RGB" if samples == 3 else "MONOCHROME2"
    return PixelInfo(8, 8, samples, bits_allocated, bits_stored, signed, photometric, 0, 1)


def test_which_pixels_each_jpeg_target_takes() -> None:
    assert jpeg_encode.unsuitable(JPEG_LOSSLESS_SV1, pixel(16, 16, signed=1), "MONOCHROME2") is None
    assert jpeg_encode.unsuitable(JPEG_LOSSLESS, pixel(8, 8, 3), "RGB") is None
    assert jpeg_encode.unsuitable(JPEG_LOSSLESS_SV1, pixel(32, 32), "MONOCHROME2")
    assert jpeg_encode.unsuitable(JPEG_BASELINE, pixel(8, 8, 3), "RGB") is None
    reason = jpeg_encode.unsuitable(JPEG_BASELINE, pixel(16, 12), "MONOCHROME2")
    assert reason is not None and "8-bit" in reason
    assert jpeg_encode.unsuitable(JPEG_BASELINE, pixel(8, 8, signed=1), "MONOCHROME2")


def test_baseline_is_ycbcr_422_for_colour() -> None:
    smooth = np.stack(
        [np.add.outer(np.arange(32) * 3, np.arange(48) * 2 + c * 20) for c in range(3)],
        axis=-1,
    ).astype(np.uint8)
    stream = jpeg_encode.encode(JPEG_BASELINE, smooth, pixel(8, 8, 3))
    image = Image.open(io.BytesIO(stream))
    assert image.format == "JPEG" and image.mode == "RGB"
    # Luma sampled 2 x 1 against chroma: 4:2:2 (YBR_FULL_422, PS3.5 8.2.1).
    assert image.layer[0][1:3] == (2, 1)  # type: ignore[attr-defined]
    assert jpeg_encode.result_photometric(JPEG_BASELINE, "RGB") == "YBR_FULL_422"
    error = np.abs(np.asarray(image).astype(int) - smooth)
    assert error.mean() < 3 and error.max() <= 24


def test_huffman_codes_are_limited_to_16_bits_without_the_all_ones_code() -> None:
    """Category frequencies halving from one category to the next make an unlimited
    Huffman code 18 bits deep; K.2's adjustment must bring it to 16 and leave the
    all-ones code word out. The distribution is built into an image and round-tripped."""
    counts = [1 << (16 - k) for k in range(17)]
    counts[16] += 1  # 2^17 samples: a 256 x 512 image
    lengths = jpeg_lossless._code_lengths(np.array(counts, dtype=np.int64))
    assert lengths.max() == 16 and lengths.min() >= 1
    assert sum(2.0 ** -int(n) for n in lengths) < 1  # room left: no all-ones code word
    # Differences of 2^(k-1) are category k; values rebuilt from them as SV1 predicts
    # (column 0 from above, the rest from the left).
    steps = np.repeat([0] + [1 << (k - 1) for k in range(1, 17)], counts)
    diff = RNG.permutation(steps).reshape(256, 512)
    first = 32768 + np.cumsum(diff[:, 0])
    image = ((first[:, None] + np.cumsum(diff, axis=1) - diff[:, :1]) & 0xFFFF).astype(np.uint16)
    categories, _, _ = jpeg_lossless._differences(image[:, :, None], 0, 256, 16, 16)
    assert np.bincount(categories, minlength=17).tolist() == counts
    stream = roundtrip(image, 16)
    dht = stream.index(b"\xff\xc4")
    assert sum(stream[dht + 5 : dht + 21]) == 17  # BITS: 17 codes, all within 16 bits


@pytest.mark.parametrize("strip", [1, 7, 40, 1000])
def test_strips_give_the_same_stream(monkeypatch: pytest.MonkeyPatch, strip: int) -> None:
    """Large frames are coded in strips of rows (bounded memory): the first column of
    a strip is predicted from the row above it and bits carry across strips, so any
    strip size gives the one-piece stream."""
    pixels = RNG.integers(0, 65536, (23, 11, 3)).astype(np.uint16)
    whole = jpeg_lossless.encode(pixels, 16)
    monkeypatch.setattr(jpeg_lossless, "_STRIP_SAMPLES", strip)
    assert jpeg_lossless.encode(pixels, 16) == whole
    roundtrip(pixels, 16)


@pytest.mark.parametrize(
    ("allocated", "stored", "signed"),
    [(8, 2, 0), (8, 6, 0), (8, 8, 1), (16, 2, 0), (16, 8, 0), (16, 8, 1), (16, 9, 1),
     (16, 12, 1), (16, 16, 0)],
)  # fmt: skip
def test_every_bit_depth_decodes_through_pydicom(allocated: int, stored: int, signed: int) -> None:
    """The frame path end to end in-process: a native frame encoded by ``codec.encode``
    and decoded by pydicom's pylibjpeg decoder with the same Image Pixel attributes. With
    16 bits allocated and at most 8 stored, P is raised to 9 so the decoder's samples are
    two bytes wide, as Bits Allocated says."""
    info = PixelInfo(9, 7, 1, allocated, stored, signed, "MONOCHROME2", 0, 1)
    low, high = (-(1 << (stored - 1)), 1 << (stored - 1)) if signed else (0, 1 << stored)
    source = RNG.integers(low, high, (9, 7)).astype(f"{'i' if signed else 'u'}{allocated // 8}")
    native = FrameTable(EXPLICIT_VR_LITTLE_ENDIAN, info, native=(0, 63 * allocated))
    stream = codec.encode(native, source.tobytes(), JPEG_LOSSLESS_SV1)
    assert stream[stream.index(b"\xff\xc3") + 4] == max(stored, 9 if allocated == 16 else 2)
    back = codec.decode(FrameTable(JPEG_LOSSLESS_SV1, info, fragments=((),)), stream)
    assert back.dtype == source.dtype and np.array_equal(back, source)
