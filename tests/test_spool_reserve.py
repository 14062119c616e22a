"""Spool files made ahead of need (services/spool_reserve.py)."""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomweb_server.services.spool_reserve import SpoolReserve


@pytest.fixture
def reserve(tmp_path: Path) -> Iterator[SpoolReserve]:
    r = SpoolReserve(tmp_path, size=4)
    yield r
    r.close()


def _names(folder: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(prefix))


def _wait_for_reserve(folder: Path, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(_names(folder, "ready-")) < count:
        assert time.monotonic() < deadline, "the reserve was never refilled"
        time.sleep(0.01)


def _give(fd: int, name: str) -> None:
    os.close(fd)
    os.unlink(name)


def test_a_taken_file_is_empty_open_and_named_as_a_part(
    reserve: SpoolReserve, tmp_path: Path
) -> None:
    fd, name = reserve.take()
    os.write(fd, b"DICM")
    os.close(fd)
    path = Path(name)
    assert path.parent == tmp_path
    assert path.name.startswith("part-") and path.name.endswith(".tmp")
    assert path.read_bytes() == b"DICM"


def test_later_takes_come_from_the_reserve_not_the_callers_thread(
    reserve: SpoolReserve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _give(*reserve.take())  # the first is made on demand and starts the refill
    _wait_for_reserve(tmp_path, 4)
    callers: list[str] = []
    real = tempfile.mkstemp

    def counted(suffix: str, prefix: str, dir: Path) -> tuple[int, str]:
        callers.append(threading.current_thread().name)
        return real(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkstemp", counted)
    taken = [reserve.take() for _ in range(4)]
    assert threading.current_thread().name not in callers
    names = [Path(name).name for _, name in taken]
    assert all(n.startswith("part-ready-") for n in names)
    assert len(set(names)) == 4
    for fd, name in taken:
        assert os.fstat(fd).st_size == 0
        _give(fd, name)
    _wait_for_reserve(tmp_path, 4)  # and it refills again
    assert set(callers) == {"spool-reserve"}


def test_an_empty_reserve_makes_the_file_at_once(reserve: SpoolReserve, tmp_path: Path) -> None:
    taken = [reserve.take() for _ in range(12)]  # faster than any refill can follow
    assert len({name for _, name in taken}) == 12
    assert all(Path(name).exists() for _, name in taken)
    for item in taken:
        _give(*item)


def test_close_removes_the_reserve_and_leaves_handed_out_files(
    reserve: SpoolReserve, tmp_path: Path
) -> None:
    fd, name = reserve.take()
    _wait_for_reserve(tmp_path, 4)
    reserve.close()
    assert _names(tmp_path, "ready-") == []
    assert [p.name for p in tmp_path.iterdir()] == [Path(name).name]
    os.close(fd)
    later_fd, later = reserve.take()  # still works after close, on demand
    _give(later_fd, later)
    time.sleep(0.05)
    assert _names(tmp_path, "ready-") == []


def test_a_reserve_file_removed_behind_its_back_is_replaced(
    reserve: SpoolReserve, tmp_path: Path
) -> None:
    _give(*reserve.take())
    _wait_for_reserve(tmp_path, 4)
    for name in _names(tmp_path, "ready-"):
        (tmp_path / name).unlink()  # e.g. an operator emptied the folder
    fd, name = reserve.take()
    assert Path(name).exists()
    os.write(fd, b"x")
    _give(fd, name)


def test_a_failing_refill_leaves_errors_to_the_callers_and_recovers(
    reserve: SpoolReserve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = threading.Event()
    full.set()
    real = tempfile.mkstemp

    def disk(suffix: str, prefix: str, dir: Path) -> tuple[int, str]:
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkstemp", disk)
    with pytest.raises(OSError) as caught:
        reserve.take()
    assert caught.value.errno == errno.ENOSPC  # as without a reserve
    full.clear()
    _give(*reserve.take())  # space again: made on demand, and the refill resumes
    _wait_for_reserve(tmp_path, 4)


def test_a_disk_filling_up_under_the_reserve(
    reserve: SpoolReserve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _give(*reserve.take())
    _wait_for_reserve(tmp_path, 4)
    real = tempfile.mkstemp
    full = threading.Event()
    full.set()

    def disk(suffix: str, prefix: str, dir: Path) -> tuple[int, str]:
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkstemp", disk)
    for _ in range(4):  # what was made before the disk filled is still handed out
        _give(*reserve.take())
    with pytest.raises(OSError):
        reserve.take()
    full.clear()
    _give(*reserve.take())
    _wait_for_reserve(tmp_path, 4)
