"""SyncGroup: group commit of syncfs, and which callers an error fails."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dicomweb_server.storage import fs_sync
from dicomweb_server.storage.fs_sync import SyncGroup


class Disk:
    """A fake syncfs whose calls block until released, so a test decides what overlaps."""

    def __init__(self) -> None:
        self.started: list[threading.Event] = []
        self.release: list[threading.Event] = []
        self.fail: dict[int, int] = {}  # call number -> errno
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self.lock:
            n = len(self.started)
            self.started.append(threading.Event())
            self.release.append(threading.Event())
        self.started[n].set()
        assert self.release[n].wait(10), "test never released the sync"
        if n in self.fail:
            raise OSError(self.fail[n], os.strerror(self.fail[n]))

    def wait_started(self, n: int) -> None:
        for _ in range(1000):
            if len(self.started) > n:
                break
            threading.Event().wait(0.01)
        assert self.started[n].wait(10)

    def finish(self, n: int) -> None:
        self.wait_started(n)
        self.release[n].set()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(4)
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)


def group(tmp_path: Path, pool: ThreadPoolExecutor, disk: Callable[[int], None]) -> SyncGroup:
    def submit(work: Callable[[], None]) -> Any:
        return pool.submit(work)

    return SyncGroup(tmp_path, submit, disk)


def test_requests_during_a_sync_share_the_next_one(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """The sync running when a request is made may have started before its writes: the
    request waits for the next one, which every later request shares."""
    disk = Disk()
    sync = group(tmp_path, pool, disk)
    first = sync.request(sync.mark())
    disk.wait_started(0)
    later = [sync.request(sync.mark()) for _ in range(5)]
    assert not first.done()
    disk.finish(0)
    assert first.result(10) is None
    disk.wait_started(1)
    assert not any(f.done() for f in later)  # not served by the sync that began before
    disk.finish(1)
    assert [f.result(10) for f in later] == [None] * 5
    assert len(disk.started) == 2


def test_a_request_when_idle_starts_a_sync_at_once(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    disk = Disk()
    sync = group(tmp_path, pool, disk)
    for n in range(3):
        future = sync.request(sync.mark())
        disk.finish(n)
        assert future.result(10) is None
    assert len(disk.started) == 3


def test_an_error_fails_that_sync_and_later_ones_marked_before_it(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """syncfs reports an error once, to whichever sync comes first; it may have been the
    file of a caller still writing (marked before), so that caller fails too. A caller
    marked after it is not failed."""
    disk = Disk()
    disk.fail[0] = errno.EIO
    sync = group(tmp_path, pool, disk)
    still_writing = sync.mark()
    failing = sync.request(sync.mark())
    disk.finish(0)
    with pytest.raises(OSError) as raised:
        failing.result(10)
    assert raised.value.errno == errno.EIO
    marked_after = sync.mark()
    late = sync.request(still_writing)
    disk.finish(1)
    with pytest.raises(OSError):
        late.result(10)
    fresh = sync.request(marked_after)
    disk.finish(2)
    assert fresh.result(10) is None


def test_a_closed_pool_fails_the_request_instead_of_hanging(tmp_path: Path) -> None:
    executor = ThreadPoolExecutor(1)
    executor.shutdown()
    sync = group(tmp_path, executor, Disk())
    future = sync.request(sync.mark())
    with pytest.raises(OSError) as raised:
        future.result(1)
    assert raised.value.errno == errno.ESHUTDOWN


@pytest.mark.skipif(not fs_sync.syncfs_usable(), reason="needs syncfs (Linux 5.8+)")
def test_real_syncfs_on_this_filesystem(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    (tmp_path / "f").write_bytes(b"x" * 4096)
    sync = SyncGroup(tmp_path, pool.submit)
    try:
        assert sync.request(sync.mark()).result(10) is None
    finally:
        sync.close()


def test_syncfs_of_a_bad_descriptor_is_an_os_error() -> None:
    if fs_sync._SYNCFS is None:
        pytest.skip("no syncfs here")
    with pytest.raises(OSError) as raised:
        fs_sync.syncfs(-1)
    assert raised.value.errno == errno.EBADF
