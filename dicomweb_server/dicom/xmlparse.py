"""The Native DICOM Model XML (PS3.19 A.1) read into DICOM JSON (PS3.18 F.2).

For request bodies sent as ``application/dicom+xml`` (UPS-RS create, update, change
state, request cancellation): the inverse of ``xmlmodel.to_xml``. Documents with a DTD
are refused before parsing, so no entity is ever expanded.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from dicomweb_server.dicom.attributes import tag_hex, vr_of
from dicomweb_server.errors import InvalidRequest

_TAG_RE = re.compile(r"^[0-9A-Fa-f]{8}$")
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_PN_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_INTEGER_VRS = frozenset({"IS", "SL", "SS", "SV", "UL", "US", "UV"})
_DECIMAL_VRS = frozenset({"DS", "FL", "FD"})


def _local(name: str) -> str:
    """The element name without its namespace (documents may or may not declare it)."""
    return name.rsplit("}", 1)[-1]


def _number(node: ET.Element) -> int:
    raw = node.get("number", "1")
    if not raw.isdigit():
        raise InvalidRequest(f"<{_local(node.tag)}> has a number that is not an integer: {raw!r}")
    return int(raw)


def _scalar(vr: str, text: str, tag: str) -> Any:
    text = text.strip() if vr not in ("LT", "ST", "UT") else text
    if text == "":
        return None
    try:
        if vr in _INTEGER_VRS:
            return int(text)
        if vr in _DECIMAL_VRS:
            return float(text)
    except ValueError:
        raise InvalidRequest(f"{tag}: {text!r} is not a number ({vr})") from None
    return text


def _person_name(node: ET.Element) -> dict[str, str]:
    value: dict[str, str] = {}
    for group in node:
        name = _local(group.tag)
        if name not in _PN_GROUPS:
            continue
        parts = {_local(p.tag): (p.text or "") for p in group}
        value[name] = "^".join(parts.get(p, "") for p in _PN_PARTS).rstrip("^")
    return value


def _attribute(node: ET.Element) -> tuple[str, dict[str, Any]]:
    raw_tag = node.get("tag", "")
    if not _TAG_RE.match(raw_tag):
        raise InvalidRequest(f"DicomAttribute tag {raw_tag!r} is not 8 hexadecimal digits")
    tag = raw_tag.upper()
    vr = node.get("vr") or vr_of(int(tag, 16))
    element: dict[str, Any] = {"vr": vr}
    numbered: list[tuple[int, Any]] = []
    for child in node:
        kind = _local(child.tag)
        if kind == "Item":
            numbered.append((_number(child), _dataset(child)))
        elif kind == "PersonName":
            numbered.append((_number(child), _person_name(child)))
        elif kind == "Value":
            numbered.append((_number(child), _scalar(vr, child.text or "", tag)))
        elif kind == "InlineBinary":
            element["InlineBinary"] = (child.text or "").strip()
        elif kind == "BulkData":
            element["BulkDataURI"] = child.get("uri", "")
    if numbered:
        element["Value"] = [value for _, value in sorted(numbered, key=lambda nv: nv[0])]
    return tag, element


def _dataset(node: ET.Element) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for child in node:
        if _local(child.tag) != "DicomAttribute":
            raise InvalidRequest(f"unexpected element <{_local(child.tag)}> in a dataset")
        tag, element = _attribute(child)
        out[tag] = element
    return {tag_hex(int(k, 16)): out[k] for k in sorted(out)}


def from_xml(document: bytes) -> dict[str, Any]:
    """One NativeDicomModel document as a DICOM JSON object; InvalidRequest if malformed."""
    if b"<!DOCTYPE" in document or b"<!ENTITY" in document:
        raise InvalidRequest("XML documents with a DTD or entities are not accepted")
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise InvalidRequest(f"the body is not well-formed XML: {exc}") from None
    if _local(root.tag) != "NativeDicomModel":
        raise InvalidRequest("the XML body must be a NativeDicomModel document (PS3.19)")
    return _dataset(root)
