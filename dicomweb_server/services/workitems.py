"""The workitem service: UPS transactions (PS3.18 11, PS3.4 Annex CC) over the index.

One place for every change to a workitem, whoever asks: UPS-RS clients (create,
update, change state, request cancellation, search) and the archive itself (MPPS,
HL7 orders, images arriving for an order: find, claim, finish, cancel, add_output).
Each change is one transaction on the row; its events are published after the commit.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dicomweb_server.dicom import workitem as w
from dicomweb_server.dicom import workitem_states as rules
from dicomweb_server.dicom.uids import check_uid
from dicomweb_server.dicom.workitem import (
    CANCELED,
    COMPLETED,
    IN_PROGRESS,
    SCHEDULED,
    Workitem,
)
from dicomweb_server.dicom.workitem_match import (
    WorkitemQuery,
    matches,
    parse_search,
    result,
)
from dicomweb_server.dicom.workitem_performed import OutputRef, merge_performed
from dicomweb_server.dicom.workitem_states import UpsConflict
from dicomweb_server.errors import InvalidRequest, NotFound
from dicomweb_server.services.workitem_events import (
    UPS_ASSIGNED,
    UPS_CANCEL_REQUESTED,
    UPS_PROGRESS_REPORT,
    UPS_STATE_REPORT,
    EventPublisher,
    NoEvents,
    WorkitemEvent,
)
from dicomweb_server.storage.interfaces import WorkitemFilter, WorkitemStore

log = logging.getLogger(__name__)

__all__ = [
    "CANCELED",
    "COMPLETED",
    "IN_PROGRESS",
    "SCHEDULED",
    "SearchPage",
    "Workitem",
    "WorkitemService",
]

# Attributes whose change assigns the workitem (PS3.4 CC.2.4.3, UPS Assigned).
_ASSIGNMENT = (w.STATION_NAME_SEQUENCE, w.SCHEDULED_HUMAN_PERFORMERS)
# Progress Information Sequence attributes whose change is a UPS Progress Report (CC.2.4.3).
_PROGRESS = (w.PROGRESS, w.PROGRESS_DESCRIPTION, w.COMMUNICATIONS_URI_SEQUENCE)
# The Requesting AE of a Cancel Requested event (Type 1) when the request names none:
# UPS-RS requests and the archive's own cancellations carry no AE title.
DEFAULT_REQUESTING_AE = "DICOMWEB"


@dataclass
class SearchPage:
    results: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    more: bool = False


def _pick(dataset: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: copy.deepcopy(dataset[k]) for k in keys if k in dataset}


def _state_report(item: Workitem) -> WorkitemEvent:
    """UPS State Report event information (PS3.4 Table CC.2.4-1)."""
    info = _pick(item.dataset, (w.PROCEDURE_STEP_STATE, w.INPUT_READINESS_STATE))
    if item.state == CANCELED:
        progress = w.items(item.dataset, w.PROGRESS_INFORMATION_SEQUENCE)
        if progress:
            info.update(_pick(progress[0], (w.REASON_FOR_CANCELLATION,)))
            info.update(_pick(progress[0], (w.DISCONTINUATION_REASON_SEQUENCE,)))
    return WorkitemEvent(item.uid, UPS_STATE_REPORT, w.sort_keys(info))


def _progress(dataset: dict[str, Any]) -> dict[str, Any]:
    found = w.items(dataset, w.PROGRESS_INFORMATION_SEQUENCE)
    return _pick(found[0], _PROGRESS) if found else {}


def _change_events(before: Workitem | None, after: Workitem) -> list[WorkitemEvent]:
    """The events a change from ``before`` (None: created) to ``after`` causes, per
    PS3.4 CC.2.4.3: a State Report when created or when Procedure Step State or Input
    Readiness State changes; UPS Assigned when created with, or updated in, the scheduled
    station or human performers; a Progress Report when the progress, its description
    or the communications URIs change (with the whole Progress Information Sequence)."""
    events: list[WorkitemEvent] = []
    new = after.dataset
    old = before.dataset if before is not None else {}
    if (
        before is None
        or before.state != after.state
        or old.get(w.INPUT_READINESS_STATE) != new.get(w.INPUT_READINESS_STATE)
    ):
        events.append(_state_report(after))
    if before is None:
        assigned = any(w.has_value(new, k) for k in _ASSIGNMENT)
    else:
        assigned = any(old.get(k) != new.get(k) for k in _ASSIGNMENT)
    if assigned:
        info = {k: copy.deepcopy(new.get(k, w.element("SQ"))) for k in _ASSIGNMENT}
        events.append(WorkitemEvent(after.uid, UPS_ASSIGNED, info))
    if _progress(new) != _progress(old):
        info = _pick(new, (w.PROGRESS_INFORMATION_SEQUENCE,))
        events.append(WorkitemEvent(after.uid, UPS_PROGRESS_REPORT, info))
    return events


class WorkitemService:
    def __init__(
        self,
        store: WorkitemStore,
        events: EventPublisher | None = None,
        *,
        default_limit: int = 1000,
        max_limit: int = 1000,
    ) -> None:
        self.store = store
        self.events: EventPublisher = events if events is not None else NoEvents()
        self.default_limit = default_limit
        self.max_limit = max_limit

    # -- helpers -----------------------------------------------------------------------

    def _publish(self, events: Sequence[WorkitemEvent]) -> None:
        """After the commit; a failing publisher never fails the change it reports."""
        for event in events:
            try:
                self.events.publish(event)
            except Exception:
                log.exception(
                    "could not publish UPS event %d of %s", event.event_type, event.workitem_uid
                )

    def _modify(self, uid: str, change: Any) -> tuple[Workitem, Workitem]:
        before, after = self.store.modify_workitem(uid, change)
        if after is not before:
            self._publish(_change_events(before, after))
        return before, after

    # -- UPS-RS transactions -----------------------------------------------------------

    def create(self, dataset: dict[str, Any], uid: str | None = None) -> Workitem:
        """Create Workitem (PS3.18 11.4, PS3.4 CC.2.5.1.1); Conflict if the UID exists."""
        uid, stored = w.prepare_create(dataset, uid, w.now_dt())
        item = Workitem(uid, SCHEDULED, None, stored)
        self.store.add_workitem(item)
        self._publish(_change_events(None, item))
        return item

    def get(self, uid: str) -> Workitem:
        """Retrieve Workitem (PS3.18 11.5); the dataset never holds the Transaction UID."""
        item = self.store.get_workitem(uid)
        if item is None:
            raise NotFound(f"workitem {uid} not found")
        return item

    def update(self, uid: str, changes: dict[str, Any], transaction_uid: str | None) -> list[str]:
        """Update Workitem (PS3.18 11.6, PS3.4 CC.2.6): replace the given attributes."""
        changes = w.check_update(changes)
        named = w.text(changes, w.SOP_INSTANCE_UID)
        if named is not None and named != uid:
            raise InvalidRequest(f"SOPInstanceUID (00080018) {named} is not this workitem's")
        now = w.now_dt()

        def change(item: Workitem) -> Workitem:
            rules.check_updatable(item.state, item.transaction_uid, transaction_uid)
            dataset = w.apply_update(item.dataset, changes, now)
            return Workitem(item.uid, item.state, item.transaction_uid, dataset)

        self._modify(uid, change)
        return []

    def change_state(self, uid: str, state: str, transaction_uid: str) -> list[str]:
        """Change Workitem State (PS3.18 11.7, PS3.4 CC.2.1, Table CC.1.1-2).

        Returns warnings (already in the requested final state); raises UpsConflict
        with the standard's status for a refused transition.
        """
        state = rules.check_state_value(state)
        if not transaction_uid:
            raise rules.MissingTransactionUid(
                "TransactionUID (00081195) is required to change the state"
            )
        check_uid(transaction_uid, "TransactionUID (00081195)")
        warnings: list[str] = []
        now = w.now_dt()

        def change(item: Workitem) -> Workitem | None:
            outcome = rules.change_state(item.state, state, item.transaction_uid, transaction_uid)
            warnings.extend(outcome.warnings)
            if outcome.state is None:
                return None
            dataset = item.dataset
            if outcome.state == CANCELED:
                # The SCP fills the Cancellation DateTime (Table CC.2.5-3) and, so that a
                # performer may cancel without an N-SET (CC.2.5.1.3.2 note), the reason.
                dataset = rules.fill_canceled(dataset, now, {})
            if outcome.state in (COMPLETED, CANCELED):
                rules.check_final(dataset, outcome.state)
            dataset = rules.with_state(dataset, outcome.state)
            return Workitem(item.uid, outcome.state, transaction_uid, dataset)

        self._modify(uid, change)
        return warnings

    def request_cancellation(self, uid: str, info: dict[str, Any]) -> list[str]:
        """Request Cancellation (PS3.18 11.8, PS3.4 CC.2.2.3): UPS Cancel Requested goes to
        the subscribers; a SCHEDULED workitem is then canceled by the SCP itself, by way of
        IN PROGRESS; an IN PROGRESS one is left to its performer."""
        info = w.check_json(info or {}, "cancellation request")
        warnings: list[str] = []

        def check(item: Workitem) -> bool:
            outcome = rules.request_cancel(item.state)
            warnings.extend(outcome.warnings)
            return outcome.state is not None or item.state == IN_PROGRESS

        self._cancel(uid, info, check, requested=True)
        return warnings

    def _cancel(
        self,
        uid: str,
        info: dict[str, Any],
        check: Callable[[Workitem], bool],
        *,
        requested: bool,
    ) -> None:
        """Cancel a SCHEDULED workitem as its own performer, or ask the performer of an IN
        PROGRESS one (``check`` refuses, or says whether anything is to be done)."""
        now = w.now_dt()
        acted: list[bool] = []

        def change(item: Workitem) -> Workitem | None:
            acted.append(check(item))
            if item.state != SCHEDULED or not acted[-1]:
                return None
            dataset = rules.with_state(rules.fill_canceled(item.dataset, now, info), CANCELED)
            return Workitem(item.uid, CANCELED, w.new_uid(), dataset)

        before, after = self.store.modify_workitem(uid, change)
        if not acted or not acted[-1]:
            return
        events = [self._cancel_requested(uid, info)] if requested or after is before else []
        if after is not before:
            # PS3.4 CC.2.2.3: "first to IN PROGRESS and then to CANCELED".
            passing = rules.with_state(before.dataset, IN_PROGRESS)
            events.append(_state_report(Workitem(uid, IN_PROGRESS, None, passing)))
            events.append(_state_report(after))
        self._publish(events)

    @staticmethod
    def _cancel_requested(uid: str, info: dict[str, Any]) -> WorkitemEvent:
        """UPS Cancel Requested event information (PS3.4 Table CC.2.4-1): the Requesting
        AE, and the reason and contact when the request gave them."""
        keys = (
            w.REASON_FOR_CANCELLATION,
            w.DISCONTINUATION_REASON_SEQUENCE,
            w.CONTACT_URI,
            w.CONTACT_DISPLAY_NAME,
        )
        event = _pick(info, keys)
        if w.has_value(info, w.REQUESTING_AE):
            event[w.REQUESTING_AE] = copy.deepcopy(info[w.REQUESTING_AE])
        else:
            event[w.REQUESTING_AE] = w.element("AE", DEFAULT_REQUESTING_AE)
        return WorkitemEvent(uid, UPS_CANCEL_REQUESTED, w.sort_keys(event))

    def search_page(self, params: Mapping[str, Sequence[str]]) -> SearchPage:
        """Search for Workitems (PS3.18 11.9): results, warnings, and whether more match."""
        query = parse_search(params, max_limit=self.max_limit)
        limit = self.default_limit if query.limit is None else query.limit
        found = [
            i
            for i in self.store.find_workitems(self._prefilter(query))
            if matches(i.dataset, query)
        ]
        page = found[query.offset : query.offset + limit]
        more = query.offset + limit < len(found)
        return SearchPage([result(i.dataset, query) for i in page], list(query.warnings), more)

    def search(self, params: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
        return self.search_page(params).results

    def matches(self, dataset: dict[str, Any], params: Mapping[str, Sequence[str]]) -> bool:
        """The search's matching for one dataset (filtered subscriptions, PS3.4 CC.2.3)."""
        return matches(dataset, parse_search(params))

    @staticmethod
    def _prefilter(query: WorkitemQuery) -> WorkitemFilter:
        state = query.single((w.PROCEDURE_STEP_STATE,))
        start = query.dt_range(w.SCHEDULED_START)
        return WorkitemFilter(
            states=[state] if state is not None else None,
            patient_id=query.single((w.PATIENT_ID,)),
            start_from=start[0] or None if start else None,
            start_to=start[1] or None if start else None,
        )

    # -- the archive's own operations --------------------------------------------------

    def find(
        self,
        *,
        states: Collection[str] = (SCHEDULED, IN_PROGRESS),
        accession_number: str | None = None,
        study_uid: str | None = None,
        patient_id: str | None = None,
        limit: int | None = None,
        outputs: bool = True,
        accession_numbers: Collection[str] | None = None,
        study_uids: Collection[str] | None = None,
    ) -> list[Workitem]:
        """Workitems by the order's keys (Accession Number and Study Instance UID from
        the Referenced Request Sequence or the top level), by scheduled start. The plural
        keys match any of their values."""
        return self.store.find_workitems(
            WorkitemFilter(
                states=list(states),
                accession_number=accession_number,
                study_uid=study_uid,
                patient_id=patient_id,
                limit=limit,
                outputs=outputs,
                accession_numbers=accession_numbers,
                study_uids=study_uids,
            )
        )

    def claim(self, uid: str) -> str:
        """SCHEDULED -> IN PROGRESS for the archive itself; returns the Transaction UID."""
        transaction_uid = w.new_uid()

        def change(item: Workitem) -> Workitem:
            if item.state != SCHEDULED:
                if item.state == IN_PROGRESS:
                    raise UpsConflict(
                        rules.ALREADY_IN_PROGRESS, "the workitem is already IN PROGRESS"
                    )
                raise UpsConflict(rules.NO_LONGER_UPDATABLE, f"the workitem is {item.state}")
            dataset = rules.with_state(item.dataset, IN_PROGRESS)
            return Workitem(item.uid, IN_PROGRESS, transaction_uid, dataset)

        self._modify(uid, change)
        return transaction_uid

    def finish(self, uid: str, state: str, performed: dict[str, Any] | None = None) -> None:
        """IN PROGRESS -> COMPLETED or CANCELED on the archive's behalf, merging
        ``performed`` (top-level attributes; the first item of the Performed Procedure
        and Progress Information sequences merged into the stored one) and filling what
        PS3.4 CC.2.5.1.1 still requires."""
        if state not in (COMPLETED, CANCELED):
            raise InvalidRequest(f"a workitem finishes COMPLETED or CANCELED, not {state!r}")
        extra = w.check_json(performed or {}, "performed procedure information")
        now = w.now_dt()

        def change(item: Workitem) -> Workitem:
            if item.state == state:
                raise _Unchanged  # finishing twice the same way changes nothing
            if item.state == SCHEDULED:
                raise UpsConflict(
                    rules.NOT_IN_PROGRESS, "the workitem is SCHEDULED, not IN PROGRESS"
                )
            if item.state != IN_PROGRESS:
                raise UpsConflict(rules.NO_LONGER_UPDATABLE, f"the workitem is {item.state}")
            dataset = merge_performed(item.dataset, extra)
            if state == COMPLETED:
                dataset = rules.fill_completed(dataset, now)
            else:
                dataset = rules.fill_canceled(dataset, now, {})
            dataset[w.MODIFICATION_DATETIME] = w.element("DT", now)
            return Workitem(item.uid, state, item.transaction_uid, rules.with_state(dataset, state))

        try:
            self._modify(uid, change)
        except _Unchanged:
            return

    def cancel(self, uid: str, reason: str) -> None:
        """The order was cancelled (e.g. by the HIS): SCHEDULED -> CANCELED (by way of IN
        PROGRESS); IN PROGRESS -> UPS Cancel Requested to the performer; final states ->
        Conflict."""
        info = {w.REASON_FOR_CANCELLATION: w.element("LT", reason)} if reason else {}

        def check(item: Workitem) -> bool:
            if item.state == COMPLETED:
                raise UpsConflict(rules.ALREADY_COMPLETED_FAILURE, "the workitem is COMPLETED")
            if item.state == CANCELED:
                raise UpsConflict(rules.NO_LONGER_UPDATABLE, "the workitem is already CANCELED")
            return True

        self._cancel(uid, info, check, requested=False)

    def add_output(
        self, uid: str, study_uid: str, series_uid: str, sop_class_uid: str, sop_instance_uid: str
    ) -> bool:
        """Record an arrived instance in Unified Procedure Step Performed Procedure Sequence
        > Output Information Sequence (PS3.4 Table CC.2.5-3; items per the Referenced
        Instances and Access Macro, one per series); False if it was already there."""
        return self.add_outputs(uid, [(study_uid, series_uid, sop_class_uid, sop_instance_uid)]) > 0

    def add_outputs(self, uid: str, refs: Sequence[OutputRef]) -> int:
        """``add_output`` for many instances in one transaction; how many were new. The
        store keeps outputs apart from the workitem's JSON, so linking costs the same
        for the first image of a study and the thousandth (C-STORE links one by one)."""
        return self.store.add_workitem_outputs(uid, refs)


class _Unchanged(Exception):
    """Leaves a modification without change (rolled back, nothing published)."""
