"""The acceptor of one worker, in-process: it takes a connection at once when no other
worker holds fewer, leaves it to the one that does, and takes it after all when that
one does not (a worker stuck in a long request must not stall new clients)."""

from __future__ import annotations

import asyncio
import socket
import time

from dicomweb_server.balanced_accept import IDLE, OVERDUE, Acceptor

LIMIT = 10.0  # seconds; every wait is bounded


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


async def _accept_one(board: list[int], slot: int) -> tuple[float, list[int]]:
    """Seconds until the acceptor of ``slot`` took a connection, and the board then."""
    listener = _listener()
    accepted: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    started = 0.0

    async def serve(conn: socket.socket) -> None:
        conn.close()
        accepted.set_result(time.monotonic() - started)

    acceptor = Acceptor(listener, board, slot, serve)
    acceptor.start(open_connections=board[slot])
    client = socket.socket()
    try:
        started = time.monotonic()
        client.connect(listener.getsockname())
        waited = await asyncio.wait_for(accepted, LIMIT)
        return waited, list(board)
    finally:
        acceptor.stop()
        client.close()
        listener.close()


def test_the_least_busy_worker_accepts_at_once() -> None:
    waited, board = asyncio.run(_accept_one([2, 3, 2], slot=0))
    assert waited < OVERDUE
    assert board == [3, 3, 2]


def test_a_busier_worker_takes_a_connection_nobody_else_took() -> None:
    # Slot 1 holds fewer connections but never accepts (stuck, or gone).
    waited, board = asyncio.run(_accept_one([5, 0], slot=0))
    assert waited >= OVERDUE
    assert board == [6, 0]


def test_a_stopped_worker_is_never_waited_for() -> None:
    async def run() -> list[int]:
        listener = _listener()
        board = [0, 0]

        async def serve(conn: socket.socket) -> None:
            conn.close()

        acceptor = Acceptor(listener, board, 0, serve)
        acceptor.start()
        acceptor.stop()
        acceptor.closed()  # connections closing after it do not count
        listener.close()
        return board

    assert asyncio.run(run()) == [IDLE, 0]
