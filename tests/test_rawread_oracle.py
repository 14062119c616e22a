"""The oracle: the raw reader's analysis equals the pydicom path's, for every object.

``analyse(fast=True)`` (rawread + rawanalyse, falling back to pydicom) and
``analyse(fast=False)`` (pydicom only) must give equal ``InstanceRecord``s, every field
and every metadata byte included, or reject with the same reason and message. Objects:
pydicom's test files, the test and benchmark generators, and crafted edge cases and
damage (truncation at many offsets, garbage, odd structures).
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import struct
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom._dicom_dict import DicomDictionary
from pydicom.data import get_charset_files, get_palette_files, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from benchmarks.datasets import Image, Patient, Series, Study, build_dataset, to_bytes
from dicomweb_server.dicom import rawanalyse
from dicomweb_server.dicom.ingest import DicomRejected, analyse, configure_pydicom
from tests.dicomgen import bare_dataset, make_dataset, to_part10

EXPLICIT = "1.2.840.10008.1.2.1"
_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
UNDEFINED = 0xFFFFFFFF


def _outcome(data: bytes | str, fast: bool, **kw: Any) -> tuple[Any, ...]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in production: pydicom's warnings only log
        fp = open(data, "rb") if isinstance(data, str) else io.BytesIO(data)  # noqa: SIM115
        with fp:
            try:
                return ("stored", analyse(fp, fast=fast, **kw))
            except DicomRejected as exc:
                return ("rejected", exc.reason, str(exc), exc.sop_class_uid, exc.sop_instance_uid)
            except Exception as exc:  # the same unexpected error on both paths is equal too
                return ("error", type(exc).__name__, str(exc))


def handled(data: bytes, threshold: int = 1024) -> bool:
    """Whether the raw path decides the object itself (no pydicom fallback)."""
    raw = rawanalyse.prepare(io.BytesIO(data), len(data), max(threshold, 1024))
    return raw is not None and rawanalyse.metadata(raw, "/b", threshold) is not None


def check(data: bytes | str, **kw: Any) -> tuple[Any, ...]:
    fast, slow = _outcome(data, True, **kw), _outcome(data, False, **kw)
    if fast[0] == slow[0] == "stored":
        for f in dataclasses.fields(fast[1]):
            assert getattr(fast[1], f.name) == getattr(slow[1], f.name), f.name
    assert fast == slow
    return fast


# --- hand-made encodings -------------------------------------------------------------


def el(
    tag: int, vr: str, value: bytes, *, implicit: bool = False, undefined: bool = False
) -> bytes:
    """One element, little endian; ``undefined`` writes length FFFFFFFF (``value`` must
    then carry its own delimiter)."""
    length = UNDEFINED if undefined else len(value)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<I", length) + value
    if vr in _LONG:
        return head + vr.encode() + b"\0\0" + struct.pack("<I", length) + value
    return head + vr.encode() + struct.pack("<H", length) + value


def item(body: bytes, *, undefined: bool = False) -> bytes:
    if undefined:
        return b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body + b"\xfe\xff\x0d\xe0\0\0\0\0"
    return b"\xfe\xff\x00\xe0" + struct.pack("<I", len(body)) + body


SEQ_END = b"\xfe\xff\xdd\xe0\0\0\0\0"


def seq(tag: int, items: list[bytes], *, undefined: bool, implicit: bool = False) -> bytes:
    body = b"".join(items)
    return el(
        tag, "SQ", body + SEQ_END if undefined else body, implicit=implicit, undefined=undefined
    )


def text(value: str, codec: str = "ascii", pad: bytes = b" ") -> bytes:
    raw = value.encode(codec)
    return raw + pad if len(raw) % 2 else raw


def uid_value(value: str) -> bytes:
    return text(value, pad=b"\0")


def meta(ts: str = EXPLICIT) -> bytes:
    body = el(0x00020001, "OB", b"\0\1") + el(0x00020010, "UI", uid_value(ts))
    return b"\0" * 128 + b"DICM" + el(0x00020000, "UL", struct.pack("<I", len(body))) + body


def base_elements(**override: tuple[str, bytes] | None) -> dict[int, tuple[str, bytes]]:
    elements: dict[int, tuple[str, bytes]] = {
        0x00080016: ("UI", uid_value("1.2.840.10008.5.1.4.1.1.7")),
        0x00080018: ("UI", uid_value("1.2.3.4.5.6")),
        0x00080060: ("CS", text("OT")),
        0x00100010: ("PN", text("Doe^Jane")),
        0x00100020: ("LO", text("PID-9")),
        0x0020000D: ("UI", uid_value("1.2.3.4")),
        0x0020000E: ("UI", uid_value("1.2.3.4.5")),
        0x00280002: ("US", struct.pack("<H", 1)),
        0x00280004: ("CS", text("MONOCHROME2")),
        0x00280010: ("US", struct.pack("<H", 4)),
        0x00280011: ("US", struct.pack("<H", 4)),
        0x00280100: ("US", struct.pack("<H", 8)),
        0x00280101: ("US", struct.pack("<H", 8)),
        0x00280103: ("US", struct.pack("<H", 0)),
        0x7FE00010: ("OB", bytes(range(16))),
    }
    for key, value in override.items():
        tag = int(key[1:], 16)
        if value is None:
            elements.pop(tag, None)
        else:
            elements[tag] = value
    return elements


def body(
    elements: dict[int, tuple[str, bytes]],
    *,
    implicit: bool = False,
    extra: list[tuple[int, bytes]] = (),  # type: ignore[assignment]
) -> bytes:
    """Elements sorted by tag; ``extra`` (tag, encoded bytes) are placed by tag too."""
    parts = [(tag, el(tag, vr, value, implicit=implicit)) for tag, (vr, value) in elements.items()]
    parts += list(extra)
    return b"".join(encoded for _, encoded in sorted(parts, key=lambda p: p[0]))


def crafted() -> Iterator[tuple[str, bytes]]:
    yield "plain", meta() + body(base_elements())
    yield "implicit", meta(ImplicitVRLittleEndian) + body(base_elements(), implicit=True)
    yield "bare-explicit", body(base_elements())
    yield "bare-implicit", body(base_elements(), implicit=True)
    yield "meta-without-preamble", meta()[132:] + body(base_elements())
    yield (
        "latin1",
        meta()
        + body(
            base_elements(
                t00080005=("CS", text("ISO_IR 100")),
                t00100010=("PN", text("Müller^Zoë", "latin_1")),
            )
        ),
    )
    yield (
        "utf8",
        meta()
        + body(
            base_elements(
                t00080005=("CS", text("ISO_IR 192")), t00100010=("PN", text("Ωmega^Ñandú", "utf_8"))
            )
        ),
    )
    yield "utf8-undeclared", meta() + body(base_elements(t00100010=("PN", text("Ωmega", "utf_8"))))
    yield (
        "charset-multi",
        meta()
        + body(
            base_elements(
                t00080005=("CS", text("\\ISO 2022 IR 100")),
                t00100010=("PN", text("M\xfcller", "latin_1")),
            )
        ),
    )
    yield "charset-nul", meta() + body(base_elements(t00080005=("CS", b"ISO_IR 100\0\0")))
    yield "charset-empty", meta() + body(base_elements(t00080005=("CS", b"")))
    yield "charset-unknown", meta() + body(base_elements(t00080005=("CS", text("ISO_IR 144"))))
    yield (
        "multi-valued",
        meta()
        + body(
            base_elements(
                t00080008=("CS", text("ORIGINAL\\PRIMARY\\AXIAL")),
                t00081030=("LO", text("a\\\\b")),
                t00200037=("DS", text("1\\0\\0\\0\\1\\0")),
                t00280030=("DS", text(" 0.5\\0.5 ")),
            )
        ),
    )
    yield (
        "odd-lengths",
        meta() + body(base_elements(t00100020=("LO", b"ABC"), t00081030=("LO", b"X"))),
    )
    yield "uid-trailing-space", meta() + body(base_elements(t00080018=("UI", b"1.2.3.4.5.6 ")))
    yield "uid-nul-padded-many", meta() + body(base_elements(t0020000D=("UI", b"1.2.3\0\0\0")))
    yield "uid-invalid", meta() + body(base_elements(t00080018=("UI", text("1.2.abc"))))
    yield "uid-leading-zero", meta() + body(base_elements(t0020000E=("UI", text("1.02.3"))))
    yield "uid-too-long", meta() + body(base_elements(t0020000E=("UI", text("1." + "2" * 70))))
    yield "uid-missing", meta() + body(base_elements(t0020000E=None))
    yield "uid-empty", meta() + body(base_elements(t00080016=("UI", b"")))
    yield "uid-as-LO", meta() + body(base_elements(t00080016=("LO", text("1.2.3"))))
    yield "uid-multi", meta() + body(base_elements(t0020000D=("UI", text("1.2.3\\1.2.4"))))
    yield "no-uids", meta() + body({0x00100010: ("PN", text("Nobody"))})
    yield "noise-bare", body({0x00100010: ("PN", text("Nobody"))})
    yield "pixel-short", meta() + body(base_elements(t7FE00010=("OB", bytes(10))))
    yield (
        "pixel-frames-IS",
        meta() + body(base_elements(t00280008=("IS", text("2")), t7FE00010=("OB", bytes(32)))),
    )
    yield (
        "pixel-frames-short",
        meta() + body(base_elements(t00280008=("IS", text("3")), t7FE00010=("OB", bytes(32)))),
    )
    yield (
        "pixel-frames-float",
        meta() + body(base_elements(t00280008=("IS", text("2.0")), t7FE00010=("OB", bytes(32)))),
    )
    yield "pixel-rows-empty", meta() + body(base_elements(t00280010=("US", b"")))
    yield "pixel-rows-two", meta() + body(base_elements(t00280010=("US", b"\4\0\4\0")))
    yield "pixel-ow", meta() + body(base_elements(t7FE00010=("OW", bytes(16))))
    yield (
        "pixel-big",
        meta()
        + body(
            base_elements(
                t00280010=("US", struct.pack("<H", 64)),
                t00280011=("US", struct.pack("<H", 64)),
                t7FE00010=("OW", bytes(4096)),
            )
        ),
    )
    yield "photometric-nul", meta() + body(base_elements(t00280004=("CS", b"RGB\0")))
    yield "photometric-empty", meta() + body(base_elements(t00280004=("CS", b"")))
    yield "no-pixels", meta() + body(base_elements(t7FE00010=None))
    yield (
        "extended-offset-table",
        meta() + body(base_elements(t7FE00001=("OV", bytes(8)), t7FE00010=("OB", bytes(16)))),
    )
    yield (
        "private",
        meta()
        + body(
            base_elements(
                t00090010=("LO", text("ACME 1.0")),
                t00091001=("LO", text("secret")),
                t00091002=("OB", bytes(2000)),
                t00091003=("UN", bytes(3000)),
                t00091004=("DS", text("1.5")),
            )
        ),
    )
    yield (
        "private-implicit",
        meta(ImplicitVRLittleEndian)
        + body(
            base_elements(t00090010=("LO", text("ACME 1.0")), t00091001=("LO", text("x"))),
            implicit=True,
        ),
    )
    yield "un-small", meta() + body(base_elements(t00100020=("UN", text("PID-9"))))
    yield "un-empty", meta() + body(base_elements(t00100030=("UN", b"")))
    yield "un-large", meta() + body(base_elements(t00091003=("UN", bytes(1500))))
    yield (
        "long-text",
        meta()
        + body(base_elements(t00204000=("LT", text("x" * 2001)), t00081030=("LO", text("y" * 60)))),
    )
    yield (
        "long-text-implicit",
        meta(ImplicitVRLittleEndian)
        + body(base_elements(t00204000=("LT", text("x " * 900))), implicit=True),
    )
    yield "ob-inline", meta() + body(base_elements(t00420011=("OB", bytes(range(200)))))
    yield (
        "ambiguous-implicit",
        meta(ImplicitVRLittleEndian)
        + body(base_elements(t00280106=("US", b"\0\0")), implicit=True),
    )
    yield "photometric-latin1", meta() + body(base_elements(t00280004=("CS", b"RG\xc9 ")))
    yield "modality-latin1", meta() + body(base_elements(t00080060=("CS", b"\xc9T")))
    yield from _us_or_ss()
    yield (
        "out-of-order",
        meta()
        + body(base_elements(), extra=[(0x00300000, el(0x00080020, "DA", text("20240101")))]),
    )
    yield (
        "duplicate",
        meta() + body(base_elements(), extra=[(0x00100021, el(0x00100020, "LO", text("DUP")))]),
    )
    yield (
        "unknown-vr",
        meta() + body(base_elements(), extra=[(0x00100021, el(0x00100021, "XX", text("A")))]),
    )
    yield (
        "lowercase-vr",
        meta() + body(base_elements(), extra=[(0x00100021, el(0x00100021, "lo", text("A")))]),
    )
    yield (
        "command-group",
        meta()
        + body(base_elements(), extra=[(0x00000002, el(0x00000002, "UI", uid_value("1.2.3")))]),
    )
    yield (
        "item-delimiter-top",
        meta() + body(base_elements(), extra=[(0x00300000, b"\xfe\xff\x0d\xe0\0\0\0\0")]),
    )
    yield "explicit-declared-implicit-data", meta() + body(base_elements(), implicit=True)
    yield "implicit-declared-explicit-data", meta(ImplicitVRLittleEndian) + body(base_elements())
    yield "big-endian-declared", meta("1.2.840.10008.1.2.2") + body(base_elements())
    yield "deflate-declared", meta("1.2.840.10008.1.2.1.99") + body(base_elements())
    yield "unknown-syntax", meta("1.2.3.4.5") + body(base_elements())
    yield "jpeg-declared-native", meta("1.2.840.10008.1.2.4.50") + body(base_elements())
    yield "trailing-zeros-4", meta() + body(base_elements()) + bytes(4)
    yield "trailing-zeros-8", meta() + body(base_elements()) + bytes(8)
    yield "trailing-zeros-12", meta() + body(base_elements()) + bytes(12)
    yield "trailing-garbage", meta() + body(base_elements()) + b"\x01\x02\x03"
    yield from _sequences()
    yield from _encapsulated()
    yield from _every_vr()
    rng = random.Random(7)
    for n in (1, 7, 100, 132, 400, 3000):
        yield f"garbage-{n}", bytes(rng.randrange(256) for _ in range(n))
    yield "zeros", bytes(300)
    yield "dicm-only", b"\0" * 128 + b"DICM"
    yield "meta-only", meta()


def _us_or_ss() -> Iterator[tuple[str, bytes]]:
    """Implicit VR "US or SS": resolved by the Pixel Representation, as pydicom does."""
    implicit = meta(ImplicitVRLittleEndian)
    for representation in (0, 1, None):
        for tag, value in ((0x00280106, b"\xfe\xff"), (0x00280120, b"\x00\x80"), (0x00280107, b"")):
            elements = base_elements(t00280103=None)
            if representation is not None:
                elements[0x00280103] = ("US", struct.pack("<H", representation))
            elements[tag] = ("US", value)
            name = f"us-or-ss-{representation}-{tag:08X}-{len(value)}"
            yield name, implicit + body(elements, implicit=True)
    two = base_elements(t00280106=("US", b"\1\0\2\0"))
    yield "us-or-ss-two-values", implicit + body(two, implicit=True)
    lut = base_elements(t00281101=("US", b"\0\1\0\0\x10\0"))
    yield "us-or-ss-lut-descriptor", implicit + body(lut, implicit=True)
    in_item = seq(
        0x00289110,
        [item(el(0x00280106, "US", b"\1\0", implicit=True))],
        undefined=False,
        implicit=True,
    )
    yield (
        "us-or-ss-in-item",
        implicit + body(base_elements(), implicit=True, extra=[(0x00289110, in_item)]),
    )


def _sequences() -> Iterator[tuple[str, bytes]]:
    leaf = el(0x00080100, "SH", text("T-1")) + el(0x00080102, "SH", text("SRT"))
    nested_undefined = seq(
        0x00400275,
        [
            item(
                el(0x00321060, "LO", text("proc"))
                + seq(0x00400008, [item(leaf), item(leaf, undefined=True)], undefined=True),
                undefined=True,
            ),
            item(b"", undefined=True),
            item(b""),
        ],
        undefined=True,
    )
    nested_defined = seq(
        0x00081140,
        [item(el(0x00081150, "UI", uid_value("1.2.3")) + el(0x00081155, "UI", uid_value("1.2.4")))],
        undefined=False,
    )
    yield (
        "seq-nested-undefined",
        meta()
        + body(
            base_elements(), extra=[(0x00400275, nested_undefined), (0x00081140, nested_defined)]
        ),
    )
    yield (
        "seq-empty",
        meta()
        + body(
            base_elements(),
            extra=[
                (0x00081140, seq(0x00081140, [], undefined=False)),
                (0x00400275, seq(0x00400275, [], undefined=True)),
            ],
        ),
    )
    bulk_in_item = seq(0x00400275, [item(el(0x00420011, "OB", bytes(1500)))], undefined=True)
    yield "seq-bulk-in-item", meta() + body(base_elements(), extra=[(0x00400275, bulk_in_item)])
    charset_in_item = seq(
        0x00400275,
        [
            item(
                el(0x00080005, "CS", text("ISO_IR 100"))
                + el(0x00321060, "LO", text("é", "latin_1"))
            )
        ],
        undefined=False,
    )
    yield (
        "seq-charset-in-item",
        meta() + body(base_elements(), extra=[(0x00400275, charset_in_item)]),
    )
    implicit_seq = seq(
        0x00081140,
        [item(el(0x00081150, "UI", uid_value("1.2.3"), implicit=True), undefined=True)],
        undefined=True,
        implicit=True,
    )
    yield (
        "seq-implicit",
        meta(ImplicitVRLittleEndian)
        + body(base_elements(), implicit=True, extra=[(0x00081140, implicit_seq)]),
    )
    yield (
        "seq-last-undefined",
        meta() + body(base_elements(t7FE00010=None), extra=[(0x00400275, nested_undefined)]),
    )
    bad_item = seq(0x00400275, [b"\xfe\xff\x01\xe0\0\0\0\0"], undefined=True)
    yield "seq-bad-item-tag", meta() + body(base_elements(), extra=[(0x00400275, bad_item)])
    unordered = seq(
        0x00400275,
        [item(el(0x00080102, "SH", text("SRT")) + el(0x00080100, "SH", text("T")))],
        undefined=False,
    )
    yield "seq-item-out-of-order", meta() + body(base_elements(), extra=[(0x00400275, unordered)])
    implicit_item = seq(
        0x00400275, [item(el(0x00080100, "SH", text("T"), implicit=True))], undefined=False
    )
    yield (
        "seq-implicit-item-in-explicit",
        meta() + body(base_elements(), extra=[(0x00400275, implicit_item)]),
    )
    un_seq = el(0x00091010, "UN", item(leaf, undefined=True) + SEQ_END, undefined=True)
    yield (
        "seq-un-undefined",
        meta() + body(base_elements(t00090010=("LO", text("ACME"))), extra=[(0x00091010, un_seq)]),
    )


def _fragments(frags: list[bytes], bot: bytes = b"") -> bytes:
    return item(bot) + b"".join(item(f) for f in frags) + SEQ_END


def _encapsulated() -> Iterator[tuple[str, bytes]]:
    jpeg = "1.2.840.10008.1.2.4.50"
    two = _fragments([b"\xff\xd8" + bytes(30), b"\xff\xd8" + bytes(10)])
    elements = base_elements(t00280008=("IS", text("2")), t7FE00010=None)
    yield (
        "encaps-two-frames",
        meta(jpeg)
        + body(elements, extra=[(0x7FE00010, el(0x7FE00010, "OB", two, undefined=True))]),
    )
    with_bot = _fragments(
        [b"\xff\xd8" + bytes(6), bytes(8), b"\xff\xd8" + bytes(6)], struct.pack("<2I", 0, 32)
    )
    yield (
        "encaps-bot",
        meta(jpeg)
        + body(elements, extra=[(0x7FE00010, el(0x7FE00010, "OB", with_bot, undefined=True))]),
    )
    tricky = _fragments([b"\xff\xd8" + SEQ_END + bytes(6)])
    yield (
        "encaps-delimiter-in-fragment",
        meta(jpeg)
        + body(
            base_elements(t7FE00010=None),
            extra=[(0x7FE00010, el(0x7FE00010, "OB", tricky, undefined=True))],
        ),
    )
    yield (
        "encaps-no-delimiter",
        meta(jpeg)
        + body(
            base_elements(t7FE00010=None),
            extra=[(0x7FE00010, el(0x7FE00010, "OB", two[:-8], undefined=True))],
        ),
    )
    yield (
        "encaps-delimiter-with-length",
        meta(jpeg)
        + body(
            base_elements(t7FE00010=None),
            extra=[(0x7FE00010, el(0x7FE00010, "OB", two[:-4] + b"\1\0\0\0", undefined=True))],
        ),
    )


def _every_vr() -> Iterator[tuple[str, bytes]]:
    """For each VR, a dictionary attribute holding an empty and a typical value."""
    samples = {
        "AE": text("STORESCP"), "AS": text("045Y"), "AT": struct.pack("<2H", 0x18, 0x1063),
        "CS": text("A\\B"), "DA": text("20240101"), "DS": text("1.5\\-2e3"),
        "DT": text("20240101120000.5"), "FD": struct.pack("<2d", 1.5, -0.25),
        "FL": struct.pack("<f", 2.5), "IS": text("12\\-3"), "LO": text("long  "),
        "LT": text("line one\r\nline two  "), "OB": bytes(range(10)), "OD": struct.pack("<d", 3.0),
        "OF": struct.pack("<f", 1.0), "OL": struct.pack("<I", 7), "OV": struct.pack("<Q", 9),
        "OW": bytes(range(12)), "PN": text("A^B=C^D"), "SH": text(" short"),
        "SL": struct.pack("<i", -5), "SS": struct.pack("<2h", -1, 2), "ST": text("st"),
        "SV": struct.pack("<q", -9), "TM": text("101010.123"), "UC": text("uc\\uc2"),
        "UI": uid_value("1.2.3"), "UL": struct.pack("<I", 3), "UR": text("http://x/y "),
        "US": struct.pack("<H", 3), "UT": text("ut text "), "UV": struct.pack("<Q", 2**40),
    }  # fmt: skip
    skip = {0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x00080005}
    chosen: dict[str, int] = {}
    for tag, entry in sorted(DicomDictionary.items()):
        vr, retired = entry[0], entry[3]
        usable = 0x00080000 < tag < 0x7FE00000 and tag >> 16 != 0x0028 and tag not in skip
        if vr in samples and vr not in chosen and usable and not retired:
            chosen[vr] = tag
    for vr, tag in sorted(chosen.items()):
        for name, value in (("empty", b""), ("value", samples[vr])):
            elements = base_elements()
            elements[tag] = (vr, value)
            yield f"vr-{vr}-{name}", meta() + body(elements)
            yield (
                f"vr-{vr}-{name}-implicit",
                meta(ImplicitVRLittleEndian) + body(elements, implicit=True),
            )


def generated() -> Iterator[tuple[str, bytes]]:
    """The test suite's and the benchmark's generators."""
    ds = make_dataset()
    yield "dicomgen-explicit", to_part10(ds)
    yield "dicomgen-implicit", to_part10(ds, ImplicitVRLittleEndian)
    yield "dicomgen-bare", bare_dataset(ds)
    yield "dicomgen-frames", to_part10(make_dataset(frames=3))
    yield (
        "dicomgen-latin1",
        to_part10(make_dataset(charset="ISO_IR 100", patient_name="Müller^Zoë")),
    )
    yield "dicomgen-utf8", to_part10(make_dataset(charset="ISO_IR 192", patient_name="Ωmega^Ñ"))
    yield (
        "dicomgen-japanese",
        to_part10(
            make_dataset(SpecificCharacterSet=["", "ISO 2022 IR 87"], patient_name="Yamada^Tarou")
        ),
    )
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.3"
    ref.ReferencedSOPInstanceUID = "1.2.3.4"
    nested = make_dataset(ReferencedImageSequence=Sequence([ref, Dataset()]))
    yield "dicomgen-sequence", to_part10(nested)
    yield "dicomgen-sequence-implicit", to_part10(nested, ImplicitVRLittleEndian)
    patients = [
        Patient("P1", "Doe^John", "19700101", "M"),
        Patient("P2", "Ñandú^José", "19800101", "F", "ISO_IR 192"),
        Patient("P3", "Müller^Zoë", "19900101", "O", "ISO_IR 100"),
    ]
    images = [
        Image(64, 64),
        Image(32, 48, bits=8),
        Image(16, 16, signed=True),
        Image(8, 8, frames=3),
    ]
    for n, (patient, image) in enumerate(zip(patients * 2, images + images[:2], strict=False)):
        study = Study(
            f"1.2.826.0.1.3680043.10.1234.9.{n}",
            patient,
            "20240102",
            "101500",
            "A1",
            "1",
            "XR",
            "Ref^Doc",
        )
        for modality in ("CT", "MR", "DX"):
            series = Series(study.uid + ".1", study, modality, 1, "series")
            built = build_dataset(
                series, study.uid + ".1.1", 1, image, 1.5 if modality == "CT" else None
            )
            yield f"bench-{n}-{modality}", to_bytes(built)


ALL = list(crafted()) + list(generated())


@pytest.fixture(scope="module", autouse=True)
def _lenient() -> None:
    configure_pydicom()


@pytest.mark.parametrize(("name", "data"), ALL, ids=[name for name, _ in ALL])
def test_same_outcome(name: str, data: bytes) -> None:
    check(data)


def test_thresholds_and_uri() -> None:
    """The bulk data threshold and the instance URI reach both paths alike."""

    def uri_for(study: str, series: str, sop: str) -> str:
        return f"/other/{study}/{sop}"

    for _, data in ALL[:20] + [x for x in ALL if x[0].startswith(("private", "seq-", "ob-"))]:
        for threshold in (0, 16, 1024, 4096):
            check(data, bulk_threshold=threshold)
        check(data, uri_for=uri_for)


HANDLED = [
    "plain", "implicit", "bare-explicit", "bare-implicit", "latin1", "utf8", "multi-valued",
    "odd-lengths", "uid-trailing-space", "private", "un-large", "seq-nested-undefined",
    "seq-empty", "seq-bulk-in-item", "seq-charset-in-item", "seq-implicit", "seq-last-undefined",
    "encaps-two-frames", "encaps-bot", "encaps-delimiter-in-fragment", "dicomgen-explicit",
    "dicomgen-implicit", "dicomgen-bare", "dicomgen-frames", "ambiguous-implicit",
    "us-or-ss-0-00280106-2", "us-or-ss-1-00280106-2", "us-or-ss-1-00280120-2", "dicomgen-sequence",
    "dicomgen-sequence-implicit", "bench-0-CT", "bench-1-MR", "bench-2-DX", "bench-3-CT",
]  # fmt: skip
NOT_HANDLED = [
    "big-endian-declared", "deflate-declared", "unknown-syntax", "charset-multi", "un-small",
    "out-of-order", "duplicate", "unknown-vr", "long-text", "us-or-ss-None-00280106-2",
    "us-or-ss-two-values", "us-or-ss-lut-descriptor", "us-or-ss-in-item",
    "dicomgen-japanese", "pixel-short", "uid-invalid", "uid-missing", "trailing-zeros-8",
    "encaps-no-delimiter", "seq-un-undefined", "explicit-declared-implicit-data",
]  # fmt: skip


def test_fast_path_is_taken() -> None:
    """The oracle would pass vacuously if the raw path never decided anything."""
    by_name = dict(ALL)
    assert [n for n in HANDLED if not handled(by_name[n])] == []
    assert [n for n in NOT_HANDLED if handled(by_name[n])] == []


def _sample_files() -> list[str]:
    found = get_testdata_files() + get_charset_files() + get_palette_files("*.dcm")
    files = [f for f in found if os.path.isfile(f)]
    return sorted(files)


@pytest.mark.parametrize("path", _sample_files(), ids=os.path.basename)
def test_pydicom_test_files(path: str) -> None:
    check(path)


TRUNCATED = ["plain", "seq-nested-undefined", "encaps-two-frames", "dicomgen-sequence", "implicit"]


@pytest.mark.parametrize("name", TRUNCATED)
def test_truncated_everywhere(name: str) -> None:
    """Cut at every offset: the raw path must never accept what pydicom's rejects."""
    data = dict(ALL)[name]
    step = max(1, len(data) // 400)
    for cut in sorted({*range(0, len(data), step), *range(max(0, len(data) - 40), len(data))}):
        check(data[:cut])


def test_truncated_sample_files() -> None:
    picks = [
        f
        for f in _sample_files()
        if os.path.basename(f) in ("CT_small.dcm", "JPEG2000.dcm", "MR_small.dcm", "rtplan.dcm")
    ]
    assert picks
    for path in picks:
        with open(path, "rb") as fh:
            data = fh.read()
        for cut in range(0, len(data), max(1, len(data) // 150)):
            check(data[:cut])


def test_large_file_is_mapped(tmp_path: Any) -> None:
    """Objects above the read-whole size go through mmap; same outcome."""
    big = base_elements(
        t00280010=("US", struct.pack("<H", 1024)),
        t00280011=("US", struct.pack("<H", 1024)),
        t00280100=("US", struct.pack("<H", 16)),
        t7FE00010=("OW", bytes(2 * 1024 * 1024)),
    )
    path = tmp_path / "big.dcm"
    path.write_bytes(meta() + body(big))
    outcome = check(str(path))
    assert outcome[0] == "stored"
    assert handled(path.read_bytes())


MUTATED = [
    "plain", "implicit", "seq-nested-undefined", "encaps-bot", "latin1", "bench-0-CT",
    "bench-1-MR", "dicomgen-sequence-implicit", "dicomgen-bare",
]  # fmt: skip


@pytest.mark.parametrize("name", MUTATED)
def test_mutated_bytes(name: str) -> None:
    """Random byte changes (seeded) in the header, before the Pixel Data: whatever pydicom
    makes of them, the raw path agrees (a run of 36,000 such objects agreed too)."""
    data = dict(ALL)[name]
    start = 132 if data[128:132] == b"DICM" else 0
    end = data.find(b"\xe0\x7f\x10\x00")
    end = end if end > start else len(data)
    rng = random.Random(name)
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(start, end)
            damaged[position] = rng.choice((0, 0xFF, 0x20, 0x2E, 0x5C, rng.randrange(256)))
        check(bytes(damaged))
