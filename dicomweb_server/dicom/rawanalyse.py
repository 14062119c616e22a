"""The store-time analysis of ``ingest.analyse`` from ``rawread``'s walk, without pydicom.

Accept-only: it returns what the pydicom path would return for an object that path
accepts, or None ("not handled") for anything else, rejections included, so that every
rejection keeps the pydicom path's exact message and reason. The conditions under which
the pydicom path rejects (PS3.10 7.1 truncation, missing or malformed UIDs per PS3.5
9.1, short Pixel Data, an unknown transfer syntax) are therefore all "not handled" here.
``tests/test_rawread_oracle.py`` checks both paths agree, field by field.
"""

from __future__ import annotations

import re
import struct
from typing import Any, BinaryIO, NamedTuple

from dicomweb_server.dicom import rawread
from dicomweb_server.dicom.fastjson import codec_for, element_json
from dicomweb_server.dicom.rawread import (
    BULK_VRS,
    PIXEL_DATA,
    UNDEFINED_LENGTH,
    NotHandled,
    RawElement,
)
from dicomweb_server.dicom.uids import is_valid_uid

_NATIVE_WORD_VRS = frozenset({"OD", "OF", "OL", "OV", "OW", "UN"})
# pydicom resolves these from context (or the dictionary) when it decodes them: left to it.
_UNRESOLVED_VRS = frozenset({"UN", "OB or OW", "US or OW", "US or SS", "US or SS or OW"})
# Implicit VR "US or SS" attributes pydicom resolves by the Pixel Representation of
# the same data set (PS3.5 Annex A.1; pydicom's correct_ambiguous_vr_element): image
# pixel value bounds and padding. Others (LUT descriptors, in items) are left to it.
_US_OR_SS_TAGS = frozenset({0x00280106, 0x00280107, 0x00280108, 0x00280109, 0x00280120, 0x00280121})
_UID_BYTES = re.compile(rb"[0-9.]+[\0 ]*")
_CHARSET = 0x00080005
_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018
_STUDY, _SERIES = 0x0020000D, 0x0020000E
_EXTENDED_OFFSET_TABLE = 0x7FE00001
# The Image Pixel attributes frames.pixel_info reads, by tag (PS3.3 C.7.6.3).
_PIXEL_INTS = {
    0x00280002: "SamplesPerPixel",
    0x00280006: "PlanarConfiguration",
    0x00280008: "NumberOfFrames",
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280100: "BitsAllocated",
    0x00280101: "BitsStored",
    0x00280103: "PixelRepresentation",
}
_PHOTOMETRIC = 0x00280004


class RawInstance(NamedTuple):
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    has_file_meta: bool
    # Keyword -> value of the Image Pixel attributes present, for frames.pixel_info.
    pixel: dict[str, Any]
    elements: list[RawElement]


def prepare(fp: BinaryIO, size: int, keep: int) -> RawInstance | None:
    """Walk and validate the object; None when the pydicom path must decide."""
    try:
        obj = rawread.read(fp, size, keep)
        top = {elem[0]: elem for elem in obj.elements}
        sop_class, sop_uid = _uid(top.get(_SOP_CLASS)), _uid(top.get(_SOP_INSTANCE))
        study_uid, series_uid = _uid(top.get(_STUDY)), _uid(top.get(_SERIES))
        if _EXTENDED_OFFSET_TABLE in top:
            return None  # frames would read it through pydicom
        pixel = _pixel_attributes(top)
    except (NotHandled, ValueError, struct.error):  # ValueError: undecodable text
        return None
    if obj.transfer_syntax is not None:
        ts = obj.transfer_syntax
    else:
        ts = rawread.IMPLICIT_VR_LITTLE_ENDIAN if obj.implicit else "1.2.840.10008.1.2.1"
    has_meta = obj.transfer_syntax is not None
    uids = (sop_class, sop_uid, study_uid, series_uid)
    return RawInstance(*uids, ts, has_meta, pixel, obj.elements)


def _uid(elem: RawElement | None) -> str:
    """A UID as pydicom's ``str(value).strip()`` gives it, if plainly valid."""
    if elem is None or elem[1] != "UI" or not elem[4]:
        raise NotHandled("identifying UID missing or not plain")
    raw: bytes = elem[4]
    if not _UID_BYTES.fullmatch(raw):
        raise NotHandled("identifying UID not plain")
    value = raw.decode("ascii").rstrip("\0 ")
    if not is_valid_uid(value):
        raise NotHandled("identifying UID invalid")
    return value


def _single(elem: RawElement) -> Any:
    """The one value of an element as pydicom decodes it (None when empty)."""
    _, vr, _, length, raw = elem
    if length == 0:
        return None
    if raw is None or vr in _UNRESOLVED_VRS:
        raise NotHandled("pixel attribute not plain")
    if vr == "US" and length == 2:
        return raw[0] | raw[1] << 8  # the usual case, as fastjson reads it
    doc = element_json(vr, raw, "ascii")
    values = doc.get("Value") if doc else None
    if values is None:
        if doc is None:
            raise NotHandled("pixel attribute not plain")
        return None
    if len(values) != 1:
        raise NotHandled("pixel attribute with several values")
    return values[0]


def _pixel_attributes(top: dict[int, RawElement]) -> dict[str, Any]:
    pixel: dict[str, Any] = {}
    for tag, keyword in _PIXEL_INTS.items():
        elem = top.get(tag)
        if elem is not None:
            value = _single(elem)
            if value is not None and (type(value) is not int):
                raise NotHandled("pixel attribute not an integer")
            pixel[keyword] = value
    elem = top.get(_PHOTOMETRIC)
    if elem is not None:
        raw = elem[4]
        if raw is None or b"\0" in raw or b"\\" in raw:
            raise NotHandled("Photometric Interpretation not plain")
        pixel["PhotometricInterpretation"] = raw.decode("ascii").strip()
    data = top.get(PIXEL_DATA)
    if (
        data is not None
        and data[3] != UNDEFINED_LENGTH
        and all(k in pixel for k in ("Rows", "Columns", "BitsAllocated"))
    ):
        # ingest._check_complete's Pixel Data length check: the pydicom path rejects.
        frames = pixel.get("NumberOfFrames") or 1
        samples = pixel.get("SamplesPerPixel") or 1
        bits = pixel.get("BitsAllocated") or 0
        rows, cols = pixel.get("Rows") or 0, pixel.get("Columns") or 0
        if data[3] < (rows * cols * samples * frames * bits + 7) // 8:
            raise NotHandled("Pixel Data too short")
    return pixel


def metadata(
    raw: RawInstance, uri_base: str, threshold: int
) -> tuple[dict[str, Any], dict[str, list[int]]] | None:
    """The DICOM JSON (PS3.18 F.2) and the top-level bulk positions, exactly as
    ``pydicom_json.JsonBuilder`` makes them; None when some element needs pydicom."""
    bulk: dict[str, list[int]] = {}
    sizes = (threshold, max(threshold, 1024))
    representation = raw.pixel.get("PixelRepresentation")
    us_or_ss = None if representation is None else "SS" if representation else "US"
    try:
        doc = _dataset(raw.elements, "", True, us_or_ss, "ascii", uri_base, sizes, bulk)
    except (NotHandled, ValueError, struct.error):
        return None
    return doc, bulk


def _charset(elements: list[RawElement], inherited: str) -> str:
    for tag, _, _, _, raw in elements:
        if tag > _CHARSET:
            break
        if tag == _CHARSET:
            text = raw.decode("ascii") if raw else ""
            codec = None if "\\" in text or "\0" in text else codec_for(text)
            if codec is None:
                raise NotHandled("character set left to pydicom")
            return codec
    return inherited


def _dataset(
    elements: list[RawElement],
    path: str,
    top: bool,
    us_or_ss: str | None,
    codec: str,
    uri_base: str,
    sizes: tuple[int, int],
    bulk: dict[str, list[int]],
) -> dict[str, Any]:
    """``us_or_ss``: what the VR "US or SS" resolves to here (None: left to pydicom).
    ``sizes``: the bulk data threshold, and the size above which the pydicom path defers
    a top-level value (and then encodes it with ``to_json_dict``, not fastjson)."""
    threshold, deferred = sizes
    try:
        codec = _charset(elements, codec)
    except UnicodeDecodeError as exc:
        raise NotHandled("character set not ASCII") from exc
    out: dict[str, Any] = {}
    for tag, vr, offset, length, value in elements:
        if tag >> 16 == 0x0002 or not tag & 0xFFFF:
            continue  # PS3.18 F.2.2: no File Meta Information, no Group Length
        key = f"{tag:08X}"
        if vr in BULK_VRS and length != 0 and (length > threshold or tag == PIXEL_DATA):
            json_vr = vr if vr in _NATIVE_WORD_VRS else "OB"
            if tag == PIXEL_DATA and length != UNDEFINED_LENGTH and vr != "OB":
                json_vr = "OW"
            elem_path = f"{path}.{key}" if path else key
            out[key] = {"vr": json_vr, "BulkDataURI": f"{uri_base}/{elem_path}"}
            if top:
                bulk[key] = [offset, -1 if length == UNDEFINED_LENGTH else length]
            continue
        if vr == "SQ":
            elem_path = f"{path}.{key}" if path else key
            items = [
                _dataset(item, f"{elem_path}.{i}", False, None, codec, uri_base, sizes, bulk)
                for i, item in enumerate(value)
            ]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        if vr == "US or SS" and us_or_ss and length == 2 and tag in _US_OR_SS_TAGS:
            vr = us_or_ss
        if vr in _UNRESOLVED_VRS or value is None or (top and length > deferred):
            raise NotHandled(f"{key} {vr} left to pydicom")
        fast = element_json(vr, value, codec)
        if fast is None:
            raise NotHandled(f"{key} {vr} left to pydicom")
        out[key] = fast
    return out
