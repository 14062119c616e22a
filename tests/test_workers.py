"""`serve --workers N`: connections spread over the workers, a dead worker is replaced."""

from __future__ import annotations

import base64
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomweb_server.balanced_accept import IDLE
from dicomweb_server.workers import _worker, listen, run_workers
from tests.conftest import Server, start_server


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path / "data", f"sqlite:///{tmp_path}/index.db", "--workers", "2")
    yield server
    server.stop()


def _workers(server: Server, count: int) -> list[int]:
    """PIDs of the worker processes (children of the serve process running uvicorn)."""
    deadline = time.monotonic() + 30
    pids: list[int] = []
    while time.monotonic() < deadline:
        pids = []
        for task in Path(f"/proc/{server.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"spawn_main" in cmdline:
                    pids.append(int(pid))
        if len(pids) == count:
            return sorted(pids)
        time.sleep(0.1)
    raise AssertionError(f"expected {count} workers, found {pids}")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _server_side_inodes(port: int) -> set[str]:
    """Inodes of the established connections whose local port is the server's."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            inodes.add(fields[9])
    return inodes


def _held_per_worker(server: Server, pids: list[int]) -> list[int]:
    established = _server_side_inodes(server.port)
    return [len(_socket_inodes(pid) & established) for pid in pids]


def _ask(conn: socket.socket) -> None:
    conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert conn.recv(65536).startswith(b"HTTP/1.1 200")


def _both_accepting(server: Server, pids: list[int]) -> None:
    """Until both workers have started accepting (a worker still starting is left out)."""
    deadline = time.monotonic() + 30
    while True:
        conns = []
        try:
            for _ in range(4):
                conns.append(socket.create_connection(("127.0.0.1", server.port), 10))
                _ask(conns[-1])
            if min(_held_per_worker(server, pids)) > 0:
                break
        finally:
            for conn in conns:
                conn.close()
        assert time.monotonic() < deadline, "a worker never accepted a connection"
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while sum(_held_per_worker(server, pids)) > 0:
        assert time.monotonic() < deadline, "closed connections still held"
        time.sleep(0.05)
    time.sleep(0.3)  # and the workers have seen them close


def test_a_burst_of_keep_alive_connections_is_split_evenly(two_workers: Server) -> None:
    pids = _workers(two_workers, 2)
    _both_accepting(two_workers, pids)
    # All connected before any is accepted, as a pool of clients starting at once does.
    # On one socket plainly shared, the first worker to wake took them all; with a
    # socket per worker (SO_REUSEPORT), the kernel's address hash split them unevenly.
    conns = [socket.create_connection(("127.0.0.1", two_workers.port), 10) for _ in range(16)]
    try:
        for conn in conns:
            _ask(conn)
        held = _held_per_worker(two_workers, pids)
        assert sum(held) == 16 and min(held) >= 7, held
    finally:
        for conn in conns:
            conn.close()


def test_connections_opened_one_after_another_alternate(two_workers: Server) -> None:
    pids = _workers(two_workers, 2)
    _both_accepting(two_workers, pids)
    conns = []
    try:
        for n in range(1, 13):
            conns.append(socket.create_connection(("127.0.0.1", two_workers.port), 10))
            _ask(conns[-1])
            if n % 2 == 0:  # the worker holding fewer took each new one
                assert _held_per_worker(two_workers, pids) == [n // 2, n // 2]
    finally:
        for conn in conns:
            conn.close()


def test_a_killed_worker_is_replaced(two_workers: Server) -> None:
    first = _workers(two_workers, 2)
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = _workers(two_workers, 2)
        if first[0] not in now:
            break
        time.sleep(0.2)
    assert first[0] not in now and first[1] in now
    for _ in range(20):  # each on a new connection: both sockets get some
        assert httpx.get(f"{two_workers.root}/health", timeout=30).status_code == 200
    assert "starting another" in two_workers.log()


def test_sigterm_stops_every_worker(two_workers: Server) -> None:
    pids = _workers(two_workers, 2)
    two_workers.stop(signal.SIGTERM)
    assert two_workers.process.returncode == 0
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )


def test_a_worker_that_cannot_start_stops_the_server() -> None:
    # uvicorn in the worker cannot import the app: it exits at once, every time.
    started = time.monotonic()
    status = run_workers("tests.no_such_module:app", "127.0.0.1", 0, 2, log_level="critical")
    assert status == 1
    assert time.monotonic() - started < 60


async def ws_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Plain HTTP 200, and WebSockets accepted and held until the client leaves."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
    else:
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


def _until(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_upgraded_connections_are_counted_out_when_they_close() -> None:
    """A WebSocket connection ends in the protocol that took its transport over from
    HTTP; it must leave the worker's count like any other, or that worker would look
    busier and busier to the others."""
    ctx = multiprocessing.get_context("spawn")
    sock = listen("127.0.0.1", 0)
    board = ctx.RawArray("q", [IDLE])
    options = {"log_level": "warning"}
    proc = ctx.Process(target=_worker, args=("tests.test_workers:ws_app", options, sock, board, 0))
    proc.start()
    try:
        _until(lambda: board[0] != IDLE, 30, "the worker never started accepting")
        port = sock.getsockname()[1]
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), 10) as conn:
                key = base64.b64encode(os.urandom(16)).decode()
                conn.sendall(
                    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    + f"Sec-WebSocket-Key: {key}\r\n\r\n".encode()
                )
                assert conn.recv(4096).startswith(b"HTTP/1.1 101")
        with socket.create_connection(("127.0.0.1", port), 10) as conn:
            _ask(conn)
        _until(lambda: board[0] == 0, 10, f"connections still counted: {board[0]}")
    finally:
        proc.terminate()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
        sock.close()
