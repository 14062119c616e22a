"""Known remote AEs in the index (table ``remote_ae``, schema v4): the ModalityStore."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, select

from dicomweb_server.storage.sql.index import SqlIndex
from dicomweb_server.storage.sql.models import RemoteAE

_T = RemoteAE.__table__  # type: ignore[attr-defined]


class SqlModalities:
    """Shares the index's engines (and its SQLite writer lock)."""

    def __init__(self, index: SqlIndex) -> None:
        self.index = index

    @staticmethod
    def _modality(row: Any) -> dict[str, Any]:
        return {
            "ae_title": row.ae_title,
            "host": row.host,
            "port": int(row.port),
            "operations": row.operations.split(),
            "allowed_ips": row.allowed_ips.split(),
        }

    def list_modalities(self) -> list[dict[str, Any]]:
        with self.index.read_engine.connect() as conn:
            rows = conn.execute(select(_T).order_by(_T.c.ae_title)).all()
        return [self._modality(r) for r in rows]

    def get_modality(self, ae_title: str) -> dict[str, Any] | None:
        with self.index.read_engine.connect() as conn:
            row = conn.execute(select(_T).where(_T.c.ae_title == ae_title)).first()
        return None if row is None else self._modality(row)

    def put_modality(self, modality: dict[str, Any]) -> bool:
        aet = modality["ae_title"]
        values = {
            "host": modality["host"],
            "port": modality["port"],
            "operations": " ".join(sorted(modality["operations"])),
            "allowed_ips": " ".join(modality["allowed_ips"]),
            "updated_at": time.time(),
        }

        def work(conn: Any) -> bool:
            found = conn.execute(select(_T.c.ae_title).where(_T.c.ae_title == aet)).first()
            if found:
                conn.execute(_T.update().where(_T.c.ae_title == aet).values(values))
                return False
            conn.execute(_T.insert().values(ae_title=aet, **values))
            return True

        return bool(self.index._write(work))

    def delete_modality(self, ae_title: str) -> bool:
        def work(conn: Any) -> bool:
            return bool(conn.execute(delete(_T).where(_T.c.ae_title == ae_title)).rowcount)

        return bool(self.index._write(work))
