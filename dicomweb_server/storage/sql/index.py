"""The SQL index: one implementation of IndexStore for SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import orjson
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Select

from dicomweb_server.dicom.attributes import Level
from dicomweb_server.dicom.ingest import InstanceRecord
from dicomweb_server.dicom.matching import QueryRequest
from dicomweb_server.errors import Conflict, NotFound
from dicomweb_server.storage.interfaces import SearchResult, StoredInstance, Version
from dicomweb_server.storage.sql.engine import make_engines, migrate
from dicomweb_server.storage.sql.models import Instance, Patient, Series, Study
from dicomweb_server.storage.sql.query import INSTANCE, PATIENT, SERIES, STUDY, condition_expr

_PATIENT_T = Patient.__table__  # type: ignore[attr-defined]
_STUDY_T = Study.__table__  # type: ignore[attr-defined]
_SERIES_T = Series.__table__  # type: ignore[attr-defined]
_INSTANCE_T = Instance.__table__  # type: ignore[attr-defined]

_STORED_COLUMNS = (
    STUDY.study_uid,
    SERIES.series_uid,
    INSTANCE.sop_uid,
    INSTANCE.sop_class_uid,
    INSTANCE.transfer_syntax,
    INSTANCE.blob_key,
    INSTANCE.blob_size,
    INSTANCE.content_hash,
    INSTANCE.number_of_frames,
)


def _stored(row: Any) -> StoredInstance:
    return StoredInstance(
        study_uid=row[0],
        series_uid=row[1],
        sop_instance_uid=row[2],
        sop_class_uid=row[3],
        transfer_syntax=row[4],
        blob_key=row[5],
        blob_size=row[6],
        content_hash=row[7],
        number_of_frames=row[8],
    )


class SqlIndex:
    def __init__(self, url: str) -> None:
        self.url = url
        self.read_engine, self.write_engine = make_engines(url)
        self.dialect = self.write_engine.dialect.name

    def migrate(self) -> list[int]:
        return migrate(self.write_engine)

    def close(self) -> None:
        self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            self.write_engine.dispose()

    # -- writing ---------------------------------------------------------------------

    def _insert(self, table: Any) -> Any:
        module = postgresql if self.dialect == "postgresql" else sqlite
        return module.insert(table)

    def _upsert_parents(self, conn: Connection, rec: InstanceRecord, now: float) -> int:
        """Insert patient, study and series if absent; returns the series pk."""
        p = rec.patient
        conn.execute(
            self._insert(_PATIENT_T)
            .values(**p)
            .on_conflict_do_nothing(index_elements=["patient_id", "issuer"])
        )
        patient_pk = conn.execute(
            select(PATIENT.pk).where(
                PATIENT.patient_id == p["patient_id"], PATIENT.issuer == p["issuer"]
            )
        ).scalar_one()
        conn.execute(
            self._insert(_STUDY_T)
            .values(
                patient_fk=patient_pk,
                study_uid=rec.study_uid,
                attrs=rec.study_attrs,
                created_at=now,
                updated_at=now,
                **rec.study,
            )
            .on_conflict_do_nothing(index_elements=["study_uid"])
        )
        study_pk = conn.execute(
            select(STUDY.pk).where(STUDY.study_uid == rec.study_uid)
        ).scalar_one()
        conn.execute(update(_STUDY_T).where(STUDY.pk == study_pk).values(updated_at=now))
        conn.execute(
            self._insert(_SERIES_T)
            .values(
                study_fk=study_pk,
                series_uid=rec.series_uid,
                attrs=rec.series_attrs,
                updated_at=now,
                **rec.series,
            )
            .on_conflict_do_nothing(index_elements=["series_uid"])
        )
        series_pk, owner = conn.execute(
            select(SERIES.pk, SERIES.study_fk).where(SERIES.series_uid == rec.series_uid)
        ).one()
        if owner != study_pk:
            raise Conflict(
                f"series {rec.series_uid} already belongs to another study than {rec.study_uid}"
            )
        return int(series_pk)

    def _instance_values(
        self, rec: InstanceRecord, blob_key: str, blob_size: int, content_hash: str, now: float
    ) -> dict[str, Any]:
        return dict(
            sop_uid=rec.sop_instance_uid,
            sop_class_uid=rec.sop_class_uid,
            transfer_syntax=rec.transfer_syntax,
            blob_key=blob_key,
            blob_size=blob_size,
            content_hash=content_hash,
            metadata=rec.metadata,
            bulk=orjson.dumps(rec.bulk),
            stored_at=now,
            **rec.instance,
        )

    def add_instance(
        self, record: InstanceRecord, blob_key: str, blob_size: int, content_hash: str
    ) -> None:
        now = time.time()
        try:
            with self.write_engine.begin() as conn:
                series_pk = self._upsert_parents(conn, record, now)
                values = self._instance_values(record, blob_key, blob_size, content_hash, now)
                conn.execute(_INSTANCE_T.insert().values(series_fk=series_pk, **values))
        except IntegrityError as exc:
            raise Conflict(f"instance {record.sop_instance_uid} is already stored") from exc

    def replace_instance(
        self, record: InstanceRecord, blob_key: str, blob_size: int, content_hash: str
    ) -> str:
        now = time.time()
        with self.write_engine.begin() as conn:
            old = conn.execute(
                select(INSTANCE.blob_key).where(INSTANCE.sop_uid == record.sop_instance_uid)
            ).scalar_one_or_none()
            if old is None:
                raise NotFound(f"instance {record.sop_instance_uid} is not stored")
            series_pk = self._upsert_parents(conn, record, now)
            values = self._instance_values(record, blob_key, blob_size, content_hash, now)
            conn.execute(
                update(_INSTANCE_T)
                .where(INSTANCE.sop_uid == record.sop_instance_uid)
                .values(series_fk=series_pk, **values)
            )
            return str(old)

    # -- reading instances -------------------------------------------------------------

    @staticmethod
    def _scoped(
        stmt: Select[Any], study_uid: str, series_uid: str | None, sop_uid: str | None
    ) -> Select[Any]:
        stmt = stmt.where(STUDY.study_uid == study_uid)
        if series_uid is not None:
            stmt = stmt.where(SERIES.series_uid == series_uid)
        if sop_uid is not None:
            stmt = stmt.where(INSTANCE.sop_uid == sop_uid)
        return stmt

    @staticmethod
    def _joined(*columns: Any) -> Select[Any]:
        return (
            select(*columns)
            .select_from(_INSTANCE_T)
            .join(_SERIES_T, SERIES.pk == INSTANCE.series_fk)
            .join(_STUDY_T, STUDY.pk == SERIES.study_fk)
        )

    _ORDER = (SERIES.series_number, SERIES.pk, INSTANCE.instance_number, INSTANCE.pk)

    def find_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        stmt = self._joined(*_STORED_COLUMNS).where(INSTANCE.sop_uid == sop_instance_uid)
        with self.read_engine.connect() as conn:
            row = conn.execute(stmt).first()
        return _stored(row) if row else None

    def instances(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[StoredInstance]:
        stmt = self._scoped(self._joined(*_STORED_COLUMNS), study_uid, series_uid, sop_instance_uid)
        with self.read_engine.connect() as conn:
            return [_stored(r) for r in conn.execute(stmt.order_by(*self._ORDER))]

    def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[bytes]:
        stmt = self._scoped(
            self._joined(INSTANCE.metadata), study_uid, series_uid, sop_instance_uid
        )
        with self.read_engine.connect() as conn:
            return [bytes(r[0]) for r in conn.execute(stmt.order_by(*self._ORDER))]

    def bulk_location(
        self, sop_instance_uid: str
    ) -> tuple[StoredInstance, dict[str, list[int]]] | None:
        stmt = self._joined(*_STORED_COLUMNS, INSTANCE.bulk).where(
            INSTANCE.sop_uid == sop_instance_uid
        )
        with self.read_engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        return _stored(row), orjson.loads(row[9])

    def version(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> Version | None:
        stmt = self._scoped(
            self._joined(func.max(INSTANCE.stored_at), func.count(INSTANCE.pk)),
            study_uid,
            series_uid,
            sop_instance_uid,
        )
        with self.read_engine.connect() as conn:
            latest, count = conn.execute(stmt).one()
        if not count:
            return None
        return Version(updated_at=float(latest), count=int(count))

    def count_instances(self) -> int:
        with self.read_engine.connect() as conn:
            return int(conn.execute(select(func.count(INSTANCE.pk))).scalar_one())

    # -- search ------------------------------------------------------------------------

    @staticmethod
    def _search_select(query: QueryRequest, *columns: Any) -> Select[Any]:
        level = query.level
        stmt = select(*columns)
        if level == Level.INSTANCE:
            stmt = stmt.select_from(_INSTANCE_T).join(_SERIES_T, SERIES.pk == INSTANCE.series_fk)
        if level >= Level.SERIES:
            if level == Level.SERIES:
                stmt = stmt.select_from(_SERIES_T)
            stmt = stmt.join(_STUDY_T, STUDY.pk == SERIES.study_fk)
        else:
            stmt = stmt.select_from(_STUDY_T)
        stmt = stmt.join(_PATIENT_T, PATIENT.pk == STUDY.patient_fk)
        for cond in query.conditions:
            stmt = stmt.where(condition_expr(cond))
        return stmt

    def count(self, query: QueryRequest) -> int:
        key = {Level.STUDY: STUDY.pk, Level.SERIES: SERIES.pk}.get(query.level, INSTANCE.pk)
        with self.read_engine.connect() as conn:
            return int(conn.execute(self._search_select(query, func.count(key))).scalar_one())

    def search(self, query: QueryRequest) -> SearchResult:
        level = query.level
        if level == Level.STUDY:
            key = STUDY.pk
            stmt = self._search_select(query, STUDY.pk, STUDY.study_uid, STUDY.attrs)
        elif level == Level.SERIES:
            key = SERIES.pk
            stmt = self._search_select(
                query, SERIES.pk, STUDY.study_uid, STUDY.attrs, SERIES.series_uid, SERIES.attrs
            )
        else:
            key = INSTANCE.pk
            stmt = self._search_select(
                query,
                INSTANCE.pk,
                STUDY.study_uid,
                STUDY.attrs,
                SERIES.series_uid,
                SERIES.attrs,
                INSTANCE.sop_uid,
                INSTANCE.metadata,
            )
        stmt = stmt.order_by(key).offset(query.offset).limit(query.limit + 1)
        with self.read_engine.connect() as conn:
            rows = conn.execute(stmt).all()
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            out: list[dict[str, Any]] = []
            for row in rows:
                item: dict[str, Any] = {"study_uid": row[1], "study_attrs": bytes(row[2])}
                if level >= Level.SERIES:
                    item["series_uid"] = row[3]
                    item["series_attrs"] = bytes(row[4])
                if level == Level.INSTANCE:
                    item["sop_uid"] = row[5]
                    item["metadata"] = bytes(row[6])
                out.append(item)
            pks = [row[0] for row in rows]
            if level == Level.STUDY and pks:
                self._study_counts(conn, pks, out)
            elif level == Level.SERIES and pks:
                counts: dict[int, int] = dict(
                    conn.execute(
                        select(INSTANCE.series_fk, func.count(INSTANCE.pk))
                        .where(INSTANCE.series_fk.in_(pks))
                        .group_by(INSTANCE.series_fk)
                    ).all()
                )
                for pk, item in zip(pks, out, strict=True):
                    item["num_instances"] = int(counts.get(pk, 0))
        return SearchResult(rows=out, more=more)

    @staticmethod
    def _study_counts(conn: Connection, pks: list[int], out: list[dict[str, Any]]) -> None:
        """Computed study attributes for one page, in two grouped queries (no N+1)."""
        modalities: dict[int, set[str]] = defaultdict(set)
        series_count: dict[int, int] = defaultdict(int)
        for study_fk, modality in conn.execute(
            select(SERIES.study_fk, SERIES.modality).where(SERIES.study_fk.in_(pks))
        ):
            series_count[study_fk] += 1
            if modality:
                modalities[study_fk].add(modality)
        instance_count: dict[int, int] = dict(
            conn.execute(
                select(SERIES.study_fk, func.count(INSTANCE.pk))
                .select_from(_INSTANCE_T)
                .join(_SERIES_T, SERIES.pk == INSTANCE.series_fk)
                .where(SERIES.study_fk.in_(pks))
                .group_by(SERIES.study_fk)
            ).all()
        )
        for pk, item in zip(pks, out, strict=True):
            item["modalities"] = sorted(modalities.get(pk, ()))
            item["num_series"] = series_count.get(pk, 0)
            item["num_instances"] = int(instance_count.get(pk, 0))

    # -- deletion ----------------------------------------------------------------------

    def delete(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[str]:
        with self.write_engine.begin() as conn:
            rows = conn.execute(
                self._scoped(
                    self._joined(INSTANCE.pk, INSTANCE.blob_key, SERIES.pk, STUDY.pk),
                    study_uid,
                    series_uid,
                    sop_instance_uid,
                )
            ).all()
            if not rows:
                return []
            instance_pks = [r[0] for r in rows]
            series_pks = {r[2] for r in rows}
            study_pks = {r[3] for r in rows}
            for start in range(0, len(instance_pks), 500):
                chunk = instance_pks[start : start + 500]
                conn.execute(delete(_INSTANCE_T).where(INSTANCE.pk.in_(chunk)))
            # Remove parents left empty, bottom up.
            conn.execute(
                delete(_SERIES_T).where(
                    SERIES.pk.in_(series_pks),
                    ~select(INSTANCE.pk).where(INSTANCE.series_fk == SERIES.pk).exists(),
                )
            )
            patient_pks = set(
                conn.execute(select(STUDY.patient_fk).where(STUDY.pk.in_(study_pks))).scalars()
            )
            conn.execute(
                delete(_STUDY_T).where(
                    STUDY.pk.in_(study_pks),
                    ~select(SERIES.pk).where(SERIES.study_fk == STUDY.pk).exists(),
                )
            )
            conn.execute(
                update(_STUDY_T).where(STUDY.pk.in_(study_pks)).values(updated_at=time.time())
            )
            conn.execute(
                delete(_PATIENT_T).where(
                    PATIENT.pk.in_(patient_pks),
                    ~select(STUDY.pk).where(STUDY.patient_fk == PATIENT.pk).exists(),
                )
            )
            return [str(r[1]) for r in rows]
