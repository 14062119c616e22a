"""DICOM JSON (PS3.18 F.2) rendered as the Native DICOM Model XML (PS3.19 A.1).

Used for the ``multipart/related; type="application/dicom+xml"`` forms of search,
metadata and store responses: one XML document per dataset.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

from dicomweb_server.dicom.attributes import keyword_of

_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_PN_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def _person_name(value: dict[str, str], number: int) -> str:
    out = [f'<PersonName number="{number}">']
    for group in _PN_GROUPS:
        if group in value:
            out.append(f"<{group}>")
            for part, text in zip(_PN_PARTS, value[group].split("^"), strict=False):
                if text:
                    out.append(f"<{part}>{escape(text)}</{part}>")
            out.append(f"</{group}>")
    out.append("</PersonName>")
    return "".join(out)


def _attribute(tag: str, element: dict[str, Any]) -> str:
    vr = element.get("vr", "UN")
    keyword = keyword_of(int(tag, 16))
    head = f"<DicomAttribute tag={quoteattr(tag)} vr={quoteattr(vr)}"
    if keyword != tag:
        head += f" keyword={quoteattr(keyword)}"
    body: list[str] = []
    if "BulkDataURI" in element:
        body.append(f"<BulkData uri={quoteattr(element['BulkDataURI'])}/>")
    elif "InlineBinary" in element:
        body.append(f"<InlineBinary>{escape(element['InlineBinary'])}</InlineBinary>")
    elif vr == "SQ":
        for number, item in enumerate(element.get("Value", []), start=1):
            body.append(f'<Item number="{number}">{_dataset(item)}</Item>')
    elif vr == "PN":
        for number, value in enumerate(element.get("Value", []), start=1):
            body.append(_person_name(value or {}, number))
    else:
        for number, value in enumerate(element.get("Value", []), start=1):
            text = "" if value is None else escape(str(value))
            body.append(f'<Value number="{number}">{text}</Value>')
    return head + ">" + "".join(body) + "</DicomAttribute>"


def _dataset(dataset: dict[str, Any]) -> str:
    return "".join(_attribute(tag, dataset[tag]) for tag in sorted(dataset))


def to_xml(dataset: dict[str, Any]) -> bytes:
    """One NativeDicomModel document (PS3.19 A.1.1) for one DICOM JSON object."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">'
        + _dataset(dataset)
        + "</NativeDicomModel>"
    ).encode("utf-8")
