"""Engines for SQLite (WAL, one writer at a time) and PostgreSQL, and versioned migrations."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, inspect, select, text
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from dicomweb_server.storage.sql import models

SCHEMA_VERSION = 9


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_engine(url: str, begin: str) -> Engine:
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 60},
        pool_size=16,
        max_overflow=32,
        # The connection used last comes back first: its page cache is the warmest (SQLite
        # drops a connection's cache when another connection has committed).
        pool_use_lifo=True,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module so BEGIN is ours.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before STOW acknowledges it.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front (IMMEDIATE) so that two writers never
        # deadlock upgrading read locks; readers use a plain deferred snapshot.
        conn.exec_driver_sql(begin)

    return engine


def make_engines(url: str) -> tuple[Engine, Engine]:
    """Return (read engine, write engine); the same engine for PostgreSQL."""
    if is_sqlite(url):
        return _sqlite_engine(url, "BEGIN"), _sqlite_engine(url, "BEGIN IMMEDIATE")
    engine = create_engine(url, pool_size=16, max_overflow=32, pool_pre_ping=True)
    return engine, engine


def _v1(conn: Connection) -> None:
    SQLModel.metadata.create_all(
        conn,
        tables=[
            models.Patient.__table__,  # type: ignore[attr-defined]
            models.Study.__table__,  # type: ignore[attr-defined]
            models.Series.__table__,  # type: ignore[attr-defined]
            models.Instance.__table__,  # type: ignore[attr-defined]
        ],
    )


# Each entry upgrades the schema from version n-1 to n; never edit a released one.
def _v2(conn: Connection) -> None:
    """Patient name per study, filled from the patient rows for existing studies."""
    columns = {c["name"] for c in inspect(conn).get_columns("study")}
    if "patient_name_norm" not in columns:  # a new database got it from _v1's create_all
        conn.execute(text("ALTER TABLE study ADD COLUMN patient_name_norm VARCHAR(400)"))
        conn.execute(text("CREATE INDEX ix_study_patient_name_norm ON study (patient_name_norm)"))
    conn.execute(
        text(
            "UPDATE study SET patient_name_norm = (SELECT name_norm FROM patient"
            " WHERE patient.pk = study.patient_fk) WHERE patient_name_norm IS NULL"
        )
    )


def _v3(conn: Connection) -> None:
    """Frame table per instance; instances stored earlier get theirs on first use."""
    columns = {c["name"] for c in inspect(conn).get_columns("instance")}
    if "frames" not in columns:
        kind = "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"
        conn.execute(text(f"ALTER TABLE instance ADD COLUMN frames {kind}"))


def _v4(conn: Connection) -> None:
    """Known remote AEs of the DIMSE gateway, managed through /admin/modalities."""
    models.RemoteAE.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _v5(conn: Connection) -> None:
    """UPS workitems (issue #5): the worklist lives in the same index."""
    models.WorkitemRow.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _v6(conn: Connection) -> None:
    """UPS subscriptions and the event reports every process tails (ups-events)."""
    for model in (models.UpsSubscription, models.UpsGlobalSubscription, models.UpsEvent):
        table: Any = getattr(model, "__table__")  # noqa: B009 (SQLModel's table, untyped)
        table.create(conn, checkfirst=True)


def _v7(conn: Connection) -> None:
    """MPPS instances in the index, where every process that takes an N-SET sees them."""
    models.MppsStep.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _v8(conn: Connection) -> None:
    """Workitem outputs one row per instance (linking cost independent of study size)."""
    models.WorkitemOutput.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


# Keys QIDO clients search by prefix (``Doe*``, OHIF's study list): on PostgreSQL a LIKE
# 'prefix%' can use a btree only with pattern operators unless the collation is "C".
_PREFIX_INDEXES = (
    ("study", "patient_name_norm"),
    ("study", "accession_number"),
    ("study", "description"),
    ("patient", "patient_id"),
)


def _v9(conn: Connection) -> None:
    """Indexes for counting and prefix matching at scale: series by (modality, study) for
    ModalitiesInStudy, and LIKE 'prefix%' on PostgreSQL. Counting the matches of a
    paged query (its Warning) scanned every study before."""
    for index in models.Series.__table__.indexes:  # type: ignore[attr-defined]
        if index.name == "ix_series_modality_study":
            index.create(conn, checkfirst=True)
    if conn.dialect.name == "postgresql":
        for table, column in _PREFIX_INDEXES:
            conn.execute(
                text(
                    f"CREATE INDEX IF NOT EXISTS ix_{table}_{column}_prefix"
                    f" ON {table} ({column} varchar_pattern_ops)"
                )
            )


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _v1, 2: _v2, 3: _v3, 4: _v4, 5: _v5, 6: _v6, 7: _v7, 8: _v8, 9: _v9,
}  # fmt: skip


def current_version(engine: Engine) -> int:
    with engine.connect() as conn:
        if not inspect(conn).has_table("schema_version"):
            return 0
        version = conn.execute(text("SELECT max(version) FROM schema_version")).scalar()
        return int(version or 0)


# Any constant: the PostgreSQL advisory lock that makes concurrent migrations take turns.
_MIGRATION_LOCK = 0x6469636F6D776562  # "dicomweb"


def migrate(engine: Engine) -> list[int]:
    """Apply pending migrations in order, each in its own transaction; returns those applied.

    Safe to run from several processes at once (servers starting together, ``migrate``
    during ``serve``): on PostgreSQL they queue on an advisory lock; on SQLite each
    transaction is BEGIN IMMEDIATE, and every step checks what is already done.
    """
    if engine.dialect.name != "postgresql":
        return _migrate(engine)
    with engine.connect() as lock:
        lock.execute(select(func.pg_advisory_lock(_MIGRATION_LOCK)))
        lock.commit()
        try:
            return _migrate(engine)
        finally:
            lock.execute(select(func.pg_advisory_unlock(_MIGRATION_LOCK)))
            lock.commit()


def _migrate(engine: Engine) -> list[int]:
    applied: list[int] = []
    with engine.begin() as conn:
        models.SchemaVersion.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]
    table = models.SchemaVersion.__table__  # type: ignore[attr-defined]
    for version in sorted(MIGRATIONS):
        with engine.begin() as conn:
            done = conn.execute(select(table.c.version).where(table.c.version == version)).first()
            if done:
                continue
            MIGRATIONS[version](conn)
            conn.execute(table.insert().values(version=version, applied_at=time.time()))
            applied.append(version)
    return applied
