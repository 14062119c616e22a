"""Blobs as files under a directory, written durably: temp file, sync, rename, sync names.

Two ways to sync (``sync``): ``fsync`` each file before its rename and each changed
directory after it; or ``syncfs``, one ``syncfs(2)`` for all data written before the
renames and one for the names after them, shared by concurrent requests
(``fs_sync.SyncGroup``; far fewer syscalls and thread hops for small instances).

Layout: ``<root>/blobs/<key>`` for stored objects and ``<root>/tmp/`` for the spool
(incoming uploads, on the same filesystem so that storing is a rename). A crash leaves
at most spool files, which ``clean_spool`` removes at the next start, and possibly a
complete blob that was renamed into place but whose index row was never committed
(unreferenced, harmless wasted space).

New blobs are refused once the filesystem has less than ``min_free_bytes`` free, so
that the index (SQLite keeps its journal next to the blobs by default) can still
commit, above all the deletions that free space again.

Every process that writes to the spool holds a shared lock on ``<root>/spool.lock``
(``hold_spool``); ``clean_spool`` only runs when it can take that lock exclusively, so
starting a second server or an ``import`` never deletes another process's uploads.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from dicomweb_server.errors import OutOfResources, StorageUnavailable, is_no_space
from dicomweb_server.storage import page_cache
from dicomweb_server.storage.fs_sync import SyncGroup, syncfs_usable
from dicomweb_server.storage.interfaces import BlobInfo, Placement

log = logging.getLogger(__name__)

LOCK_NAME = "spool.lock"
SYNC_MODES = ("syncfs", "fsync")


# Concurrent fsyncs of one batch (see FileBlobStore._in_parallel).
_SYNC_THREADS = 8


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    def __init__(self, root: Path, min_free_bytes: int = 0, sync: str = "fsync") -> None:
        self.root = root.resolve()
        # Free space kept in reserve: put_file refuses new blobs below it.
        self.min_free_bytes = min_free_bytes
        self.blobs = self.root / "blobs"
        self._blobs_name = str(self.blobs)
        self.tmp = self.root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._spool_lock: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        if sync == "syncfs" and not syncfs_usable():
            log.warning("syncfs is not usable here (Linux 5.8 or later needed): using fsync")
            sync = "fsync"
        self.sync = sync
        self._group = (
            SyncGroup(self.blobs, lambda work: self._executor().submit(work))
            if sync == "syncfs"
            else None
        )

    # -- the spool -------------------------------------------------------------------

    def _open_lock(self) -> int:
        return os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def hold_spool(self, timeout: float = 30.0) -> None:
        """Mark the spool as in use by this process until ``close``."""
        if self._spool_lock is not None:
            return
        fd = self._open_lock()
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # Only a clean_spool in progress holds it exclusively, and briefly.
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise StorageUnavailable(
                        f"the spool {self.tmp} stayed locked for {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)
        self._spool_lock = fd

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._group is not None:
            self._group.close()
        if self._spool_lock is not None:
            os.close(self._spool_lock)  # releases the lock
            self._spool_lock = None

    def clean_spool(self) -> int:
        """Remove temp files left by a crash; they were never acknowledged.

        Skipped (returns 0) while another process holds the spool: its files are live.
        """
        fd = self._open_lock()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("spool %s is in use by another process; not cleaning it", self.tmp)
                return 0
            removed = 0
            for entry in self.tmp.iterdir():
                if entry.is_file() or entry.is_symlink():
                    entry.unlink(missing_ok=True)
                    removed += 1
            return removed
        finally:
            os.close(fd)

    def spool_dir(self) -> Path:
        return self.tmp

    # -- blobs -----------------------------------------------------------------------

    def path_of(self, key: str) -> Path:
        return Path(self.name_of(key))

    def name_of(self, key: str) -> str:
        """``path_of`` as a string, for the per-request reads (pathlib's parsing costs
        more than the read's open)."""
        # Keys are built by the services from validated UIDs; this is a last guard.
        parts = key.split("/")
        if (
            not key
            or key.startswith("/")
            or "\\" in key
            or "\x00" in key
            or any(part in ("", ".", "..") for part in parts)
        ):
            raise StorageUnavailable(f"refusing unsafe blob key {key!r}")
        return f"{self._blobs_name}/{key}"

    def put_file(self, key: str, source: Path) -> None:
        problem = self.put_files([(key, source)])[0]
        if problem is not None:
            raise problem

    def sync_mark(self) -> int:
        return self._group.mark() if self._group is not None else 0

    def sync_soon(self, fh: BinaryIO, mark: int | None = None) -> Future[None]:
        if self._group is not None and mark is not None:
            try:
                fh.close()  # flushed by the caller; the page cache has it all
            except OSError as exc:
                failed: Future[None] = Future()
                failed.set_exception(exc)
                return failed
            return self._group.request(mark)

        def sync() -> None:
            try:
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fh.close()

        return self._executor().submit(sync)

    def put_files(
        self,
        items: Sequence[tuple[str, Path]],
        synced: Sequence[Future[None] | None] | None = None,
    ) -> list[Exception | None]:
        """Move each ``source`` into place under its key, durably; one outcome per item.

        Each file is made durable before its rename (or was, by ``sync_soon``: its
        future's outcome is used, since a failed sync is reported once only), and then
        the names: every directory whose entries changed is fsynced once for the whole
        batch (a study's instances share folders), or one ``syncfs`` covers them all.
        A failed item (``OutOfResources`` when the disk is full) leaves its source where
        it was and does not stop the others.
        """
        return self.place_files(items, synced).wait()

    def place_files(
        self,
        items: Sequence[tuple[str, Path]],
        synced: Sequence[Future[None] | None] | None = None,
    ) -> Placement:
        early = list(synced) if synced is not None else [None] * len(items)
        unsynced = [i for i, future in enumerate(early) if future is None]
        problems: list[Exception | None] = [None] * len(items)
        synced_now = self._in_parallel(_fsync_file, [items[i][1] for i in unsynced])
        for i, problem in zip(unsynced, synced_now, strict=True):
            problems[i] = problem
        for i, future in enumerate(early):
            if future is not None:
                try:
                    future.result()
                except Exception as exc:  # OSError, or ValueError for a closed file
                    problems[i] = exc
        mark = self.sync_mark()  # before the renames that the names sync covers
        changed: dict[Path, list[int]] = {}
        # Once per batch: its spooled files are counted as used already, so the renames
        # do not change what is free.
        short = self._short_of_reserve() if None in problems else None
        for i, (key, source) in enumerate(items):
            if problems[i] is not None:
                continue
            if short is not None:
                problems[i] = OutOfResources(
                    f"not storing {key}: {short} bytes free on the archive's disk, "
                    f"{self.min_free_bytes} are kept in reserve"
                )
                continue
            try:
                target = self.path_of(key)
                for directory in self._move(source, target):
                    changed.setdefault(directory, []).append(i)
            except (OSError, OutOfResources, StorageUnavailable) as exc:
                problems[i] = exc
        problems = [
            OutOfResources(f"no space left to store {key}")
            if isinstance(problem, OSError) and is_no_space(problem)
            else problem
            for (key, _), problem in zip(items, problems, strict=True)
        ]
        if self._group is not None:
            placed = [i for indices in changed.values() for i in indices]
            names = [(self._group.request(mark), sorted(set(placed)))] if placed else []
            return Placement(problems, names)
        pool = self._executor()
        syncs = [(pool.submit(fsync_dir, folder), indices) for folder, indices in changed.items()]
        return Placement(problems, syncs)

    def _in_parallel(
        self, sync: Callable[[Path], None], paths: list[Path]
    ) -> list[Exception | None]:
        """Run ``sync`` on each path, concurrently: fsyncs issued together share the
        filesystem's journal commits (on ext4 ten 9 KB files took 2.3 ms one by one,
        1.05 ms together). The error each met, or None."""

        def run(path: Path) -> Exception | None:
            try:
                sync(path)
            except OSError as exc:
                return exc
            return None

        if len(paths) <= 1:
            return [run(path) for path in paths]
        return list(self._executor().map(run, paths))

    def _executor(self) -> ThreadPoolExecutor:
        # Made on first use, from the event loop (sync_soon) or a worker thread.
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_SYNC_THREADS, thread_name_prefix="blob-fsync")
            return self._pool

    @staticmethod
    def _move(source: Path, target: Path) -> list[Path]:
        """Rename into place, making folders as needed; the directories that changed."""
        created: list[Path] = []
        for attempt in range(3):
            try:
                if attempt:  # the folder was missing: make it (and its parents)
                    parent = target.parent
                    while not parent.exists():
                        created.append(parent)
                        parent = parent.parent
                    target.parent.mkdir(parents=True, exist_ok=True)
                # Most targets' folder exists already: the rename alone, one syscall.
                os.replace(source, target)
                break
            except FileNotFoundError:
                # No folder yet, or a concurrent delete removed one (then empty) while
                # we made it or before the rename: make it again.
                if attempt == 2 or not source.exists():
                    raise
        return [target.parent, *(directory.parent for directory in dict.fromkeys(created))]

    def free_bytes(self) -> int:
        stat = os.statvfs(self.blobs)
        return stat.f_bavail * stat.f_frsize

    def _short_of_reserve(self) -> int | None:
        """The free bytes when new blobs must be refused, the disk being nearly full
        (what is left is kept for the index, e.g. to delete); else None."""
        if self.min_free_bytes <= 0:
            return None
        free = self.free_bytes()
        return free if free < self.min_free_bytes else None

    def walk(self) -> Iterator[BlobInfo]:
        """Every stored blob (not the spool), in no particular order."""
        for folder, _dirs, files in os.walk(self.blobs):
            base = Path(folder)
            for name in files:
                path = base / name
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted while we walked
                    continue
                yield BlobInfo(path.relative_to(self.blobs).as_posix(), st.st_size, st.st_mtime)

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path_of(key), "rb")
        except OSError as exc:
            raise StorageUnavailable(f"stored object {key} is unreadable: {exc.strerror}") from exc

    def read_now(self, key: str, offset: int, length: int) -> bytearray | None:
        # The buffer itself: bytes(buffer) would cost a second large allocation and
        # copy (0.5 ms for 512 KB on the benchmark VM, page faults included).
        buffer = bytearray(length)
        return buffer if self.read_now_into(key, offset, buffer) else None

    def read_now_into(self, key: str, offset: int, into: bytearray | memoryview) -> bool:
        # RWF_NOWAIT (Linux 4.14+): the read fails with EAGAIN, or comes back short,
        # unless the page cache already holds the range; a filesystem without support
        # says EOPNOTSUPP. Either way the caller reads in a thread instead.
        flags = getattr(os, "RWF_NOWAIT", None)
        if flags is None:
            return False
        try:
            fd = os.open(self.name_of(key), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return os.preadv(fd, [into], offset, flags) == len(into)
        except OSError:
            return False
        finally:
            os.close(fd)

    def open_cached(self, key: str, offset: int, length: int) -> int | None:
        try:
            fd = os.open(self.name_of(key), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        if page_cache.all_cached(fd, offset, length):
            return fd
        os.close(fd)
        return None

    def delete(self, key: str) -> None:
        path = self.path_of(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Remove the folders the blob leaves empty, up to (not including) blobs/.
        parent = path.parent
        while parent != self.blobs and self.blobs in parent.parents:
            try:
                parent.rmdir()
            except OSError:  # not empty (or already gone): stop here
                break
            parent = parent.parent
