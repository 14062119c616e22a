"""Batched storing: one index transaction per batch, yet one outcome per instance.

Runs the real store service over SQLite and PostgreSQL (no HTTP): the batch path is
what STOW-RS uses for every request, so each instance's trouble must stay its own.
"""

from __future__ import annotations

import hashlib
import io
import os
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
from dicomweb_server.storage import blob_fs
from dicomweb_server.storage.interfaces import NewInstance
from tests.dicomgen import make_dataset, to_part10, uid


@pytest.fixture
def services(database_url: str, tmp_path: Path) -> Iterator[Services]:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    prepare(settings)
    built = build_services(settings)
    yield built
    built.close()


def spool(services: Services, data: bytes) -> Path:
    path, fh = services.store.new_spool_file()
    with fh:
        fh.write(data)
    return path


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


def _spool_file(services: Services, data: bytes) -> Any:
    spooled = services.store.spool()
    for start in range(0, len(data), 4096):  # as a request body arrives, in pieces
        spooled.write(data[start : start + 4096])
    spooled.finish()
    return spooled


def test_spool_files_are_hashed_as_written_and_synced_once(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished spool file's fsync runs in the background; storing it uses that fsync's
    outcome instead of syncing the file again, and its hash instead of reading it again."""
    data = [to_part10(make_dataset()) for _ in range(3)]
    spooled = [_spool_file(services, d) for d in data]
    for item in spooled:
        assert item.synced.result(timeout=10) is None
    assert [s.content_hash for s in spooled] == [hashlib.sha256(d).hexdigest() for d in data]
    synced_again: list[Path] = []
    monkeypatch.setattr(
        "dicomweb_server.storage.blob_fs._fsync_file", lambda path: synced_again.append(path)
    )
    read_again: list[Path] = []
    monkeypatch.setattr("dicomweb_server.services.store._sha256", read_again.append)
    outcomes = services.store.store_batch(spooled)
    assert [o.stored for o in outcomes] == [True] * 3
    assert synced_again == [] and read_again == []
    stored = services.index.find_instances(o.sop_instance_uid or "" for o in outcomes)
    assert sorted(i.content_hash for i in stored.values()) == sorted(
        s.content_hash for s in spooled
    )


def test_a_failed_background_fsync_fails_its_instance_only(
    services: Services, monkeypatch: pytest.MonkeyPatch
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
        spooled.append(_spool_file(services, to_part10(make_dataset())))
        spooled[-1].synced.exception(timeout=10)
        monkeypatch.setattr("dicomweb_server.storage.blob_fs.os.fsync", real_fsync)
    outcomes = services.store.store_batch(spooled)
    assert [o.stored for o in outcomes] == [True, False, True]
    assert outcomes[1].failure_reason == status.PROCESSING_FAILURE
    assert len(blob_files(services)) == 2


def test_a_spool_file_given_a_preamble_is_synced_as_rewritten(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part without the 128-byte preamble is rewritten before storing: the background
    fsync was of the old file, so the new one is synced (and hashed) itself."""
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
    assert stored.content_hash == hashlib.sha256(blob.read_bytes()).hexdigest()
    assert blob.read_bytes() == part10


def test_index_rows_are_written_while_directories_sync_and_committed_after(
    services: Services, monkeypatch: pytest.MonkeyPatch
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
    add = services.index.add_instances

    def adding(*args: Any, **kwargs: Any) -> Any:
        events.append("index statements")
        return add(*args, **kwargs)

    monkeypatch.setattr(services.index, "add_instances", adding)
    commits = Commits(services)
    event.listen(services.index.write_engine, "commit", lambda _c: events.append("commit"))
    try:
        outcomes = services.store.store_batch([spool(services, to_part10(make_dataset()))])
    finally:
        commits.close()
    assert outcomes[0].stored
    assert events[0] == "index statements"
    assert events.index("commit") > max(i for i, e in enumerate(events) if e == "dir synced")


def test_a_failed_directory_sync_keeps_its_instances_out_of_the_index(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = uid()
    real = blob_fs.fsync_dir

    def failing(path: Path) -> None:
        if study in str(path):
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(blob_fs, "fsync_dir", failing)
    data = [make_dataset(study=study), make_dataset(), make_dataset(study=study), make_dataset()]
    outcomes = services.store.store_batch([spool(services, to_part10(d)) for d in data])
    assert [o.stored for o in outcomes] == [False, True, False, True]
    assert {o.failure_reason for o in outcomes if not o.stored} == {status.PROCESSING_FAILURE}
    found = services.index.find_instances(d.SOPInstanceUID for d in data)
    assert sorted(found) == sorted([data[1].SOPInstanceUID, data[3].SOPInstanceUID])
    assert len(blob_files(services)) == 2
