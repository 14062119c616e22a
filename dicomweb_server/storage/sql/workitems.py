"""UPS workitems in the index (table ``workitem``, schema v5): the WorkitemStore."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from dicomweb_server.dicom.workitem import Workitem, index_keys
from dicomweb_server.errors import Conflict, NotFound
from dicomweb_server.storage.interfaces import WorkitemFilter
from dicomweb_server.storage.sql.index import SqlIndex
from dicomweb_server.storage.sql.models import WorkitemRow

_T = WorkitemRow.__table__  # type: ignore[attr-defined]


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


def _workitem(row: Any) -> Workitem:
    return Workitem(
        uid=row.uid,
        state=row.state,
        transaction_uid=row.transaction_uid,
        dataset=orjson.loads(row.dataset),
    )


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
        return None if row is None else _workitem(row)

    def modify_workitem(
        self, uid: str, change: Callable[[Workitem], Workitem | None]
    ) -> tuple[Workitem, Workitem]:
        def work(conn: Connection) -> tuple[Workitem, Workitem]:
            # FOR UPDATE locks the row on PostgreSQL; SQLite's BEGIN IMMEDIATE already
            # admits one writer at a time (SQLAlchemy omits the clause there).
            row = conn.execute(select(*_COLUMNS).where(_T.c.uid == uid).with_for_update()).first()
            if row is None:
                raise NotFound(f"workitem {uid} not found")
            before = _workitem(row)
            after = change(before)
            if after is None:
                return before, before
            conn.execute(
                _T.update().where(_T.c.uid == uid).values(updated_at=time.time(), **_columns(after))
            )
            return before, after

        return self.index._write(work)

    def find_workitems(self, where: WorkitemFilter) -> list[Workitem]:
        stmt = select(*_COLUMNS)
        if where.states is not None:
            stmt = stmt.where(_T.c.state.in_(list(where.states)))
        for column, value in (
            (_T.c.accession_number, where.accession_number),
            (_T.c.study_uid, where.study_uid),
            (_T.c.patient_id, where.patient_id),
            (_T.c.station_ae, where.station_ae),
            (_T.c.modality, where.modality),
        ):
            if value is not None:
                stmt = stmt.where(column == value)
        if where.start_from:
            stmt = stmt.where(_T.c.scheduled_start >= where.start_from)
        if where.start_to:
            stmt = stmt.where(_T.c.scheduled_start <= where.start_to)
        stmt = stmt.order_by(_T.c.scheduled_start, _T.c.uid)
        if where.limit is not None:
            stmt = stmt.limit(where.limit)
        with self.index.read_engine.connect() as conn:
            return [_workitem(row) for row in conn.execute(stmt)]
