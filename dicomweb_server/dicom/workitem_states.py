"""UPS state rules: the transition table and the final-state requirements (pure).

PS3.4 Table CC.1.1-2 (the UPS state transition table) with the statuses of PS3.4
CC.2.1.4 (N-ACTION Change State) and CC.2.2.4 (Request Cancel); PS3.4 CC.2.5.1.1 and
Table CC.2.5-1 for what a workitem must hold before it may become COMPLETED or CANCELED.
A refused change raises ``UpsConflict`` carrying the DIMSE status the standard gives,
so every adapter (UPS-RS, DIMSE) reports the same reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from dicomweb_server.dicom.attributes import keyword_of
from dicomweb_server.dicom.workitem import (
    CANCELED,
    CANCELLATION_DATETIME,
    COMPLETED,
    CONTACT_DISPLAY_NAME,
    CONTACT_URI,
    DISCONTINUATION_REASON_SEQUENCE,
    IN_PROGRESS,
    INPUT_READINESS_STATE,
    MODIFICATION_DATETIME,
    OUTPUT_INFORMATION_SEQUENCE,
    PERFORMED_END,
    PERFORMED_PROCEDURE_SEQUENCE,
    PERFORMED_START,
    PERFORMED_STATION_NAME_SEQUENCE,
    PERFORMED_WORKITEM_CODE_SEQUENCE,
    PRIORITY,
    PROCEDURE_STEP_LABEL,
    PROCEDURE_STEP_STATE,
    PROGRESS_INFORMATION_SEQUENCE,
    REASON_FOR_CANCELLATION,
    SCHEDULED,
    SCHEDULED_START,
    SCHEDULED_WORKITEM_CODE_SEQUENCE,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STATES,
    STATION_NAME_SEQUENCE,
    code_item,
    element,
    has_value,
    items,
    sort_keys,
    text,
)
from dicomweb_server.errors import Conflict, InvalidRequest

# Statuses of PS3.4 CC.2.1.4 / CC.2.2.4 / CC.2.6.4 (warnings B3xx, failures C3xx).
ALREADY_CANCELED = 0xB304
ALREADY_COMPLETED = 0xB306
NO_LONGER_UPDATABLE = 0xC300
WRONG_TRANSACTION_UID = 0xC301
ALREADY_IN_PROGRESS = 0xC302
ONLY_CREATE_SCHEDULES = 0xC303
FINAL_STATE_NOT_MET = 0xC304
NOT_IN_PROGRESS = 0xC310
ALREADY_COMPLETED_FAILURE = 0xC311
PERFORMER_UNREACHABLE = 0xC312
PERFORMER_REFUSES_CANCEL = 0xC313

# CID 9300 "Procedure Discontinuation Reasons": used when the canceller gives none.
UNSPECIFIED_DISCONTINUATION = ("110513", "DCM", "Discontinued for unspecified reason")
# Our own coding scheme, for codes the archive fills on a performer's behalf.
LOCAL_SCHEME = "99DCMWEB"


class UpsConflict(Conflict):
    """A change the workitem's state forbids; ``status`` is the standard's code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MissingTransactionUid(InvalidRequest):
    """A change that needs the performer's Transaction UID came without one (C301)."""

    status = WRONG_TRANSACTION_UID


@dataclass(frozen=True)
class Outcome:
    """What a requested change does: the new state (None: unchanged) and warnings."""

    state: str | None
    warnings: tuple[str, ...] = ()
    warning_status: int | None = None


def check_state_value(state: Any) -> str:
    if not isinstance(state, str) or state not in STATES:
        raise InvalidRequest(
            f"ProcedureStepState (00741000) must be one of {', '.join(STATES)}, not {state!r}"
        )
    return state


def already(state: str) -> str:
    """The warning text of PS3.18 Tables 11.7.3-2 and 11.8.3-2."""
    return f"The UPS is already in the requested state of {state}."


def change_state(current: str, target: str, stored_uid: str | None, given_uid: str) -> Outcome:
    """PS3.4 Table CC.1.1-2 for an N-ACTION Change State (PS3.18 11.7)."""
    target = check_state_value(target)
    if target == SCHEDULED:
        raise UpsConflict(
            ONLY_CREATE_SCHEDULES, "a workitem becomes SCHEDULED only when it is created"
        )
    if target == IN_PROGRESS:
        if current == SCHEDULED:
            return Outcome(IN_PROGRESS)
        if given_uid != stored_uid:
            raise _wrong_uid()
        if current == IN_PROGRESS:
            raise UpsConflict(ALREADY_IN_PROGRESS, "the workitem is already IN PROGRESS")
        raise _final(current)
    # target COMPLETED or CANCELED
    if current == SCHEDULED:
        raise UpsConflict(
            NOT_IN_PROGRESS, f"the workitem is SCHEDULED; it must be IN PROGRESS to become {target}"
        )
    if given_uid != stored_uid:
        raise _wrong_uid()
    if current == IN_PROGRESS:
        return Outcome(target)
    if current == target:
        code = ALREADY_COMPLETED if target == COMPLETED else ALREADY_CANCELED
        return Outcome(None, (already(target),), code)
    raise _final(current)


def request_cancel(current: str) -> Outcome:
    """PS3.4 CC.2.2.3 / Table CC.1.1-2, Request Cancel: a SCHEDULED workitem is canceled at
    once; an IN PROGRESS one stays so (its performer is told: UPS Cancel Requested)."""
    if current == SCHEDULED:
        return Outcome(CANCELED)
    if current == IN_PROGRESS:
        return Outcome(None)
    if current == CANCELED:
        return Outcome(None, (already(CANCELED),), ALREADY_CANCELED)
    raise UpsConflict(ALREADY_COMPLETED_FAILURE, "the workitem is already COMPLETED")


def check_updatable(current: str, stored_uid: str | None, given_uid: str | None) -> None:
    """PS3.4 CC.2.6.1.2 (N-SET) / PS3.18 11.6: no Transaction UID is needed while
    SCHEDULED; while IN PROGRESS it must be given and match; final states are frozen."""
    if current in (COMPLETED, CANCELED):
        raise UpsConflict(
            NO_LONGER_UPDATABLE, f"the workitem is {current} and may no longer be updated"
        )
    if current == IN_PROGRESS:
        if given_uid is None:
            raise MissingTransactionUid(
                "the workitem is IN PROGRESS: its Transaction UID is required"
            )
        if given_uid != stored_uid:
            raise _wrong_uid()


def _wrong_uid() -> UpsConflict:
    return UpsConflict(
        WRONG_TRANSACTION_UID, "the Transaction UID is not the one of this workitem's performer"
    )


def _final(current: str) -> UpsConflict:
    return UpsConflict(NO_LONGER_UPDATABLE, f"the workitem is {current} and may no longer change")


# -- final-state requirements (PS3.4 CC.2.5.1.1, Table CC.2.5-3 "Final State") ---------

# R: needed for both final states.
_REQUIRED = (
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    PRIORITY,
    MODIFICATION_DATETIME,
    SCHEDULED_START,
    INPUT_READINESS_STATE,
)
# P: needed in the Performed Procedure Sequence item for COMPLETED.
_COMPLETED_ITEM = (
    PERFORMED_STATION_NAME_SEQUENCE,
    PERFORMED_START,
    PERFORMED_WORKITEM_CODE_SEQUENCE,
    PERFORMED_END,
    OUTPUT_INFORMATION_SEQUENCE,
)
# X: needed in the Progress Information Sequence item for CANCELED.
_CANCELED_ITEM = (CANCELLATION_DATETIME, DISCONTINUATION_REASON_SEQUENCE)


def _label(key: str, parent: str | None = None) -> str:
    name = f"{keyword_of(int(key, 16))} ({key})"
    if parent is None:
        return name
    return f"{keyword_of(int(parent, 16))} > {name}"


def missing_for_final(dataset: dict[str, Any], target: str) -> list[str]:
    """The attributes that still lack a value for ``target``; empty when it may be set."""
    missing = [_label(k) for k in _REQUIRED if not has_value(dataset, k)]
    needed: tuple[str, ...] = _COMPLETED_ITEM
    parent = PERFORMED_PROCEDURE_SEQUENCE
    if target != COMPLETED:
        parent, needed = PROGRESS_INFORMATION_SEQUENCE, _CANCELED_ITEM
    found = items(dataset, parent)
    if not found:
        missing.append(_label(parent))
    else:
        item = found[0]
        missing += [_label(k, parent) for k in needed if not _valued(item, k)]
    return missing


def _valued(item: dict[str, Any], key: str) -> bool:
    # "If there are no relevant output objects, then this sequence may have no items"
    # (Table CC.2.5-3): present is enough for the Output Information Sequence.
    return key in item if key == OUTPUT_INFORMATION_SEQUENCE else has_value(item, key)


def check_final(dataset: dict[str, Any], target: str) -> None:
    missing = missing_for_final(dataset, target)
    if missing:
        raise UpsConflict(
            FINAL_STATE_NOT_MET,
            f"the workitem cannot become {target}: it lacks {', '.join(missing)} "
            "(PS3.4 CC.2.5.1.1); set them with an update first",
        )


def fill_canceled(dataset: dict[str, Any], now: str, info: dict[str, Any]) -> dict[str, Any]:
    """Add what CANCELED requires, taking the reason and contact from ``info`` (a Request
    Cancel's dataset, PS3.4 CC.2.2.1) where it has them."""
    out = copy.deepcopy(dataset)
    progress = items(out, PROGRESS_INFORMATION_SEQUENCE)
    item = progress[0] if progress else {}
    if not has_value(item, CANCELLATION_DATETIME):
        item[CANCELLATION_DATETIME] = element("DT", now)
    reason_codes = items(info, DISCONTINUATION_REASON_SEQUENCE)
    if reason_codes:
        item[DISCONTINUATION_REASON_SEQUENCE] = element("SQ", *copy.deepcopy(reason_codes))
    elif not has_value(item, DISCONTINUATION_REASON_SEQUENCE):
        item[DISCONTINUATION_REASON_SEQUENCE] = element(
            "SQ", code_item(*UNSPECIFIED_DISCONTINUATION)
        )
    for key in (REASON_FOR_CANCELLATION, CONTACT_DISPLAY_NAME, CONTACT_URI):
        if has_value(info, key):
            item[key] = copy.deepcopy(info[key])
    out[PROGRESS_INFORMATION_SEQUENCE] = element("SQ", sort_keys(item))
    return out


def fill_completed(dataset: dict[str, Any], now: str) -> dict[str, Any]:
    """Add what COMPLETED requires, as the archive knows it: the scheduled station and
    workitem codes as the performed ones, now as the end (and, if unknown, the start)."""
    out = copy.deepcopy(dataset)
    performed = items(out, PERFORMED_PROCEDURE_SEQUENCE)
    item = performed[0] if performed else {}
    if not has_value(item, PERFORMED_STATION_NAME_SEQUENCE):
        station = items(out, STATION_NAME_SEQUENCE) or [
            code_item("DICOMWEB", LOCAL_SCHEME, "dicomweb-server")
        ]
        item[PERFORMED_STATION_NAME_SEQUENCE] = element("SQ", *copy.deepcopy(station))
    if not has_value(item, PERFORMED_WORKITEM_CODE_SEQUENCE):
        label = text(out, PROCEDURE_STEP_LABEL) or "Procedure step"
        codes = items(out, SCHEDULED_WORKITEM_CODE_SEQUENCE) or [
            code_item("PROCEDURE", LOCAL_SCHEME, label[:64])
        ]
        item[PERFORMED_WORKITEM_CODE_SEQUENCE] = element("SQ", *copy.deepcopy(codes))
    if not has_value(item, PERFORMED_START):
        item[PERFORMED_START] = element("DT", now)
    if not has_value(item, PERFORMED_END):
        item[PERFORMED_END] = element("DT", now)
    item.setdefault(OUTPUT_INFORMATION_SEQUENCE, element("SQ"))
    out[PERFORMED_PROCEDURE_SEQUENCE] = element("SQ", sort_keys(item))
    return out


def with_state(dataset: dict[str, Any], state: str) -> dict[str, Any]:
    out = dict(dataset)
    out[PROCEDURE_STEP_STATE] = element("CS", state)
    return sort_keys(out)
