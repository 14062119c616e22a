"""Decode and encode single frames with pydicom's pixel plugins (pylibjpeg, pyjpegls).

Pure: bytes in, bytes or arrays out. Which syntaxes can be decoded or encoded is asked
of pydicom at run time, so installing a plugin widens what the server offers.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import UID

from dicomweb_server.dicom import jpeg_encode
from dicomweb_server.dicom.frames import FrameTable, PixelInfo
from dicomweb_server.dicom.pixel_media import (
    J2K,
    J2K_LOSSLESS,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR,
    RLE,
)
from dicomweb_server.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, UNCOMPRESSED
from dicomweb_server.errors import NotAcceptable

if TYPE_CHECKING:
    import numpy as np

# Targets we encode to: lossless ones (JPEG 2000 .91 and JPEG-LS .81 are written
# losslessly too: both allow it, PS3.5 A.4.4, A.4.3), and the JPEG ones of
# jpeg_encode (lossless .70/.57 always available, baseline .50 for 8-bit only).
_ENCODE_TARGETS = (RLE, J2K_LOSSLESS, J2K, JPEG_LS_LOSSLESS, JPEG_LS_NEAR, *jpeg_encode.TARGETS)


@functools.cache
def can_decode(transfer_syntax: str) -> bool:
    if transfer_syntax in UNCOMPRESSED:
        return True
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except NotImplementedError:
        return False


@functools.cache
def can_encode(transfer_syntax: str) -> bool:
    if transfer_syntax not in _ENCODE_TARGETS:
        return False
    if transfer_syntax in jpeg_encode.TARGETS:
        return True  # our own encoders, nothing to install
    try:
        return bool(get_encoder(UID(transfer_syntax)).is_available)
    except NotImplementedError:
        return False


def encodable() -> list[str]:
    return [ts for ts in _ENCODE_TARGETS if can_encode(ts)]


def unsuitable(target: str, pixel: PixelInfo) -> str | None:
    """Why frames with ``pixel`` cannot be encoded as ``target`` (None: they can, as
    far as is known before trying)."""
    if target in jpeg_encode.TARGETS:
        return jpeg_encode.unsuitable(target, pixel, decoded_photometric(pixel))
    return None


def _options(pixel: PixelInfo, photometric: str | None = None) -> dict[str, object]:
    options = pixel.decode_options()
    if photometric:
        options["photometric_interpretation"] = photometric
    return options


def decode(table: FrameTable, data: bytes) -> np.ndarray:
    """One frame's pixels as an array (rows, columns[, samples]); YBR becomes RGB.

    ``data`` is the frame's bytes as stored (native little endian after any swap, or
    the compressed codestream).
    """
    ts = table.transfer_syntax
    native = ts in UNCOMPRESSED
    pixel = table.pixel
    if native and pixel.samples == 1 and pixel.bits_allocated in (8, 16):
        return _native_grey(data, pixel)
    source = data if native else encapsulate([data])
    decoder = get_decoder(UID(EXPLICIT_VR_LITTLE_ENDIAN if native else ts))
    try:
        array, _ = decoder.as_array(source, **_options(table.pixel))  # type: ignore[arg-type]
    except Exception as exc:
        raise NotAcceptable(f"cannot decode pixel data stored as {UID(ts).name}: {exc}") from exc
    return array


def _native_grey(data: bytes, pixel: PixelInfo) -> np.ndarray:
    """A native single-sample frame without pydicom's general machinery (hot path of
    rendering): bits above Bits Stored are masked, signed values sign-extended (PS3.5 8.1.1)."""
    import numpy as np

    signed = pixel.pixel_representation == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{pixel.bits_allocated // 8}")
    count = pixel.rows * pixel.columns
    array = np.frombuffer(data, dtype=dtype, count=count).reshape(pixel.rows, pixel.columns)
    spare = pixel.bits_allocated - pixel.bits_stored
    if 0 < spare < pixel.bits_allocated:
        # Signed: shift up, then arithmetically down, which sign-extends.
        array = (array << spare) >> spare if signed else array & ((1 << pixel.bits_stored) - 1)
    return array


def decoded_photometric(pixel: PixelInfo) -> str:
    """The photometric interpretation of ``decode``'s output."""
    if pixel.photometric.startswith("YBR_FULL") or pixel.photometric in ("YBR_ICT", "YBR_RCT"):
        return "RGB"
    return pixel.photometric


def native_bytes(table: FrameTable, data: bytes) -> bytes:
    """Uncompressed little endian frame (application/octet-stream, PS3.18 8.7.3.3.1)."""
    if table.transfer_syntax in UNCOMPRESSED:
        return data
    array = decode(table, data)
    width = table.pixel.bits_allocated // 8
    if width <= 1:
        return bytes(array.astype("u1").tobytes())
    kind = "i" if table.pixel.pixel_representation else "u"
    return bytes(array.astype(f"<{kind}{width}").tobytes())


def encode(table: FrameTable, data: bytes, target: str) -> bytes:
    """The frame re-encoded in ``target`` (one of ``encodable()``)."""
    array = decode(table, data)
    if target in jpeg_encode.TARGETS:
        reason = unsuitable(target, table.pixel)
        if reason is not None:
            raise NotAcceptable(f"cannot encode this frame as {UID(target).name}: {reason}")
        return jpeg_encode.encode(target, array, table.pixel)
    options = _options(table.pixel, decoded_photometric(table.pixel))
    options["planar_configuration"] = 0
    try:
        return bytes(get_encoder(UID(target)).encode(array, **options))  # type: ignore[arg-type]
    except Exception as exc:
        raise NotAcceptable(
            f"cannot encode this frame as {UID(target).name}: {str(exc).strip()[-200:]}"
        ) from exc
