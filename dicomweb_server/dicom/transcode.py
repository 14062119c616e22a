"""Transfer syntax conversion for retrieval.

Implicit VR Little Endian and Explicit VR Big Endian "shall not be used with Web
Services" (PS3.18 8.7.3), and Explicit VR Little Endian is the default for
``application/dicom`` (PS3.18 8.7.3.4), so stored objects in other encodings are
rewritten on the way out. Compressed pixel data is decoded with pylibjpeg.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from dicomweb_server.dicom import frames as frame_index
from dicomweb_server.dicom import jpeg_encode
from dicomweb_server.dicom.codec import can_encode, encodable
from dicomweb_server.dicom.uids import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from dicomweb_server.errors import NotAcceptable

# Encodings that may not travel over DICOMweb as they are.
NOT_ON_THE_WIRE = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})
# Width of one value of the binary VRs whose byte order depends on the encoding.
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def can_decompress(stored: str) -> bool:
    uid = UID(stored)
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def _possible(stored: str, requested: str) -> str | None:
    if requested == "*":
        # "*": any syntax, so as stored, but never one forbidden on the wire (8.7.3.5.2).
        return EXPLICIT_VR_LITTLE_ENDIAN if stored in NOT_ON_THE_WIRE else stored
    if requested == stored and stored not in NOT_ON_THE_WIRE:
        return stored
    if requested == EXPLICIT_VR_LITTLE_ENDIAN and can_decompress(stored):
        return requested
    if can_encode(requested) and can_decompress(stored):
        return requested  # re-encoded: JPEG 2000, JPEG-LS or RLE, as the plugins allow
    return None


def output_syntax(stored: str, requested: str | Sequence[str]) -> str:
    """The transfer syntax an instance is sent in ('*' = as stored).

    ``requested`` is one syntax or several in preference order (PS3.18 8.7.8.2: the
    selected syntax is per part). Raises NotAcceptable (406) when none can be given.
    """
    wanted = [requested] if isinstance(requested, str) else list(requested)
    for ts in wanted:
        chosen = _possible(stored, ts)
        if chosen is not None:
            return chosen
    available = stored if stored not in NOT_ON_THE_WIRE else EXPLICIT_VR_LITTLE_ENDIAN
    raise NotAcceptable(
        f"cannot provide transfer syntax {', '.join(wanted)} for an instance stored as "
        f"{stored}; available: {available}"
        + (f", {EXPLICIT_VR_LITTLE_ENDIAN}" if available != EXPLICIT_VR_LITTLE_ENDIAN else "")
        + "".join(f", {ts}" for ts in encodable() if ts != available)
        + " or *"
    )


def _swap_to_little_endian(ds: Dataset) -> None:
    """Byte-swap the binary values pydicom keeps as raw big-endian bytes (OW, OF, ...).

    Numbers, text and sequences are decoded by pydicom and re-encoded on writing; only
    the opaque binary VRs keep the byte order they were read in (PS3.5 7.3).
    """
    import numpy as np

    for elem in ds.iterall():
        width = _SWAP_WIDTH.get(str(elem.VR))
        value = elem.value
        if width and isinstance(value, bytes) and len(value) % width == 0:
            dtype = np.dtype(f">u{width}")
            elem.value = np.frombuffer(value, dtype=dtype).astype(dtype.newbyteorder("<")).tobytes()


def to_explicit_little_endian(fp: BinaryIO) -> bytes:
    """Rewrite one Part 10 object as Explicit VR Little Endian, decompressing its pixels."""
    ds = pydicom.dcmread(fp, force=True)
    stored = UID(ds.file_meta.TransferSyntaxUID)
    if stored.is_compressed:
        try:
            # Same instance in another transfer syntax: keep its SOP Instance UID (pydicom
            # would mint a new one), or the part's Content-Location and the UID the client
            # asked for would no longer match the object (PS3.18 8.7.3.3.2, 8.7.9).
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # decoder missing or data undecodable
            raise NotAcceptable(
                f"cannot decompress pixel data stored as {stored.name}: {exc}"
            ) from exc
    if stored == EXPLICIT_VR_BIG_ENDIAN:
        _swap_to_little_endian(ds)  # every element is decoded now, none left raw
        ds.set_original_encoding(False, True, ds.original_character_set)
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def to_transfer_syntax(fp: BinaryIO, transfer_syntax: str) -> bytes:
    """Rewrite one Part 10 object in ``transfer_syntax``: Explicit VR Little Endian, or
    a compressed syntax an installed encoder writes (pixels decoded first if needed)."""
    if transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return to_explicit_little_endian(fp)
    ds = pydicom.dcmread(io.BytesIO(to_explicit_little_endian(fp)), force=True)
    if "PixelData" in ds and transfer_syntax in jpeg_encode.TARGETS:
        _encode_jpeg(ds, transfer_syntax)
    elif "PixelData" in ds:
        try:
            # Same instance, another encoding: keep its SOP Instance UID (see above).
            ds.compress(UID(transfer_syntax), generate_instance_uid=False)
        except Exception as exc:
            raise NotAcceptable(
                f"cannot encode this instance as {UID(transfer_syntax).name}: "
                f"{str(exc).strip()[-200:]}"
            ) from exc
    else:
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _encode_jpeg(ds: Dataset, target: str) -> None:
    """Encode a native dataset's frames as JPEG ``target`` in place: encapsulated with
    a Basic Offset Table (PS3.5 A.4), Photometric Interpretation of the result
    (PS3.5 8.2.1), and for a lossy result Lossy Image Compression "01" with its ratio
    and method appended (PS3.3 C.7.6.1.1.5)."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels.decoders.base import get_decoder

    pixel = frame_index.pixel_info(ds)
    if pixel is None:
        raise NotAcceptable(f"cannot encode as {UID(target).name}: no usable Image Pixel module")
    reason = jpeg_encode.unsuitable(target, pixel, pixel.photometric)
    if reason is not None:
        raise NotAcceptable(f"cannot encode this instance as {UID(target).name}: {reason}")
    decoder = get_decoder(UID(EXPLICIT_VR_LITTLE_ENDIAN))
    # raw: no colour conversion, the stored samples are what a lossless stream keeps.
    frames = [
        jpeg_encode.encode(target, array, pixel) for array, _ in decoder.iter_array(ds, raw=True)
    ]
    ds.PixelData = encapsulate(frames, has_bot=True)
    elem = ds["PixelData"]
    elem.VR = "OB"
    elem.is_undefined_length = True
    ds.PhotometricInterpretation = jpeg_encode.result_photometric(target, pixel.photometric)
    if pixel.samples > 1:
        ds.PlanarConfiguration = 0  # interleaved components (PS3.5 8.2.1)
    if target in jpeg_encode.LOSSY:
        ds.BitsStored, ds.HighBit = 8, 7
        ratio = pixel.frame_bits * pixel.frames / 8 / max(1, sum(len(f) for f in frames))
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = [
            *_values(ds.get("LossyImageCompressionRatio")),
            f"{ratio:.4g}"[:16],
        ]
        ds.LossyImageCompressionMethod = [
            *_values(ds.get("LossyImageCompressionMethod")),
            jpeg_encode.LOSSY_METHOD[target],
        ]
    ds.file_meta.TransferSyntaxUID = UID(target)


def _values(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]
