"""Modality Performed Procedure Step rules (PS3.4 F.7), pure: what an N-CREATE or an
N-SET must carry, and what a finished step tells the workitem it performed.

A refusal is data: the status code of PS3.4 F.7.2.1.3 / F.7.2.2.3 / F.7.2.2.4 and
PS3.7 C.5 with its Error Comment (and Error ID where the standard gives one).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dicomweb_server.dicom.attributes import keyword_of, tag_hex

MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
FINAL = (COMPLETED, DISCONTINUED)

# PS3.7 C.5 failure codes used by N-CREATE / N-SET.
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
# PS3.4 Table F.7.2-2: the Specific Error Comment of an N-SET on a finished step.
NO_LONGER_UPDATABLE = 0xA710

_STATUS = 0x00400252
_SCHEDULED_STEP_ATTRIBUTES = 0x00400270
_STUDY_UID = 0x0020000D
_START_DATE, _START_TIME = 0x00400244, 0x00400245
_END_DATE, _END_TIME = 0x00400250, 0x00400251
_PERFORMED_SERIES = 0x00400340

# Type 1 at N-CREATE (PS3.4 Table F.7.2-1, SCU column): present and not empty.
CREATE_TYPE_1 = (
    _SCHEDULED_STEP_ATTRIBUTES,
    0x00400253,  # Performed Procedure Step ID
    0x00400241,  # Performed Station AE Title
    _START_DATE,
    _START_TIME,
    _STATUS,
    0x00080060,  # Modality
)
# "Not allowed" in N-SET (PS3.4 Table F.7.2-1, N-SET column): the step's identity, its
# patient and its scheduling are fixed at N-CREATE.
NOT_SETTABLE = frozenset(
    {
        0x00080016,  # SOP Class UID
        0x00080018,  # SOP Instance UID
        _SCHEDULED_STEP_ATTRIBUTES,
        0x00100010,  # Patient's Name
        0x00100020,  # Patient ID
        0x00100021,  # Issuer of Patient ID
        0x00100030,  # Patient's Birth Date
        0x00100040,  # Patient's Sex
        0x00081120,  # Referenced Patient Sequence
        0x00400253,  # Performed Procedure Step ID
        0x00400241,  # Performed Station AE Title
        0x00400242,  # Performed Station Name
        0x00400243,  # Performed Location
        _START_DATE,
        _START_TIME,
        0x00080060,  # Modality
        0x00200010,  # Study ID
    }
)
# Type 1 when the status becomes COMPLETED or DISCONTINUED (Table F.7.2-1 "Final State").
FINAL_TYPE_1 = (_END_DATE, _END_TIME, _PERFORMED_SERIES)


@dataclass(frozen=True)
class Refusal:
    status: int
    comment: str
    error_id: int | None = None


@dataclass(frozen=True)
class StepReference:
    """One item of the Scheduled Step Attributes Sequence: what links the performed
    step to a scheduled one (a workitem)."""

    accession_number: str
    study_uid: str
    step_id: str
    requested_procedure_id: str


def _has_value(ds: Dataset, tag: int) -> bool:
    if tag not in ds:
        return False
    value = ds[tag].value
    return value not in (None, "", b"") and not (isinstance(value, list) and not value)


def _missing(ds: Dataset, tags: tuple[int, ...]) -> Refusal | None:
    absent = [keyword_of(t) for t in tags if t not in ds]
    if absent:
        return Refusal(MISSING_ATTRIBUTE, "missing " + ", ".join(absent))
    empty = [keyword_of(t) for t in tags if not _has_value(ds, t)]
    if empty:
        return Refusal(MISSING_ATTRIBUTE_VALUE, "no value for " + ", ".join(empty))
    return None


def status_of(ds: Dataset) -> str:
    return str(ds.get(_STATUS).value or "").strip().upper() if _STATUS in ds else ""


def check_create(ds: Dataset | None) -> Refusal | None:
    """N-CREATE (PS3.4 F.7.2.1.3): the Type 1 attributes, status IN PROGRESS (else
    0106 Invalid Attribute Value), and a Study Instance UID in each scheduled step item."""
    if ds is None:
        return Refusal(MISSING_ATTRIBUTE, "the N-CREATE has no attribute list")
    refusal = _missing(ds, CREATE_TYPE_1)
    if refusal is not None:
        return refusal
    if status_of(ds) != IN_PROGRESS:
        return Refusal(INVALID_ATTRIBUTE_VALUE, "PerformedProcedureStepStatus must be IN PROGRESS")
    for item in ds[_SCHEDULED_STEP_ATTRIBUTES].value:
        refusal = _missing(item, (_STUDY_UID,))
        if refusal is not None:
            return Refusal(refusal.status, "ScheduledStepAttributesSequence: " + refusal.comment)
    return None


def check_set(current_status: str, changes: Dataset | None) -> Refusal | None:
    """N-SET (PS3.4 F.7.2.2.3): only while IN PROGRESS (else 0110 with the Specific
    Error Comment of Table F.7.2-2), never the attributes fixed at N-CREATE, and only
    the three statuses of Table F.1-3."""
    if current_status != IN_PROGRESS:
        return Refusal(
            PROCESSING_FAILURE,
            "Performed Procedure Step Object may no longer be updated",
            NO_LONGER_UPDATABLE,
        )
    if changes is None:
        return Refusal(MISSING_ATTRIBUTE, "the N-SET has no modification list")
    fixed = [keyword_of(int(e.tag)) for e in changes if int(e.tag) in NOT_SETTABLE]
    if fixed:
        return Refusal(INVALID_ATTRIBUTE_VALUE, "may not be set: " + ", ".join(fixed))
    if _STATUS in changes and status_of(changes) not in (IN_PROGRESS, *FINAL):
        return Refusal(
            INVALID_ATTRIBUTE_VALUE,
            "PerformedProcedureStepStatus must be IN PROGRESS, COMPLETED or DISCONTINUED",
        )
    return None


def check_final(merged: Dataset) -> Refusal | None:
    """The final-state requirements (Table F.7.2-1): end date and time, and at least
    one Performed Series Sequence item."""
    return _missing(merged, FINAL_TYPE_1)


def references(ds: Dataset) -> list[StepReference]:
    out = []
    for item in ds.get("ScheduledStepAttributesSequence", []):
        out.append(
            StepReference(
                str(item.get("AccessionNumber", "") or "").strip(),
                str(item.get("StudyInstanceUID", "") or "").strip(),
                str(item.get("ScheduledProcedureStepID", "") or "").strip(),
                str(item.get("RequestedProcedureID", "") or "").strip(),
            )
        )
    return out


def outputs(ds: Dataset) -> list[tuple[str, str, str, str]]:
    """(study, series, SOP class, SOP instance) of every object the step reports in its
    Performed Series Sequence (images and non-image objects)."""
    refs = references(ds)
    study = refs[0].study_uid if refs else ""
    found = []
    for series in ds.get("PerformedSeriesSequence", []):
        series_uid = str(series.get("SeriesInstanceUID", "") or "")
        for key in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for ref in series.get(key, []):
                sop_class = str(ref.get("ReferencedSOPClassUID", "") or "")
                sop = str(ref.get("ReferencedSOPInstanceUID", "") or "")
                if study and series_uid and sop_class and sop:
                    found.append((study, series_uid, sop_class, sop))
    return found


def _v(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _datetime(ds: Dataset, date_tag: int, time_tag: int) -> str:
    date = str(ds.get(date_tag).value or "") if date_tag in ds else ""
    time = str(ds.get(time_tag).value or "") if time_tag in ds else ""
    return (date + time).strip() if date else ""


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


def performed(ds: Dataset) -> dict[str, Any]:
    """What the finished step tells its workitem, as UPS attributes (PS3.4 Table
    CC.2.5-3): a Unified Procedure Step Performed Procedure Sequence item with the
    performed times, station and description; for DISCONTINUED also a progress item
    with the cancellation time and the discontinuation reason."""
    item: dict[str, Any] = {}
    start = _datetime(ds, _START_DATE, _START_TIME)
    end = _datetime(ds, _END_DATE, _END_TIME) or now()
    if start:
        item["00404050"] = _v("DT", start)
    item["00404051"] = _v("DT", end)
    aet = str(ds.get("PerformedStationAETitle", "") or "").strip()
    if aet:
        meaning = str(ds.get("PerformedStationName", "") or "").strip() or aet
        code = {
            "00080100": _v("SH", aet),
            "00080102": _v("SH", "99DCMWEB"),
            "00080104": _v("LO", meaning),
        }
        item["00404028"] = _v("SQ", code)
    for keyword, tag, vr in (
        ("PerformedProcedureStepDescription", "00400254", "LO"),
        ("CommentsOnThePerformedProcedureStep", "00400280", "ST"),
    ):
        text = str(ds.get(keyword, "") or "").strip()
        if text:
            item[tag] = _v(vr, text)
    out: dict[str, Any] = {"00741216": _v("SQ", item)}
    if status_of(ds) == DISCONTINUED:
        progress: dict[str, Any] = {"00404052": _v("DT", end)}
        reasons = ds.get("PerformedProcedureStepDiscontinuationReasonCodeSequence", [])
        if reasons:
            meaning = str(reasons[0].get("CodeMeaning", "") or "").strip()
            if meaning:
                progress["00741238"] = _v("LT", meaning)
            progress["0074100E"] = _v("SQ", *[r.to_json_dict() for r in reasons])
        out["00741002"] = _v("SQ", progress)
    return out


def merged(current: dict[str, Any], changes: Dataset) -> dict[str, Any]:
    """The step after an N-SET: each modified attribute replaced, a sequence as a whole
    (PS3.7 10.1.1); Specific Character Set is not replaced, the stored form is Unicode."""
    out = dict(current)
    for elem in changes:
        if int(elem.tag) == 0x00080005:
            continue
        one = Dataset()
        one.add(elem)
        out.update(one.to_json_dict())
    return out


def json_of(ds: Dataset) -> dict[str, Any]:
    return {k: v for k, v in ds.to_json_dict().items() if k != tag_hex(0x00080005)}
