"""FileBlobStore: durable placement, key safety, deletion and spool cleanup."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from dicomweb_server.errors import OutOfResources, StorageUnavailable
from dicomweb_server.storage import blob_fs, fs_sync
from dicomweb_server.storage.blob_fs import FileBlobStore


def _spooled(store: FileBlobStore, data: bytes, name: str = "part-1.tmp") -> Path:
    path = store.spool_dir() / name
    path.write_bytes(data)
    return path


def test_creates_its_folders(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "data")
    assert (tmp_path / "data" / "blobs").is_dir()
    assert (tmp_path / "data" / "tmp").is_dir()
    assert store.spool_dir() == (tmp_path / "data" / "tmp").resolve()


def test_put_file_moves_the_source_into_place(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    source = _spooled(store, b"DICM payload")
    store.put_file("ab/1.2/1.2.3/1.2.3.4-00.dcm", source)
    target = tmp_path / "blobs" / "ab" / "1.2" / "1.2.3" / "1.2.3.4-00.dcm"
    assert target.read_bytes() == b"DICM payload"
    assert not source.exists()
    assert list(store.spool_dir().iterdir()) == []
    with store.open("ab/1.2/1.2.3/1.2.3.4-00.dcm") as fh:
        assert fh.read() == b"DICM payload"


def test_put_file_fsyncs_file_and_every_new_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is fsynced before the rename, then each directory whose entries changed."""
    store = FileBlobStore(tmp_path)
    (tmp_path / "blobs" / "ab").mkdir()
    source = _spooled(store, b"x" * 100)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_fsync_dir = os.fsync, os.replace, blob_fs.fsync_dir

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    def fsync_dir(path: Path) -> None:
        events.append(("fsync_dir", str(path)))
        real_fsync_dir(path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(blob_fs, "fsync_dir", fsync_dir)
    store.put_file("ab/1.2/1.2.3/x.dcm", source)
    blobs = tmp_path.resolve() / "blobs"
    target = blobs / "ab" / "1.2" / "1.2.3" / "x.dcm"
    assert events[0] == ("fsync", str(source.resolve()))
    assert events[1] == ("replace", str(target))
    synced_dirs = {e[1] for e in events[2:] if e[0] == "fsync_dir"}
    # The directory holding the file, and the parents of the two directories created.
    assert synced_dirs == {str(target.parent), str(blobs / "ab" / "1.2"), str(blobs / "ab")}


def test_put_file_replaces_an_existing_blob(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    store.put_file("k/a.dcm", _spooled(store, b"old"))
    store.put_file("k/a.dcm", _spooled(store, b"new"))
    with store.open("k/a.dcm") as fh:
        assert fh.read() == b"new"


@pytest.mark.parametrize(
    "key", ["/etc/passwd", "../outside.dcm", "a/../../outside.dcm", "a/..", "", "a//b", "a/./b"]
)
def test_unsafe_keys_are_refused(tmp_path: Path, key: str) -> None:
    store = FileBlobStore(tmp_path / "data")
    (tmp_path / "outside.dcm").write_bytes(b"secret")
    source = _spooled(store, b"data")
    with pytest.raises(StorageUnavailable):
        store.put_file(key, source)
    with pytest.raises(StorageUnavailable):
        store.open(key)
    with pytest.raises(StorageUnavailable):
        store.delete(key)
    assert source.exists()
    assert (tmp_path / "outside.dcm").read_bytes() == b"secret"


def test_delete_removes_and_tolerates_missing(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    store.put_file("k/a.dcm", _spooled(store, b"data"))
    store.delete("k/a.dcm")
    assert not (tmp_path / "blobs" / "k" / "a.dcm").exists()
    store.delete("k/a.dcm")  # already gone: fine
    store.delete("never/stored.dcm")


def test_open_missing_blob_is_storage_unavailable(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    with pytest.raises(StorageUnavailable, match="unreadable"):
        store.open("no/such.dcm")


def test_clean_spool_removes_leftovers_only_from_the_spool(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    store.put_file("k/kept.dcm", _spooled(store, b"stored"))
    for i in range(3):
        _spooled(store, b"partial", f"part-{i}.tmp")
    (store.spool_dir() / "part-9.part10").write_bytes(b"half")
    assert store.clean_spool() == 4
    assert list(store.spool_dir().iterdir()) == []
    assert (tmp_path / "blobs" / "k" / "kept.dcm").read_bytes() == b"stored"
    assert store.clean_spool() == 0


def test_put_file_out_of_space_is_out_of_resources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileBlobStore(tmp_path)
    source = _spooled(store, b"data")

    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutOfResources):
        store.put_file("k/a.dcm", source)


def test_clean_spool_leaves_a_spool_in_use_by_another_process_alone(tmp_path: Path) -> None:
    """`import` or a second server starting must not delete a running server's uploads."""
    running = FileBlobStore(tmp_path)
    running.hold_spool()
    live = _spooled(running, b"upload in progress")
    starting = FileBlobStore(tmp_path)
    assert starting.clean_spool() == 0
    assert live.read_bytes() == b"upload in progress"
    # Several holders share the spool.
    other = FileBlobStore(tmp_path)
    other.hold_spool(timeout=1)
    running.close()
    assert starting.clean_spool() == 0
    other.close()
    # Nobody holds it any more (as after a crash): leftovers go.
    assert starting.clean_spool() == 1
    assert not live.exists()


def test_hold_spool_waits_for_a_clean_in_progress_then_gives_up(tmp_path: Path) -> None:
    import fcntl

    store = FileBlobStore(tmp_path)
    fd = os.open(tmp_path / blob_fs.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StorageUnavailable, match="locked"):
            store.hold_spool(timeout=0.2)
    finally:
        os.close(fd)
    store.hold_spool(timeout=1)
    store.close()


def test_delete_removes_emptied_folders_but_not_blobs_root(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    store.put_file("ab/st/se/1.dcm", _spooled(store, b"1", "p1"))
    store.put_file("ab/st/se/2.dcm", _spooled(store, b"2", "p2"))
    store.put_file("ab/st/other/3.dcm", _spooled(store, b"3", "p3"))
    store.delete("ab/st/se/1.dcm")
    assert (tmp_path / "blobs" / "ab" / "st" / "se").is_dir()
    store.delete("ab/st/se/2.dcm")
    assert not (tmp_path / "blobs" / "ab" / "st" / "se").exists()
    assert (tmp_path / "blobs" / "ab" / "st" / "other").is_dir()
    store.delete("ab/st/other/3.dcm")
    assert list((tmp_path / "blobs").iterdir()) == []
    assert (tmp_path / "blobs").is_dir()
    # A folder removed between put_file's mkdir and rename is made again.
    store.put_file("ab/st/se/4.dcm", _spooled(store, b"4", "p4"))
    with store.open("ab/st/se/4.dcm") as fh:
        assert fh.read() == b"4"


def test_put_file_survives_a_concurrent_folder_removal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileBlobStore(tmp_path)
    source = _spooled(store, b"data")
    real_replace = os.replace
    calls = 0

    def racing_replace(src: str | Path, dst: str | Path) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # after our mkdir, a delete of the folder's last blob gets in
            Path(dst).parent.rmdir()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", racing_replace)
    store.put_file("ab/st/se/x.dcm", source)
    assert calls == 3  # no folder; made, but removed before the rename; made again
    assert (tmp_path / "blobs" / "ab" / "st" / "se" / "x.dcm").read_bytes() == b"data"


def test_put_file_survives_a_folder_removed_while_it_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mkdir(parents=True) meets a parent that a concurrent delete just removed: the
    store makes the folders again instead of failing the instance."""
    store = FileBlobStore(tmp_path)
    source = _spooled(store, b"data")
    real_mkdir = Path.mkdir
    calls = 0

    def racing_mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise FileNotFoundError(2, "No such file or directory", str(self.parent))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    assert store.put_files([("ab/st/x.dcm", source)]) == [None]
    assert (tmp_path / "blobs" / "ab" / "st" / "x.dcm").read_bytes() == b"data"


def test_a_blob_into_an_existing_folder_is_one_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileBlobStore(tmp_path)
    store.put_file("ab/st/1.dcm", _spooled(store, b"1", "p1"))
    calls: list[str] = []
    real_replace, real_mkdir = os.replace, Path.mkdir

    def replace(src: str | Path, dst: str | Path) -> None:
        calls.append("replace")
        real_replace(src, dst)

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        calls.append("mkdir")
        real_mkdir(self, *args, **kwargs)

    def exists(self: Path) -> bool:
        calls.append("exists")
        return os.path.exists(self)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(Path, "exists", exists)
    store.put_file("ab/st/2.dcm", _spooled(store, b"2", "p2"))
    assert calls == ["replace"]  # no look at the folder first
    calls.clear()
    store.put_file("ab/other/3.dcm", _spooled(store, b"3", "p3"))
    assert calls[0] == "replace" and calls[-2:] == ["mkdir", "replace"]
    assert (tmp_path / "blobs" / "ab" / "other" / "3.dcm").read_bytes() == b"3"


def test_put_files_syncs_each_changed_folder_once_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study's instances share folders: a batch fsyncs each file, then each folder
    whose entries changed once, not once per file."""
    store = FileBlobStore(tmp_path)
    sources = [_spooled(store, b"x", f"p{i}") for i in range(5)]
    synced: list[str] = []
    real_fsync_dir = blob_fs.fsync_dir

    def fsync_dir(path: Path) -> None:
        synced.append(str(path))
        real_fsync_dir(path)

    monkeypatch.setattr(blob_fs, "fsync_dir", fsync_dir)
    keys = [f"ab/st/se/{i}.dcm" for i in range(4)] + ["ab/st/other/4.dcm"]
    assert store.put_files(list(zip(keys, sources, strict=True))) == [None] * 5
    blobs = tmp_path.resolve() / "blobs"
    assert sorted(synced) == sorted(
        str(p)
        for p in (
            blobs,
            blobs / "ab",
            blobs / "ab" / "st",
            blobs / "ab/st/se",
            blobs / "ab/st/other",
        )
    )
    for key in keys:
        assert store.exists(key)


def test_put_files_reports_a_failed_item_and_stores_the_others(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    good = _spooled(store, b"good", "g")
    missing = store.spool_dir() / "gone.tmp"
    problems = store.put_files([("k/missing.dcm", missing), ("k/good.dcm", good)])
    assert isinstance(problems[0], FileNotFoundError)
    assert problems[1] is None
    assert store.exists("k/good.dcm") and not store.exists("k/missing.dcm")


def test_read_now_gives_cached_bytes_and_none_for_what_it_cannot_read_at_once(
    tmp_path: Path,
) -> None:
    store = FileBlobStore(tmp_path)
    payload = os.urandom(256 * 1024)
    store.put_file("ab/1.2/1.2.3/1.2.3.4-00.dcm", _spooled(store, payload))
    key = "ab/1.2/1.2.3/1.2.3.4-00.dcm"
    with store.open(key) as fh:
        fh.read()  # in the page cache now
    assert bytes(store.read_now(key, 1000, 5000) or b"") == payload[1000:6000]
    assert store.read_now(key, len(payload) - 10, 20) is None  # short: past the end
    assert store.read_now("ab/1.2/1.2.3/9.9-00.dcm", 0, 10) is None  # missing
    with pytest.raises(StorageUnavailable):
        store.read_now("../escape", 0, 10)  # keys are still checked


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="needs preadv2 RWF_NOWAIT (Linux)")
def test_read_now_does_not_wait_for_the_disk(tmp_path: Path) -> None:
    """Bytes not in memory are not read (the caller would block its event loop)."""
    store = FileBlobStore(tmp_path)
    payload = os.urandom(1 << 20)
    key = "ab/1.2/1.2.3/1.2.3.5-00.dcm"
    store.put_file(key, _spooled(store, payload))  # fsynced: its pages are clean
    path = store.path_of(key)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # drop them from the cache
    finally:
        os.close(fd)
    assert store.read_now(key, 512 * 1024, 4096) is None
    with store.open(key) as fh:
        assert fh.read() == payload
    again = store.read_now(key, 512 * 1024, 4096)
    assert bytes(again or b"") == payload[512 * 1024 : 512 * 1024 + 4096]


@pytest.mark.skipif(not fs_sync.syncfs_usable(), reason="needs syncfs (Linux 5.8+)")
def test_syncfs_mode_makes_the_names_durable_with_one_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files given by path are fsynced (their writes came before any mark), renamed,
    then one syncfs covers every new name: no directory is fsynced on its own."""
    store = FileBlobStore(tmp_path, sync="syncfs")
    events: list[str] = []
    real_fsync, real_syncfs = os.fsync, fs_sync._SYNCFS
    assert real_syncfs is not None

    def fsync(fd: int) -> None:
        events.append("fsync " + os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def syncfs(fd: int) -> int:
        events.append("syncfs")
        return int(real_syncfs(fd))

    monkeypatch.setattr("dicomweb_server.storage.blob_fs.os.fsync", fsync)
    monkeypatch.setattr(fs_sync, "_SYNCFS", syncfs)
    monkeypatch.setattr(blob_fs, "fsync_dir", lambda path: pytest.fail(f"directory {path} fsynced"))
    sources = [_spooled(store, b"x" * 10, f"part-{n}.tmp") for n in range(3)]
    keys = [f"ab/1.2/1.2.{n}/1.2.{n}.9-00.dcm" for n in range(3)]
    assert store.put_files(list(zip(keys, sources, strict=True))) == [None] * 3
    assert sorted(events[:3]) == ["fsync part-0.tmp", "fsync part-1.tmp", "fsync part-2.tmp"]
    assert events[3:] == ["syncfs"]
    assert all(store.exists(key) for key in keys)
    store.close()


def test_an_unknown_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync must be one of"):
        FileBlobStore(tmp_path, sync="sometimes")
