"""Deliver queued UPS event reports to the WebSockets connected to this process.

Each server process runs at most one tailer: while at least one Notification
Connection (PS3.18 8.10.4) is open here, it reads the events queued after the last one
it saw for the AE titles connected here, every ``poll_seconds``, and hands each to the
listeners of its AE in id order (so the events of one workitem arrive in the order
they were queued). With no connection it does not touch the database; the first
connection starts from the newest event, since reports are not kept for AEs that are
not connected (PS3.4 CC.2.4.3: no obligation to queue or retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio.to_thread

from dicomweb_server.storage.interfaces import SubscriptionStore

log = logging.getLogger(__name__)


class Overflow(Exception):
    """The client reads more slowly than its events arrive."""


class Listener:
    """One Notification Connection: its AE title and the reports waiting for it."""

    def __init__(self, ae_title: str, max_queue: int) -> None:
        self.ae_title = ae_title
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(max_queue)
        self.overflowed = False

    def offer(self, message: bytes) -> None:
        if self.overflowed:
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.overflowed = True
            # Wake the reader; it raises Overflow and the connection is closed.
            self._queue.get_nowait()
            self._queue.put_nowait(None)

    async def next(self) -> bytes:
        message = await self._queue.get()
        if message is None:
            raise Overflow(f"more than {self._queue.maxsize} event reports waiting")
        return message


class EventHub:
    def __init__(
        self, store: SubscriptionStore, poll_seconds: float = 0.2, max_queue: int = 1000
    ) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.max_queue = max_queue
        self.batch = 500
        self._listeners: dict[str, set[Listener]] = {}
        self._last = 0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    @property
    def connected(self) -> int:
        return sum(len(group) for group in self._listeners.values())

    async def connect(self, ae_title: str) -> Listener:
        """Register a connection; its events from now on will be delivered."""
        if self._task is None:
            self._last = await anyio.to_thread.run_sync(self.store.last_event_id)
        listener = Listener(ae_title, self.max_queue)
        self._listeners.setdefault(ae_title, set()).add(listener)
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        return listener

    def disconnect(self, listener: Listener) -> None:
        group = self._listeners.get(listener.ae_title)
        if group is not None:
            group.discard(listener)
            if not group:
                del self._listeners[listener.ae_title]
        if not self._listeners and self._wake is not None:
            # The last connection went: the tailer stops at once. It is woken, never
            # cancelled, so a read in flight in its thread finishes and returns its
            # database connection before the server can shut down.
            self._wake.set()

    async def _run(self) -> None:
        try:
            while self._listeners:
                try:
                    delivered = await self.poll()
                except Exception:
                    log.exception("reading UPS events failed; retrying")
                    delivered = 0
                if delivered < self.batch and self._listeners and self._wake is not None:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
        finally:
            # No await since the loop's last check: no connection can have come in.
            self._task = None

    async def poll(self) -> int:
        """Deliver the events queued since the last poll; returns how many were read."""
        aets = frozenset(self._listeners)
        rows, last = await anyio.to_thread.run_sync(
            self.store.events_after, self._last, aets, self.batch
        )
        self._last = max(self._last, last)
        for row in rows:
            for listener in list(self._listeners.get(row.ae_title, ())):
                listener.offer(row.message)
        return len(rows)

    async def aclose(self) -> None:
        """Stop the tailer and wait for it (its read in flight finishes first)."""
        task = self._task
        self._listeners.clear()
        if self._wake is not None:
            self._wake.set()
        if task is not None:
            await task
