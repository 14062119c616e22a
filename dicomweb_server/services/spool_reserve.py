"""Spool files created ahead of need, on a background thread.

Every incoming object needs a new inode, and creating one is kernel work that can take
far longer than writing a small object: on ext4 without a journal, a new inode skips
those freed in the last minutes, reading their inode tables to do so (0.2-0.5 ms per
file measured here after a cleanup). Done on the event loop, as each part of a STOW-RS
body begins, that time was most of the loop's work for small instances, in series with
everything else. A reserve of empty, open files refilled by one thread (which holds no
GIL in the kernel) takes it off the request's path; when the reserve is empty the file
is created at once, as before, so errors (a full disk) surface where they always did.

Files in reserve are named ``ready-*`` and renamed ``part-ready-*`` when handed out (a rename
in one folder, no new inode): an operator, a test or a crash cleanup can tell the empty
reserve from objects being received.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections import deque
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX, READY, SUFFIX = "part-", "ready-", ".tmp"


class SpoolReserve:
    """Empty temp files in ``directory``, open for writing, handed out by ``take``."""

    def __init__(self, directory: Path, size: int = 32) -> None:
        self.directory = directory
        self.size = size
        self._ready: deque[tuple[int, str]] = deque()
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failed = False  # the last refill met an error: wait for a take to succeed

    def take(self) -> tuple[int, str]:
        """An open descriptor and the name of a new empty file; the caller owns both."""
        try:
            ready = self._handed_out(*self._ready.popleft())
        except IndexError:
            ready = None
        if ready is None:
            ready = self._create(PREFIX)  # raises as it always did (a full disk, say)
            self._failed = False  # creating works (again)
        if not self._failed:
            self._wanted.set()
            if self._thread is None:
                self._start()
        return ready

    def close(self) -> None:
        """Stop refilling and remove the files not handed out; a later ``take`` creates
        its file on demand."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wanted.set()
        if thread is not None:
            thread.join(timeout=5.0)
        self._drain()

    def _create(self, prefix: str) -> tuple[int, str]:
        return tempfile.mkstemp(prefix=prefix, suffix=SUFFIX, dir=self.directory)

    @staticmethod
    def _handed_out(fd: int, name: str) -> tuple[int, str] | None:
        # part-ready-XXXXXXXX.tmp: never a name mkstemp gives (no '-' in its letters), so
        # the rename cannot replace a file being received.
        folder, _, base = name.rpartition("/")
        taken = f"{folder}/{PREFIX}{base}"
        try:
            os.rename(name, taken)
        except OSError:  # removed behind our back: make one on demand instead
            os.close(fd)
            return None
        return fd, taken

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="spool-reserve", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:  # until close(): it wakes this thread to see it
            self._wanted.wait()
            self._wanted.clear()
            self._refill()
        self._drain()

    def _refill(self) -> None:
        for _ in range(self.size):  # at most one reserve's worth per wake-up
            if self._closed or self._failed or len(self._ready) >= self.size:
                return
            try:
                self._ready.append(self._create(READY))
            except OSError as exc:
                # A full disk or a removed folder: takes now create on demand and report
                # it to their callers, as they would without the reserve.
                log.debug("spool reserve stopped refilling: %s", exc)
                self._failed = True

    def _drain(self) -> None:
        while True:
            try:
                fd, name = self._ready.popleft()
            except IndexError:
                return
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name)
