"""Transfer syntax conversion for retrieval.

Implicit VR Little Endian and Explicit VR Big Endian must not be sent over web
services (PS3.18 8.7.3), and Explicit VR Little Endian is the default for
``application/dicom`` (PS3.18 8.7.3.4), so stored objects in other encodings are
rewritten on the way out. Compressed pixel data is decoded with pylibjpeg.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import pydicom
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from dicomweb_server.dicom.uids import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from dicomweb_server.errors import NotAcceptable

# Encodings that may not travel over DICOMweb as they are.
NOT_ON_THE_WIRE = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})


def can_decompress(stored: str) -> bool:
    uid = UID(stored)
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def output_syntax(stored: str, requested: str) -> str:
    """The transfer syntax an instance is sent in, for a requested one ('*' = as stored)."""
    if requested == "*":
        return EXPLICIT_VR_LITTLE_ENDIAN if stored in NOT_ON_THE_WIRE else stored
    if requested == stored and stored not in NOT_ON_THE_WIRE:
        return stored
    if requested == EXPLICIT_VR_LITTLE_ENDIAN and can_decompress(stored):
        return requested
    raise NotAcceptable(
        f"cannot provide transfer syntax {requested} for an instance stored as {stored}; "
        f"available: {stored if stored not in NOT_ON_THE_WIRE else EXPLICIT_VR_LITTLE_ENDIAN}, "
        f"{EXPLICIT_VR_LITTLE_ENDIAN} or *"
    )


def to_explicit_little_endian(fp: BinaryIO) -> bytes:
    """Rewrite one Part 10 object as Explicit VR Little Endian, decompressing its pixels."""
    ds = pydicom.dcmread(fp, force=True)
    stored = UID(ds.file_meta.TransferSyntaxUID)
    if stored.is_compressed:
        try:
            ds.decompress()
        except Exception as exc:  # decoder missing or data undecodable
            raise NotAcceptable(
                f"cannot decompress pixel data stored as {stored.name}: {exc}"
            ) from exc
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()
