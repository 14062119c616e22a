"""One SQLite writer at a time across threads AND processes, without SQLite's busy wait.

SQLite admits one writer; the others wait in its busy handler, which sleeps in growing
steps (up to 100 ms) and so wakes late: with several worker processes storing at once,
most of the time went to sleeping. Writers first queue on a thread lock (this process)
and then on an flock of a file next to the database (other processes); both wake the
next waiter as soon as the holder releases.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType


class WriterLock:
    def __init__(self, database: Path | None) -> None:
        self._thread = threading.Lock()
        self._path = None if database is None else database.with_name(database.name + ".writer")
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._thread.acquire()
        if self._path is None:
            return
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
