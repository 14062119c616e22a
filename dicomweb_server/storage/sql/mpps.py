"""MPPS instances in the index (table ``mpps_step``, schema v7): the ``MppsStore``."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from dicomweb_server.storage.sql.index import SqlIndex
from dicomweb_server.storage.sql.models import MppsStep

_T = MppsStep.__table__  # type: ignore[attr-defined]


class SqlMpps:
    """Shares the index's engines (and its SQLite writer lock)."""

    def __init__(self, index: SqlIndex) -> None:
        self.index = index

    def get_step(self, uid: str) -> tuple[bytes, int] | None:
        with self.index.read_engine.connect() as conn:
            row = conn.execute(select(_T.c.record, _T.c.version).where(_T.c.uid == uid)).first()
        return None if row is None else (bytes(row.record), int(row.version))

    def add_step(self, uid: str, status: str, record: bytes) -> bool:
        def work(conn: Any) -> bool:
            if conn.execute(select(_T.c.uid).where(_T.c.uid == uid)).first():
                return False
            conn.execute(
                _T.insert().values(
                    uid=uid, status=status, record=record, version=1, updated_at=time.time()
                )
            )
            return True

        try:
            return bool(self.index._write(work))
        except IntegrityError:  # another process created it between our check and insert
            return False

    def replace_step(self, uid: str, status: str, record: bytes, version: int) -> bool:
        def work(conn: Any) -> bool:
            changed = conn.execute(
                _T.update()
                .where(_T.c.uid == uid, _T.c.version == version)
                .values(status=status, record=record, version=version + 1, updated_at=time.time())
            ).rowcount
            return bool(changed)

        return bool(self.index._write(work))
