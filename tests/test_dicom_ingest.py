"""Store-time analysis (dicomweb_server.dicom.ingest): offsets, DICOM JSON, rejections."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pydicom.config
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicomweb_server.dicom import status
from dicomweb_server.dicom.ingest import DicomRejected, analyse, configure_pydicom
from tests.dicomgen import make_dataset, to_part10

EVRLE = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


@pytest.fixture(autouse=True, scope="module")
def _lenient_pydicom() -> Iterator[None]:
    """pydicom configured as the server configures it at start, for this module only."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    decoder_log = logging.getLogger("pydicom.pixels.decoders.base")
    level = decoder_log.level
    configure_pydicom()
    yield
    settings.reading_validation_mode, settings.writing_validation_mode = saved
    decoder_log.setLevel(level)


def sample(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is not installed"
    return Path(path).read_bytes()


def rejected(data: bytes) -> DicomRejected:
    with pytest.raises(DicomRejected) as err:
        analyse(io.BytesIO(data))
    return err.value


def test_top_level_bulk_offsets_point_at_the_value_bytes() -> None:
    ds = make_dataset(rows=16, columns=16)
    document = bytes(range(256)) * 20
    ds.add_new(0x00420011, "OB", document)  # Encapsulated Document, 5120 bytes
    for syntax in (EVRLE, IMPLICIT):
        data = to_part10(ds, syntax)
        rec = analyse(io.BytesIO(data))
        assert rec.transfer_syntax == syntax
        offset, length = rec.bulk["7FE00010"]
        assert data[offset : offset + length] == ds.PixelData
        offset, length = rec.bulk["00420011"]
        assert data[offset : offset + length] == document


def test_bulk_data_uris_replace_large_and_pixel_values_only() -> None:
    ds = make_dataset()
    icon = Dataset()
    icon.Rows = icon.Columns = 4
    icon.BitsAllocated = 8
    icon.PixelData = bytes(16)
    ds.IconImageSequence = [icon]
    ds.add_new(0x00420011, "OB", bytes(4096))
    ds.add_new(0x00281201, "OW", bytes(range(64)))  # small: stays inline
    rec = analyse(io.BytesIO(to_part10(ds)))
    meta: dict[str, Any] = json.loads(rec.metadata)
    base = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/bulkdata"
    )
    assert meta["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{base}/7FE00010"}
    assert meta["00420011"] == {"vr": "OB", "BulkDataURI": f"{base}/00420011"}
    assert "InlineBinary" in meta["00281201"]
    assert "BulkDataURI" not in meta["00281201"]
    # Nested bulk values get a path through the item index; only top level has offsets.
    nested = meta["00880200"]["Value"][0]["7FE00010"]
    assert nested == {"vr": "OB", "BulkDataURI": f"{base}/00880200.0.7FE00010"}
    assert set(rec.bulk) == {"7FE00010", "00420011"}
    # No file meta and no group lengths in the JSON model (PS3.18 F.2.2); keys sorted.
    assert not any(k.startswith("0002") or k.endswith("0000") for k in meta)
    assert list(meta) == sorted(meta)


def test_metadata_equals_pydicom_json_for_non_bulk_attributes() -> None:
    data = sample("rtplan.dcm")
    rec = analyse(io.BytesIO(data))
    ours = json.loads(rec.metadata)
    theirs = pydicom.dcmread(io.BytesIO(data)).to_json_dict()
    theirs = {k: v for k, v in theirs.items() if not k.endswith("0000")}
    assert ours == theirs
    assert rec.transfer_syntax == IMPLICIT
    assert ours["300A00B0"]["vr"] == "SQ"  # Beam Sequence, nested items compared above
    assert ours["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Last^First^mid^pre"}]}


def test_latin1_names_are_decoded() -> None:
    ds = make_dataset(charset="ISO_IR 100", patient_name="Müller^Jürgen")
    ds.ReferringPhysicianName = "Gérard^Ève"
    data = to_part10(ds)
    assert b"M\xfcller^J\xfcrgen" in data  # really Latin-1 in the file
    rec = analyse(io.BytesIO(data))
    meta = json.loads(rec.metadata)
    assert meta["00100010"]["Value"] == [{"Alphabetic": "Müller^Jürgen"}]
    assert rec.patient["name"] == "Müller^Jürgen"
    assert rec.patient["name_norm"] == " MULLER JURGEN "
    assert rec.study["referring_physician"] == "Gérard^Ève"


def test_bare_dataset_and_meta_without_preamble_are_recognised() -> None:
    ds = make_dataset()
    del ds.file_meta
    bare = io.BytesIO()
    pydicom.dcmwrite(bare, ds, implicit_vr=True, little_endian=True)
    rec = analyse(io.BytesIO(bare.getvalue()))
    assert (rec.has_file_meta, rec.transfer_syntax) == (False, IMPLICIT)
    no_preamble = to_part10(make_dataset())[132:]
    rec = analyse(io.BytesIO(no_preamble))
    assert (rec.has_file_meta, rec.transfer_syntax) == (True, EVRLE)


def test_deflated_data_set_is_checked_inflated_and_has_no_in_place_offsets() -> None:
    # Value positions of a deflated data set (PS3.5 A.5) are in the inflated bytes; the
    # file is far shorter than its Pixel Data, which is no sign of truncation.
    data = sample("image_dfl.dcm")
    rec = analyse(io.BytesIO(data))
    assert rec.transfer_syntax == "1.2.840.10008.1.2.1.99"
    assert rec.bulk == {}  # bulk data are read by parsing, never at a file offset
    meta = json.loads(rec.metadata)
    assert meta["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    assert rejected(data[:-20]).reason == status.CANNOT_UNDERSTAND


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns; the server logs it
def test_truncated_objects_are_rejected_as_cannot_understand() -> None:
    err = rejected(sample("MR_truncated.dcm"))
    assert err.reason == status.CANNOT_UNDERSTAND
    assert "truncated" in err.message
    data = to_part10(make_dataset())
    # Cut inside a UID value: the short value still looks like a UID, so the
    # declared length must be checked before any value is decoded.
    series_at = data.index(b"\x20\x00\x0e\x00", 132)  # (0020,000E)
    cut = rejected(data[: series_at + 8 + 20])
    assert (cut.reason, "truncated" in cut.message) == (status.CANNOT_UNDERSTAND, True)
    # Cut inside the Pixel Data value, and inside the header of an element.
    assert rejected(data[:-10]).reason == status.CANNOT_UNDERSTAND
    rows_at = data.index(b"\x28\x00\x10\x00")  # (0028,0010) Rows
    assert rejected(data[: rows_at + 5]).reason == status.CANNOT_UNDERSTAND
    # Encapsulated Pixel Data without its Sequence Delimitation Item.
    j2k = sample("JPEG2000.dcm")
    assert rejected(j2k[:-4]).reason == status.CANNOT_UNDERSTAND
    assert rejected(j2k[:-30]).reason == status.CANNOT_UNDERSTAND


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Hello, this is a text file and certainly not DICOM.\n" * 4,
        bytes(1000),
        bytes(range(256)) * 4,
        b"%PDF-1.4\n" + bytes(300),
    ],
)
def test_garbage_is_rejected_as_cannot_understand(data: bytes) -> None:
    err = rejected(data)
    assert err.reason == status.CANNOT_UNDERSTAND
    assert err.message


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"SOPInstanceUID": None}, "SOP Instance UID is missing"),
        ({"SOPClassUID": None}, "SOP Class UID is missing"),
        ({"StudyInstanceUID": "1.2.abc"}, "Study Instance UID '1.2.abc' is not a valid UID"),
        ({"SeriesInstanceUID": "1.02.3"}, "not a valid UID"),
        ({"SOPInstanceUID": "1." + "2" * 70}, "not a valid UID"),
    ],
)
def test_missing_or_invalid_uids_do_not_match_the_sop_class(
    change: dict[str, str | None], words: str
) -> None:
    ds = make_dataset()
    for keyword, value in change.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    err = rejected(out.getvalue())
    assert err.reason == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert words in err.message
    # Identified (both SOP UIDs valid): reportable in the Failed SOP Sequence.
    identified = not {"SOPInstanceUID", "SOPClassUID"} & set(change)
    assert err.sop_instance_uid == (ds.SOPInstanceUID if identified else None)
    assert err.sop_class_uid == (ds.SOPClassUID if identified else None)


def test_short_pixel_data_does_not_match_the_sop_class() -> None:
    ds = make_dataset(rows=8, columns=8)
    ds.PixelData = ds.PixelData[:64]
    err = rejected(to_part10(ds))
    assert err.reason == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "Pixel Data has 64 bytes, 128 expected" in err.message


def test_unknown_transfer_syntax_is_c122() -> None:
    data = to_part10(make_dataset())
    fake = b"1.2.840.10008.1.2.9\x00"  # same length as 1.2.840.10008.1.2.1 + padding
    assert data.count(EVRLE.encode() + b"\x00") == 1
    data = data.replace(EVRLE.encode() + b"\x00", fake)
    assert rejected(data).reason == status.TRANSFER_SYNTAX_NOT_SUPPORTED
