"""The write statements of the index, built once, and a batch of new instances in a
handful of them.

Study and series upserts, the patient insert and the instance insert are prepared here
and used by both write paths of ``SqlIndex``: the batch path below and the general
path (a savepoint per series). Built once and reused, SQLAlchemy neither rebuilds nor
re-keys them per call; that was most of the index time of a small instance.

The batch path takes one patient insert (executemany), one patient lookup, one
series-ownership check, one upsert per study and per series, one instance insert
(executemany). The rare cases are not handled here: a series that already belongs to
another study, an instance that is indexed already, an ownership that changed under
us. Any of them raises ``NeedsGeneralPath`` before anything is committed, and the
caller runs the general path, which gives those instances their own outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import bindparam, case, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from dicomweb_server.dicom.ingest import InstanceRecord
from dicomweb_server.storage.interfaces import NewInstance
from dicomweb_server.storage.sql.models import Instance, Patient, Series, Study

_PATIENT_T = Patient.__table__  # type: ignore[attr-defined]
_STUDY_T = Study.__table__  # type: ignore[attr-defined]
_SERIES_T = Series.__table__  # type: ignore[attr-defined]
_INSTANCE_T = Instance.__table__  # type: ignore[attr-defined]


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
    """The prepared statements of one dialect; ``run`` writes one batch."""

    def __init__(self, dialect: str) -> None:
        module: Any = postgresql if dialect == "postgresql" else sqlite
        self.patients = module.insert(_PATIENT_T).on_conflict_do_nothing(
            index_elements=["patient_id", "issuer"]
        )
        self.patient_keys = select(
            _PATIENT_T.c.pk, _PATIENT_T.c.patient_id, _PATIENT_T.c.issuer
        ).where(
            tuple_(_PATIENT_T.c.patient_id, _PATIENT_T.c.issuer).in_(
                bindparam("pairs", expanding=True)
            )
        )
        self.owners = (
            select(_SERIES_T.c.series_uid, _STUDY_T.c.study_uid)
            .join(_STUDY_T, _STUDY_T.c.pk == _SERIES_T.c.study_fk)
            .where(_SERIES_T.c.series_uid.in_(bindparam("uids", expanding=True)))
        )
        self.study = (
            module.insert(_STUDY_T)
            .on_conflict_do_update(
                index_elements=["study_uid"],
                set_={"updated_at": touched(_STUDY_T.c.updated_at, bindparam("now"))},
            )
            .returning(_STUDY_T.c.pk)
        )
        self.series = (
            module.insert(_SERIES_T)
            .on_conflict_do_update(
                index_elements=["series_uid"],
                set_={"updated_at": touched(_SERIES_T.c.updated_at, bindparam("now"))},
            )
            .returning(_SERIES_T.c.pk, _SERIES_T.c.study_fk)
        )
        self.instances = _INSTANCE_T.insert()

    def patient_pk(self, conn: Connection, patient: dict[str, Any]) -> int:
        """Insert the patient if absent; its key."""
        conn.execute(self.patients, [patient])
        pair = (patient["patient_id"], patient["issuer"])
        return int(conn.execute(self.patient_keys, {"pairs": [pair]}).scalar_one())

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
            "now": now,
            **rec.study,
        }
        return int(conn.execute(self.study, values).scalar_one())

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
            "now": now,
            **rec.series,
        }
        pk, owner = conn.execute(self.series, values).one()
        return int(pk), int(owner)

    def run(self, conn: Connection, items: Sequence[NewInstance], now: float) -> None:
        """Insert the rows of ``items`` (all new, none conflicting) in ``conn``'s
        transaction; raises ``NeedsGeneralPath`` (the caller rolls back) otherwise."""
        records = [item.record for item in items]
        if len({rec.sop_instance_uid for rec in records}) != len(records):
            raise NeedsGeneralPath("a SOP Instance UID repeats within the batch")
        first_of_series: dict[str, InstanceRecord] = {}
        for rec in records:
            first_of_series.setdefault(rec.series_uid, rec)
        owners: dict[str, str] = dict(
            conn.execute(self.owners, {"uids": list(first_of_series)}).all()
        )
        if any(owners.get(s, r.study_uid) != r.study_uid for s, r in first_of_series.items()):
            raise NeedsGeneralPath("a series belongs to another study")

        patients: dict[tuple[str, str], dict[str, Any]] = {}
        for rec in first_of_series.values():
            key = (rec.patient["patient_id"], rec.patient["issuer"])
            patients.setdefault(key, rec.patient)
        conn.execute(self.patients, list(patients.values()))
        patient_pk = {
            (pid, issuer): pk
            for pk, pid, issuer in conn.execute(self.patient_keys, {"pairs": list(patients)})
        }

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

        conn.execute(
            self.instances,
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
