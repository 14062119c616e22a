"""JPEG targets of transcoding (PS3.5 A.4.1, 8.2.1): which frames fit, and encoding.

- JPEG Lossless SV1 (1.2.840.10008.1.2.4.70) and JPEG Lossless Process 14
  (1.2.840.10008.1.2.4.57, any predictor, so the SV1 stream is valid): our own encoder
  (``jpeg_lossless``), 8 or 16 bits allocated, 2..16 stored, 1 or 3 samples, signed
  or not, colour kept as is (no colour transform).
- JPEG Baseline (1.2.840.10008.1.2.4.50), lossy: Pillow (libjpeg), 8-bit unsigned
  grey or colour. Colour is written as YCbCr with 4:2:2 chroma subsampling, so the
  result is YBR_FULL_422 (PS3.5 8.2.1, PS3.3 C.7.6.3.1.2); grey keeps MONOCHROME1/2.

Pure: arrays in, codestreams out.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt

from dicomweb_server.dicom import jpeg_lossless
from dicomweb_server.dicom.frames import PixelInfo
from dicomweb_server.dicom.pixel_media import JPEG_BASELINE, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1

TARGETS = (JPEG_LOSSLESS_SV1, JPEG_LOSSLESS, JPEG_BASELINE)
LOSSY = frozenset({JPEG_BASELINE})
# Baseline quality: visually near-lossless for diagnostic review over slow links.
BASELINE_QUALITY = 90
# PS3.3 C.7.6.1.1.5.1 Lossy Image Compression Method defined term.
LOSSY_METHOD = {JPEG_BASELINE: "ISO_10918_1"}


def unsuitable(target: str, pixel: PixelInfo, photometric: str) -> str | None:
    """Why frames with ``pixel`` (decoded to ``photometric``) cannot be written as
    ``target``, or None when they can."""
    if pixel.samples not in (1, 3):
        return f"{pixel.samples} samples per pixel (JPEG here: 1 or 3)"
    if target == JPEG_BASELINE:
        if pixel.bits_allocated != 8 or pixel.bits_stored > 8:
            return (
                f"JPEG Baseline holds 8-bit samples; these have {pixel.bits_stored} bits "
                f"stored (ask for 1.2.840.10008.1.2.4.70, lossless, instead)"
            )
        if pixel.pixel_representation:
            return "JPEG Baseline holds unsigned samples; these are signed"
        if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
            return f"JPEG Baseline is not written for {photometric} pixels"
        return None
    if pixel.bits_allocated not in (8, 16) or pixel.bits_stored > 16:
        return (
            f"JPEG Lossless holds 2..16-bit samples in 8 or 16 bits allocated; these have "
            f"{pixel.bits_stored} stored in {pixel.bits_allocated}"
        )
    return None


def result_photometric(target: str, photometric: str) -> str:
    """Photometric Interpretation of frames written as ``target`` from ``photometric``."""
    if target == JPEG_BASELINE and photometric == "RGB":
        return "YBR_FULL_422"
    return photometric


def encode(target: str, pixels: npt.NDArray[np.integer], pixel: PixelInfo) -> bytes:
    """One decoded frame (rows, columns[, 3]) as a ``target`` codestream."""
    if target == JPEG_BASELINE:
        return _baseline(pixels)
    return jpeg_lossless.encode(pixels, precision(pixel), pixel.bits_stored)


def precision(pixel: PixelInfo) -> int:
    """The lossless sample precision P for these pixels: Bits Stored, except that
    16 bits allocated need P > 8, since decoders give P <= 8 samples one byte each
    (the values, Bits Stored wide, have zero bits above)."""
    return max(pixel.bits_stored, 9 if pixel.bits_allocated == 16 else 2)


def _baseline(pixels: npt.NDArray[np.integer]) -> bytes:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    out = io.BytesIO()
    # 4:2:2 (horizontal-only chroma halving) is what YBR_FULL_422 names.
    image.save(out, format="JPEG", quality=BASELINE_QUALITY, subsampling="4:2:2")
    return out.getvalue()
