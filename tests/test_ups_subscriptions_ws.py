"""UPS-RS subscriptions and the event channel over real sockets.

Two `serve` processes share one database (SQLite file, PostgreSQL). Subscriptions are
made over HTTP on one, WebSocket clients listen on either, and the workitems change in
a third process (this test, through the real workitem service, the way the DIMSE
listener's parent process changes them for MPPS).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol

from dicomweb_server.services.credentials import hash_secret
from dicomweb_server.services.subscriptions import SubscriptionService
from dicomweb_server.services.workitem_events import (
    UPS_ASSIGNED,
    UPS_CANCEL_REQUESTED,
    UPS_PROGRESS_REPORT,
    UPS_STATE_REPORT,
)
from dicomweb_server.services.workitems import WorkitemService
from dicomweb_server.storage.sql.index import SqlIndex
from dicomweb_server.storage.sql.ups_events import SqlSubscriptions
from dicomweb_server.storage.sql.workitems import SqlWorkitems
from tests.conftest import BACKENDS, Server, http, make_database_url, start_server
from tests.dicomgen import uid
from tests.test_ups_web import JSON, create, post_update, put_state
from tests.upsgen import completion, el, order

GLOBAL, FILTERED = "1.2.840.10008.5.1.4.34.5", "1.2.840.10008.5.1.4.34.5.1"


@pytest.fixture(scope="module", params=BACKENDS)
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    """Two servers sharing one index database."""
    tmp = tmp_path_factory.mktemp("pair")
    url = make_database_url(request.param, tmp, request)
    a = start_server(tmp / "a", url, "--no-dimse")
    try:
        b = start_server(tmp / "b", url, "--no-dimse")
    except Exception:
        a.stop()
        raise
    yield a, b
    for srv in (a, b):
        srv.stop()
        assert "Traceback" not in srv.log(), srv.log()


@pytest.fixture(scope="module")
def workitems(pair: tuple[Server, Server]) -> Iterator[WorkitemService]:
    """The workitem service in this process, publishing to the servers' database."""
    index = SqlIndex(pair[0].database_url)
    subscriptions = SubscriptionService(SqlSubscriptions(index))
    service = WorkitemService(SqlWorkitems(index), subscriptions)
    subscriptions.attach(service)
    yield service
    index.close()


def ws_url(server: Server, aet: str, path: str = "ws/subscribers") -> str:
    return f"ws://127.0.0.1:{server.port}/dicom-web/{path}/{aet}"


def channel(server: Server, aet: str, path: str = "ws/subscribers") -> ClientConnection:
    return connect(ws_url(server, aet, path), proxy=None, open_timeout=30)


def receive(ws: ClientConnection, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    return [orjson.loads(ws.recv(timeout=timeout)) for _ in range(count)]


def silent(ws: ClientConnection, seconds: float = 1.0) -> bool:
    """Nothing arrives within ``seconds`` (twice the default poll interval and more)."""
    try:
        ws.recv(timeout=seconds)
    except TimeoutError:
        return True
    return False


def subscribers(server: Server, target: str, aet: str, query: str = "") -> str:
    return f"{server.url}/workitems/{target}/subscribers/{aet}{query}"


def subscribe(server: Server, target: str, aet: str, query: str = "") -> httpx.Response:
    return http().post(subscribers(server, target, aet, query))


def what(report: dict[str, Any]) -> tuple[str, int, str | None]:
    """(workitem, event type, procedure step state) of an event report."""
    state = report.get("00741000", {}).get("Value", [None])[0]
    return report["00001000"]["Value"][0], report["00001002"]["Value"][0], state


def progress(percent: int) -> dict[str, Any]:
    return {"00741002": el("SQ", {"00741004": el("DS", percent)})}


def new_order(workitems: WorkitemService, **kwargs: Any) -> str:
    return workitems.create(order(accession=uid()[-12:], **kwargs)).uid


def test_subscriber_on_either_process_gets_the_state_then_every_change_in_order(
    pair: tuple[Server, Server], workitems: WorkitemService
) -> None:
    a, b = pair
    item = new_order(workitems)
    with channel(a, "WATCH1") as on_a, channel(b, "WATCH1", "subscribers") as on_b:
        response = subscribe(b, item, "WATCH1", "?deletionlock=true")
        assert response.status_code == 201, response.text
        location = response.headers["content-location"]
        assert location == f"ws://127.0.0.1:{b.port}/dicom-web/ws/subscribers/WATCH1"
        txn = workitems.claim(item)
        for percent in (20, 40, 60, 80):
            workitems.update(item, progress(percent), txn)
        workitems.update(item, completion(), txn)
        workitems.change_state(item, "COMPLETED", txn)
        for ws in (on_a, on_b):
            reports = receive(ws, 7)
            assert [what(r) for r in reports] == [
                (item, UPS_STATE_REPORT, "SCHEDULED"),  # the initial state (PS3.4 CC.2.4.3)
                (item, UPS_STATE_REPORT, "IN PROGRESS"),
                *[(item, UPS_PROGRESS_REPORT, None)] * 4,
                (item, UPS_STATE_REPORT, "COMPLETED"),
            ]
            assert [r["00741002"]["Value"][0]["00741004"]["Value"][0] for r in reports[2:6]] == [
                20,
                40,
                60,
                80,
            ]
            assert [r["00000110"]["Value"][0] for r in reports] == list(range(1, 8))
            assert reports[0]["00000002"]["Value"] == ["1.2.840.10008.5.1.4.34.6.1"]
            assert reports[0]["00404041"] == {"vr": "CS", "Value": ["READY"]}
            assert silent(ws, 0.5)


def test_changes_made_over_rest_on_one_process_reach_a_subscriber_on_the_other(
    pair: tuple[Server, Server],
) -> None:
    """The whole UPS-RS flow: create, subscribe, claim, progress, cancel request and
    complete through process A's REST API; the WebSocket is on process B."""
    a, b = pair
    item = uid()
    with channel(b, "RESTWATCH") as ws:
        assert subscribe(a, GLOBAL, "RESTWATCH").status_code == 201
        assert create(a, order(accession=item[-12:]), item).status_code == 201
        txn = uid()
        assert put_state(a, item, "IN PROGRESS", txn).status_code == 200
        assert post_update(a, item, progress(50), txn).status_code == 200
        response = http().post(
            f"{a.url}/workitems/{item}/cancelrequest",
            json={"00741238": el("LT", "no longer needed")},
            headers=JSON,
        )
        assert response.status_code == 202, response.text
        assert post_update(a, item, completion(), txn).status_code == 200
        assert put_state(a, item, "COMPLETED", txn).status_code == 200
        assert [what(r) for r in receive(ws, 6)] == [
            (item, UPS_STATE_REPORT, "SCHEDULED"),
            (item, UPS_ASSIGNED, None),
            (item, UPS_STATE_REPORT, "IN PROGRESS"),
            (item, UPS_PROGRESS_REPORT, None),
            (item, UPS_CANCEL_REQUESTED, None),
            (item, UPS_STATE_REPORT, "COMPLETED"),
        ]
        # Refused changes publish nothing.
        assert put_state(a, item, "CANCELED", txn).status_code in (400, 409)
        assert silent(ws)
    assert http().delete(subscribers(a, GLOBAL, "RESTWATCH")).status_code == 200


def test_cancel_request_reaches_the_subscriber(
    pair: tuple[Server, Server], workitems: WorkitemService
) -> None:
    a, _ = pair
    item = new_order(workitems)
    workitems.claim(item)
    with channel(a, "PERFORMER") as ws:
        assert subscribe(a, item, "PERFORMER").status_code == 201
        reason = {"00741238": el("LT", "patient left"), "00741236": el("AE", "HIS")}
        workitems.request_cancellation(item, reason)
        initial, requested = receive(ws, 2)
        assert what(initial) == (item, UPS_STATE_REPORT, "IN PROGRESS")
        assert what(requested) == (item, UPS_CANCEL_REQUESTED, None)
        assert requested["00741238"]["Value"] == ["patient left"]


def test_only_the_subscribed_ae_receives_and_unsubscribe_stops_delivery(
    pair: tuple[Server, Server], workitems: WorkitemService
) -> None:
    a, b = pair
    mine, theirs = new_order(workitems), new_order(workitems)
    assert subscribe(a, theirs, "THEIRS").status_code == 201
    with channel(b, "MINE") as ws:
        assert subscribe(a, mine, "MINE").status_code == 201
        assert what(receive(ws, 1)[0]) == (mine, UPS_STATE_REPORT, "SCHEDULED")
        workitems.claim(theirs)
        assert silent(ws)
        response = http().delete(subscribers(b, mine, "MINE"))
        assert response.status_code == 200, response.text
        workitems.claim(mine)
        assert silent(ws)
    assert http().delete(subscribers(a, mine, "MINE")).status_code == 404


def test_worklist_subscription_reports_open_workitems_and_joins_new_ones(
    pair: tuple[Server, Server], workitems: WorkitemService
) -> None:
    a, b = pair
    existing = new_order(workitems)
    with channel(a, "GLOBAL1") as ws:
        response = subscribe(b, GLOBAL, "GLOBAL1", "?deletionlock=true")
        assert response.status_code == 201, response.text
        # One initial report per open workitem of the shared database, ours among them.
        open_items = {w.uid for w in workitems.find(states=("SCHEDULED", "IN PROGRESS"))}
        initial = receive(ws, len(open_items))
        assert {what(r)[0] for r in initial} == open_items
        assert existing in open_items
        assert all(what(r)[1] == UPS_STATE_REPORT for r in initial)
        assert silent(ws)
        created = new_order(workitems, station="CT7")
        scheduled, assigned = receive(ws, 2)
        assert what(scheduled) == (created, UPS_STATE_REPORT, "SCHEDULED")
        assert what(assigned) == (created, UPS_ASSIGNED, None)
        assert assigned["00404025"]["Value"][0]["00080100"]["Value"] == ["CT7"]
        # Suspend: no new workitems, but the ones subscribed to keep reporting.
        assert http().post(subscribers(a, GLOBAL, "GLOBAL1", "/suspend")).status_code == 200
        new_order(workitems)
        assert silent(ws)
        workitems.claim(created)
        assert what(receive(ws, 1)[0]) == (created, UPS_STATE_REPORT, "IN PROGRESS")
        assert http().post(subscribers(a, GLOBAL, "GLOBAL1", "/suspend")).status_code == 404


def test_unsubscribing_from_the_worklist_ends_every_subscription(
    pair: tuple[Server, Server], workitems: WorkitemService
) -> None:
    a, b = pair
    assert subscribe(a, GLOBAL, "GLOBAL2").status_code == 201  # without lock: no reports
    with channel(b, "GLOBAL2") as ws:
        created = new_order(workitems)  # an order names its station: UPS Assigned too
        assert [what(r) for r in receive(ws, 2)] == [
            (created, UPS_STATE_REPORT, "SCHEDULED"),
            (created, UPS_ASSIGNED, None),
        ]
        assert http().delete(subscribers(b, GLOBAL, "GLOBAL2")).status_code == 200
        workitems.claim(created)
        new_order(workitems)
        assert silent(ws)
    assert http().delete(subscribers(b, GLOBAL, "GLOBAL2")).status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        "?PatientID={pid}",
        "?filter=PatientID={pid}",
        "?deletionlock=false&filter=PatientID={pid},ScheduledStationNameCodeSequence.CodeValue=CT9",
    ],
)
def test_filtered_worklist_subscription_delivers_only_matching_workitems(
    pair: tuple[Server, Server], workitems: WorkitemService, query: str
) -> None:
    a, b = pair
    pid = "PID" + uid()[-10:]
    aet = "FILTER" + pid[-6:]
    with channel(a, aet) as ws:
        response = subscribe(b, FILTERED, aet, query.format(pid=pid))
        assert response.status_code == 201, response.text
        new_order(workitems, patient_id="OTHER")
        wanted = new_order(workitems, patient_id=pid, station="CT9")
        first = receive(ws, 1)[0]
        assert what(first) == (wanted, UPS_STATE_REPORT, "SCHEDULED")
        assert what(receive(ws, 1)[0]) == (wanted, UPS_ASSIGNED, None)
        assert silent(ws)
    assert http().delete(subscribers(a, FILTERED, aet)).status_code == 200


def test_bad_requests_get_the_standard_errors_and_change_nothing(
    pair: tuple[Server, Server], workitems: WorkitemService
) -> None:
    a, _ = pair
    item = new_order(workitems)
    cases = [
        (subscribers(a, item, "A" * 17), "post", 400),  # AE title longer than 16
        (subscribers(a, item, "BAD%5CAE"), "post", 400),  # backslash
        (subscribers(a, item, "%20%20"), "post", 400),  # only spaces
        (subscribers(a, "1.2.03", "AE1"), "post", 400),  # not a UID
        (subscribers(a, uid(), "AE1"), "post", 404),  # no such workitem
        (subscribers(a, item, "AE1", "?deletionlock=yes"), "post", 400),
        (subscribers(a, item, "AE1", "?PatientID=X"), "post", 400),  # filter needs 34.5.1
        (subscribers(a, FILTERED, "AE1"), "post", 400),  # filtered without filter
        (subscribers(a, FILTERED, "AE1", "?NoSuchAttribute=1"), "post", 400),
        (subscribers(a, item, "AE1"), "delete", 404),  # not subscribed
        (subscribers(a, GLOBAL, "AE1"), "delete", 404),
        (subscribers(a, item, "AE1", "/suspend"), "post", 400),  # only worklists suspend
        (subscribers(a, GLOBAL, "AE1", "/suspend"), "post", 404),
    ]
    with channel(a, "AE1") as ws:
        for url, method, status in cases:
            response = http().request(method.upper(), url)
            assert response.status_code == status, (url, method, response.text)
            assert response.json()["message"], url
        workitems.claim(item)
        assert silent(ws)  # none of them subscribed AE1 to anything
    assert a.alive()


def test_bad_ae_title_is_refused_at_the_handshake(pair: tuple[Server, Server]) -> None:
    a, _ = pair
    for bad in ("A" * 17, "BAD%5CAE", "%20%20"):
        with pytest.raises(InvalidStatus) as refused:
            channel(a, bad)
        assert refused.value.response.status_code == 403


def test_a_page_of_another_site_cannot_open_the_channel(pair: tuple[Server, Server]) -> None:
    """Browsers send Origin: a page elsewhere must not ride on our credentials
    (cross-site WebSocket hijacking); our own origin and non-browsers may connect."""
    a, _ = pair
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(a, "XSITE"), proxy=None, origin=Origin("http://evil.example"))
    assert refused.value.response.status_code == 403
    own = Origin(f"http://127.0.0.1:{a.port}")
    with connect(ws_url(a, "XSITE"), proxy=None, origin=own, open_timeout=30) as ws:
        assert silent(ws, 0.3)
    audit = (a.data_dir / "audit" / "audit.jsonl").read_text()
    assert "websocket from http://evil.example" in audit


def test_the_server_keeps_serving_after_clients_vanish(
    pair: tuple[Server, Server], workitems: WorkitemService
) -> None:
    a, _ = pair
    item = new_order(workitems)
    assert subscribe(a, item, "GONE").status_code == 201
    for _ in range(3):
        with channel(a, "GONE"):
            pass
    # One that drops the TCP connection without a closing handshake.
    with contextlib.suppress(Exception), channel(a, "GONE") as ws:
        ws.socket.shutdown(socket.SHUT_RDWR)
    # A client that offers subprotocols (browsers fail if none is agreed).
    offer = [Subprotocol("dicom-events"), Subprotocol("other")]
    with connect(ws_url(a, "GONE"), proxy=None, subprotocols=offer) as ws:
        assert ws.subprotocol == "dicom-events"
    txn = workitems.claim(item)
    with channel(a, "GONE") as ws:
        workitems.update(item, progress(5), txn)
        assert what(receive(ws, 1)[0]) == (item, UPS_PROGRESS_REPORT, None)
    assert a.alive()


def test_the_event_channel_needs_a_reader(tmp_path: Path) -> None:
    """With authentication on, the WebSocket handshake passes the same gate as a GET."""
    key = "dwk_ws-reader-key-0123456789abcdef"
    env = {"DICOMWEB_AUTH_API_KEYS": f"watcher:reader:{hash_secret(key, fast=True)}"}
    server = start_server(
        tmp_path / "d", f"sqlite:///{tmp_path / 'i.sqlite3'}", "--no-dimse", env=env
    )
    try:
        for headers in ({}, {"X-API-Key": "dwk_wrong-key-0123456789abcdef"}):
            with pytest.raises(InvalidStatus) as refused:
                connect(ws_url(server, "AE1"), proxy=None, additional_headers=headers)
            assert refused.value.response.status_code == 403
        with connect(ws_url(server, "AE1"), proxy=None, additional_headers={"X-API-Key": key}):
            pass
        # Subscribing changes state: a reader may not (403), as for any POST.
        response = http().post(
            f"{server.url}/workitems/{GLOBAL}/subscribers/AE1", headers={"X-API-Key": key}
        )
        assert response.status_code == 403
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_every_worker_process_delivers(tmp_path: Path) -> None:
    """`serve --workers 2`: connections land on either worker; each gets the reports."""
    url = f"sqlite:///{tmp_path / 'i.sqlite3'}"
    server = start_server(tmp_path / "d", url, "--no-dimse", "--workers", "2")
    index = SqlIndex(url)
    try:
        subscriptions = SubscriptionService(SqlSubscriptions(index))
        workitems = WorkitemService(SqlWorkitems(index), subscriptions)
        subscriptions.attach(workitems)
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(channel(server, "MANY")) for _ in range(6)]
            assert subscribe(server, GLOBAL, "MANY").status_code == 201
            created = new_order(workitems)
            for ws in sockets:
                assert [what(r)[:2] for r in receive(ws, 2)] == [
                    (created, UPS_STATE_REPORT),
                    (created, UPS_ASSIGNED),
                ]
    finally:
        index.close()
        server.stop()
    assert "Traceback" not in server.log(), server.log()
