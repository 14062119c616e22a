"""UPS workitems as DICOM JSON: the attributes, their checks and the index keys.

A workitem is a Unified Procedure Step instance (PS3.4 Annex CC; attributes in
PS3.4 Table CC.2.5-3), kept as DICOM JSON (PS3.18 F.2). Everything here is pure: no
database, no HTTP. The state rules are in ``workitem_states``, matching in
``workitem_match``.

Decisions where the standard leaves room (for the conformance statement):

- Type 2 attributes an N-CREATE must carry (Patient's Name, ID, Birth Date, Sex, ...)
  are added empty when a client leaves them out, rather than refusing the workitem.
- Worklist Label, when not given, is set by the SCP (PS3.4 Table CC.2.5-3 allows it).
- A missing Procedure Step State on create means SCHEDULED; any other value is refused.
"""

from __future__ import annotations

import copy
import datetime
import re
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.uid import generate_uid

from dicomweb_server.dicom.attributes import keyword_of
from dicomweb_server.dicom.uids import is_valid_uid
from dicomweb_server.errors import InvalidRequest

SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED = "SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"
STATES = (SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED)
FINAL_STATES = frozenset({COMPLETED, CANCELED})

# UPS Push SOP Class: the SOP Class of every workitem (PS3.4 CC.3.1).
UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"
DEFAULT_WORKLIST_LABEL = "DICOMWEB"

SPECIFIC_CHARACTER_SET = "00080005"
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
ACCESSION_NUMBER = "00080050"
REFERRING_PHYSICIAN_NAME = "00080090"
TRANSACTION_UID = "00081195"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
CODE_VALUE = "00080100"
CODING_SCHEME_DESIGNATOR = "00080102"
CODE_MEANING = "00080104"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
PATIENT_BIRTH_DATE = "00100030"
PATIENT_SEX = "00100040"
STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
SCHEDULED_START = "00404005"
MODIFICATION_DATETIME = "00404010"
PERFORMED_WORKITEM_CODE_SEQUENCE = "00404019"
SCHEDULED_WORKITEM_CODE_SEQUENCE = "00404018"
STATION_NAME_SEQUENCE = "00404025"
STATION_CLASS_SEQUENCE = "00404026"
PERFORMED_STATION_NAME_SEQUENCE = "00404028"
OUTPUT_INFORMATION_SEQUENCE = "00404033"
SCHEDULED_HUMAN_PERFORMERS = "00404034"
INPUT_READINESS_STATE = "00404041"
PERFORMED_START = "00404050"
PERFORMED_END = "00404051"
CANCELLATION_DATETIME = "00404052"
TYPE_OF_INSTANCES = "0040E020"
REFERENCED_REQUEST_SEQUENCE = "0040A370"
PROCEDURE_STEP_STATE = "00741000"
PROGRESS_INFORMATION_SEQUENCE = "00741002"
PROGRESS = "00741004"
PROGRESS_DESCRIPTION = "00741006"
COMMUNICATIONS_URI_SEQUENCE = "00741008"
CONTACT_URI = "0074100A"
CONTACT_DISPLAY_NAME = "0074100C"
DISCONTINUATION_REASON_SEQUENCE = "0074100E"
PERFORMED_PROCEDURE_SEQUENCE = "00741216"
PRIORITY = "00741200"
WORKLIST_LABEL = "00741202"
PROCEDURE_STEP_LABEL = "00741204"
REASON_FOR_CANCELLATION = "00741238"
REQUESTING_AE = "00741236"

# Enumerated values, PS3.3 C.30.1 (priority, input readiness).
PRIORITIES = frozenset({"HIGH", "MEDIUM", "LOW"})
READINESS = frozenset({"READY", "UNAVAILABLE", "INCOMPLETE"})

# N-CREATE Type 1 attributes the SCU must give (PS3.4 Table CC.2.5-3).
_CREATE_REQUIRED = (PRIORITY, PROCEDURE_STEP_LABEL, SCHEDULED_START, INPUT_READINESS_STATE)
# N-CREATE Type 2 attributes: present, possibly empty; added empty when missing.
_CREATE_TYPE2: dict[str, str] = {
    PATIENT_NAME: "PN",
    PATIENT_ID: "LO",
    PATIENT_BIRTH_DATE: "DA",
    PATIENT_SEX: "CS",
    "00380010": "LO",  # AdmissionID
    "00401001": "SH",  # RequestedProcedureID (kept in the request item by orders)
    SCHEDULED_WORKITEM_CODE_SEQUENCE: "SQ",
    STATION_NAME_SEQUENCE: "SQ",
    STATION_CLASS_SEQUENCE: "SQ",
    "00404027": "SQ",  # ScheduledStationGeographicLocationCodeSequence
    "00404021": "SQ",  # InputInformationSequence
    "00741210": "SQ",  # ScheduledProcessingParametersSequence
    REFERENCED_REQUEST_SEQUENCE: "SQ",
}
# Attributes an Update (N-SET) may not touch (PS3.4 Table CC.2.5-3, CC.2.6.1.2): the
# identity, the state (Change State does that) and the lock.
UPDATE_REFUSED = frozenset(
    {
        SOP_CLASS_UID,
        SOP_INSTANCE_UID,
        PROCEDURE_STEP_STATE,
        TRANSACTION_UID,
        MODIFICATION_DATETIME,
        "00100021",  # IssuerOfPatientID: N-SET "Not allowed"
        "00100024",  # IssuerOfPatientIDQualifiersSequence: N-SET "Not allowed"
        "00741224",  # ReplacedProcedureStepSequence: N-SET "Not allowed"
    }
)

_KEY_RE = re.compile(r"^[0-9A-F]{8}$")
_DT_RE = re.compile(
    r"^[0-9]{4}([0-9]{2}([0-9]{2}([0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?)?)?)?([+-][0-9]{4})?$"
)


@dataclass(frozen=True)
class Workitem:
    uid: str  # SOP Instance UID of the UPS
    state: str  # one of STATES
    transaction_uid: str | None  # never shown to clients (PS3.4 CC.2.7.3)
    dataset: dict[str, Any]  # DICOM JSON, with ProcedureStepState, no TransactionUID


# -- DICOM JSON access -------------------------------------------------------------------


def values(dataset: dict[str, Any], key: str) -> list[Any]:
    element = dataset.get(key)
    if not isinstance(element, dict):
        return []
    found = element.get("Value")
    return found if isinstance(found, list) else []


def first(dataset: dict[str, Any], key: str) -> Any:
    found = values(dataset, key)
    return found[0] if found else None


def text(dataset: dict[str, Any], key: str) -> str | None:
    """The first value as text (a PN's Alphabetic group), None when absent or empty."""
    value = first(dataset, key)
    if isinstance(value, dict):
        value = value.get("Alphabetic")
    if value is None:
        return None
    out = str(value).strip()
    return out or None


def items(dataset: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [i for i in values(dataset, key) if isinstance(i, dict)]


def element(vr: str, *value: Any) -> dict[str, Any]:
    if not value:
        return {"vr": vr}
    return {"vr": vr, "Value": list(value)}


def has_value(dataset: dict[str, Any], key: str) -> bool:
    """PS3.4 CC.2.5.1.1 speaks of attributes that 'have a value': present, not empty."""
    return any(v not in (None, "") for v in values(dataset, key))


def code_item(value: str, scheme: str, meaning: str) -> dict[str, Any]:
    return {
        CODE_VALUE: element("SH", value),
        CODING_SCHEME_DESIGNATOR: element("SH", scheme),
        CODE_MEANING: element("LO", meaning),
    }


def new_uid() -> str:
    """A fresh UID (a Transaction UID the archive takes as performer)."""
    return str(generate_uid())


def now_dt(now: datetime.datetime | None = None) -> str:
    """A DT value for now, in UTC with its offset (PS3.5 6.2)."""
    moment = now or datetime.datetime.now(datetime.UTC)
    return moment.strftime("%Y%m%d%H%M%S.%f") + "+0000"


# -- checks ----------------------------------------------------------------------------


def _name(key: str) -> str:
    return f"{keyword_of(int(key, 16))} ({key})"


def check_json(dataset: Any, what: str = "workitem") -> dict[str, Any]:
    """A well-formed DICOM JSON object (PS3.18 F.2), checked by reading it with pydicom."""
    if not isinstance(dataset, dict):
        raise InvalidRequest(f"the {what} must be a DICOM JSON object")
    for key, value in dataset.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise InvalidRequest(f"{key!r} is not an attribute tag (8 upper-case hex digits)")
        if not isinstance(value, dict) or not isinstance(value.get("vr"), str):
            raise InvalidRequest(f"{_name(key)}: each attribute needs an object with a 'vr'")
    _check_values(dataset)
    try:
        Dataset.from_json(dataset)
    except Exception as exc:  # pydicom raises several kinds for malformed elements
        raise InvalidRequest(f"the {what} is not valid DICOM JSON: {exc}") from exc
    return dataset


def _check_values(dataset: dict[str, Any]) -> None:
    """UIDs and date-times must be well formed wherever they are (PS3.5 6.2, 9.1)."""
    for key, elem in dataset.items():
        vr = elem.get("vr")
        if vr == "SQ":
            for item in items(dataset, key):
                _check_values(item)
            continue
        for value in values(dataset, key):
            if value is None:
                continue
            if vr == "UI" and not (isinstance(value, str) and is_valid_uid(value)):
                raise InvalidRequest(f"{_name(key)}: {value!r} is not a valid UID")
            if vr == "DT" and not (isinstance(value, str) and _DT_RE.match(value)):
                raise InvalidRequest(f"{_name(key)}: {value!r} is not a date-time (DT)")


def _check_enumerated(dataset: dict[str, Any]) -> None:
    priority = text(dataset, PRIORITY)
    if priority is not None and priority not in PRIORITIES:
        raise InvalidRequest(f"{_name(PRIORITY)} must be HIGH, MEDIUM or LOW, not {priority!r}")
    readiness = text(dataset, INPUT_READINESS_STATE)
    if readiness is not None and readiness not in READINESS:
        raise InvalidRequest(
            f"{_name(INPUT_READINESS_STATE)} must be READY, UNAVAILABLE or INCOMPLETE, "
            f"not {readiness!r}"
        )


def prepare_create(dataset: Any, uid: str | None, now: str) -> tuple[str, dict[str, Any]]:
    """Check an N-CREATE dataset (PS3.4 CC.2.5.1.1, Table CC.2.5-3) and complete it.

    Returns the workitem's UID and its dataset as stored: SCHEDULED, the SOP Class
    and Instance UIDs, the modification date-time set, missing Type 2 attributes
    added empty. Raises InvalidRequest naming the first offending attribute.
    """
    dataset = copy.deepcopy(check_json(dataset))
    # Table CC.2.5-3: Transaction UID "2/2, shall be empty" at creation.
    if has_value(dataset, TRANSACTION_UID):
        raise InvalidRequest(f"{_name(TRANSACTION_UID)} must be empty when creating a workitem")
    dataset.pop(TRANSACTION_UID, None)
    given = text(dataset, SOP_INSTANCE_UID)
    if uid is not None and given is not None and uid != given:
        raise InvalidRequest(
            f"the workitem UID {uid} differs from the dataset's {_name(SOP_INSTANCE_UID)} {given}"
        )
    # Neither given: the SCP assigns one (PS3.18 11.4.1 lets the origin server do so).
    uid = uid or given or new_uid()
    if not is_valid_uid(uid):
        raise InvalidRequest(f"{uid!r} is not a valid UID")
    sop_class = text(dataset, SOP_CLASS_UID)
    if sop_class is not None and sop_class != UPS_PUSH_SOP_CLASS:
        raise InvalidRequest(
            f"{_name(SOP_CLASS_UID)} of a workitem is {UPS_PUSH_SOP_CLASS}, not {sop_class}"
        )
    state = text(dataset, PROCEDURE_STEP_STATE)
    if state is not None and state != SCHEDULED:
        raise InvalidRequest(
            f"{_name(PROCEDURE_STEP_STATE)} of a new workitem must be SCHEDULED, not {state!r}"
        )
    for key in _CREATE_REQUIRED:
        if not has_value(dataset, key):
            raise InvalidRequest(f"{_name(key)} is required to create a workitem")
    _check_enumerated(dataset)
    for key in (PROGRESS_INFORMATION_SEQUENCE, PERFORMED_PROCEDURE_SEQUENCE):
        if items(dataset, key):
            raise InvalidRequest(f"{_name(key)} must be empty when a workitem is created")
    for key, vr in _CREATE_TYPE2.items():
        dataset.setdefault(key, element(vr))
    if not has_value(dataset, WORKLIST_LABEL):
        dataset[WORKLIST_LABEL] = element("LO", DEFAULT_WORKLIST_LABEL)
    dataset[SOP_CLASS_UID] = element("UI", UPS_PUSH_SOP_CLASS)
    dataset[SOP_INSTANCE_UID] = element("UI", uid)
    dataset[PROCEDURE_STEP_STATE] = element("CS", SCHEDULED)
    dataset[MODIFICATION_DATETIME] = element("DT", now)
    return uid, sort_keys(dataset)


def check_update(raw: Any) -> dict[str, Any]:
    """An Update's dataset (PS3.4 CC.2.6, PS3.18 11.6): well formed, nothing refused."""
    changes = check_json(raw, "update")
    for key in changes:
        if key in UPDATE_REFUSED:
            if key == SOP_INSTANCE_UID:
                continue  # allowed when it names the same workitem; checked by the caller
            raise InvalidRequest(f"{_name(key)} cannot be changed by an update")
    _check_enumerated(changes)
    for key in _CREATE_REQUIRED:
        if key in changes and not has_value(changes, key):
            raise InvalidRequest(f"{_name(key)} cannot be emptied: it is required")
    return changes


def apply_update(dataset: dict[str, Any], changes: dict[str, Any], now: str) -> dict[str, Any]:
    """The dataset with ``changes`` merged: top-level attributes replaced (sequences as a
    whole, PS3.4 CC.2.6.1.2's 'replaces the value'), the modification time set."""
    merged = copy.deepcopy(dataset)
    for key, value in changes.items():
        if key == SOP_INSTANCE_UID:
            continue
        merged[key] = copy.deepcopy(value)
    merged[MODIFICATION_DATETIME] = element("DT", now)
    return sort_keys(merged)


def sort_keys(dataset: dict[str, Any]) -> dict[str, Any]:
    return {key: dataset[key] for key in sorted(dataset)}


# -- what the index keeps --------------------------------------------------------------


def request_value(dataset: dict[str, Any], key: str) -> str | None:
    """An order's Accession Number or Study Instance UID: in the Referenced Request
    Sequence item (where orders put it), else at the top level."""
    for item in items(dataset, REFERENCED_REQUEST_SEQUENCE):
        found = text(item, key)
        if found:
            return found
    return text(dataset, key)


def normalize_dt(value: str | None, pad: str = "0") -> str | None:
    """YYYYMMDDHHMMSS.FFFFFF for ordering, reduced precision padded with ``pad``; the UTC
    offset is dropped (workitems are compared in their own local time)."""
    if not value:
        return None
    value = value.strip()
    match = re.match(r"^([0-9]{4,14})(\.[0-9]{1,6})?([+-][0-9]{4})?$", value)
    if match is None:
        return None
    main, frac = match.group(1), (match.group(2) or ".")[1:]
    if pad == "0":
        main = main + "0101000000"[len(main) - 4 :] if len(main) < 14 else main
        return f"{main}.{frac.ljust(6, '0')}"
    main = main.ljust(14, "9")
    return f"{main}.{frac.ljust(6, '9')}"


@dataclass(frozen=True)
class WorkitemKeys:
    """The attributes the index keeps in columns, to find workitems without the JSON."""

    accession_number: str | None
    study_uid: str | None
    patient_id: str | None
    scheduled_start: str | None
    station_ae: str | None
    modality: str | None


def index_keys(dataset: dict[str, Any]) -> WorkitemKeys:
    station = items(dataset, STATION_NAME_SEQUENCE)
    station_class = items(dataset, STATION_CLASS_SEQUENCE)
    return WorkitemKeys(
        accession_number=request_value(dataset, ACCESSION_NUMBER),
        study_uid=request_value(dataset, STUDY_INSTANCE_UID),
        patient_id=text(dataset, PATIENT_ID),
        scheduled_start=normalize_dt(text(dataset, SCHEDULED_START)),
        station_ae=text(station[0], CODE_VALUE) if station else None,
        modality=text(station_class[0], CODE_VALUE) if station_class else None,
    )


def public(dataset: dict[str, Any]) -> dict[str, Any]:
    """The dataset as clients see it: never the Transaction UID (PS3.4 CC.2.7.3)."""
    return {k: v for k, v in dataset.items() if k != TRANSACTION_UID}
