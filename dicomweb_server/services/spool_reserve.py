"""Spool files created ahead of need, on a background thread.

Every incoming object needs a new inode, and creating one is kernel work that can take
far longer than writing a small object: on ext4 without a journal, a new inode skips
those freed in the last minutes, reading their inode tables to do so (0.2-0.5 ms per
file measured here after a cleanup; 30-50 us otherwise). Done on the event loop, as each
part of a STOW-RS body begins, that time was most of the loop's work for small
instances, in series with everything else. A reserve of empty files, open and wrapped
for writing by one thread (which holds no GIL in the kernel), takes it off the request's
path: handing one out is a pop from a deque. When the reserve is empty the file is made
at once, as before, so errors (a full disk) surface where they always did.

Files in reserve are ``part-*.tmp`` like any spool file, and empty: an empty spool file
may be one made ahead of need. (Renaming each when handed out, to tell them apart, cost
the event loop as much as creating the file on a healthy filesystem.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

PREFIX, SUFFIX = "part-", ".tmp"


class SpoolReserve:
    """Empty temp files in ``directory``, open for writing with a ``buffering`` bytes
    buffer, handed out by ``take``."""

    def __init__(self, directory: Path, buffering: int, size: int = 32) -> None:
        self.directory = directory
        self.buffering = buffering
        self.size = size
        self._ready: deque[tuple[Path, BinaryIO]] = deque()
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failed = False  # the last refill met an error: wait for a take to succeed

    def take(self) -> tuple[Path, BinaryIO]:
        """The path of a new empty file and the file open for writing; the caller owns
        both."""
        ready = self._next_ready()
        if ready is None:
            ready = self.create()  # raises as it always did (a full disk, say)
            self._failed = False  # creating works (again)
        if not self._failed and len(self._ready) < self.size // 2:
            # Refilled in bursts, not after every take: creating files in the folder
            # while the loop writes into it makes both wait for the folder's lock.
            self._wanted.set()
            if self._thread is None:
                self._start()
        return ready

    def _next_ready(self) -> tuple[Path, BinaryIO] | None:
        while True:
            try:
                path, fh = self._ready.popleft()
            except IndexError:
                return None
            if os.fstat(fh.fileno()).st_nlink:
                return path, fh
            fh.close()  # removed behind our back (someone emptied the folder)

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

    def create(self) -> tuple[Path, BinaryIO]:
        """A new spool file made now, not from the reserve (for callers off the event
        loop, whose processes may end without ``close``)."""
        fd, name = tempfile.mkstemp(prefix=PREFIX, suffix=SUFFIX, dir=self.directory)
        # An explicit buffer size spares the fstat and isatty of the default.
        return Path(name), os.fdopen(fd, "wb", buffering=self.buffering)

    def _start(self) -> None:
        with self._lock:  # started under the lock: close() never joins an unstarted thread
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
                self._ready.append(self.create())
            except OSError as exc:
                # A full disk or a removed folder: takes now create on demand and report
                # it to their callers, as they would without the reserve.
                log.debug("spool reserve stopped refilling: %s", exc)
                self._failed = True

    def _drain(self) -> None:
        while True:
            try:
                path, fh = self._ready.popleft()
            except IndexError:
                return
            fh.close()
            with contextlib.suppress(OSError):
                path.unlink()
