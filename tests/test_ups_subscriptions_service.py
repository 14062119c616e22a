"""SubscriptionService over the SQL store (SQLite and PostgreSQL): the subscription states
of PS3.4 Table CC.2.3-2, the queued event reports and their order.

The workitems here come from a small in-memory source with the three methods
subscriptions use; the real workitem service is exercised over HTTP in
tests/test_ups_subscriptions_web.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from dicomweb_server.config import load_settings
from dicomweb_server.dicom import ups_events as ups
from dicomweb_server.errors import InvalidRequest, NotFound
from dicomweb_server.services.subscriptions import SubscriptionService
from dicomweb_server.services.workitem_events import (
    UPS_ASSIGNED,
    UPS_CANCEL_REQUESTED,
    UPS_STATE_REPORT,
    WorkitemEvent,
)
from dicomweb_server.storage.sql.index import SqlIndex
from dicomweb_server.storage.sql.ups_events import SqlSubscriptions
from tests.dicomgen import uid

GLOBAL, FILTERED = ups.GLOBAL_SUBSCRIPTION_UID, ups.FILTERED_SUBSCRIPTION_UID


@dataclass
class Item:
    uid: str
    state: str
    dataset: dict[str, Any] = field(default_factory=dict)


class Workitems:
    """Workitems by UID; matching on PatientID only."""

    def __init__(self) -> None:
        self.items: dict[str, Item] = {}

    def add(self, state: str = "SCHEDULED", patient: str = "P1") -> Item:
        dataset = {
            "00100020": {"vr": "LO", "Value": [patient]},
            "00404041": {"vr": "CS", "Value": ["READY"]},
            "00741000": {"vr": "CS", "Value": [state]},
        }
        item = Item(uid(), state, dataset)
        self.items[item.uid] = item
        return item

    def get(self, uid: str) -> Item:
        if uid not in self.items:
            raise NotFound(f"no workitem {uid}")
        return self.items[uid]

    def find(
        self, *, states: Collection[str] = ("SCHEDULED",), limit: int | None = None
    ) -> list[Item]:
        return [w for w in self.items.values() if w.state in states][:limit]

    def matches(self, dataset: dict[str, Any], params: Mapping[str, Sequence[str]]) -> bool:
        for name, values in params.items():
            if name != "PatientID":
                raise InvalidRequest(f"unknown attribute {name}")
            if dataset.get("00100020", {}).get("Value", [None])[0] not in values:
                return False
        return True


@pytest.fixture
def store(index: SqlIndex) -> SqlSubscriptions:
    return SqlSubscriptions(index)


@pytest.fixture
def workitems() -> Workitems:
    return Workitems()


@pytest.fixture
def service(store: SqlSubscriptions, workitems: Workitems) -> Iterator[SubscriptionService]:
    svc = SubscriptionService(store)
    svc.attach(workitems)
    yield svc


def drain(store: SqlSubscriptions, *aets: str, after: int = 0) -> list[tuple[str, dict[str, Any]]]:
    rows, _ = store.events_after(after, set(aets), 1000)
    return [(r.ae_title, orjson.loads(r.message)) for r in rows]


def kind(report: dict[str, Any]) -> tuple[str, int, str | None]:
    state = report.get("00741000", {}).get("Value", [None])[0]
    return report["00001000"]["Value"][0], report["00001002"]["Value"][0], state


def state_event(item: Item, state: str) -> WorkitemEvent:
    item.state = state
    info = {"00741000": {"vr": "CS", "Value": [state]}}
    return WorkitemEvent(item.uid, UPS_STATE_REPORT, info)


def test_subscribing_to_a_workitem_sends_its_current_state(
    service: SubscriptionService, store: SqlSubscriptions, workitems: Workitems
) -> None:
    item = workitems.add("IN PROGRESS")
    assert service.subscribe("WATCHER", item.uid) == []
    [(aet, report)] = drain(store, "WATCHER")
    assert aet == "WATCHER"
    assert report["00000002"]["Value"] == [ups.UPS_PUSH_SOP_CLASS]
    assert report["00001000"]["Value"] == [item.uid]
    assert report["00001002"]["Value"] == [UPS_STATE_REPORT]
    assert report["00741000"] == {"vr": "CS", "Value": ["IN PROGRESS"]}
    assert report["00404041"] == {"vr": "CS", "Value": ["READY"]}
    assert store.subscribers(item.uid) == {"WATCHER": False}


def test_events_reach_subscribers_in_order_and_no_one_else(
    service: SubscriptionService, store: SqlSubscriptions, workitems: Workitems
) -> None:
    item, other = workitems.add(), workitems.add()
    service.subscribe("A", item.uid, deletion_lock=True)
    service.subscribe("B", other.uid)
    start = store.last_event_id()
    service.publish(state_event(item, "IN PROGRESS"))
    cancel = {"00741236": {"vr": "AE", "Value": ["HIS"]}}
    service.publish(WorkitemEvent(item.uid, UPS_CANCEL_REQUESTED, cancel))
    service.publish(state_event(item, "CANCELED"))
    got = drain(store, "A", "B", after=start)
    assert [(a, kind(r)) for a, r in got] == [
        ("A", (item.uid, UPS_STATE_REPORT, "IN PROGRESS")),
        ("A", (item.uid, UPS_CANCEL_REQUESTED, None)),
        ("A", (item.uid, UPS_STATE_REPORT, "CANCELED")),
    ]
    assert got[1][1]["00741236"] == {"vr": "AE", "Value": ["HIS"]}
    assert store.subscribers(item.uid) == {"A": True}


def test_unsubscribe_stops_delivery_and_unknown_subscription_is_not_found(
    service: SubscriptionService, store: SqlSubscriptions, workitems: Workitems
) -> None:
    item = workitems.add()
    service.subscribe("A", item.uid)
    service.unsubscribe("A", item.uid)
    start = store.last_event_id()
    service.publish(state_event(item, "IN PROGRESS"))
    assert drain(store, "A", after=start) == []
    with pytest.raises(NotFound):
        service.unsubscribe("A", item.uid)
    with pytest.raises(NotFound):
        service.unsubscribe("A", GLOBAL)


def test_bad_requests_change_nothing(
    service: SubscriptionService, store: SqlSubscriptions, workitems: Workitems
) -> None:
    item = workitems.add()
    for aet in ("", "   ", "A" * 17, "BAD\\AE", "TAB\tAE", "ÄÖ"):
        with pytest.raises(InvalidRequest):
            service.subscribe(aet, item.uid)
    with pytest.raises(InvalidRequest):
        service.subscribe("A", "1.2.03")  # not a UID
    with pytest.raises(NotFound):
        service.subscribe("A", uid())  # no such workitem
    with pytest.raises(InvalidRequest):
        service.subscribe("A", FILTERED)  # a filtered subscription needs a filter
    with pytest.raises(InvalidRequest):
        service.subscribe("A", FILTERED, matching_keys=[("NoSuchKey", "1")])
    with pytest.raises(InvalidRequest):
        service.subscribe("A", item.uid, matching_keys=[("PatientID", "P1")])
    with pytest.raises(InvalidRequest):
        service.suspend("A", item.uid)  # only worklist subscriptions are suspended
    assert store.last_event_id() == 0
    assert store.global_subscriptions() == []
    assert store.subscribers(item.uid) == {}


def test_global_subscription_with_lock_reports_every_open_workitem(
    service: SubscriptionService, store: SqlSubscriptions, workitems: Workitems
) -> None:
    open_items = [workitems.add(), workitems.add("IN PROGRESS")]
    done = workitems.add("COMPLETED")
    service.subscribe(" GLOBAL1 ", GLOBAL, deletion_lock=True)  # spaces are not significant
    got = drain(store, "GLOBAL1")
    assert sorted(kind(r) for _, r in got) == sorted(
        (w.uid, UPS_STATE_REPORT, w.state) for w in open_items
    )
    assert store.subscribers(done.uid) == {}
    # Without the lock nothing is sent at once (PS3.4 CC.2.4.3), but the AE is subscribed.
    start = store.last_event_id()
    service.subscribe("GLOBAL2", GLOBAL)
    assert drain(store, "GLOBAL2", after=start) == []
    assert store.subscribers(open_items[0].uid) == {"GLOBAL1": True, "GLOBAL2": False}


def test_global_subscriber_joins_new_workitems_and_gets_state_first(
    service: SubscriptionService, store: SqlSubscriptions, workitems: Workitems
) -> None:
    service.subscribe("G", GLOBAL)
    created = workitems.add()
    start = store.last_event_id()
    # A creation: the SCHEDULED state report is the new subscriber's first event.
    service.publish(state_event(created, "SCHEDULED"))
    assert [kind(r) for _, r in drain(store, "G", after=start)] == [
        (created.uid, UPS_STATE_REPORT, "SCHEDULED")
    ]
    # A workitem whose first event is not a state report: the state comes first.
    other = workitems.add()
    start = store.last_event_id()
    service.publish(WorkitemEvent(other.uid, UPS_ASSIGNED, {}))
    assert [kind(r) for _, r in drain(store, "G", after=start)] == [
        (other.uid, UPS_STATE_REPORT, "SCHEDULED"),
        (other.uid, UPS_ASSIGNED, None),
    ]


def test_unsubscribing_one_workitem_survives_the_global_subscription(
    service: SubscriptionService, store: SqlSubscriptions, workitems: Workitems
) -> None:
    item = workitems.add()
    service.subscribe("G", GLOBAL)
    service.unsubscribe("G", item.uid)
    start = store.last_event_id()
    service.publish(state_event(item, "IN PROGRESS"))
    assert drain(store, "G", after=start) == []
    assert store.subscribers(item.uid) == {}


def test_suspend_keeps_existing_subscriptions_but_stops_new_ones(
    service: SubscriptionService, store: SqlSubscriptions, workitems: Workitems
) -> None:
    before = workitems.add()
    service.subscribe("G", GLOBAL)
    service.suspend("G", GLOBAL)
    with pytest.raises(NotFound):
        service.suspend("G", GLOBAL)
    after = workitems.add()
    start = store.last_event_id()
    service.publish(state_event(after, "SCHEDULED"))
    service.publish(state_event(before, "IN PROGRESS"))
    assert [kind(r) for _, r in drain(store, "G", after=start)] == [
        (before.uid, UPS_STATE_REPORT, "IN PROGRESS")
    ]


def test_unsubscribing_globally_removes_every_subscription(
    service: SubscriptionService, store: SqlSubscriptions, workitems: Workitems
) -> None:
    item, specific = workitems.add(), workitems.add()
    service.subscribe("G", GLOBAL)
    service.subscribe("G", specific.uid)
    service.unsubscribe("G", GLOBAL)
    start = store.last_event_id()
    for w in (item, specific, workitems.add()):
        service.publish(state_event(w, "IN PROGRESS"))
    assert drain(store, "G", after=start) == []
    assert store.global_subscriptions() == []


def test_filtered_global_subscription_follows_the_filter(
    service: SubscriptionService, store: SqlSubscriptions, workitems: Workitems
) -> None:
    mine, theirs = workitems.add(patient="P1"), workitems.add(patient="P2")
    service.subscribe("F", FILTERED, deletion_lock=True, matching_keys=[("PatientID", "P1")])
    assert [kind(r)[0] for _, r in drain(store, "F")] == [mine.uid]
    start = store.last_event_id()
    new_mine, new_theirs = workitems.add(patient="P1"), workitems.add(patient="P2")
    for w in (new_theirs, new_mine, theirs):
        service.publish(state_event(w, "SCHEDULED" if w is not theirs else "IN PROGRESS"))
    assert [kind(r)[0] for _, r in drain(store, "F", after=start)] == [new_mine.uid]
    [sub] = store.global_subscriptions()
    assert (sub.ae_title, sub.kind, sub.deletion_lock) == ("F", ups.FILTERED, True)
    assert sub.filter == (("PatientID", "P1"),)


def test_old_events_are_pruned(store: SqlSubscriptions, workitems: Workitems) -> None:
    service = SubscriptionService(store, prune_every=3600.0)
    service.attach(workitems)
    item = workitems.add()
    service.subscribe("A", item.uid)
    time.sleep(0.02)
    cutoff = time.time()
    time.sleep(0.02)
    service.publish(state_event(item, "IN PROGRESS"))
    assert store.prune_events(cutoff) == 1
    assert [kind(r) for _, r in drain(store, "A")] == [(item.uid, UPS_STATE_REPORT, "IN PROGRESS")]
    # Publishing prunes what is older than the retention (here: everything).
    eager = SubscriptionService(store, retention_seconds=0.0, prune_every=0.0)
    eager.attach(workitems)
    eager.publish(state_event(item, "COMPLETED"))
    assert drain(store, "A") == []


def test_a_failing_publish_is_logged_not_raised(
    service: SubscriptionService,
    store: SqlSubscriptions,
    workitems: Workitems,
    caplog: pytest.LogCaptureFixture,
) -> None:
    item = workitems.add()
    service.subscribe("F", FILTERED, matching_keys=[("PatientID", "P1")])

    class Failing(Workitems):
        def get(self, uid: str) -> Item:
            raise RuntimeError("index down")

    broken = SubscriptionService(store)
    broken.attach(Failing())
    start = store.last_event_id()
    broken.publish(state_event(item, "COMPLETED"))  # the filter needs the workitem: fails
    assert "not queued" in caplog.text
    assert drain(store, "F", after=start) == []


def test_events_after_pages_and_skips_other_aes(
    service: SubscriptionService, store: SqlSubscriptions, workitems: Workitems
) -> None:
    items = [workitems.add() for _ in range(5)]
    for w in items:
        service.subscribe("A", w.uid)
        service.subscribe("B", w.uid)
    rows, last = store.events_after(0, {"A"}, 2)
    assert [r.workitem_uid for r in rows] == [w.uid for w in items[:2]]
    rest, end = store.events_after(last, {"A"}, 100)
    assert [r.workitem_uid for r in rest] == [w.uid for w in items[2:]]
    assert end == store.last_event_id()
    assert store.events_after(end, {"A"}, 100) == ([], end)
    assert store.events_after(0, set(), 100) == ([], end)


def test_a_tailer_never_skips_events_of_concurrent_publishers(store: SqlSubscriptions) -> None:
    """Ids become visible in order, so remembering the last one seen misses nothing."""
    done = threading.Event()
    seen: list[bytes] = []

    def tail() -> None:
        last = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            finished = done.is_set()
            rows, last = store.events_after(last, {"T"}, 7)
            seen.extend(r.message for r in rows)
            if finished and not rows:
                return

    def publish(thread: int) -> None:
        for n in range(25):
            store.publish(f"1.2.{thread}", [("T", False)], b"%d-%d" % (thread, n), None)

    tailer = threading.Thread(target=tail)
    tailer.start()
    publishers = [threading.Thread(target=publish, args=(t,)) for t in range(4)]
    for p in publishers:
        p.start()
    for p in publishers:
        p.join(60)
    done.set()
    tailer.join(60)
    assert sorted(seen) == sorted(b"%d-%d" % (t, n) for t in range(4) for n in range(25))
    for t in range(4):  # each publisher's events in its order
        mine = [m for m in seen if m.startswith(b"%d-" % t)]
        assert mine == [b"%d-%d" % (t, n) for n in range(25)]


def test_delivery_settings_come_from_the_environment_and_are_checked(tmp_path: Path) -> None:
    env = {"DICOMWEB_UPS_EVENT_POLL_MS": "50", "DICOMWEB_UPS_EVENT_RETENTION_SECONDS": "60"}
    settings = load_settings(environ=env, data_dir=tmp_path)
    assert (settings.ups_event_poll_ms, settings.ups_event_retention_seconds) == (50, 60)
    for name, value in (("POLL_MS", "0"), ("POLL_MS", "fast"), ("RETENTION_SECONDS", "1")):
        with pytest.raises(ValueError, match="ups_event"):
            load_settings(environ={f"DICOMWEB_UPS_EVENT_{name}": value}, data_dir=tmp_path)
