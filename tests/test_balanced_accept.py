"""The acceptor of one worker, in-process: it takes a connection at once when no other
worker holds fewer, leaves it to the one that does, and takes it after all when that
one does not (a worker stuck in a long request must not stall new clients), without
waiting for that worker again until its count moves."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from dicomweb_server import balanced_accept
from dicomweb_server.balanced_accept import IDLE, Acceptor

LIMIT = 10.0  # seconds; every wait is bounded


class Worker:
    """An acceptor on a loopback listener whose accepted connections are closed at once;
    ``connect`` returns how long the acceptor took to take a new connection."""

    def __init__(self, board: list[int], slot: int) -> None:
        self.board = board
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.accepted: asyncio.Queue[float] = asyncio.Queue()
        self.acceptor = Acceptor(self.listener, board, slot, self._serve)
        self.acceptor.start(open_connections=board[slot])
        self.clients: list[socket.socket] = []

    async def _serve(self, conn: socket.socket) -> None:
        conn.close()
        await self.accepted.put(time.monotonic())

    async def connect(self) -> float:
        client = socket.socket()
        self.clients.append(client)
        started = time.monotonic()
        client.connect(self.listener.getsockname())
        return await asyncio.wait_for(self.accepted.get(), LIMIT) - started

    def close(self) -> None:
        self.acceptor.stop()
        for client in self.clients:
            client.close()
        self.listener.close()


def _run(board: list[int], slot: int, steps: int) -> list[float]:
    async def main() -> list[float]:
        worker = Worker(board, slot)
        try:
            return [await worker.connect() for _ in range(steps)]
        finally:
            worker.close()

    return asyncio.run(main())


def test_the_least_busy_worker_accepts_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(balanced_accept, "OVERDUE", 5.0)  # waiting would show
    board = [2, 3, 2]
    (waited,) = _run(board, 0, 1)
    assert waited < 2.5
    assert board == [IDLE, 3, 2]  # stopped after: nobody waits for it


def test_a_busier_worker_takes_what_a_stuck_one_leaves_and_stops_waiting_for_it() -> None:
    # Slot 1 holds fewer connections but never accepts (stuck, or dead).
    board = [5, 0]
    waits = _run(board, 0, 6)
    assert waits[0] >= balanced_accept.OVERDUE
    # Passed over from then on while its count stays: no wait per connection.
    assert all(w < balanced_accept.OVERDUE for w in waits[1:]), waits


def test_a_passed_over_worker_is_waited_for_again_once_its_count_moves() -> None:
    async def main() -> list[float]:
        board = [5, 0]
        worker = Worker(board, 0)
        try:
            waits = [await worker.connect(), await worker.connect()]
            board[1] = 1  # it accepted something: alive
            waits.append(await worker.connect())
            return waits
        finally:
            worker.close()

    waits = asyncio.run(main())
    assert waits[0] >= balanced_accept.OVERDUE
    assert waits[1] < balanced_accept.OVERDUE
    assert waits[2] >= balanced_accept.OVERDUE, waits


def test_a_stopped_worker_is_never_waited_for() -> None:
    async def run() -> list[int]:
        board = [0, 0]
        worker = Worker(board, 0)
        worker.close()
        worker.acceptor.closed()  # connections closing after it do not count
        return board

    assert asyncio.run(run()) == [IDLE, 0]
