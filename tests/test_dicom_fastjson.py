"""The raw-bytes DICOM JSON encoder agrees with pydicom's, value for value."""

from __future__ import annotations

import glob
import os
from typing import Any

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from dicomweb_server.dicom.fastjson import codec_for, element_json
from dicomweb_server.dicom.ingest import configure_pydicom

FILES = sorted(
    glob.glob(os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files", "*.dcm"))
)


def _normalize(element: dict[str, Any]) -> dict[str, Any]:
    """pydicom keeps '' for empty values in a list and insignificant padding; the
    standard wants null (PS3.18 F.2.5) and padding is not part of a value."""
    out = dict(element)
    if "Value" in out and out["vr"] != "PN":
        out["Value"] = [
            None if v == "" else v.strip() if isinstance(v, str) else v for v in out["Value"]
        ]
    return out


def _compare(ds: Dataset, counts: dict[str, int]) -> None:
    charset = ds.get("SpecificCharacterSet") if 0x00080005 in ds else None
    codec = codec_for(charset)
    for tag in list(ds.keys()):  # keys(): iterating would convert every element
        raw = ds.get_item(tag)
        if not isinstance(raw, RawDataElement) or raw.value is None:
            continue
        try:
            vr = raw.VR or str(dictionary_VR(tag))
        except KeyError:
            continue
        if vr == "SQ":
            for item in ds[tag].value:
                _compare(item, counts)
            continue
        if codec is None:
            continue
        fast = element_json(vr, raw.value, codec)
        if fast is None:
            counts["fallback"] += 1
            continue
        try:
            expected = ds[tag].to_json_dict(None, 10**9)
        except ValueError:
            continue  # pydicom cannot encode it (e.g. IS '1A'); ours keeps the text
        assert _normalize(fast) == _normalize(expected), (hex(int(tag)), vr, raw.value[:60])
        counts["checked"] += 1


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_matches_pydicom(path: str) -> None:
    configure_pydicom()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        pytest.skip("pydicom itself cannot read this sample")
    if not ds.is_little_endian:
        pytest.skip("big endian objects take the pydicom path")
    counts = {"checked": 0, "fallback": 0}
    _compare(ds, counts)


@pytest.mark.parametrize(
    ("vr", "raw", "codec", "expected"),
    [
        ("CS", b"ORIGINAL\\PRIMARY ", "ascii", ["ORIGINAL", "PRIMARY"]),
        ("UI", b"1.2.3\x00", "ascii", ["1.2.3"]),
        ("LO", b"M\xfcller ", "latin_1", ["Müller"]),
        ("LO", "Ωmega".encode(), "utf_8", ["Ωmega"]),
        ("IS", b"12\\-3", "ascii", [12, -3]),
        ("DS", b"1.5\\2e3 ", "ascii", [1.5, 2000.0]),
        ("US", b"\x01\x00\x02\x00", "ascii", [1, 2]),
        ("FD", b"\x00\x00\x00\x00\x00\x00\xf0?", "ascii", [1.0]),
        ("AT", b"\x10\x00\x10\x00", "ascii", ["00100010"]),
        ("LO", b"a\\\\b", "ascii", ["a", None, "b"]),
        (
            "PN",
            b"Doe^John=\xe5\xb1\xb1\xe7\x94\xb0",
            "utf_8",
            [{"Alphabetic": "Doe^John", "Ideographic": "山田"}],
        ),
    ],
)
def test_values(vr: str, raw: bytes, codec: str, expected: list[Any]) -> None:
    assert element_json(vr, raw, codec) == {"vr": vr, "Value": expected}


def test_empty_and_fallbacks() -> None:
    assert element_json("LO", b"", "ascii") == {"vr": "LO"}
    assert element_json("LO", b"  ", "ascii") == {"vr": "LO"}
    assert element_json("SQ", b"\x00", "ascii") is None
    assert element_json("UN", b"\x00", "ascii") is None
    assert element_json("US", b"\x00", "ascii") is None  # odd length: let pydicom decide
    assert element_json("OB", b"\x01\x02", "ascii") == {"vr": "OB", "InlineBinary": "AQI="}
    assert codec_for("ISO_IR 100") == "latin_1"
    assert codec_for(["ISO 2022 IR 6", "ISO 2022 IR 87"]) is None
    assert codec_for(None) == "ascii"
