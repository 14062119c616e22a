"""The UPS event channel over real sockets: WebSocket clients of two `serve` processes on
one database (SQLite file and PostgreSQL) receive event reports queued by a third
process (this one, like the DIMSE listener's parent process changing a workitem by
MPPS), in order, with their Message IDs.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from dicomweb_server.services.credentials import hash_secret
from dicomweb_server.services.subscriptions import SubscriptionService
from dicomweb_server.services.workitem_events import UPS_PROGRESS_REPORT, WorkitemEvent
from dicomweb_server.storage.interfaces import NewEvent
from dicomweb_server.storage.sql.index import SqlIndex
from dicomweb_server.storage.sql.ups_events import SqlSubscriptions
from tests.conftest import BACKENDS, Server, make_database_url, start_server
from tests.dicomgen import uid


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
def publisher(pair: tuple[Server, Server]) -> Iterator[SubscriptionService]:
    """A publisher in this test process, on the servers' database."""
    index = SqlIndex(pair[0].database_url)
    yield SubscriptionService(SqlSubscriptions(index))
    index.close()


def ws_url(server: Server, aet: str, path: str = "ws/subscribers") -> str:
    return f"ws://127.0.0.1:{server.port}/dicom-web/{path}/{aet}"


def channel(server: Server, aet: str, path: str = "ws/subscribers") -> ClientConnection:
    return connect(ws_url(server, aet, path), proxy=None, open_timeout=30)


def receive(ws: ClientConnection, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    return [orjson.loads(ws.recv(timeout=timeout)) for _ in range(count)]


def subscribe(publisher: SubscriptionService, aet: str, workitem: str) -> None:
    publisher.store.subscribe(aet, workitem, False, None)


def progress(workitem: str, percent: int) -> WorkitemEvent:
    info = {
        "00741002": {
            "vr": "SQ",
            "Value": [{"00741004": {"vr": "DS", "Value": [percent]}}],
        }
    }
    return WorkitemEvent(workitem, UPS_PROGRESS_REPORT, info)


def percent(report: dict[str, Any]) -> int:
    return int(report["00741002"]["Value"][0]["00741004"]["Value"][0])


def test_events_from_another_process_arrive_in_order_on_both_servers(
    pair: tuple[Server, Server], publisher: SubscriptionService
) -> None:
    a, b = pair
    workitem = uid()
    subscribe(publisher, "WATCH1", workitem)
    with channel(a, "WATCH1") as on_a, channel(b, "WATCH1", "subscribers") as on_b:
        for value in range(1, 21):
            publisher.publish(progress(workitem, value * 5))
        for ws in (on_a, on_b):
            reports = receive(ws, 20)
            assert [percent(r) for r in reports] == [v * 5 for v in range(1, 21)]
            assert [r["00000110"]["Value"][0] for r in reports] == list(range(1, 21))
            first = reports[0]
            assert first["00000002"]["Value"] == ["1.2.840.10008.5.1.4.34.6.1"]
            assert first["00001000"]["Value"] == [workitem]
            assert first["00001002"]["Value"] == [UPS_PROGRESS_REPORT]


def test_only_the_subscribed_ae_receives(
    pair: tuple[Server, Server], publisher: SubscriptionService
) -> None:
    a, _ = pair
    mine, theirs = uid(), uid()
    subscribe(publisher, "MINE", mine)
    subscribe(publisher, "THEIRS", theirs)
    with channel(a, "MINE") as ws:
        publisher.publish(progress(theirs, 10))
        publisher.publish(progress(mine, 20))
        [report] = receive(ws, 1)
        assert report["00001000"]["Value"] == [mine]
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1)


def test_a_report_queued_before_connecting_is_not_replayed(
    pair: tuple[Server, Server], publisher: SubscriptionService
) -> None:
    """PS3.4 CC.2.4.3: no obligation to queue; a new connection starts from now."""
    _, b = pair
    workitem = uid()
    publisher.store.subscribe("LATE", workitem, False, NewEvent("LATE", workitem, b"{}"))
    with channel(b, "LATE") as ws:
        publisher.publish(progress(workitem, 42))
        [report] = receive(ws, 1)
        assert percent(report) == 42


def test_bad_ae_title_is_refused_at_the_handshake(pair: tuple[Server, Server]) -> None:
    a, _ = pair
    for bad in ("A" * 17, "BAD%5CAE", "%20%20"):
        with pytest.raises(InvalidStatus) as refused:
            channel(a, bad)
        assert refused.value.response.status_code == 403


def test_the_server_keeps_serving_after_clients_vanish(
    pair: tuple[Server, Server], publisher: SubscriptionService
) -> None:
    a, _ = pair
    workitem = uid()
    subscribe(publisher, "GONE", workitem)
    for _ in range(3):
        with channel(a, "GONE"):
            pass
    # One that drops the TCP connection without a closing handshake.
    with contextlib.suppress(Exception), channel(a, "GONE") as ws:
        ws.socket.shutdown(socket.SHUT_RDWR)
    publisher.publish(progress(workitem, 1))
    with channel(a, "GONE") as ws:
        publisher.publish(progress(workitem, 2))
        assert percent(receive(ws, 1)[0]) == 2
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
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()
