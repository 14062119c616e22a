"""SqlIndex against SQLite and PostgreSQL: writes, parents, conflicts, versions, order."""

from __future__ import annotations

import errno
import io
import time
from typing import Any

import pytest
from sqlalchemy import text

from dicomweb_server.dicom.ingest import InstanceRecord, analyse
from dicomweb_server.errors import Conflict, NotFound, OutOfResources
from dicomweb_server.storage.interfaces import NewInstance
from dicomweb_server.storage.sql.engine import MIGRATIONS, SCHEMA_VERSION, current_version
from dicomweb_server.storage.sql.index import IndexFull, SqlIndex
from tests.conftest import SmallFs
from tests.dicomgen import make_dataset, to_part10, uid


def record(**kwargs: Any) -> InstanceRecord:
    return analyse(io.BytesIO(to_part10(make_dataset(**kwargs))))


def add(index: SqlIndex, rec: InstanceRecord, key: str | None = None, digest: str = "h1") -> str:
    key = key or f"k/{rec.sop_instance_uid}.dcm"
    index.add_instance(rec, key, 123, digest)
    return key


def rows(index: SqlIndex, table: str) -> int:
    with index.read_engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_migrate_records_the_schema_version_once(index: SqlIndex) -> None:
    assert current_version(index.write_engine) == SCHEMA_VERSION
    assert index.migrate() == []
    # Version numbers are assigned per feature branch, so the list may have gaps.
    assert rows(index, "schema_version") == len(MIGRATIONS)


def test_add_then_find(index: SqlIndex) -> None:
    rec = record()
    add(index, rec, "a/b.dcm", "abc")
    found = index.find_instance(rec.sop_instance_uid)
    assert found is not None
    assert found.study_uid == rec.study_uid
    assert found.series_uid == rec.series_uid
    assert found.sop_class_uid == rec.sop_class_uid
    assert found.transfer_syntax == rec.transfer_syntax
    assert (found.blob_key, found.blob_size, found.content_hash) == ("a/b.dcm", 123, "abc")
    assert index.find_instance(uid()) is None
    assert index.count_instances() == 1
    assert index.metadata(rec.study_uid) == [rec.metadata]
    located = index.bulk_location(rec.sop_instance_uid)
    assert located is not None and located[1] == rec.bulk


def test_duplicate_insert_is_conflict_and_changes_nothing(index: SqlIndex) -> None:
    rec = record()
    add(index, rec, "first.dcm")
    with pytest.raises(Conflict):
        add(index, rec, "second.dcm")
    found = index.find_instance(rec.sop_instance_uid)
    assert found is not None and found.blob_key == "first.dcm"
    assert index.count_instances() == 1


def test_parents_are_created_once(index: SqlIndex) -> None:
    study, series = uid(), uid()
    for number in range(1, 4):
        add(index, record(study=study, series=series, instance_number=number))
    add(index, record(study=study, series=uid(), series_number=2))
    add(index, record(study=uid(), patient_id="PID-1"))
    assert rows(index, "patient") == 1
    assert rows(index, "study") == 2
    assert rows(index, "series") == 3
    assert rows(index, "instance") == 5


def test_series_uid_reused_under_another_study_is_conflict(index: SqlIndex) -> None:
    series = uid()
    add(index, record(series=series))
    other = record(series=series, patient_id="PID-OTHER")
    with pytest.raises(Conflict, match="another study"):
        add(index, other)
    # The whole transaction was undone: no study or patient row for the rejected instance.
    assert index.find_instance(other.sop_instance_uid) is None
    assert rows(index, "study") == 1
    assert rows(index, "patient") == 1


def test_replace_points_at_new_content(index: SqlIndex) -> None:
    rec = record()
    add(index, rec, "old.dcm", "h-old")
    assert index.replace_instance(rec, "new.dcm", 456, "h-new") == "old.dcm"
    found = index.find_instance(rec.sop_instance_uid)
    assert found is not None
    assert (found.blob_key, found.blob_size, found.content_hash) == ("new.dcm", 456, "h-new")
    assert rows(index, "instance") == 1


def test_replace_of_missing_instance_is_not_found(index: SqlIndex) -> None:
    with pytest.raises(NotFound):
        index.replace_instance(record(), "x.dcm", 1, "h")


def test_replace_into_another_series_removes_the_emptied_parents(index: SqlIndex) -> None:
    """Same SOP Instance UID, corrected series and study: no empty series/study is left."""
    sop = uid()
    first = record(sop=sop, patient_id="P-OLD")
    add(index, first)
    moved = record(sop=sop, patient_id="P-NEW")
    index.replace_instance(moved, "moved.dcm", 1, "h2")
    assert [i.series_uid for i in index.instances(moved.study_uid)] == [moved.series_uid]
    assert index.instances(first.study_uid) == []
    assert rows(index, "series") == 1
    assert rows(index, "study") == 1
    assert rows(index, "patient") == 1


def test_delete_instance_keeps_parents_until_empty(index: SqlIndex) -> None:
    study, series = uid(), uid()
    a = record(study=study, series=series, instance_number=1)
    b = record(study=study, series=series, instance_number=2)
    key_a, key_b = add(index, a), add(index, b)
    assert index.delete(study, series, a.sop_instance_uid) == [key_a]
    assert index.find_instance(a.sop_instance_uid) is None
    assert (rows(index, "series"), rows(index, "study"), rows(index, "patient")) == (1, 1, 1)
    assert index.delete(study, series, b.sop_instance_uid) == [key_b]
    assert (rows(index, "series"), rows(index, "study"), rows(index, "patient")) == (0, 0, 0)
    assert index.delete(study, series, b.sop_instance_uid) == []


def test_delete_series_and_study(index: SqlIndex) -> None:
    study = uid()
    s1, s2 = uid(), uid()
    keys1 = {add(index, record(study=study, series=s1, instance_number=n)) for n in (1, 2)}
    keys2 = {add(index, record(study=study, series=s2, series_number=2))}
    other = record(patient_id="PID-1")  # same patient, another study: patient stays
    add(index, other)
    assert set(index.delete(study, s1)) == keys1
    assert rows(index, "series") == 2
    assert set(index.delete(study)) == keys2
    assert rows(index, "study") == 1
    assert rows(index, "patient") == 1
    assert index.delete(study) == []
    assert index.delete(uid()) == []
    assert index.count_instances() == 1


def test_delete_under_the_wrong_study_removes_nothing(index: SqlIndex) -> None:
    rec = record()
    add(index, rec)
    assert index.delete(uid(), rec.series_uid, rec.sop_instance_uid) == []
    assert index.find_instance(rec.sop_instance_uid) is not None


def test_version_changes_on_add_and_delete(index: SqlIndex) -> None:
    study, series = uid(), uid()
    assert index.version(study) is None
    a = record(study=study, series=series, instance_number=1)
    add(index, a)
    v1 = index.version(study)
    assert v1 is not None and v1.count == 1
    time.sleep(0.01)
    b = record(study=study, series=series, instance_number=2)
    add(index, b)
    v2 = index.version(study)
    assert v2 is not None and v2 != v1 and v2.count == 2
    series_version = index.version(study, series)
    assert series_version == v2
    only_a = index.version(study, series, a.sop_instance_uid)
    assert only_a is not None and only_a.count == 1
    time.sleep(0.01)
    index.delete(study, series, b.sop_instance_uid)
    v3 = index.version(study)
    # Not back to v1 although the content is the same again: a client holding v2 and
    # asking If-Modified-Since must see the change.
    assert v3 is not None and v3.count == 1 and v3.updated_at > v2.updated_at
    series_after = index.version(study, series)
    assert series_after is not None and series_after.updated_at > v2.updated_at
    assert index.version(study, series, b.sop_instance_uid) is None


def test_version_changes_when_the_newest_instance_is_deleted_and_another_added(
    index: SqlIndex,
) -> None:
    """Same count before and after: the version must still differ."""
    study, series = uid(), uid()
    add(index, record(study=study, series=series, instance_number=1))
    b = record(study=study, series=series, instance_number=2)
    add(index, b)
    before = index.version(study)
    time.sleep(0.01)
    index.delete(study, series, b.sop_instance_uid)
    add(index, record(study=study, series=series, instance_number=3))
    assert index.version(study) != before


def test_version_moves_forward_within_one_clock_tick(
    index: SqlIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, series = uid(), uid()
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    add(index, record(study=study, series=series, instance_number=1))
    b = record(study=study, series=series, instance_number=2)
    add(index, b)
    before = index.version(study)
    index.delete(study, series, b.sop_instance_uid)
    after = index.version(study)
    assert before is not None and after is not None
    assert after.updated_at > before.updated_at


def test_version_changes_on_replace(index: SqlIndex) -> None:
    rec = record()
    add(index, rec)
    before = index.version(rec.study_uid)
    time.sleep(0.01)
    index.replace_instance(rec, "other.dcm", 1, "h2")
    assert index.version(rec.study_uid) != before


def test_instances_in_series_then_instance_number_order(index: SqlIndex) -> None:
    study = uid()
    s_late, s_early = uid(), uid()
    # Stored out of order on purpose.
    plan = [
        (s_late, 2, 3),
        (s_early, 1, 2),
        (s_late, 2, 1),
        (s_early, 1, 10),
        (s_early, 1, 1),
        (s_late, 2, 2),
    ]
    for series, series_number, number in plan:
        add(
            index,
            record(study=study, series=series, series_number=series_number, instance_number=number),
        )
    got = index.instances(study)
    order = [(i.series_uid, index_number(index, i.sop_instance_uid)) for i in got]
    assert order == [
        (s_early, 1),
        (s_early, 2),
        (s_early, 10),
        (s_late, 1),
        (s_late, 2),
        (s_late, 3),
    ]
    # metadata() follows the same order.
    assert [m for m in index.metadata(study)] == [
        index.metadata(study, i.series_uid, i.sop_instance_uid)[0] for i in got
    ]
    assert [i.sop_instance_uid for i in index.instances(study, s_late)] == [
        i.sop_instance_uid for i in got[3:]
    ]
    assert index.instances(study, uid()) == []


def index_number(index: SqlIndex, sop: str) -> int:
    with index.read_engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT instance_number FROM instance WHERE sop_uid = :s"), {"s": sop}
            ).scalar_one()
        )


def test_concurrent_adds_and_deletes_in_one_series(database_url: str) -> None:
    """Storing into a series while it is being deleted: every add lands (before or after a
    delete), no delete fails, and no row is left without its parents."""
    import threading

    study, series = uid(), uid()
    records = [record(study=study, series=series, instance_number=n) for n in range(60)]
    errors: list[BaseException] = []
    deleted: list[str] = []
    done = threading.Event()

    def adder() -> None:
        idx = SqlIndex(database_url)
        try:
            for rec in records:
                add(idx, rec)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()
            idx.close()

    def deleter() -> None:
        idx = SqlIndex(database_url)
        try:
            deadline = time.monotonic() + 60
            while not done.is_set() and time.monotonic() < deadline:
                deleted.extend(idx.delete(study, series))
        except BaseException as exc:
            errors.append(exc)
        finally:
            idx.close()

    first = SqlIndex(database_url)
    first.migrate()
    threads = [threading.Thread(target=adder), threading.Thread(target=deleter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    assert errors == [], errors
    # Every add landed: it was either deleted afterwards (once) or is still there.
    remaining = [i.blob_key for i in first.instances(study)]
    assert len(deleted) == len(set(deleted))
    assert sorted(deleted + remaining) == sorted(f"k/{r.sop_instance_uid}.dcm" for r in records)
    with first.read_engine.connect() as conn:
        orphans = conn.execute(
            text(
                "SELECT count(*) FROM instance i LEFT JOIN series s ON s.pk = i.series_fk "
                "LEFT JOIN study st ON st.pk = s.study_fk WHERE st.pk IS NULL"
            )
        ).scalar_one()
    assert orphans == 0
    first.close()


def test_sqlite_disk_full_is_out_of_resources_and_enospc(small_fs: SmallFs) -> None:
    """A full disk under the SQLite index: IndexFull, which is both the domain error
    (507 on the web) and an OSError(ENOSPC) (0xA700 in a STOW response)."""
    idx = SqlIndex(f"sqlite:///{small_fs.path / 'index.sqlite3'}")
    try:
        idx.migrate()
        study = uid()
        comments = "x" * 10_000  # a large non-bulk value: big metadata rows
        added = 0
        failure: BaseException | None = None
        for n in range(2000):
            rec = record(study=study, instance_number=n, ImageComments=comments)
            try:
                add(idx, rec)
            except Exception as exc:
                failure = exc
                break
            added += 1
        assert isinstance(failure, IndexFull), failure
        assert isinstance(failure, OutOfResources)
        assert isinstance(failure, OSError) and failure.errno == errno.ENOSPC
        assert added > 10
        # Nothing half-written: the index still reads and holds exactly what was added.
        assert idx.count_instances() == added
        assert len(idx.instances(study)) == added
    finally:
        idx.close()


def test_migration_v2_moves_patient_names_onto_studies(database_url: str) -> None:
    """A v1 database (patient name only on the patient row) upgrades in place and its
    existing studies stay findable by name."""
    from sqlalchemy import text

    from dicomweb_server.dicom.attributes import Level
    from dicomweb_server.dicom.ingest import analyse
    from dicomweb_server.dicom.matching import parse_query
    from dicomweb_server.storage.sql import engine as engine_module
    from tests.dicomgen import make_dataset, to_part10

    index = SqlIndex(database_url)
    try:
        v2 = engine_module.MIGRATIONS.pop(2)
        try:
            index.migrate()
            with index.write_engine.begin() as conn:  # make it a true v1 schema
                conn.execute(text("DROP INDEX IF EXISTS ix_study_patient_name_norm"))
                conn.execute(text("ALTER TABLE study DROP COLUMN patient_name_norm"))
        finally:
            engine_module.MIGRATIONS[2] = v2
        ds = make_dataset(patient_name="Old^Record")
        with index.write_engine.begin() as conn:
            record = analyse(io.BytesIO(to_part10(ds)))
            conn.execute(
                text(
                    "INSERT INTO patient (patient_id, issuer, name, name_norm) "
                    "VALUES ('OLD', '', 'Old^Record', ' OLD RECORD ')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO study (patient_fk, study_uid, attrs, created_at, updated_at) "
                    "SELECT pk, :uid, :attrs, 0, 0 FROM patient WHERE patient_id = 'OLD'"
                ),
                {"uid": record.study_uid, "attrs": record.study_attrs},
            )
        assert index.migrate() == [2]
        query = parse_query(Level.STUDY, [("PatientName", "old*")])
        assert [r["study_uid"] for r in index.search(query).rows] == [record.study_uid]
    finally:
        index.close()


def _count_statements(index: SqlIndex) -> Any:
    from sqlalchemy import event

    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(index.write_engine, "before_cursor_execute", before)
    return seen, lambda: event.remove(index.write_engine, "before_cursor_execute", before)


@pytest.mark.parametrize("per_series", [2, 20])
def test_a_batch_costs_statements_per_series_not_per_instance(
    index: SqlIndex, per_series: int
) -> None:
    """Small instances are dominated by index statements: a batch of two studies with
    three series takes a fixed handful of statements however many instances it holds
    (one executemany for the instances), not several per instance or savepoints."""
    from dicomweb_server.storage.interfaces import NewInstance

    studies = [uid(), uid()]
    plan = [(studies[0], uid()), (studies[0], uid()), (studies[1], uid())]
    recs = [
        record(study=study, series=series, patient_id=f"P{n % 2}", instance_number=i)
        for n, (study, series) in enumerate(plan)
        for i in range(per_series)
    ]
    seen, stop = _count_statements(index)
    try:
        problems = index.add_instances(
            [NewInstance(r, f"k/{i}", 1, "h") for i, r in enumerate(recs)]
        )
    finally:
        stop()
    assert problems == [None] * len(recs)
    assert not [s for s in seen if "SAVEPOINT" in s.upper()]
    # patients, their keys, series owners, 2 studies, 3 series, instances (+ locks on PG)
    work = [s for s in seen if "advisory" not in s and not s.upper().startswith("BEGIN")]
    assert len(work) <= 9, work
    assert rows(index, "instance") == len(recs)
    assert rows(index, "series") == 3 and rows(index, "study") == 2 and rows(index, "patient") == 2
    assert len(index.instances(studies[0])) == 2 * per_series


def test_a_batch_with_a_conflicting_series_still_stores_the_others(index: SqlIndex) -> None:
    """The batch fast path leaves conflicts to the general one: the instance whose
    series belongs to another study fails alone, its new study and patient are not
    left behind, the rest of the batch is stored."""
    from dicomweb_server.storage.interfaces import NewInstance

    taken = uid()
    add(index, record(series=taken))
    good = [record(study=uid(), patient_id="P-GOOD") for _ in range(3)]
    bad = record(series=taken, patient_id="P-BAD")
    items = [NewInstance(r, f"k/{r.sop_instance_uid}", 1, "h") for r in [*good, bad]]
    problems = index.add_instances(items)
    assert problems[:3] == [None, None, None]
    assert isinstance(problems[3], Conflict)
    assert index.find_instance(bad.sop_instance_uid) is None
    assert rows(index, "instance") == 4
    with index.read_engine.connect() as conn:
        ids = {r[0] for r in conn.execute(text("SELECT patient_id FROM patient"))}
        assert "P-BAD" not in ids
        assert (
            int(
                conn.execute(
                    text("SELECT count(*) FROM study WHERE study_uid = :u"), {"u": bad.study_uid}
                ).scalar_one()
            )
            == 0
        )


def test_add_instances_runs_before_commit_last_and_commits_only_if_it_returns(
    index: SqlIndex,
) -> None:
    first, second = record(), record()
    seen: list[object] = []

    def check() -> None:  # inside the transaction: written, not yet visible to readers
        seen.append(index.find_instance(first.sop_instance_uid))

    assert index.add_instances([NewInstance(first, "k/1.dcm", 10, "h1")], check) == [None]
    assert seen == [None]
    assert index.find_instance(first.sop_instance_uid) is not None

    def refuse() -> None:
        raise RuntimeError("a blob is not durable")

    with pytest.raises(RuntimeError):
        index.add_instances([NewInstance(second, "k/2.dcm", 10, "h2")], refuse)
    assert index.find_instance(second.sop_instance_uid) is None


def test_find_instances_describes_each_as_find_instance_does(index: SqlIndex) -> None:
    """The batch duplicate lookup (SQL text) and the single lookup (SQLAlchemy) read the
    same columns: a column added to one and not the other shows here."""
    recs = [record(), record(frames=3), record()]
    for n, rec in enumerate(recs):
        add(index, rec, digest=f"h{n}")
    found = index.find_instances([r.sop_instance_uid for r in recs] + [uid()])
    assert sorted(found) == sorted(r.sop_instance_uid for r in recs)
    for rec in recs:
        assert found[rec.sop_instance_uid] == index.find_instance(rec.sop_instance_uid)
    assert found[recs[1].sop_instance_uid].number_of_frames == 3


def test_the_duplicate_lookup_neither_waits_for_a_writer_nor_reads_stale_rows(
    database_url: str,
) -> None:
    """On SQLite the lookup goes through a writer's connection (whose page cache its own
    commits keep): it must take no write lock (another writer holds it here) and must
    see what other connections (another process's index) committed since."""
    index, other = SqlIndex(database_url), SqlIndex(database_url)
    index.migrate()
    try:
        first, second = record(), record()
        add(index, first)
        assert set(index.find_instances([first.sop_instance_uid])) == {first.sop_instance_uid}
        add(other, second)  # committed by another connection
        uids = [first.sop_instance_uid, second.sop_instance_uid]
        with other.write_engine.connect() as holder:
            holder.exec_driver_sql("SELECT 1")  # a write transaction: BEGIN IMMEDIATE on SQLite
            started = time.monotonic()
            found = index.find_instances(uids)
            assert time.monotonic() - started < 5
            holder.rollback()
        assert set(found) == set(uids)
    finally:
        index.close()
        other.close()
