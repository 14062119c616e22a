"""DICOM JSON (PS3.18 F.2) straight from raw element bytes, for the common cases.

Converting every element through pydicom's DataElement costs tens of microseconds each;
at store time that dominates. Here the frequent value representations are decoded
directly from the raw little-endian bytes; anything unusual (sequences, ambiguous VRs,
code extensions, big endian) returns ``None`` so the caller falls back to pydicom.
Tests check the output equals pydicom's ``to_json_dict`` over many real objects.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
_TEXT_VRS = frozenset({"LO", "SH", "UC"})
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_NUMBER_FORMATS = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "FL": "f",
    "FD": "d",
    "UV": "Q",
    "SV": "q",
}
_SIZES = {k: struct.calcsize(v) for k, v in _NUMBER_FORMATS.items()}
_SINGLE_NUMBERS = {k: struct.Struct("<" + v) for k, v in _NUMBER_FORMATS.items()}
# UN is left to pydicom, which replaces it with the dictionary VR where one is known.
_INLINE_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})

# Character sets this module decodes itself; others go through pydicom.
_CODECS = {
    "": "ascii",
    "ISO_IR 6": "ascii",
    "ISO_IR 100": "latin_1",
    "ISO_IR 192": "utf_8",
}


def codec_for(charset: Any) -> str | None:
    """The Python codec for a Specific Character Set value, if it is a simple one."""
    if charset is None:
        return "ascii"
    if isinstance(charset, bytes):
        charset = charset.decode("ascii", "replace")
    if not isinstance(charset, str):
        values = list(charset)
        if len(values) != 1:
            return None
        charset = values[0]
    return _CODECS.get(charset.strip().strip("\\"))


def _number(text: str, integer: bool) -> int | float | str:
    try:
        if integer:
            return int(text)
        value = float(text)
    except ValueError:
        return text
    # pydicom keeps DS values that look like integers as floats too; JSON numbers either way.
    return value if value == value and value not in (float("inf"), float("-inf")) else text


def _strings(raw: bytes, codec: str, strip_nul: bool) -> list[str | None]:
    text = raw.decode(codec)
    if strip_nul:
        text = text.rstrip("\x00")
    if "\\" not in text:  # the usual single value, without building a split list
        return [text.strip() or None]
    return [v.strip() or None for v in text.split("\\")]


def _person_names(raw: bytes, codec: str) -> list[dict[str, str] | None]:
    out: list[dict[str, str] | None] = []
    # Component delimiters are kept as sent: the value is returned as stored.
    for value in raw.decode(codec).rstrip("\x00 ").split("\\"):
        groups = value.strip().split("=")
        names = {
            key: group
            for key, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)
            if group
        }
        out.append(names or None)
    return out


def element_json(vr: str, raw: bytes, codec: str) -> dict[str, Any] | None:
    """One element's JSON object from its raw little-endian value, or None to fall back."""
    try:
        return _element_json(vr, raw, codec)
    except UnicodeDecodeError:
        return None  # bytes outside the declared repertoire: pydicom's lenient decoding


def _element_json(vr: str, raw: bytes, codec: str) -> dict[str, Any] | None:
    if not raw:
        return {"vr": vr}
    if vr in _ASCII_VRS:
        values: list[Any] = _strings(raw, "ascii", strip_nul=True)
    elif vr in _TEXT_VRS:
        values = _strings(raw, codec, strip_nul=False)
    elif vr in _SINGLE_TEXT_VRS:
        text = raw.decode(codec).rstrip("\x00 ")
        if vr == "UR":
            text = text.strip()
        values = [text] if text else []
    elif vr == "PN":
        values = _person_names(raw, codec)
    elif vr in ("IS", "DS"):
        values = [
            None if v is None else _number(v, vr == "IS")
            for v in _strings(raw, "ascii", strip_nul=True)
        ]
    elif vr in _NUMBER_FORMATS:
        size = _SIZES[vr]
        if len(raw) == size:
            values = list(_SINGLE_NUMBERS[vr].unpack(raw))
        elif len(raw) % size:
            return None
        else:
            values = list(struct.unpack(f"<{len(raw) // size}{_NUMBER_FORMATS[vr]}", raw))
    elif vr == "AT":
        if len(raw) % 4:
            return None
        pairs = struct.unpack(f"<{len(raw) // 2}H", raw)
        values = [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]
    elif vr in _INLINE_VRS:
        return {"vr": vr, "InlineBinary": base64.b64encode(raw).decode("ascii")}
    else:
        return None
    for value in values:
        if value is not None:
            return {"vr": vr, "Value": values}
    return {"vr": vr}
