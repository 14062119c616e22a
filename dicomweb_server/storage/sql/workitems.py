"""UPS workitems in the index (table ``workitem``, schema v5): the WorkitemStore.

Outputs (instances linked to a workitem) are rows of ``workitem_output`` (schema v8),
merged into the Output Information Sequence whenever a workitem is read: linking an
image is one insert however many came before. A workitem written back after a change
keeps the merged outputs in its JSON too; the merge skips what is already there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from dicomweb_server.dicom.workitem import Workitem, index_keys
from dicomweb_server.dicom.workitem_performed import OutputRef, merge_outputs
from dicomweb_server.errors import Conflict, NotFound
from dicomweb_server.storage.interfaces import WorkitemFilter
from dicomweb_server.storage.sql.batch_insert import driver_sql
from dicomweb_server.storage.sql.index import SqlIndex
from dicomweb_server.storage.sql.models import WorkitemOutput, WorkitemRow

_T = WorkitemRow.__table__  # type: ignore[attr-defined]
_O = WorkitemOutput.__table__  # type: ignore[attr-defined]
_OUT_COLUMNS = (_O.c.study_uid, _O.c.series_uid, _O.c.sop_class_uid, _O.c.sop_instance_uid)
# SQL parameters per IN list (SQLite allows 32766; PostgreSQL 65535).
_CHUNK = 500


def _columns(item: Workitem) -> dict[str, Any]:
    keys = index_keys(item.dataset)
    return {
        "state": item.state,
        "transaction_uid": item.transaction_uid,
        "dataset": orjson.dumps(item.dataset),
        "accession_number": keys.accession_number,
        "study_uid": keys.study_uid,
        "patient_id": keys.patient_id,
        "scheduled_start": keys.scheduled_start,
        "station_ae": keys.station_ae,
        "modality": keys.modality,
    }


def _workitem(row: Any, outputs: Sequence[OutputRef] = ()) -> Workitem:
    dataset = orjson.loads(row.dataset)
    if outputs:
        merge_outputs(dataset, outputs)  # freshly parsed: ours to change in place
    return Workitem(
        uid=row.uid, state=row.state, transaction_uid=row.transaction_uid, dataset=dataset
    )


def _outputs(conn: Connection, uids: Sequence[str]) -> dict[str, list[OutputRef]]:
    found: dict[str, list[OutputRef]] = {}
    for start in range(0, len(uids), _CHUNK):
        rows = conn.execute(
            select(_O.c.workitem_uid, *_OUT_COLUMNS)
            .where(_O.c.workitem_uid.in_(list(uids[start : start + _CHUNK])))
            .order_by(_O.c.pk)
        )
        for row in rows:
            found.setdefault(row.workitem_uid, []).append(
                (row.study_uid, row.series_uid, row.sop_class_uid, row.sop_instance_uid)
            )
    return found


_COLUMNS = (_T.c.uid, _T.c.state, _T.c.transaction_uid, _T.c.dataset)


class SqlWorkitems:
    """Shares the index's engines (and its SQLite writer lock)."""

    def __init__(self, index: SqlIndex) -> None:
        self.index = index

    def add_workitem(self, item: Workitem) -> None:
        now = time.time()

        def work(conn: Connection) -> None:
            if conn.execute(select(_T.c.uid).where(_T.c.uid == item.uid)).first():
                raise Conflict(f"workitem {item.uid} already exists")
            conn.execute(
                _T.insert().values(uid=item.uid, created_at=now, updated_at=now, **_columns(item))
            )

        try:
            self.index._write(work)
        except IntegrityError as exc:  # a concurrent create of the same UID won
            raise Conflict(f"workitem {item.uid} already exists") from exc

    def get_workitem(self, uid: str) -> Workitem | None:
        with self.index.read_engine.connect() as conn:
            row = conn.execute(select(*_COLUMNS).where(_T.c.uid == uid)).first()
            outputs = _outputs(conn, [uid]) if row is not None else {}
        return None if row is None else _workitem(row, outputs.get(uid, ()))

    def modify_workitem(
        self, uid: str, change: Callable[[Workitem], Workitem | None]
    ) -> tuple[Workitem, Workitem]:
        def work(conn: Connection) -> tuple[Workitem, Workitem]:
            # FOR UPDATE locks the row on PostgreSQL; SQLite's BEGIN IMMEDIATE already
            # admits one writer at a time (SQLAlchemy omits the clause there).
            row = conn.execute(select(*_COLUMNS).where(_T.c.uid == uid).with_for_update()).first()
            if row is None:
                raise NotFound(f"workitem {uid} not found")
            before = _workitem(row, _outputs(conn, [uid]).get(uid, ()))
            after = change(before)
            if after is None:
                return before, before
            conn.execute(
                _T.update().where(_T.c.uid == uid).values(updated_at=time.time(), **_columns(after))
            )
            return before, after

        return self.index._write(work)

    def find_workitems(self, where: WorkitemFilter) -> list[Workitem]:
        # SQL text: SQLAlchemy's select, its IN lists rendered anew on every call, cost
        # 0.3 ms per call in Python, and every STOW request makes one (to link images
        # to their orders) though hardly any finds something.
        clauses: list[str] = []
        params: dict[str, Any] = {}

        def any_of(column: str, values: Collection[str] | None) -> bool:
            """Adds ``column IN (...)``; False when the list is empty (nothing matches)."""
            if values is None:
                return True
            values = list(values)
            names = [f"{column}_{i}" for i in range(len(values))]
            params.update(zip(names, values, strict=True))
            clauses.append(f"{_T.name}.{column} IN ({', '.join(':' + n for n in names)})")
            return bool(values)

        if not (
            any_of("state", where.states)
            and any_of("accession_number", where.accession_numbers)
            and any_of("study_uid", where.study_uids)
        ):
            return []
        for column, value in (
            ("accession_number", where.accession_number),
            ("study_uid", where.study_uid),
            ("patient_id", where.patient_id),
            ("station_ae", where.station_ae),
            ("modality", where.modality),
        ):
            if value is not None:
                clauses.append(f"{_T.name}.{column} = :{column}")
                params[column] = value
        if where.start_from:
            clauses.append(f"{_T.name}.scheduled_start >= :start_from")
            params["start_from"] = where.start_from
        if where.start_to:
            clauses.append(f"{_T.name}.scheduled_start <= :start_to")
            params["start_to"] = where.start_to
        sql = f"SELECT {', '.join(c.name for c in _COLUMNS)} FROM {_T.name}"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += f" ORDER BY {_T.name}.scheduled_start, {_T.name}.uid"
        if where.limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = where.limit
        sql = driver_sql(sql, self.index.dialect == "postgresql")
        with self.index.read_engine.connect() as conn:
            rows = list(conn.exec_driver_sql(sql, params))
            outputs = _outputs(conn, [row.uid for row in rows]) if where.outputs else {}
        return [_workitem(row, outputs.get(row.uid, ())) for row in rows]

    def add_workitem_outputs(self, uid: str, refs: Sequence[OutputRef]) -> int:
        def work(conn: Connection) -> int:
            if conn.execute(select(_T.c.uid).where(_T.c.uid == uid)).first() is None:
                raise NotFound(f"workitem {uid} not found")
            wanted: dict[str, OutputRef] = {}
            for ref in refs:
                wanted.setdefault(ref[3], ref)
            sops = list(wanted)
            known: set[str] = set()
            for start in range(0, len(sops), _CHUNK):
                known.update(
                    conn.execute(
                        select(_O.c.sop_instance_uid).where(
                            _O.c.workitem_uid == uid,
                            _O.c.sop_instance_uid.in_(sops[start : start + _CHUNK]),
                        )
                    ).scalars()
                )
            new = [wanted[s] for s in sops if s not in known]
            if new:
                conn.execute(
                    _O.insert(),
                    [
                        {
                            "workitem_uid": uid,
                            "study_uid": study,
                            "series_uid": series,
                            "sop_class_uid": sop_class,
                            "sop_instance_uid": sop,
                        }
                        for study, series, sop_class, sop in new
                    ],
                )
                conn.execute(_T.update().where(_T.c.uid == uid).values(updated_at=time.time()))
            return len(new)

        try:
            return int(self.index._write(work))
        except IntegrityError:  # a concurrent link of the same instance won: retry once
            return int(self.index._write(work))
