"""Connections spread evenly over the worker processes: the least busy one accepts.

Keep-alive clients (a viewer's six connections, a pipeline's thread pool, the
benchmark's eight) each stay on the worker that accepted them. Neither sharing one
listening socket (the first worker to wake takes a whole burst) nor ``SO_REUSEPORT``
(the kernel hashes addresses: 8 connections over 2 workers split 6/2 or worse in one
burst out of four, and once all 8 landed on one worker, which then stored 890 small
instances/s instead of 1,650 while the other core idled) keeps both cores busy.

So the workers share one listening socket and a board of how many connections each
holds (shared memory, one slot per worker). A worker accepts when no other holds fewer
connections; otherwise it leaves the connection to the one that does, looking again
every few milliseconds, and takes it after all when nobody has within ``OVERDUE``
seconds (that worker may be stuck in a long request, or dead and not yet replaced;
it is then passed over until its count moves, rather than waited for again on every
connection). Each worker counts its
connections as it accepts them and as they close; the count must be current, or a
burst right after others closed (a client pool replaced) all goes to one worker.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import select
import socket
import time
from collections.abc import Callable, MutableSequence
from typing import Any

log = logging.getLogger(__name__)

RECHECK = 0.003  # seconds between looks at a connection left to another worker
OVERDUE = 0.05  # ... after which this worker takes it anyway
BURST = 16  # connections accepted per wake-up at most
IDLE = 1 << 30  # the count of a slot whose worker is not accepting

Board = MutableSequence[int]

# accept() errors of the connection at hand (Linux passes the network's through): skip
# it and take the next. Others (out of descriptors or memory) wait for connections to close.
_SKIP = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENONET}
_SKIP |= {errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOPROTOOPT}


class Acceptor:
    """Accepts connections of ``sock`` for slot ``slot`` of ``board`` on the running
    loop and hands each to ``serve`` (a coroutine function taking the socket)."""

    def __init__(
        self,
        sock: socket.socket,
        board: Board,
        slot: int,
        serve: Callable[[socket.socket], Any],
    ) -> None:
        self._sock = sock
        self._board = board
        self._slot = slot
        self._serve = serve
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deferred_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reading = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Slots that let a connection wait too long, with their count then: not waited
        # for again until that count moves.
        self._passed_over: dict[int, int] = {}
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    def start(self, open_connections: int = 0) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        self._board[self._slot] = open_connections
        self._watch()

    def stop(self) -> None:
        """Accept no more; connections still being set up (a TLS handshake) are dropped."""
        self._board[self._slot] = IDLE  # nobody leaves a connection to a stopping worker
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False
        for task in list(self._tasks):
            task.cancel()

    def closed(self) -> None:
        """A connection this worker accepted was closed."""
        if self._reading or self._timer is not None:
            self._board[self._slot] -= 1

    def _watch(self) -> None:
        assert self._loop is not None
        self._loop.add_reader(self._sock.fileno(), self._ready)
        self._reading = True

    def _fewer(self) -> list[int]:
        """The slots holding fewer connections than this one, that are still trusted
        to take their turn."""
        board, mine = self._board, self._board[self._slot]
        for slot, count in list(self._passed_over.items()):
            if board[slot] != count:  # it moved: alive and accepting again
                del self._passed_over[slot]
        return [
            slot
            for slot, count in enumerate(board)
            if count < mine and slot not in self._passed_over
        ]

    def _ready(self) -> None:
        now = time.monotonic()
        fewer = self._fewer()
        if fewer:
            if self._deferred_since is None:
                self._deferred_since = now
            if now - self._deferred_since < OVERDUE:
                self._defer()
                return
            for slot in fewer:
                self._passed_over[slot] = self._board[slot]
        for _ in range(BURST):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                break  # another worker took it
            except OSError as exc:
                if exc.errno in _SKIP:
                    continue
                log.warning("accepting a connection failed: %s", exc)
                self._defer(0.1)  # out of descriptors, say: let connections close first
                return
            self._board[self._slot] += 1
            self._start(conn)
            if self._fewer():
                break
        self._deferred_since = None

    def _defer(self, delay: float = RECHECK) -> None:
        assert self._loop is not None
        if self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False
        self._timer = self._loop.call_later(delay, self._recheck)

    def _recheck(self) -> None:
        self._timer = None
        if not self._poll.poll(0):  # another worker took it: the next one starts a new wait
            self._deferred_since = None
        self._watch()

    def _start(self, conn: socket.socket) -> None:
        assert self._loop is not None
        conn.setblocking(False)
        task = self._loop.create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            # A failed TLS handshake, say: common (scanners, clients refusing the
            # certificate), and the connection never reached the protocol.
            if not task.cancelled():
                log.debug("a connection could not be set up: %s", task.exception())
            self._board[self._slot] -= 1
