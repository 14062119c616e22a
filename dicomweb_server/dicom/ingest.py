"""Analyse one DICOM object once, at store time.

Everything later requests need is computed here and kept: the index attributes,
the DICOM JSON metadata (PS3.18 F.2) with bulk data replaced by BulkDataURIs, and
the byte position of each top-level bulk value, so that no hot path re-parses a file.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson
import pydicom
import pydicom.config
import pydicom.filereader
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from dicomweb_server.dicom import frames as frame_index
from dicomweb_server.dicom import rawanalyse, status
from dicomweb_server.dicom.attributes import Level, level_of, tag_hex
from dicomweb_server.dicom.pydicom_json import JsonBuilder
from dicomweb_server.dicom.rawread import PIXEL_DATA, UNDEFINED_LENGTH
from dicomweb_server.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    is_valid_uid,
)
from dicomweb_server.errors import InvalidRequest

_SEQ_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_SEQ_DELIMITER_BE = b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"
# Any one of these makes a parse plausibly DICOM rather than noise.
_IDENTIFYING_TAGS = (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)


class DicomRejected(InvalidRequest):
    """The object cannot be stored; ``reason`` is the STOW-RS FailureReason code.

    ``sop_class_uid`` and ``sop_instance_uid`` are set when both were read and valid,
    so that the failure can be reported per instance in the Failed SOP Sequence
    (PS3.18 Table I.1-1: both are Type 1 there), else under Other Failures Sequence.
    """

    def __init__(
        self,
        message: str,
        reason: int = status.CANNOT_UNDERSTAND,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid


@dataclass
class InstanceRecord:
    """What the index and the metadata service keep about one stored instance."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    has_file_meta: bool
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    # DICOM JSON of the whole dataset; BulkDataURIs are relative to the DICOMweb root.
    metadata: bytes
    study_attrs: bytes
    series_attrs: bytes
    # Top-level bulk values: tag hex -> [file offset of the value, length or -1 if undefined].
    bulk: dict[str, list[int]] = field(default_factory=dict)


def configure_pydicom() -> None:
    """Be lenient when reading: real modalities write values that break strict rules.

    pydicom's decoder logs a full traceback for every plugin that fails on undecodable
    pixel data before it raises; the caller reports the raised error (which names each
    plugin's reason) once, so those per-plugin tracebacks are silenced.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)


def normalize_name(value: str) -> str:
    """Case- and accent-insensitive form of a person name for fuzzy matching.

    Components (^) and groups (=) become word separators; the result is framed by
    spaces so that 'word starts with' is a plain substring test: LIKE '% JOH%'.
    """
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = stripped.upper().replace("^", " ").replace("=", " ").split()
    return " " + " ".join(words) + " " if words else ""


def normalize_time(value: str | None) -> str | None:
    """HHMMSS.FFFFFF padded, so that string order is time order (PS3.5 6.2 TM)."""
    if not value:
        return None
    value = value.strip().replace(":", "")
    main, _, frac = value.partition(".")
    if not main.isdigit() or len(main) > 6:
        return value
    return main.ljust(6, "0") + "." + frac.ljust(6, "0")[:6]


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # an unparseable value must not stop ingest
        return None
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:
        return None


@functools.cache
def _json_key(keyword: str) -> str:
    return tag_hex(pydicom.datadict.tag_for_keyword(keyword) or 0)


@functools.lru_cache(maxsize=8192)
def _level_of_key(key: str) -> Level:
    return level_of(int(key, 16))


class _Attributes:
    """Index values read from the instance's DICOM JSON, whose values are decoded already;
    asking pydicom again costs tens of microseconds per attribute."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def _values(self, keyword: str) -> list[Any] | None:
        elem = self.doc.get(_json_key(keyword))
        values = elem.get("Value") if isinstance(elem, dict) else None
        return values if isinstance(values, list) and values else None

    def text(self, keyword: str) -> str | None:
        """Like ``str(ds.Keyword)``: multiple values joined by backslash, a person name as
        its component groups joined by '=' (PS3.5 6.2)."""
        values = self._values(keyword)
        if values is None:
            return None
        parts = []
        for value in values:
            if isinstance(value, dict):
                groups = [
                    str(value.get(g) or "") for g in ("Alphabetic", "Ideographic", "Phonetic")
                ]
                while groups and not groups[-1]:
                    groups.pop()
                parts.append("=".join(groups))
            else:
                parts.append("" if value is None else str(value))
        return "\\".join(parts).strip() or None

    def integer(self, keyword: str) -> int | None:
        values = self._values(keyword)
        try:
            return None if values is None or values[0] is None else int(values[0])
        except (TypeError, ValueError):
            return None


def _split_levels(metadata: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    study: dict[str, Any] = {}
    series: dict[str, Any] = {}
    for key, value in metadata.items():
        level = _level_of_key(key)
        if level <= Level.STUDY:
            study[key] = value
        elif level == Level.SERIES:
            series[key] = value
    return study, series


def _check_complete(ds: Dataset, fp: BinaryIO, size: int) -> None:
    """Reject truncated objects (PS3.10 7.1: a file holds one complete Data Set).

    Must run before any value is decoded: pydicom keeps a short read as a shorter
    value (a cut UID is still a valid-looking UID), and only the raw elements still
    know the length their header declared. Checked: every defined-length top-level
    value fits the file, and no bytes are left over after the last element (pydicom
    silently stops at an element header cut short).
    """
    # keys(), not iteration: iterating a Dataset would load every deferred value.
    elements = [ds.get_item(tag, keep_deferred=True) for tag in ds.keys()]  # noqa: SIM118
    for raw in elements:
        if not isinstance(raw, RawDataElement) or raw.length == UNDEFINED_LENGTH:
            continue
        if raw.value_tell + raw.length > size:
            raise DicomRejected(
                f"object is truncated: attribute {tag_hex(int(raw.tag))} needs "
                f"{raw.length} bytes at offset {raw.value_tell}, file has {size}"
            )
    last = max(elements, key=lambda e: getattr(e, "value_tell", 0) or 0)
    if isinstance(last, RawDataElement) and last.length == UNDEFINED_LENGTH:
        # An undefined-length value (encapsulated Pixel Data, a sequence) last in the
        # file must end with its Sequence Delimitation Item (PS3.5 7.5.2, A.4).
        fp.seek(size - 8)
        if fp.read(8) not in (_SEQ_DELIMITER_LE, _SEQ_DELIMITER_BE):
            raise DicomRejected(
                f"object is truncated: attribute {tag_hex(int(last.tag))} of undefined "
                "length has no Sequence Delimitation Item"
            )
    elif isinstance(last, RawDataElement) and 0 < size - (last.value_tell + last.length) < 12:
        fp.seek(last.value_tell + last.length)
        if fp.read(12).strip(b"\0"):
            raise DicomRejected(
                f"object is truncated: it ends inside the header of the element after "
                f"{tag_hex(int(last.tag))}"
            )
    if PIXEL_DATA in ds and "Rows" in ds and "Columns" in ds and "BitsAllocated" in ds:
        raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.length != UNDEFINED_LENGTH:
            frames = _int(ds, "NumberOfFrames") or 1
            samples = _int(ds, "SamplesPerPixel") or 1
            bits = _int(ds, "BitsAllocated") or 0
            rows, cols = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
            expected = (rows * cols * samples * frames * bits + 7) // 8
            if raw.length < expected:
                raise DicomRejected(
                    f"Pixel Data has {raw.length} bytes, {expected} expected for "
                    f"{frames} frame(s) of {rows}x{cols}x{samples} at {bits} bits",
                    status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                )


def _inflated(fp: BinaryIO) -> bytes:
    """The data set of a Deflated Explicit VR Little Endian file, inflated (PS3.5 A.5)."""
    fp.seek(0)
    try:
        pydicom.filereader.read_preamble(fp, True)
        pydicom.filereader._read_file_meta_info(fp)
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(fp.read())
    except Exception as exc:
        raise DicomRejected(f"deflated data set cannot be inflated: {exc}") from exc


def _frame_table(
    fp: BinaryIO, ds: frame_index.PixelSource, ts: str, pixel: list[int] | None
) -> bytes:
    """The encoded frame table (schema v3), NO_PIXELS, or NO_FRAMES when frames cannot be
    read in place (deflated, unrecognised fragments)."""
    if ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return frame_index.NO_FRAMES  # positions are in the inflated data set, not the file
    if pixel is None:
        return frame_index.NO_PIXELS
    try:
        table = frame_index.compute(fp, ds, ts, pixel[0], pixel[1])
    except Exception:  # a frame table is an optimisation: never refuse an object for it
        table = None
    return table.encode() if table is not None else frame_index.NO_FRAMES


def read_dataset(fp: BinaryIO, defer_size: int) -> Dataset:
    """Parse a Part 10 file or a bare dataset, without loading large values."""
    try:
        return pydicom.dcmread(fp, defer_size=defer_size, force=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, TypeError) as exc:
        raise DicomRejected(f"not a readable DICOM object: {exc}") from exc
    except Exception as exc:  # pydicom raises a wide variety on garbage input
        raise DicomRejected(f"not a readable DICOM object: {type(exc).__name__}: {exc}") from exc


def analyse(
    fp: BinaryIO,
    *,
    bulk_threshold: int = 1024,
    uri_for: Callable[[str, str, str], str] | None = None,
    fast: bool = True,
) -> InstanceRecord:
    """Validate and describe one object read from ``fp`` (a real file, seekable).

    ``uri_for(study, series, sop)`` gives the instance path under the DICOMweb root;
    the default is the WADO-RS instance resource (PS3.18 10.4.1). ``fast`` tries the
    raw reader first (rawanalyse: same record, or "not handled"); False forces pydicom.
    """
    fp.seek(0, os.SEEK_END)
    size = fp.tell()
    fp.seek(0)
    if size == 0:
        raise DicomRejected("empty part: no DICOM object")
    if fast:
        record = _analyse_raw(fp, size, bulk_threshold, uri_for)
        if record is not None:
            return record
        fp.seek(0)
    ds = read_dataset(fp, defer_size=max(bulk_threshold, 1024))
    meta = getattr(ds, "file_meta", None)
    has_meta = meta is not None and "TransferSyntaxUID" in meta
    if not len(ds):
        raise DicomRejected("no DICOM data elements found")
    if not has_meta and not any(tag in ds for tag in _IDENTIFYING_TAGS):
        # Without a meta header and without any of the identifying attributes, what
        # pydicom "parsed" is noise: Cannot understand (PS3.18 Table I.2-2, C000).
        raise DicomRejected("not a DICOM object: no File Meta Information and no SOP UIDs")
    stored_ts = str(meta.TransferSyntaxUID) if meta is not None and has_meta else None
    deflated = stored_ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    if deflated:
        # Value positions are in the inflated data set (PS3.5 A.5), not in the file:
        # check against the inflated bytes, and keep no in-place offsets.
        inflated = _inflated(fp)
        _check_complete(ds, io.BytesIO(inflated), len(inflated))
    else:
        _check_complete(ds, fp, size)
    sop_class = _text(ds, "SOPClassUID")
    sop_uid = _text(ds, "SOPInstanceUID")
    study_uid = _text(ds, "StudyInstanceUID")
    series_uid = _text(ds, "SeriesInstanceUID")
    # Missing or malformed identifying UIDs (PS3.5 9.1): Data Set does not match SOP
    # Class (A900, PS3.18 Table I.2-2), reported against the instance when it is known.
    known: dict[str, str | None] = {"sop_class_uid": None, "sop_instance_uid": None}
    if sop_class and sop_uid and is_valid_uid(sop_class) and is_valid_uid(sop_uid):
        known = {"sop_class_uid": sop_class, "sop_instance_uid": sop_uid}
    for name, value in (
        ("SOP Class UID", sop_class),
        ("SOP Instance UID", sop_uid),
        ("Study Instance UID", study_uid),
        ("Series Instance UID", series_uid),
    ):
        if not value:
            raise DicomRejected(
                f"required attribute {name} is missing",
                status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                **known,
            )
        if not is_valid_uid(value):
            raise DicomRejected(
                f"{name} {value[:80]!r} is not a valid UID",
                status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                **known,
            )
    assert sop_class and sop_uid and study_uid and series_uid
    if meta is not None and has_meta:
        ts = str(meta.TransferSyntaxUID)
        if not is_valid_uid(ts):
            raise DicomRejected(f"invalid Transfer Syntax UID {ts[:80]!r}")
        if not UID(ts).is_transfer_syntax:
            raise DicomRejected(
                f"unknown transfer syntax {ts}", status.TRANSFER_SYNTAX_NOT_SUPPORTED
            )
    else:
        ts = IMPLICIT_VR_LITTLE_ENDIAN if ds.is_implicit_VR else "1.2.840.10008.1.2.1"

    base = _bulk_base(uri_for, study_uid, series_uid, sop_uid)
    builder = JsonBuilder(base, bulk_threshold, big_endian=ts == EXPLICIT_VR_BIG_ENDIAN)
    metadata = builder.dataset(ds, "", True)
    if deflated:
        builder.bulk.clear()
    frame_table = _frame_table(fp, ds, ts, builder.bulk.get(tag_hex(PIXEL_DATA)))
    uids = (sop_class, sop_uid, study_uid, series_uid)
    return _record(uids, ts, has_meta, metadata, builder.bulk, frame_table)


def _bulk_base(
    uri_for: Callable[[str, str, str], str] | None, study: str, series: str, sop: str
) -> str:
    if uri_for is None:
        return f"/studies/{study}/series/{series}/instances/{sop}/bulkdata"
    return uri_for(study, series, sop) + "/bulkdata"


def _analyse_raw(
    fp: BinaryIO,
    size: int,
    bulk_threshold: int,
    uri_for: Callable[[str, str, str], str] | None,
) -> InstanceRecord | None:
    """The record from the raw reader, or None when the pydicom path must decide."""
    raw = rawanalyse.prepare(fp, size, max(bulk_threshold, 1024))
    if raw is None:
        return None
    uids = (raw.sop_class_uid, raw.sop_instance_uid, raw.study_uid, raw.series_uid)
    built = rawanalyse.metadata(raw, _bulk_base(uri_for, *uids[2:], uids[1]), bulk_threshold)
    if built is None:
        return None
    metadata, bulk = built
    ts = raw.transfer_syntax
    frame_table = _frame_table(fp, raw.pixel, ts, bulk.get(tag_hex(PIXEL_DATA)))
    return _record(uids, ts, raw.has_file_meta, metadata, bulk, frame_table)


def _record(
    uids: tuple[str, str, str, str],
    ts: str,
    has_meta: bool,
    metadata: dict[str, Any],
    bulk: dict[str, list[int]],
    frame_table: bytes,
) -> InstanceRecord:
    sop_class, sop_uid, study_uid, series_uid = uids
    study_json, series_json = _split_levels(metadata)
    attrs = _Attributes(metadata)
    patient_name = attrs.text("PatientName")
    referring = attrs.text("ReferringPhysicianName")
    return InstanceRecord(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_uid,
        study_uid=study_uid,
        series_uid=series_uid,
        transfer_syntax=ts,
        has_file_meta=has_meta,
        patient={
            "patient_id": attrs.text("PatientID") or "",
            "issuer": attrs.text("IssuerOfPatientID") or "",
            "name": patient_name,
            "name_norm": normalize_name(patient_name) if patient_name else None,
            "birth_date": attrs.text("PatientBirthDate"),
            "sex": attrs.text("PatientSex"),
        },
        study={
            "study_date": attrs.text("StudyDate"),
            "study_time": normalize_time(attrs.text("StudyTime")),
            "accession_number": attrs.text("AccessionNumber"),
            "study_id": attrs.text("StudyID"),
            "description": attrs.text("StudyDescription"),
            "referring_physician": referring,
            "referring_norm": normalize_name(referring) if referring else None,
        },
        series={
            "modality": attrs.text("Modality"),
            "series_number": attrs.integer("SeriesNumber"),
            "description": attrs.text("SeriesDescription"),
            "body_part": attrs.text("BodyPartExamined"),
            "series_date": attrs.text("SeriesDate"),
            "pps_start_date": attrs.text("PerformedProcedureStepStartDate"),
            "pps_start_time": normalize_time(attrs.text("PerformedProcedureStepStartTime")),
        },
        instance={
            "instance_number": attrs.integer("InstanceNumber"),
            "rows": attrs.integer("Rows"),
            "columns": attrs.integer("Columns"),
            "bits_allocated": attrs.integer("BitsAllocated"),
            "number_of_frames": attrs.integer("NumberOfFrames"),
            "frames": frame_table,
        },
        metadata=orjson.dumps(metadata),
        study_attrs=orjson.dumps(study_json),
        series_attrs=orjson.dumps(series_json),
        bulk=bulk,
    )
