"""Spool files made ahead of need (services/spool_reserve.py)."""

from __future__ import annotations

import errno
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from dicomweb_server.services.spool_reserve import SpoolReserve


@pytest.fixture
def reserve(tmp_path: Path) -> Iterator[SpoolReserve]:
    r = SpoolReserve(tmp_path, buffering=4096, size=4)
    yield r
    r.close()


def _waiting(folder: Path, count: int) -> set[Path]:
    """Once ``count`` files wait in the folder (bounded wait), the set of them."""
    deadline = time.monotonic() + 10
    while len(files := set(folder.iterdir())) < count:
        assert time.monotonic() < deadline, "the reserve was never refilled"
        time.sleep(0.01)
    return files


def _give(path: Path, fh: BinaryIO) -> None:
    fh.close()
    path.unlink()


def test_a_taken_file_is_empty_open_and_named_as_a_part(
    reserve: SpoolReserve, tmp_path: Path
) -> None:
    path, fh = reserve.take()
    assert path.parent == tmp_path
    assert path.name.startswith("part-") and path.name.endswith(".tmp")
    assert path.stat().st_size == 0
    fh.write(b"DICM")
    fh.close()
    assert path.read_bytes() == b"DICM"


def test_later_takes_come_from_the_reserve_not_the_callers_thread(
    reserve: SpoolReserve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _give(*reserve.take())  # the first is made on demand and starts the refill
    made = _waiting(tmp_path, 4)
    callers: list[str] = []
    real = tempfile.mkstemp

    def counted(suffix: str, prefix: str, dir: Path) -> tuple[int, str]:
        callers.append(threading.current_thread().name)
        return real(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkstemp", counted)
    taken = [reserve.take() for _ in range(4)]
    assert {path for path, _ in taken} == made
    assert threading.current_thread().name not in callers
    for item in taken:
        _give(*item)
    _waiting(tmp_path, 4)  # and it refills again, on its own thread
    assert set(callers) == {"spool-reserve"}


def test_an_empty_reserve_makes_the_file_at_once(reserve: SpoolReserve) -> None:
    taken = [reserve.take() for _ in range(12)]  # faster than any refill can follow
    assert len({path for path, _ in taken}) == 12
    assert all(path.exists() for path, _ in taken)
    for item in taken:
        _give(*item)


def test_close_removes_the_reserve_and_leaves_handed_out_files(
    reserve: SpoolReserve, tmp_path: Path
) -> None:
    path, fh = reserve.take()
    _waiting(tmp_path, 5)
    reserve.close()
    assert list(tmp_path.iterdir()) == [path]
    fh.close()
    _give(*reserve.take())  # still works after close, on demand, and makes no reserve
    time.sleep(0.05)
    assert list(tmp_path.iterdir()) == [path]


def test_a_reserve_file_removed_behind_its_back_is_not_handed_out(
    reserve: SpoolReserve, tmp_path: Path
) -> None:
    _give(*reserve.take())
    for path in _waiting(tmp_path, 4):
        path.unlink()  # e.g. an operator emptied the folder
    path, fh = reserve.take()
    assert path.exists()
    fh.write(b"x")
    fh.close()
    assert path.read_bytes() == b"x"
    path.unlink()


def _filling_disk(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """mkstemp fails with ENOSPC while the returned event is set."""
    full = threading.Event()
    full.set()
    real = tempfile.mkstemp

    def disk(suffix: str, prefix: str, dir: Path) -> tuple[int, str]:
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkstemp", disk)
    return full


def test_a_full_disk_is_reported_to_the_caller_as_without_a_reserve(
    reserve: SpoolReserve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = _filling_disk(monkeypatch)
    with pytest.raises(OSError) as caught:
        reserve.take()
    assert caught.value.errno == errno.ENOSPC
    full.clear()
    _give(*reserve.take())  # space again: made on demand, and the refill starts
    _waiting(tmp_path, 4)


def test_a_disk_filling_up_under_the_reserve(
    reserve: SpoolReserve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _give(*reserve.take())
    _waiting(tmp_path, 4)
    full = _filling_disk(monkeypatch)
    for _ in range(4):  # what was made before the disk filled is still handed out
        _give(*reserve.take())
    with pytest.raises(OSError):
        reserve.take()
    full.clear()
    _give(*reserve.take())  # the refill resumes once a take succeeds
    _waiting(tmp_path, 4)
