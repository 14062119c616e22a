"""Walk the bytes of one DICOM object: each element's tag, VR, value offset and length.

The store path's fast reader (issue #2): pydicom's ``dcmread`` builds objects we never
use. This walks a Part 10 file (PS3.10 7.1: preamble, "DICM", group 0002 in Explicit
VR Little Endian) or a bare data set, encoded in Explicit or Implicit VR Little Endian
(PS3.5 7.1, A.1, A.2), with sequences of defined and undefined length (PS3.5 7.5) and
encapsulated Pixel Data (PS3.5 A.4) walked item by item, never reading large values.

It is deliberately narrow: anything it is not sure pydicom reads the same way (big
endian, deflate, a VR it does not know, elements out of order, bytes left over or
missing, a structure pydicom would re-interpret) raises ``NotHandled`` and the caller
uses pydicom. Being strict is what lets the caller promise identical results.
"""

from __future__ import annotations

import functools
import mmap
import struct
from typing import Any, BinaryIO, NamedTuple

from pydicom.uid import UID, AllTransferSyntaxes
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

from dicomweb_server.dicom.attributes import vr_of

UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
# Value representations whose values are opaque bytes (PS3.18 F.2.7: may be
# BulkDataURI): their large values are skipped, never read.
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})
# Objects up to this size are read in one call; larger ones are mapped, so that only
# the pages holding headers are touched.
_READ_WHOLE = 1 << 20

_VRS = {str(vr).encode(): str(vr) for vr in STANDARD_VR}
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHI")
_U32 = struct.Struct("<I")
_ITEM_BYTES = b"\xfe\xff\x00\xe0"
_SEQ_END_BYTES = b"\xfe\xff\xdd\xe0"
_MAX_DEPTH = 32
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
# Transfer syntaxes whose data set pydicom reads as Explicit VR Little Endian (all the
# compressed ones included: only their Pixel Data differs), plus Implicit VR Little Endian.
HANDLED_SYNTAXES = frozenset(
    str(uid)
    for uid in AllTransferSyntaxes
    if UID(uid).is_little_endian and not UID(uid).is_deflated
)


class NotHandled(Exception):
    """The object is outside what this reader handles exactly; use pydicom."""


# One element: (tag, VR, file offset of the value, length, value). The length is
# UNDEFINED_LENGTH for encapsulated Pixel Data or a sequence of undefined length; the
# value is the bytes, None when skipped (large binary), or for SQ the items' elements.
# A plain tuple: a NamedTuple costs a Python-level call per element.
RawElement = tuple[int, str, int, int, Any]


class RawObject(NamedTuple):
    # The Transfer Syntax UID of the File Meta Information; None for a bare data set.
    transfer_syntax: str | None
    implicit: bool
    elements: list[RawElement]


@functools.lru_cache(maxsize=4096)
def _implicit_vr(tag: int) -> str:
    return vr_of(tag)


def read(fp: BinaryIO, size: int, keep: int) -> RawObject:
    """Parse the object in ``fp`` (``size`` bytes). Binary values longer than ``keep``
    are skipped. Raises ``NotHandled`` for anything outside the narrow path."""
    if size < 16:
        raise NotHandled("too small")
    fp.seek(0)
    if size <= _READ_WHOLE:
        return _parse(fp.read(), size, keep)
    try:
        fileno = fp.fileno()
    except (AttributeError, OSError, ValueError):
        return _parse(fp.read(), size, keep)
    try:
        mapped = mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise NotHandled(f"cannot map the file: {exc}") from exc
    with mapped:
        return _parse(mapped, size, keep)


def _parse(buf: Any, size: int, keep: int) -> RawObject:
    if len(buf) != size:
        raise NotHandled("file changed size")
    ts: str | None = None
    pos = 0
    if buf[128:132] == b"DICM":
        meta, pos = _dataset(buf, 132, size, False, keep, 0, meta=True)
        for tag, vr, _, _, value in meta:
            if tag == 0x00020010 and vr == "UI" and value is not None:
                ts = bytes(value).decode("ascii", "replace").rstrip("\0 ")
        if ts not in HANDLED_SYNTAXES:
            raise NotHandled(f"transfer syntax {ts!r}")
        implicit = ts == IMPLICIT_VR_LITTLE_ENDIAN
    else:
        # pydicom's guess for a bare data set: explicit when the bytes after the first
        # tag spell a VR it knows, else implicit; big endian if the group looks swapped.
        group = struct.unpack_from("<H", buf, 0)[0]
        implicit = bytes(buf[4:6]) not in _VRS
        if group >= 1024 and not implicit:
            raise NotHandled("big endian data set")
    if pos + 8 > size:
        raise NotHandled("no data set")
    group = struct.unpack_from("<H", buf, pos)[0]
    if group in (0x0000, 0x0002):
        raise NotHandled("command or misplaced meta group")
    if implicit and all(0x40 < b < 0x5B for b in bytes(buf[pos + 4 : pos + 6])):
        raise NotHandled("implicit VR data set that looks explicit")
    elements, end = _dataset(buf, pos, size, implicit, keep, 0)
    if end != size:
        raise NotHandled("bytes after the last element")
    return RawObject(ts, implicit, elements)


def _dataset(
    buf: Any,
    pos: int,
    end: int,
    implicit: bool,
    keep: int,
    depth: int,
    *,
    delimited: bool = False,
    meta: bool = False,
) -> tuple[list[RawElement], int]:
    """Elements from ``pos`` up to ``end`` (exactly), or up to an Item Delimitation Item
    when ``delimited``; returns them and the position after the last one."""
    if depth > _MAX_DEPTH:
        raise NotHandled("sequences nested too deep")
    out: list[RawElement] = []
    last = -1
    while pos < end:
        if pos + 8 > end:
            raise NotHandled("element header cut short")
        if implicit:
            group, number, length = _IMPLICIT.unpack_from(buf, pos)
            tag = group << 16 | number
            if group == 0xFFFE:
                return _delimiter(tag, length, pos, delimited, out)
            vr = _implicit_vr(tag)
            pos += 8
        else:
            group, number, vr_bytes, length = _EXPLICIT.unpack_from(buf, pos)
            tag = group << 16 | number
            if meta and group != 0x0002:
                return out, pos
            if group == 0xFFFE:
                return _delimiter(tag, _U32.unpack_from(buf, pos + 4)[0], pos, delimited, out)
            found = _VRS.get(vr_bytes)
            if found is None:
                raise NotHandled(f"unknown VR {vr_bytes!r}")
            vr = found
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise NotHandled("element header cut short")
                length = _U32.unpack_from(buf, pos + 8)[0]
                pos += 12
            else:
                pos += 8
        if tag <= last:
            raise NotHandled("elements out of order")
        last = tag
        if length == UNDEFINED_LENGTH:
            if meta:
                raise NotHandled("undefined length in the File Meta Information")
            if vr == "SQ":
                items, after = _sequence(buf, pos, end, None, implicit, keep, depth)
                out.append((tag, vr, pos, length, items))
                pos = after
            elif tag == PIXEL_DATA and depth == 0 and not implicit and vr in ("OB", "OW"):
                after = _encapsulated(buf, pos, end)
                out.append((tag, vr, pos, length, None))
                pos = after
            else:
                raise NotHandled("undefined length value that is not a sequence")
            continue
        value_end = pos + length
        if value_end > end:
            raise NotHandled("value runs past its container")
        if vr == "SQ":
            items, _ = _sequence(buf, pos, value_end, value_end, implicit, keep, depth)
            out.append((tag, vr, pos, length, items))
        elif length > keep and vr in BULK_VRS:
            out.append((tag, vr, pos, length, None))
        else:
            out.append((tag, vr, pos, length, buf[pos:value_end]))
        pos = value_end
    if delimited:
        raise NotHandled("item without its delimiter")
    if meta and pos >= end:
        raise NotHandled("nothing after the File Meta Information")
    return out, pos


def _delimiter(
    tag: int, length: int, pos: int, delimited: bool, out: list[RawElement]
) -> tuple[list[RawElement], int]:
    if tag == ITEM_DELIMITER and delimited and length == 0:
        return out, pos + 8
    raise NotHandled(f"unexpected item tag {tag:08X}")


def _sequence(
    buf: Any,
    pos: int,
    end: int,
    defined_end: int | None,
    implicit: bool,
    keep: int,
    depth: int,
) -> tuple[list[list[RawElement]], int]:
    """Items of a sequence (PS3.5 7.5.2): up to ``defined_end`` exactly, or up to its
    Sequence Delimitation Item when the sequence has undefined length."""
    items: list[list[RawElement]] = []
    while defined_end is None or pos < defined_end:
        if pos + 8 > end:
            raise NotHandled("item header cut short")
        group, number, length = _IMPLICIT.unpack_from(buf, pos)
        tag = group << 16 | number
        pos += 8
        if tag == SEQUENCE_DELIMITER and defined_end is None and length == 0:
            return items, pos
        if tag != ITEM:
            raise NotHandled(f"unexpected tag {tag:08X} in a sequence")
        if length == UNDEFINED_LENGTH:
            elements, pos = _dataset(buf, pos, end, implicit, keep, depth + 1, delimited=True)
        else:
            if pos + length > end:
                raise NotHandled("item runs past its sequence")
            elements, pos = _dataset(buf, pos, pos + length, implicit, keep, depth + 1)
        items.append(elements)
    if pos != defined_end:
        raise NotHandled("items do not fill their sequence")
    return items, pos


def _encapsulated(buf: Any, pos: int, end: int) -> int:
    """The position after encapsulated Pixel Data's Sequence Delimitation Item, walked
    fragment by fragment as pydicom does first (PS3.5 A.4)."""
    while True:
        if pos + 8 > end:
            raise NotHandled("encapsulated Pixel Data cut short")
        head = bytes(buf[pos : pos + 4])
        if head == _SEQ_END_BYTES:
            if _U32.unpack_from(buf, pos + 4)[0] != 0:
                raise NotHandled("Sequence Delimitation Item with a length")
            return pos + 8
        if head != _ITEM_BYTES:
            raise NotHandled("not a fragment item in encapsulated Pixel Data")
        pos += 8 + _U32.unpack_from(buf, pos + 4)[0]
