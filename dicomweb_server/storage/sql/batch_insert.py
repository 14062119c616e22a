"""Index rows for a batch of new instances in a handful of statements.

The general path (``SqlIndex.add_instances``' per-series savepoints) costs about six
statements per series and one savepoint per step; for small instances that was most of
the index time. Here one batch takes: one patient insert (executemany), one patient
lookup, one series-ownership check, one upsert per study and per series, one instance
insert (executemany). The statements are built once and reused, so SQLAlchemy neither
rebuilds nor re-keys them per call.

The rare cases are not handled here: a series that already belongs to another study,
an instance that is indexed already, an ownership that changed under us. Any of them
raises ``NeedsGeneralPath`` before anything is committed, and the caller runs the
general path, which gives those instances their own outcome.
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


def _touched(column: Any) -> Any:
    """``:now``, or just after the stored stamp if the clock did not pass it (versions
    must move forward on every change; see ``index._touched``)."""
    now: Any = bindparam("now")
    return case((column >= now, column + 1e-6), else_=now)


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
                set_={"updated_at": _touched(_STUDY_T.c.updated_at)},
            )
            .returning(_STUDY_T.c.pk)
        )
        self.series = (
            module.insert(_SERIES_T)
            .on_conflict_do_update(
                index_elements=["series_uid"],
                set_={"updated_at": _touched(_SERIES_T.c.updated_at)},
            )
            .returning(_SERIES_T.c.pk, _SERIES_T.c.study_fk)
        )
        self.instances = _INSTANCE_T.insert()

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
                study_pk[rec.study_uid] = conn.execute(
                    self.study,
                    {
                        "patient_fk": patient_pk[key],
                        "study_uid": rec.study_uid,
                        "patient_name_norm": rec.patient["name_norm"],
                        "attrs": rec.study_attrs,
                        "created_at": now,
                        "updated_at": now,
                        "now": now,
                        **rec.study,
                    },
                ).scalar_one()
            pk, owner = conn.execute(
                self.series,
                {
                    "study_fk": study_pk[rec.study_uid],
                    "series_uid": uid,
                    "attrs": rec.series_attrs,
                    "updated_at": now,
                    "now": now,
                    **rec.series,
                },
            ).one()
            if owner != study_pk[rec.study_uid]:  # created by another study meanwhile
                raise NeedsGeneralPath("a series belongs to another study")
            series_pk[uid] = int(pk)

        conn.execute(
            self.instances,
            [
                {
                    "series_fk": series_pk[item.record.series_uid],
                    "sop_uid": item.record.sop_instance_uid,
                    "sop_class_uid": item.record.sop_class_uid,
                    "transfer_syntax": item.record.transfer_syntax,
                    "blob_key": item.blob_key,
                    "blob_size": item.blob_size,
                    "content_hash": item.content_hash,
                    "metadata": item.record.metadata,
                    "bulk": orjson.dumps(item.record.bulk),
                    "stored_at": now,
                    **item.record.instance,
                }
                for item in items
            ],
        )
