"""Batched storing: one index transaction per batch, yet one outcome per instance.

Runs the real store service over SQLite and PostgreSQL (no HTTP): the batch path is
what STOW-RS uses for every request, so each instance's trouble must stay its own.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from dicomweb_server.bootstrap import Services, build_services, prepare
from dicomweb_server.config import Settings
from dicomweb_server.dicom import status
from dicomweb_server.dicom.ingest import analyse
from dicomweb_server.errors import Conflict
from dicomweb_server.storage import blob_fs, fs_sync
from dicomweb_server.storage.interfaces import NewInstance
from tests.dicomgen import make_dataset, to_part10, uid


def _services(
    database_url: str, data_dir: Path, blob_sync: str, **settings_: Any
) -> Iterator[Services]:
    settings = Settings(
        data_dir=data_dir, database_url=database_url, blob_sync=blob_sync, **settings_
    )
    prepare(settings)
    built = build_services(settings)
    assert built.blobs.sync == blob_sync
    yield built
    built.close()


@pytest.fixture(params=["syncfs", "fsync"])
def services(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Services]:
    yield from _services(database_url, tmp_path / "data", request.param)


@pytest.fixture
def fsync_services(database_url: str, tmp_path: Path) -> Iterator[Services]:
    """Each file and each changed directory fsynced on its own."""
    yield from _services(database_url, tmp_path / "data", "fsync")


@pytest.fixture
def syncfs_services(database_url: str, tmp_path: Path) -> Iterator[Services]:
    """The files of a batch made durable by shared syncfs calls."""
    yield from _services(database_url, tmp_path / "data", "syncfs")


def spool(services: Services, data: bytes) -> Path:
    path, fh = services.store.new_spool_file()
    with fh:
        fh.write(data)
    return path


def blob_of(services: Services, outcome: Any) -> Path:
    stored = services.index.find_instance(outcome.sop_instance_uid or "")
    assert stored is not None
    return services.blobs.path_of(stored.blob_key)


def blob_files(services: Services) -> list[Path]:
    root = services.settings.data_dir
    spool_dir = services.blobs.spool_dir()
    return [p for p in root.rglob("*.dcm") if p.is_file() and spool_dir not in p.parents]


class Commits:
    """Counts committed write transactions on the index's write engine."""

    def __init__(self, services: Services) -> None:
        self.count = 0
        self.engine = services.index.write_engine
        event.listen(self.engine, "commit", self._on_commit)

    def _on_commit(self, _conn: Any) -> None:
        self.count += 1

    def close(self) -> None:
        event.remove(self.engine, "commit", self._on_commit)


def test_a_batch_is_one_index_transaction(services: Services) -> None:
    study, series = uid(), uid()
    paths = [
        spool(services, to_part10(make_dataset(study=study, series=series, instance_number=n)))
        for n in range(1, 21)
    ]
    commits = Commits(services)
    try:
        outcomes = services.store.store_batch(paths)
    finally:
        commits.close()
    assert [o.stored for o in outcomes] == [True] * 20
    assert commits.count == 1
    assert len(services.index.instances(study)) == 20
    assert not any(p.exists() for p in paths), "spooled files are consumed"


def _store_grouped(services: Services, batches: list[list[Path]]) -> dict[int, list[Any]]:
    """``store_batch`` of each batch from its own thread, the first one's commit held
    until all the others are queued behind it: they then share the next commit."""
    index = services.index
    original = index.add_instances
    first_call = threading.Event()
    go = threading.Event()

    def add_instances(*args: Any, **kwargs: Any) -> Any:
        if not first_call.is_set():
            first_call.set()
            assert go.wait(10)
        return original(*args, **kwargs)

    results: dict[int, list[Any]] = {}

    def store(i: int) -> None:
        results[i] = services.store.store_batch(batches[i])

    index.add_instances = add_instances  # type: ignore[method-assign]
    try:
        threads = [threading.Thread(target=store, args=(i,)) for i in range(len(batches))]
        threads[0].start()
        assert first_call.wait(10)
        for thread in threads[1:]:
            thread.start()
        deadline = time.monotonic() + 10
        while len(services.store._group._queue) < len(batches) - 1:
            assert time.monotonic() < deadline, "the other batches never queued"
            time.sleep(0.001)
        go.set()
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive()
    finally:
        index.add_instances = original  # type: ignore[method-assign]
    return results


def test_concurrent_batches_share_one_index_transaction(services: Services) -> None:
    """Batches arriving while a commit runs are committed together by the next one, each
    caller still getting its own outcomes; an instance sent by two of them is stored once."""
    study, series = uid(), uid()

    def batch(first: int) -> list[Path]:
        return [
            spool(services, to_part10(make_dataset(study=study, series=series, instance_number=n)))
            for n in range(first, first + 3)
        ]

    shared = to_part10(make_dataset(study=study, series=series, instance_number=99))
    batches = [
        batch(1),
        [*batch(4), spool(services, shared)],
        [*batch(7), spool(services, shared)],
        batch(10),
    ]
    commits = Commits(services)
    try:
        results = _store_grouped(services, batches)
    finally:
        commits.close()
    assert commits.count == 2
    assert [len(results[i]) for i in range(4)] == [3, 4, 4, 3]
    assert all(o.stored for i in range(4) for o in results[i])
    # The shared instance: new for one caller, an identical duplicate for the other.
    assert sorted(results[i][3].duplicate for i in (1, 2)) == [False, True]
    assert len(services.index.instances(study)) == 13
    assert len(blob_files(services)) == 13


def test_a_refused_replacement_fails_only_its_own_instance(
    database_url: str, tmp_path: Path
) -> None:
    """Group commit puts several requests' instances in one batch: a replacement the
    index refuses (its series belongs to another study) fails alone."""
    for services in _services(
        database_url, tmp_path / "data", "syncfs", duplicate_policy="replace"
    ):
        sop, series = uid(), uid()
        first = spool(services, to_part10(make_dataset(sop=sop)))
        assert services.store.store_batch([first])[0].stored
        owner = spool(services, to_part10(make_dataset(study=uid(), series=series)))
        assert services.store.store_batch([owner])[0].stored
        refused = to_part10(make_dataset(sop=sop, study=uid(), series=series, pixel_seed=7))
        study = uid()
        others = [
            spool(services, to_part10(make_dataset(study=study, instance_number=n)))
            for n in range(1, 4)
        ]
        results = _store_grouped(
            services,
            [[spool(services, to_part10(make_dataset()))], [spool(services, refused)], others],
        )
        assert results[1][0].failure_reason == status.PROCESSING_FAILURE
        assert [o.stored for o in results[2]] == [True, True, True]
        assert len(services.index.instances(study)) == 3


def test_trouble_after_a_conflict_leaves_the_committed_instances_whole(
    services: Services,
) -> None:
    """The commit went in; handling the one instance it refused then fails: the others
    stay stored with their blobs (none of them is reported failed or loses its file)."""
    study, series, sop = uid(), uid(), uid()
    original = to_part10(make_dataset(sop=sop, study=study, series=series))
    assert services.store.store_batch([spool(services, original)])[0].stored
    index = services.index
    real_lookup, real_find = index.find_instances, index.find_instance

    def lookup(uids: Any) -> Any:  # another process's store of ``sop``, not yet visible
        return {k: v for k, v in real_lookup(list(uids)).items() if k != sop}

    def find(uid_: str) -> Any:
        raise RuntimeError("index connection dropped")

    index.find_instances = lookup  # type: ignore[method-assign,assignment]
    index.find_instance = find  # type: ignore[method-assign,assignment]
    try:
        again = to_part10(make_dataset(sop=sop, study=study, series=series, pixel_seed=3))
        paths = [spool(services, again)] + [
            spool(services, to_part10(make_dataset(study=study, series=series, instance_number=n)))
            for n in range(2, 5)
        ]
        outcomes = services.store.store_batch(paths)
    finally:
        index.find_instances = real_lookup  # type: ignore[method-assign]
        index.find_instance = real_find  # type: ignore[method-assign]
    assert outcomes[0].failure_reason == status.PROCESSING_FAILURE
    assert [o.stored for o in outcomes[1:]] == [True, True, True]
    assert len(services.index.instances(study)) == 4
    assert len(blob_files(services)) == 4


def test_each_instance_keeps_its_own_outcome(services: Services) -> None:
    services.store.store_batch([spool(services, to_part10(make_dataset(series="1.2.3.4")))])
    known = make_dataset()
    services.store.store_batch([spool(services, to_part10(known))])
    study = uid()
    good = [make_dataset(study=study, instance_number=n) for n in (1, 2)]
    parts = [
        to_part10(good[0]),
        b"not DICOM at all" * 10,
        to_part10(make_dataset(study=uid(), series="1.2.3.4")),  # series of another study
        to_part10(known),  # the same bytes again
        to_part10(good[1]),
    ]
    outcomes = services.store.store_batch([spool(services, p) for p in parts])

    assert outcomes[0].stored and outcomes[4].stored
    assert outcomes[1].failure_reason == status.CANNOT_UNDERSTAND
    assert outcomes[2].failure_reason == status.PROCESSING_FAILURE
    assert "another study" in outcomes[2].message
    assert outcomes[3].stored and outcomes[3].duplicate and outcomes[3].failure_reason is None
    assert {i.sop_instance_uid for i in services.index.instances(study)} == {
        str(ds.SOPInstanceUID) for ds in good
    }
    # The refused instance left no blob behind: 2 earlier + 2 new.
    assert len(blob_files(services)) == 4


def test_a_uid_repeated_in_one_batch_follows_the_duplicate_policy(services: Services) -> None:
    first = make_dataset()
    second = make_dataset(
        sop=str(first.SOPInstanceUID),
        study=str(first.StudyInstanceUID),
        series=str(first.SeriesInstanceUID),
        patient_name="Other^Name",
    )
    outcomes = services.store.store_batch(
        [spool(services, to_part10(first)), spool(services, to_part10(second))]
    )
    assert outcomes[0].stored and not outcomes[0].duplicate
    # keep-first (the default): the second is a duplicate, reported with warning B111.
    assert outcomes[1].duplicate
    assert outcomes[1].warning_reason == status.DUPLICATE_KEPT_WARNING
    stored = services.index.find_instance(str(first.SOPInstanceUID))
    assert stored is not None
    assert len(blob_files(services)) == 1


def _twins() -> tuple[bytes, bytes]:
    """Two objects with one SOP Instance UID, the same size and different bytes."""
    first = make_dataset(patient_name="Doe^Jane")
    twin = make_dataset(
        sop=str(first.SOPInstanceUID),
        study=str(first.StudyInstanceUID),
        series=str(first.SeriesInstanceUID),
        patient_name="Doe^Jana",
    )
    a, b = to_part10(first), to_part10(twin)
    assert len(a) == len(b) and a != b
    return a, b


def test_a_duplicate_of_the_same_size_is_told_apart_by_its_bytes(services: Services) -> None:
    data, twin = _twins()
    assert services.store.store_batch([spool(services, data)])[0].stored
    (again,) = services.store.store_batch([spool(services, data)])
    assert again.stored and again.duplicate and again.warning_reason is None  # idempotent
    (other,) = services.store.store_batch([spool(services, twin)])
    assert other.duplicate and other.warning_reason == status.DUPLICATE_KEPT_WARNING
    (blob,) = blob_files(services)
    assert blob.read_bytes() == data


def test_a_recorded_hash_spares_reading_the_stored_copy(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows written before hashes became lazy carry one: it is used as it is."""
    data, twin = _twins()
    (outcome,) = services.store.store_batch([spool(services, data)])
    stored = services.index.find_instance(outcome.sop_instance_uid or "")
    assert stored is not None and stored.content_hash == ""
    record = analyse(io.BytesIO(data))
    digest = hashlib.sha256(data).hexdigest()
    services.index.replace_instance(record, stored.blob_key, len(data), digest)
    opened: list[str] = []
    real_open = services.blobs.open

    def counting(key: str) -> Any:
        opened.append(key)
        return real_open(key)

    monkeypatch.setattr(services.blobs, "open", counting)
    (again,) = services.store.store_batch([spool(services, data)])
    assert again.stored and again.warning_reason is None
    (other,) = services.store.store_batch([spool(services, twin)])
    assert other.warning_reason == status.DUPLICATE_KEPT_WARNING
    assert stored.blob_key not in opened


def test_sending_again_repairs_an_instance_whose_blob_is_gone(services: Services) -> None:
    """What `check` reports as missing is repaired by sending it again, whatever the
    duplicate policy (keep-first here): the new copy takes the missing one's place."""
    data, twin = _twins()
    assert services.store.store_batch([spool(services, data)])[0].stored
    (blob,) = blob_files(services)
    blob.unlink()
    (again,) = services.store.store_batch([spool(services, twin)])
    assert again.stored and again.duplicate and again.warning_reason is None
    (blob,) = blob_files(services)
    assert blob.read_bytes() == twin
    stored = services.index.find_instance(again.sop_instance_uid or "")
    assert stored is not None and services.blobs.path_of(stored.blob_key) == blob


def test_study_uid_mismatch_fails_only_that_instance(services: Services) -> None:
    study = uid()
    outcomes = services.store.store_batch(
        [
            spool(services, to_part10(make_dataset(study=study))),
            spool(services, to_part10(make_dataset())),
        ],
        expected_study_uid=study,
    )
    assert outcomes[0].stored
    assert outcomes[1].failure_reason == status.STUDY_UID_MISMATCH
    assert len(services.index.instances(study)) == 1


def test_index_add_instances_reports_conflicts_by_slot(services: Services) -> None:
    index = services.index
    recs = [analyse(io.BytesIO(to_part10(make_dataset()))) for _ in range(3)]
    assert index.add_instances([NewInstance(recs[0], "k/0", 1, "h")]) == [None]
    problems = index.add_instances([NewInstance(r, f"k/{i}", 1, "h") for i, r in enumerate(recs)])
    assert isinstance(problems[0], Conflict)
    assert problems[1:] == [None, None]
    assert set(index.find_instances(r.sop_instance_uid for r in recs)) == {
        r.sop_instance_uid for r in recs
    }
    assert index.find_instances([uid()]) == {}


def _spool_file(services: Services, data: bytes, keep: int = 0) -> Any:
    spooled = services.store.spool(keep)
    for start in range(0, len(data), 4096):  # as a request body arrives, in pieces
        spooled.write(data[start : start + 4096])
    spooled.finish()
    return spooled


def test_spool_files_are_synced_once_and_not_read_again(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished spool file's fsync runs in the background; storing it uses that fsync's
    outcome instead of syncing the file again, and new instances are not hashed (only a
    duplicate's bytes are compared with the stored ones)."""
    digests: list[tuple[Any, ...]] = []
    sha256 = hashlib.sha256

    def counting(*args: Any) -> Any:
        digests.append(args)
        return sha256(*args)

    monkeypatch.setattr(hashlib, "sha256", counting)
    data = [to_part10(make_dataset()) for _ in range(3)]
    spooled = [_spool_file(services, d) for d in data]
    for item in spooled:
        assert item.synced.result(timeout=10) is None
    synced_again: list[Path] = []
    monkeypatch.setattr(
        "dicomweb_server.storage.blob_fs._fsync_file", lambda path: synced_again.append(path)
    )
    hashed: list[Any] = []
    monkeypatch.setattr("dicomweb_server.services.store._sha256", hashed.append)
    outcomes = services.store.store_batch(spooled)
    assert [o.stored for o in outcomes] == [True] * 3
    assert synced_again == [] and hashed == [] and digests == []
    stored = services.index.find_instances(o.sop_instance_uid or "" for o in outcomes)
    assert sorted(i.blob_size for i in stored.values()) == sorted(len(d) for d in data)


def test_a_small_object_is_analysed_from_its_copy_in_memory(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts that fit in ``keep`` are analysed from the bytes kept while they were
    written (no open of the file just written); bigger ones from the file. Either way the
    record is the one the file gives."""
    small, big = to_part10(make_dataset()), to_part10(make_dataset(rows=128, columns=128))
    kept = _spool_file(services, small, keep=len(big) - 1)
    read = _spool_file(services, big, keep=len(big) - 1)
    assert kept.kept == small and read.kept is None
    opened: list[str] = []

    def watched(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr("dicomweb_server.services.store.open", watched, raising=False)
    outcomes = services.store.store_batch([kept, read])
    assert [o.stored for o in outcomes] == [True, True]
    assert opened == [str(read.path)]
    for data, outcome in zip((small, big), outcomes, strict=True):
        assert blob_of(services, outcome).read_bytes() == data
        with open(blob_of(services, outcome), "rb") as fh:  # the stored file's record
            expected = analyse(fh, bulk_threshold=services.settings.bulk_data_threshold)
        (metadata,) = services.retrieve.metadata(
            expected.study_uid, expected.series_uid, expected.sop_instance_uid
        )
        assert json.loads(metadata) == json.loads(expected.metadata)


def test_a_failed_background_fsync_fails_its_instance_only(
    fsync_services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync error is reported once: the background sync's error must reach the
    outcome, not be lost because the store would sync the file again and succeed."""
    real_fsync = os.fsync
    spooled = []
    for index in range(3):
        if index == 1:
            monkeypatch.setattr(
                "dicomweb_server.storage.blob_fs.os.fsync",
                lambda fd: (_ for _ in ()).throw(OSError(5, "Input/output error")),
            )
        spooled.append(_spool_file(fsync_services, to_part10(make_dataset())))
        spooled[-1].synced.exception(timeout=10)
        monkeypatch.setattr("dicomweb_server.storage.blob_fs.os.fsync", real_fsync)
    outcomes = fsync_services.store.store_batch(spooled)
    assert [o.stored for o in outcomes] == [True, False, True]
    assert outcomes[1].failure_reason == status.PROCESSING_FAILURE
    assert len(blob_files(fsync_services)) == 2


def test_a_spool_file_given_a_preamble_is_synced_as_rewritten(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part without the 128-byte preamble is rewritten before storing: the background
    fsync was of the old file, so the new one is synced itself."""
    part10 = to_part10(make_dataset())
    spooled = _spool_file(services, part10[132:])  # the meta header, no preamble or DICM
    synced_again: list[Path] = []
    real = blob_fs._fsync_file

    def counting(path: Path) -> None:
        synced_again.append(path)
        real(path)

    monkeypatch.setattr("dicomweb_server.storage.blob_fs._fsync_file", counting)
    (outcome,) = services.store.store_batch([spooled])
    assert outcome.stored
    assert synced_again == [spooled.path]
    stored = services.index.find_instance(outcome.sop_instance_uid or "")
    assert stored is not None
    (blob,) = blob_files(services)
    assert blob.read_bytes() == part10
    assert stored.blob_size == len(part10)


def test_index_rows_are_written_while_directories_sync_and_committed_after(
    fsync_services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durable before visible, without waiting in line: the batch's index statements run
    while the blobs' directory syncs do, and the commit waits for the syncs."""
    events: list[str] = []
    real = blob_fs.fsync_dir

    def slow_sync(path: Path) -> None:
        time.sleep(0.3)
        real(path)
        events.append("dir synced")

    monkeypatch.setattr(blob_fs, "fsync_dir", slow_sync)
    add = fsync_services.index.add_instances

    def adding(*args: Any, **kwargs: Any) -> Any:
        events.append("index statements")
        return add(*args, **kwargs)

    monkeypatch.setattr(fsync_services.index, "add_instances", adding)
    commits = Commits(fsync_services)
    event.listen(fsync_services.index.write_engine, "commit", lambda _c: events.append("commit"))
    try:
        outcomes = fsync_services.store.store_batch(
            [spool(fsync_services, to_part10(make_dataset()))]
        )
    finally:
        commits.close()
    assert outcomes[0].stored
    assert events[0] == "index statements"
    assert events.index("commit") > max(i for i, e in enumerate(events) if e == "dir synced")


def test_a_failed_directory_sync_keeps_its_instances_out_of_the_index(
    fsync_services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = uid()
    real = blob_fs.fsync_dir

    def failing(path: Path) -> None:
        if study in str(path):
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(blob_fs, "fsync_dir", failing)
    data = [make_dataset(study=study), make_dataset(), make_dataset(study=study), make_dataset()]
    outcomes = fsync_services.store.store_batch([spool(fsync_services, to_part10(d)) for d in data])
    assert [o.stored for o in outcomes] == [False, True, False, True]
    assert {o.failure_reason for o in outcomes if not o.stored} == {status.PROCESSING_FAILURE}
    found = fsync_services.index.find_instances(d.SOPInstanceUID for d in data)
    assert sorted(found) == sorted([data[1].SOPInstanceUID, data[3].SOPInstanceUID])
    assert len(blob_files(fsync_services)) == 2


class SyncfsCalls:
    """Counts syncfs(2) calls (the libc function fs_sync calls); can make them fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[float] = []
        self.fail_with: int | None = None
        self.delay = 0.0
        real = fs_sync._SYNCFS
        assert real is not None

        def counting(fd: int) -> int:
            self.calls.append(time.monotonic())
            time.sleep(self.delay)
            if self.fail_with is not None:
                ctypes.set_errno(self.fail_with)
                return -1
            return int(real(fd))

        monkeypatch.setattr(fs_sync, "_SYNCFS", counting)


def test_a_requests_files_share_a_few_syncfs_calls_and_no_fsync(
    syncfs_services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten spooled parts of one request: no fsync of any file or directory; two syncfs
    for their data (the first starts at once, the other nine share the next, which
    starts after it) and one for their names; the index commit after the last."""
    syncs = SyncfsCalls(monkeypatch)
    syncs.delay = 0.2  # a slow disk: the later parts all arrive during the first sync
    fsyncs: list[int] = []
    monkeypatch.setattr("dicomweb_server.storage.blob_fs.os.fsync", fsyncs.append)
    data = [to_part10(make_dataset()) for _ in range(10)]
    spooled = [_spool_file(syncfs_services, d) for d in data]
    events: list[tuple[str, float]] = []
    event.listen(
        syncfs_services.index.write_engine,
        "commit",
        lambda _c: events.append(("commit", time.monotonic())),
    )
    outcomes = syncfs_services.store.store_batch(spooled)
    assert [o.stored for o in outcomes] == [True] * 10
    assert fsyncs == []
    assert len(syncs.calls) == 3
    (commit,) = [t for name, t in events if name == "commit"]
    assert commit > max(syncs.calls)
    assert len(blob_files(syncfs_services)) == 10


@pytest.mark.parametrize(
    ("code", "reason"),
    [(5, status.PROCESSING_FAILURE), (28, status.OUT_OF_RESOURCES)],
    ids=["EIO", "ENOSPC"],
)
def test_a_failed_syncfs_keeps_its_instances_out_of_the_index(
    syncfs_services: Services, monkeypatch: pytest.MonkeyPatch, code: int, reason: int
) -> None:
    """syncfs reporting a writeback error (EIO) or a full disk (ENOSPC): none of the
    instances that waited on it is acknowledged, indexed or left behind."""
    syncs = SyncfsCalls(monkeypatch)
    data = [make_dataset() for _ in range(3)]
    spooled = [_spool_file(syncfs_services, to_part10(d)) for d in data]
    syncs.fail_with = code
    outcomes = syncfs_services.store.store_batch(spooled)
    assert [o.stored for o in outcomes] == [False] * 3
    assert {o.failure_reason for o in outcomes} == {reason}
    assert syncfs_services.index.find_instances(d.SOPInstanceUID for d in data) == {}
    assert blob_files(syncfs_services) == []
    syncs.fail_with = None  # the disk recovers: storing works again
    again = syncfs_services.store.store_batch(
        [_spool_file(syncfs_services, to_part10(d)) for d in data]
    )
    assert [o.stored for o in again] == [True] * 3


def test_a_stored_batch_costs_no_cleanup_and_one_free_space_look(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per instance the store renames; it does not unlink paths already moved, make
    folders that exist, or ask the filesystem for free space again."""
    study, series = uid(), uid()
    first = spool(services, to_part10(make_dataset(study=study, series=series)))
    assert services.store.store_batch([first])[0].stored  # the folders exist now
    paths = [
        spool(services, to_part10(make_dataset(study=study, series=series, instance_number=n)))
        for n in range(2, 12)
    ]
    calls: dict[str, int] = {"unlink": 0, "mkdir": 0, "statvfs": 0}
    real_unlink, real_mkdir, real_statvfs = Path.unlink, Path.mkdir, os.statvfs

    def unlink(self: Path, missing_ok: bool = False) -> None:
        calls["unlink"] += 1
        real_unlink(self, missing_ok=missing_ok)

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        calls["mkdir"] += 1
        real_mkdir(self, *args, **kwargs)

    def statvfs(path: Any) -> Any:
        calls["statvfs"] += 1
        return real_statvfs(path)

    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "statvfs", statvfs)
    outcomes = services.store.store_batch(paths)
    monkeypatch.undo()
    assert all(o.stored for o in outcomes)
    assert calls == {"unlink": 0, "mkdir": 0, "statvfs": 1}
    assert not any(p.exists() for p in paths)
    assert len(blob_files(services)) == 11


def test_a_request_keeps_copies_of_small_parts_only_within_its_bound(
    syncfs_services: Services,
) -> None:
    """STOW-RS keeps in-memory copies of parts up to 64 KiB, for its first 64 parts:
    at most 4 MiB per request, however many parts it sends."""
    from dicomweb_server.web.stow import SpoolSink

    sink = SpoolSink(syncfs_services.store)
    sizes = [9_000] * 70 + [70_000]
    for size in sizes:
        sink.start_part({"content-type": "application/dicom"})
        sink.write(b"\0" * size)
        sink.end_part()
    kept = [part.spool.kept for part in sink.parts]
    try:
        assert all(k is not None and len(k) == 9_000 for k in kept[:64])
        assert all(k is None for k in kept[64:])
        big = SpoolSink(syncfs_services.store)
        big.start_part({})
        big.write(b"\0" * 65_537)
        big.end_part()
        assert big.parts[0].spool.kept is None
        big.discard()
    finally:
        sink.discard()


def test_blobs_go_in_one_folder_per_study(services: Services) -> None:
    """No folder per series: instances of two series of one study share their folder."""
    study = uid()
    datasets = [make_dataset(study=study, series=uid()) for _ in range(2)]
    outcomes = services.store.store_batch([_spool_file(services, to_part10(ds)) for ds in datasets])
    assert [o.stored for o in outcomes] == [True, True]
    paths = [blob_of(services, o) for o in outcomes]
    blobs = services.blobs.path_of("x").parent
    for path, ds in zip(paths, datasets, strict=True):
        spread, folder, name = path.relative_to(blobs).parts
        assert folder == study and len(spread) == 2
        assert name.startswith(f"{ds.SOPInstanceUID}-") and name.endswith(".dcm")


def test_in_memory_copies_stay_within_the_process_budget(
    syncfs_services: Services,
) -> None:
    """Copies are granted from a per-process budget and given back once analysed, or
    when the request ends whatever became of its parts (a refused part is never
    analysed)."""
    from dicomweb_server.services.store import CopyBudget
    from dicomweb_server.web.stow import SpoolSink, _store_parts

    store = syncfs_services.store
    budget = store._copies = CopyBudget(100_000)
    small = to_part10(make_dataset())
    first = _spool_file(syncfs_services, small, keep=65_536)
    second = _spool_file(syncfs_services, small, keep=65_536)  # 34,464 left: no copy
    assert first.kept == small and second.kept is None
    assert budget.left == 100_000 - 65_536
    assert [o.stored for o in store.store_batch([first, second])] == [True, True]
    assert budget.left == 100_000  # analysed: given back

    sink = SpoolSink(store)
    for media, data in (("text/plain", b"x"), ("application/dicom", to_part10(make_dataset()))):
        sink.start_part({"content-type": media})
        sink.write(data)
        sink.end_part()
    assert budget.left == 100_000 - 65_536  # one copy granted, the second part had none
    outcomes = _store_parts(store, sink.parts, None)
    assert [o.stored for o in outcomes] == [False, True]
    assert budget.left < 100_000  # the refused part's copy is still held ...
    sink.drop_copies()
    assert budget.left == 100_000  # ... until the request ends


def test_only_the_event_loops_spool_files_come_from_the_reserve(
    syncfs_services: Services,
) -> None:
    """Import and C-STORE make their spool files on demand: their processes may end
    without closing the service, which would leave a reserve behind."""
    store = syncfs_services.store
    path, fh = store.new_spool_file()
    fh.close()
    path.unlink()
    assert store._reserve._thread is None
    spooled = store.spool()
    assert store._reserve._thread is not None
    spooled.close()
    spooled.path.unlink()
    syncfs_services.close()
    assert list(syncfs_services.blobs.spool_dir().iterdir()) == []  # close removes it
