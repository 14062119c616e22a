"""The write statements of the index, built once, and a batch of new instances in a
handful of them.

Study and series upserts, the patient insert and the instance insert are written here
and used by both write paths of ``SqlIndex``: the batch path below and the general
path (a savepoint per series). They are plain SQL text, built once per shape and run
with ``exec_driver_sql``, the same for SQLite and PostgreSQL but for the parameter
style: SQLAlchemy's compiled statements cost 100-250 us each in Python (IN lists are
re-rendered on every call), more than the database spent on them, and a batch of ten
small instances runs about ten.

The batch path takes one patient insert (executemany), one patient lookup, one
series-ownership check, one upsert per study and per series, one instance insert
(executemany). The rare cases are not handled here: a series that already belongs to
another study, an instance that is indexed already, an ownership that changed under
us. Any of them raises ``NeedsGeneralPath`` before anything is committed, and the
caller runs the general path, which gives those instances their own outcome.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import case
from sqlalchemy.engine import Connection

from dicomweb_server.dicom.ingest import InstanceRecord
from dicomweb_server.storage.interfaces import NewInstance


@functools.lru_cache(maxsize=1024)
def driver_sql(sql: str, postgresql: bool) -> str:
    """SQL text with ``:name`` parameters in the driver's style (as is for sqlite3,
    ``%(name)s`` for psycopg), converted once per statement text."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql) if postgresql else sql


def _numbered(values: list[str]) -> dict[str, str]:
    return {f"u{i}": value for i, value in enumerate(values)}


class NeedsGeneralPath(Exception):
    """This batch holds a case the fast path leaves to the general one."""


def touched(column: Any, now: Any) -> Any:
    """``now``, or just after the stored value if the clock did not move past it.

    Versions (ETag, Last-Modified) are built from these stamps; they must move forward
    on every change even when two changes share a clock tick or the clock steps back.
    ``now`` is a value or a bound parameter.
    """
    return case((column >= now, column + 1e-6), else_=now)


def instance_row(
    rec: InstanceRecord, blob_key: str, blob_size: int, content_hash: str, now: float
) -> dict[str, Any]:
    """The instance table's values for one stored instance (its series key aside)."""
    return {
        "sop_uid": rec.sop_instance_uid,
        "sop_class_uid": rec.sop_class_uid,
        "transfer_syntax": rec.transfer_syntax,
        "blob_key": blob_key,
        "blob_size": blob_size,
        "content_hash": content_hash,
        "metadata": rec.metadata,
        "bulk": orjson.dumps(rec.bulk),
        "stored_at": now,
        **rec.instance,
    }


class BatchInsert:
    """The write statements of one dialect, as SQL text; ``run`` writes one batch."""

    def __init__(self, dialect: str) -> None:
        self.postgresql = dialect == "postgresql"
        self._texts: dict[tuple[Any, ...], str] = {}

    def _text(self, key: tuple[Any, ...], build: Any) -> str:
        """The statement for ``key``, built once; named parameters in the driver's style
        (``:name`` for sqlite3, ``%(name)s`` for psycopg)."""
        sql = self._texts.get(key)
        if sql is None:
            sql = self._texts[key] = driver_sql(build(), self.postgresql)
        return sql

    @staticmethod
    def _insert(table: str, columns: Sequence[str]) -> str:
        names = ", ".join(columns)
        values = ", ".join(f":{c}" for c in columns)
        return f"INSERT INTO {table} ({names}) VALUES ({values})"

    def _patients(self, conn: Connection, patients: list[dict[str, Any]]) -> None:
        columns = tuple(patients[0])
        sql = self._text(
            ("patients", columns),
            lambda: (
                self._insert("patient", columns) + " ON CONFLICT (patient_id, issuer) DO NOTHING"
            ),
        )
        conn.exec_driver_sql(sql, patients if len(patients) > 1 else patients[0])

    def _patient_keys(
        self, conn: Connection, pairs: list[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        sql = self._text(
            ("patient_keys", len(pairs)),
            lambda: (
                "SELECT pk, patient_id, issuer FROM patient WHERE (patient_id, issuer) IN ("
                + ", ".join(f"(:p{i}, :i{i})" for i in range(len(pairs)))
                + ")"
            ),
        )
        params: dict[str, str] = {}
        for i, (pid, issuer) in enumerate(pairs):
            params[f"p{i}"], params[f"i{i}"] = pid, issuer
        return {(pid, issuer): pk for pk, pid, issuer in conn.exec_driver_sql(sql, params)}

    def _owners(self, conn: Connection, uids: list[str]) -> dict[str, str]:
        sql = self._text(
            ("owners", len(uids)),
            lambda: (
                "SELECT series.series_uid, study.study_uid FROM series"
                " JOIN study ON study.pk = series.study_fk WHERE series.series_uid IN ("
                + ", ".join(f":u{i}" for i in range(len(uids)))
                + ")"
            ),
        )
        return dict(conn.exec_driver_sql(sql, _numbered(uids)).all())

    def stored(self, cursor: Any, uids: list[str]) -> list[Any]:
        """The batch's duplicate lookup, on a DBAPI cursor: ``_stored`` rows (study,
        series and SOP Instance UIDs, SOP class, transfer syntax, blob key, size, hash,
        frames) of the indexed ones among ``uids``."""
        cursor.execute(self._stored_sql(len(uids)), _numbered(uids))
        return list(cursor.fetchall())

    def _stored_sql(self, count: int) -> str:
        return self._text(
            ("stored", count),
            lambda: (
                "SELECT study.study_uid, series.series_uid, instance.sop_uid,"
                " instance.sop_class_uid, instance.transfer_syntax, instance.blob_key,"
                " instance.blob_size, instance.content_hash, instance.number_of_frames"
                " FROM instance JOIN series ON series.pk = instance.series_fk"
                " JOIN study ON study.pk = series.study_fk WHERE instance.sop_uid IN ("
                + ", ".join(f":u{i}" for i in range(count))
                + ")"
            ),
        )

    def _upsert(
        self, conn: Connection, table: str, key: str, values: dict[str, Any], returning: str
    ) -> Any:
        """Insert the row, or move its version stamp (``touched``); the returned row."""
        columns = tuple(c for c in values if c != "now")
        sql = self._text(
            ("upsert", table, columns),
            lambda: (
                self._insert(table, columns)
                + f" ON CONFLICT ({key}) DO UPDATE SET updated_at = CASE WHEN"
                f" {table}.updated_at >= :now THEN {table}.updated_at + 0.000001 ELSE :now END"
                f" RETURNING {returning}"
            ),
        )
        return conn.exec_driver_sql(sql, values).one()

    def patient_pk(self, conn: Connection, patient: dict[str, Any]) -> int:
        """Insert the patient if absent; its key."""
        self._patients(conn, [patient])
        pair = (patient["patient_id"], patient["issuer"])
        return int(self._patient_keys(conn, [pair])[pair])

    def upsert_study(
        self, conn: Connection, rec: InstanceRecord, patient_fk: int, now: float
    ) -> int:
        """Insert the study, or move its version stamp; its key."""
        values = {
            "patient_fk": patient_fk,
            "study_uid": rec.study_uid,
            "patient_name_norm": rec.patient["name_norm"],
            "attrs": rec.study_attrs,
            "created_at": now,
            "updated_at": now,
            **rec.study,
            "now": now,
        }
        return int(self._upsert(conn, "study", "study_uid", values, "pk")[0])

    def upsert_series(
        self, conn: Connection, rec: InstanceRecord, study_fk: int, now: float
    ) -> tuple[int, int]:
        """Insert the series, or move its version stamp; (its key, its study's key),
        which differs from ``study_fk`` when the series belongs to another study."""
        values = {
            "study_fk": study_fk,
            "series_uid": rec.series_uid,
            "attrs": rec.series_attrs,
            "updated_at": now,
            **rec.series,
            "now": now,
        }
        pk, owner = self._upsert(conn, "series", "series_uid", values, "pk, study_fk")
        return int(pk), int(owner)

    def insert_instances(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Instance rows (``instance_row`` and the series key), all columns alike."""
        columns = tuple(rows[0])
        sql = self._text(("instances", columns), lambda: self._insert("instance", columns))
        conn.exec_driver_sql(sql, rows if len(rows) > 1 else rows[0])

    def run(self, conn: Connection, items: Sequence[NewInstance], now: float) -> None:
        """Insert the rows of ``items`` (all new, none conflicting) in ``conn``'s
        transaction; raises ``NeedsGeneralPath`` (the caller rolls back) otherwise."""
        records = [item.record for item in items]
        if len({rec.sop_instance_uid for rec in records}) != len(records):
            raise NeedsGeneralPath("a SOP Instance UID repeats within the batch")
        first_of_series: dict[str, InstanceRecord] = {}
        for rec in records:
            first_of_series.setdefault(rec.series_uid, rec)
        owners = self._owners(conn, list(first_of_series))
        if any(owners.get(s, r.study_uid) != r.study_uid for s, r in first_of_series.items()):
            raise NeedsGeneralPath("a series belongs to another study")

        patients: dict[tuple[str, str], dict[str, Any]] = {}
        for rec in first_of_series.values():
            key = (rec.patient["patient_id"], rec.patient["issuer"])
            patients.setdefault(key, rec.patient)
        self._patients(conn, list(patients.values()))
        patient_pk = self._patient_keys(conn, list(patients))

        study_pk: dict[str, int] = {}
        series_pk: dict[str, int] = {}
        for uid, rec in first_of_series.items():
            if rec.study_uid not in study_pk:
                key = (rec.patient["patient_id"], rec.patient["issuer"])
                study_pk[rec.study_uid] = self.upsert_study(conn, rec, patient_pk[key], now)
            pk, owner = self.upsert_series(conn, rec, study_pk[rec.study_uid], now)
            if owner != study_pk[rec.study_uid]:  # created by another study meanwhile
                raise NeedsGeneralPath("a series belongs to another study")
            series_pk[uid] = pk

        self.insert_instances(
            conn,
            [
                {
                    "series_fk": series_pk[item.record.series_uid],
                    **instance_row(
                        item.record, item.blob_key, item.blob_size, item.content_hash, now
                    ),
                }
                for item in items
            ],
        )
