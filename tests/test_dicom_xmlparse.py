"""Native DICOM Model XML read back into DICOM JSON: the inverse of xmlmodel.to_xml."""

from __future__ import annotations

import pytest

from dicomweb_server.dicom.xmlmodel import to_xml
from dicomweb_server.dicom.xmlparse import from_xml
from dicomweb_server.errors import InvalidRequest
from tests.upsgen import completion, el, order


@pytest.mark.parametrize("dataset", [order(), completion()])
def test_round_trip(dataset: dict[str, object]) -> None:
    assert from_xml(to_xml(dataset)) == {k: dataset[k] for k in sorted(dataset)}


def test_values_types_and_names() -> None:
    dataset = {
        "00100010": el("PN", {"Alphabetic": "Doe^Jane^^Dr", "Ideographic": "山田^太郎"}),
        "00201208": el("IS", 12),
        "00741004": el("DS", 37.5),
        "00280010": el("US", 512),
        "00080060": el("CS", "CT", "PT"),
        "00081030": el("LO"),
    }
    assert from_xml(to_xml(dataset)) == {k: dataset[k] for k in sorted(dataset)}


def test_without_namespace_and_out_of_order_values() -> None:
    document = (
        b'<NativeDicomModel><DicomAttribute tag="00080060" vr="CS">'
        b'<Value number="2">PT</Value><Value number="1">CT</Value>'
        b"</DicomAttribute></NativeDicomModel>"
    )
    assert from_xml(document) == {"00080060": el("CS", "CT", "PT")}


@pytest.mark.parametrize(
    "document",
    [
        b"<NativeDicomModel><DicomAttribute",
        b"<Other/>",
        b'<NativeDicomModel><DicomAttribute tag="0010" vr="PN"/></NativeDicomModel>',
        b"<NativeDicomModel><Oops/></NativeDicomModel>",
        b'<NativeDicomModel><DicomAttribute tag="00201208" vr="IS"><Value number="1">x'
        b"</Value></DicomAttribute></NativeDicomModel>",
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><NativeDicomModel/>',
    ],
)
def test_refused(document: bytes) -> None:
    with pytest.raises(InvalidRequest):
        from_xml(document)
