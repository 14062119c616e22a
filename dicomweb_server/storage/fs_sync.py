"""Durability for many files at once: one ``syncfs`` for everything written before it.

Storing a small instance costs a file create, a write, an fsync of the file, a rename
and an fsync of each directory whose entries changed; ten instances of a STOW request
made some twenty fsyncs, each a worker-thread hop and a journal commit, and on the
2-core benchmark VM the kernel's share of the server's CPU was over 40 %, most of it
switching threads. ``syncfs(2)`` makes every file and name of one filesystem durable in
one call (one journal commit on ext4, one log force on XFS), so a request needs two:
one for the data before the renames, one for the names before the index commit.

``SyncGroup`` is group commit for it: callers ask for *a* sync that starts after their
writes; those who ask while one is running share the next one. Concurrent requests of
a process so share their syncs too.

Errors. Since Linux 5.8 ``syncfs`` reports a writeback error of any file of the
filesystem that happened since the descriptor it is called on last reported one
(``errseq``), once. So one descriptor per process, opened before anything is written,
and a count of the errors seen: a caller passes the count it saw before writing
(``mark``), and its sync fails if any error was seen since, its own round's or an
earlier one's that may have been its file's. Failing a few innocent instances once on
a failing disk is the price of never acknowledging a lost one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

Submit = Callable[[Callable[[], None]], Any]


def _libc_syncfs() -> Callable[[int], int] | None:
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _libc_syncfs()


def _kernel_reports_errors() -> bool:
    """syncfs reports writeback errors from Linux 5.8 on; before, it could not fail."""
    try:
        major, minor = (int(p) for p in platform.release().split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


def syncfs_usable() -> bool:
    return _SYNCFS is not None and _kernel_reports_errors()


def syncfs(fd: int) -> None:
    """``syncfs(2)`` on the filesystem of ``fd``; the GIL is released meanwhile."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    if _SYNCFS(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"syncfs: {os.strerror(code)}")


class SyncGroup:
    """Group commit of ``syncfs`` on the filesystem holding ``folder``."""

    def __init__(self, folder: Path, submit: Submit, sync: Callable[[int], None] = syncfs) -> None:
        self._folder = folder
        self._submit = submit
        self._sync = sync
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = 0
        self._open()
        self._running = False
        # The round not started yet: every request made now is served by it.
        self._waiting: list[tuple[int, Future[None]]] = []
        self._errors = 0
        self._last_error: OSError | None = None

    def _open(self) -> None:
        # A descriptor inherited over fork would share its error cursor with the parent
        # (each error reported to only one of them): each process opens its own.
        if self._pid != os.getpid():
            self._fd = os.open(self._folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._pid = os.getpid()

    def mark(self) -> int:
        """Taken before writing; ``request(mark)`` fails if an error is seen after it."""
        with self._lock:
            self._open()
            return self._errors

    def request(self, mark: int) -> Future[None]:
        """A sync that starts after this call; its future fails if it, or any sync
        since ``mark``, reported an error."""
        future: Future[None] = Future()
        with self._lock:
            self._open()
            self._waiting.append((mark, future))
            if not self._running:
                self._start()
        return future

    def _start(self) -> None:
        """Start the waiting round (lock held)."""
        round_, self._waiting = self._waiting, []
        self._running = True
        try:
            self._submit(lambda: self._run(round_))
        except RuntimeError as exc:  # the pool was shut down: the store is closing
            self._running = False
            for _, future in round_:
                future.set_exception(OSError(errno.ESHUTDOWN, f"blob store closed: {exc}"))

    def _run(self, round_: list[tuple[int, Future[None]]]) -> None:
        error: OSError | None = None
        try:
            self._sync(self._fd)
        except OSError as exc:
            error = exc
        with self._lock:
            if error is not None:
                self._errors += 1
                self._last_error = error
            errors, last = self._errors, self._last_error
            self._running = False
            if self._waiting:
                self._start()
        for mark, future in round_:
            if errors != mark:
                future.set_exception(last or OSError(errno.EIO, "syncfs failed"))
            else:
                future.set_result(None)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = -1
            self._pid = 0
