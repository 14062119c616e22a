"""UPS subscriptions (PS3.18 11.10-11.12, PS3.4 CC.2.3) and the event publisher (CC.2.4.3).

``SubscriptionService`` keeps each AE's subscription states in the index and turns the
workitem service's ``WorkitemEvent``s into event reports queued there for each
subscribed AE; every server process tails that queue and delivers to its WebSockets
(``services/ups_delivery.py``). Publishing runs in whichever process changed the
workitem (a worker, or the DIMSE listener's parent process) and never fails the change.

Subscription states follow PS3.4 Table CC.2.3-2:

- a workitem subscription sends the workitem's current state at once;
- a global (or filtered global) subscription subscribes the AE to every workitem not
  yet in a final state (matching the filter), with the initial state reports when the
  deletion lock is requested (CC.2.4.3), and to each workitem created later, whose
  first event (the SCHEDULED state report) it receives;
- unsubscribing globally removes every subscription of the AE; suspending removes
  only the global one, so the AE keeps the workitems it is subscribed to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from dicomweb_server.dicom import ups_events as ups
from dicomweb_server.dicom.uids import check_uid
from dicomweb_server.errors import InvalidRequest, NotFound
from dicomweb_server.services.workitem_events import UPS_STATE_REPORT, WorkitemEvent
from dicomweb_server.storage.interfaces import GlobalSubscription, NewEvent, SubscriptionStore

log = logging.getLogger(__name__)

# Workitems a global subscription covers: those that can still change (final states
# send no more events).
OPEN_STATES = ("SCHEDULED", "IN PROGRESS")


class WorkitemSource(Protocol):
    """What subscriptions need of the workitem service (``services/workitems.py``)."""

    def get(self, uid: str) -> Any: ...

    def find(self, *, states: Collection[str] = ..., limit: int | None = ...) -> Sequence[Any]: ...

    def matches(self, dataset: dict[str, Any], params: Mapping[str, Sequence[str]]) -> bool: ...


class SubscriptionService:
    def __init__(
        self, store: SubscriptionStore, retention_seconds: float = 300.0, prune_every: float = 60.0
    ) -> None:
        self.store = store
        self.retention_seconds = retention_seconds
        self.prune_every = prune_every
        self._pruned_at = 0.0
        # Set by bootstrap once the workitem service exists (it publishes through us).
        self.workitems: WorkitemSource | None = None

    def attach(self, workitems: WorkitemSource) -> None:
        self.workitems = workitems

    def _source(self) -> WorkitemSource:
        if self.workitems is None:
            raise NotFound("this server manages no workitems")
        return self.workitems

    # -- Subscribe, Unsubscribe, Suspend (PS3.18 11.10, 11.11, 11.12) ----------------

    def subscribe(
        self,
        ae_title: str,
        target_uid: str,
        deletion_lock: bool = False,
        matching_keys: Sequence[tuple[str, str]] = (),
    ) -> list[str]:
        """Subscribe ``ae_title``; returns warnings (none: every deletion lock is granted,
        as this server never deletes workitems)."""
        aet = ups.check_ae_title(ae_title)
        target = check_uid(target_uid, "workitem UID")
        kind = ups.KIND_OF.get(target)
        if kind == ups.FILTERED and not matching_keys:
            raise InvalidRequest("a filtered worklist subscription needs a filter (matching keys)")
        if kind != ups.FILTERED and matching_keys:
            names = ", ".join(sorted({name for name, _ in matching_keys}))
            raise InvalidRequest(
                f"unknown query parameter(s) {names}: only the filtered worklist subscription "
                f"({ups.FILTERED_SUBSCRIPTION_UID}) takes matching keys"
            )
        source = self._source()
        if kind is None:
            check = source.get(target)  # NotFound (404) before taking any lock

            def report() -> NewEvent:
                item = source.get(check.uid)
                return NewEvent(aet, item.uid, self._state_report(item))

            self.store.subscribe(aet, check.uid, deletion_lock, report)
            return []
        params = ups.filter_params(matching_keys)
        if kind == ups.FILTERED:
            source.matches({}, params)  # InvalidRequest for keys it cannot match on

        def reports() -> dict[str, NewEvent | None]:
            # PS3.4 CC.2.4.3: initial reports for a global subscription with lock only.
            return {
                w.uid: NewEvent(aet, w.uid, self._state_report(w)) if deletion_lock else None
                for w in source.find(states=OPEN_STATES)
                if kind == ups.GLOBAL or source.matches(w.dataset, params)
            }

        subscription = GlobalSubscription(aet, kind, deletion_lock, tuple(matching_keys))
        self.store.subscribe_globally(subscription, reports)
        return []

    def unsubscribe(self, ae_title: str, target_uid: str) -> None:
        aet = ups.check_ae_title(ae_title)
        target = check_uid(target_uid, "workitem UID")
        kind = ups.KIND_OF.get(target)
        done = (
            self.store.unsubscribe(aet, target)
            if kind is None
            else self.store.unsubscribe_globally(aet, kind)
        )
        if not done:
            raise NotFound(f"{aet} has no subscription to {target}")

    def suspend(self, ae_title: str, target_uid: str) -> None:
        aet = ups.check_ae_title(ae_title)
        target = check_uid(target_uid, "workitem UID")
        kind = ups.KIND_OF.get(target)
        if kind is None:
            raise InvalidRequest(
                "only a worklist subscription can be suspended "
                f"({ups.GLOBAL_SUBSCRIPTION_UID} or {ups.FILTERED_SUBSCRIPTION_UID})"
            )
        if not self.store.suspend(aet, kind):
            raise NotFound(f"{aet} has no worklist subscription to {target}")

    # -- EventPublisher --------------------------------------------------------------

    def publish(self, event: WorkitemEvent) -> None:
        """Queue the event report for every subscriber of the workitem (PS3.4 CC.2.4.3).

        Called after the change was committed; a failure here is logged, never raised.
        """
        try:
            self._publish(event)
        except Exception:
            log.exception("UPS event %d for %s not queued", event.event_type, event.workitem_uid)
        now = time.monotonic()
        if now - self._pruned_at >= self.prune_every:
            self._pruned_at = now
            try:
                self.store.prune_events(time.time() - self.retention_seconds)
            except Exception:
                log.exception("old UPS events not pruned")

    def _publish(self, event: WorkitemEvent) -> None:
        uid = event.workitem_uid
        item: Any = None
        joining: list[tuple[str, bool]] = []
        for sub in self.store.global_subscriptions():
            if sub.kind == ups.FILTERED:
                if self.workitems is None:
                    continue
                item = item or self.workitems.get(uid)
                if not self.workitems.matches(item.dataset, ups.filter_params(sub.filter)):
                    continue
            joining.append((sub.ae_title, sub.deletion_lock))
        source = self.workitems

        def current_state() -> bytes:
            assert source is not None
            return self._state_report(source.get(uid))

        # A new subscriber learns the current state before this event.
        late = joining and event.event_type != UPS_STATE_REPORT and source is not None
        initial = current_state if late else None

        message = ups.encode(ups.event_report(uid, event.event_type, event.info))
        self.store.publish(uid, joining, message, initial)

    @staticmethod
    def _state_report(item: Any) -> bytes:
        info = ups.state_report_info(item.state, item.dataset)
        return ups.encode(ups.event_report(item.uid, UPS_STATE_REPORT, info))
