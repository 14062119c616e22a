"""The frame table in the index (schema v3) on SQLite and PostgreSQL."""

from __future__ import annotations

import io

from sqlalchemy import text

from dicomweb_server.dicom.frames import FrameTable
from dicomweb_server.dicom.ingest import analyse
from dicomweb_server.storage.sql.index import SqlIndex
from tests.dicomgen import make_dataset, to_part10


def test_frame_table_is_stored_with_the_instance(index: SqlIndex) -> None:
    rec = analyse(io.BytesIO(to_part10(make_dataset(frames=3, rows=4, columns=4))))
    index.add_instance(rec, "k/a.dcm", 1, "h")
    found = index.frame_table(rec.sop_instance_uid)
    assert found is not None
    instance, encoded = found
    assert instance.blob_key == "k/a.dcm"
    assert encoded is not None
    table = FrameTable.decode(encoded)
    assert table is not None and table.count == 3
    assert index.frame_table("1.2.3.4") is None


def test_lazily_computed_table_is_kept_only_for_the_same_blob(index: SqlIndex) -> None:
    rec = analyse(io.BytesIO(to_part10(make_dataset())))
    rec.instance["frames"] = None
    index.add_instance(rec, "k/b.dcm", 1, "h")
    assert index.frame_table(rec.sop_instance_uid) == (
        index.find_instance(rec.sop_instance_uid),
        None,
    )
    index.set_frame_table(rec.sop_instance_uid, "k/other.dcm", b"{}")  # replaced meanwhile
    assert index.frame_table(rec.sop_instance_uid)[1] is None  # type: ignore[index]
    index.set_frame_table(rec.sop_instance_uid, "k/b.dcm", b"{}")
    assert index.frame_table(rec.sop_instance_uid)[1] == b"{}"  # type: ignore[index]


def _versions(index: SqlIndex) -> set[int]:
    with index.read_engine.connect() as conn:
        return {int(r[0]) for r in conn.execute(text("SELECT version FROM schema_version"))}


def test_migration_3_adds_the_column_to_an_older_index(index: SqlIndex) -> None:
    rec = analyse(io.BytesIO(to_part10(make_dataset())))
    index.add_instance(rec, "k/c.dcm", 1, "h")
    with index.write_engine.begin() as conn:  # back to schema v2
        conn.execute(text("ALTER TABLE instance DROP COLUMN frames"))
        conn.execute(text("DELETE FROM schema_version WHERE version = 3"))
    assert 3 not in _versions(index)
    assert index.migrate() == [3]
    assert 3 in _versions(index)
    found = index.frame_table(rec.sop_instance_uid)
    assert found is not None and found[1] is None  # computed on first use
