"""Index tables: patient, study, series, instance (PS3.4 C.6.1 information model).

Columns are the attributes QIDO and C-FIND match on, each indexed; everything
else a response needs is kept as pre-rendered DICOM JSON (``attrs``, ``metadata``).
"""

from __future__ import annotations

from sqlalchemy import Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


class Patient(SQLModel, table=True):
    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patient_identity"),)

    pk: int | None = Field(default=None, primary_key=True)
    patient_id: str = Field(default="", index=True, max_length=64)
    issuer: str = Field(default="", max_length=64)
    name: str | None = Field(default=None, index=True, max_length=324)
    name_norm: str | None = Field(default=None, index=True, max_length=400)
    birth_date: str | None = Field(default=None, index=True, max_length=16)
    sex: str | None = Field(default=None, max_length=16)


class Study(SQLModel, table=True):
    __tablename__ = "study"

    pk: int | None = Field(default=None, primary_key=True)
    patient_fk: int = Field(foreign_key="patient.pk", index=True)
    study_uid: str = Field(unique=True, max_length=64)
    study_date: str | None = Field(default=None, index=True, max_length=16)
    study_time: str | None = Field(default=None, index=True, max_length=16)
    accession_number: str | None = Field(default=None, index=True, max_length=64)
    study_id: str | None = Field(default=None, index=True, max_length=64)
    description: str | None = Field(default=None, index=True, max_length=256)
    referring_physician: str | None = Field(default=None, max_length=324)
    referring_norm: str | None = Field(default=None, index=True, max_length=400)
    # The patient's name as recorded with this study (schema v2): studies of one
    # Patient ID may carry different spellings, and each is matched on its own.
    patient_name_norm: str | None = Field(default=None, index=True, max_length=400)
    attrs: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: float = Field(default=0.0)
    updated_at: float = Field(default=0.0)


class Series(SQLModel, table=True):
    __tablename__ = "series"
    # ModalitiesInStudy (schema v9): the studies having a series of a modality, read
    # from the index alone; counting them for the paging Warning was a table scan.
    __table_args__ = (Index("ix_series_modality_study", "modality", "study_fk"),)

    pk: int | None = Field(default=None, primary_key=True)
    study_fk: int = Field(foreign_key="study.pk", index=True)
    series_uid: str = Field(unique=True, max_length=64)
    modality: str | None = Field(default=None, index=True, max_length=16)
    series_number: int | None = Field(default=None, index=True)
    description: str | None = Field(default=None, index=True, max_length=256)
    body_part: str | None = Field(default=None, index=True, max_length=64)
    series_date: str | None = Field(default=None, index=True, max_length=16)
    pps_start_date: str | None = Field(default=None, index=True, max_length=16)
    pps_start_time: str | None = Field(default=None, index=True, max_length=16)
    attrs: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    updated_at: float = Field(default=0.0)


class Instance(SQLModel, table=True):
    __tablename__ = "instance"
    __table_args__ = (Index("ix_instance_series_number", "series_fk", "instance_number"),)

    pk: int | None = Field(default=None, primary_key=True)
    series_fk: int = Field(foreign_key="series.pk", index=True)
    sop_uid: str = Field(unique=True, max_length=64)
    sop_class_uid: str = Field(index=True, max_length=64)
    instance_number: int | None = Field(default=None)
    rows: int | None = Field(default=None)
    columns: int | None = Field(default=None)
    bits_allocated: int | None = Field(default=None)
    number_of_frames: int | None = Field(default=None)
    transfer_syntax: str = Field(max_length=64)
    blob_key: str = Field(max_length=400)
    blob_size: int = Field(default=0)
    content_hash: str = Field(max_length=64)
    metadata_json: bytes = Field(sa_column=Column("metadata", LargeBinary, nullable=False))
    bulk: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    stored_at: float = Field(default=0.0)
    # Each frame's place in the stored file (dicom/frames.py; schema v3); NULL until
    # computed for instances stored before v3.
    frames: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class SchemaVersion(SQLModel, table=True):
    __tablename__ = "schema_version"

    version: int = Field(primary_key=True)
    applied_at: float = Field(default=0.0)


class RemoteAE(SQLModel, table=True):
    """A known remote Application Entity managed at run time (schema v4)."""

    __tablename__ = "remote_ae"

    ae_title: str = Field(primary_key=True, max_length=16)
    host: str = Field(max_length=255)
    port: int
    # Allowed operations and peer addresses, space-separated.
    operations: str = Field(max_length=200)
    allowed_ips: str = Field(default="", max_length=2000)
    updated_at: float = Field(default=0.0)


class WorkitemRow(SQLModel, table=True):
    """A UPS workitem (schema v5): its DICOM JSON and the columns searches narrow on."""

    __tablename__ = "workitem"

    uid: str = Field(primary_key=True, max_length=64)
    state: str = Field(index=True, max_length=16)
    transaction_uid: str | None = Field(default=None, max_length=64)
    dataset: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # From Referenced Request Sequence (where orders put them), else the top level.
    accession_number: str | None = Field(default=None, index=True, max_length=64)
    study_uid: str | None = Field(default=None, index=True, max_length=64)
    patient_id: str | None = Field(default=None, index=True, max_length=64)
    # Scheduled Procedure Step Start DateTime as YYYYMMDDHHMMSS.FFFFFF (ordering, ranges).
    scheduled_start: str | None = Field(default=None, index=True, max_length=32)
    station_ae: str | None = Field(default=None, index=True, max_length=64)
    modality: str | None = Field(default=None, index=True, max_length=16)
    created_at: float = Field(default=0.0)
    updated_at: float = Field(default=0.0)


# --- ups-events (schema v6) ---
class UpsSubscription(SQLModel, table=True):
    """One AE's UPS Subscription State for one workitem (PS3.4 Table CC.2.3-2).

    ``subscribed`` False is "Not Subscribed" kept on purpose: the AE unsubscribed from
    this workitem while globally subscribed, so the global subscription must not
    subscribe it again.
    """

    __tablename__ = "ups_subscription"
    __table_args__ = (UniqueConstraint("ae_title", "workitem_uid", name="uq_ups_subscription"),)

    pk: int | None = Field(default=None, primary_key=True)
    ae_title: str = Field(max_length=16)
    workitem_uid: str = Field(index=True, max_length=64)
    deletion_lock: bool = Field(default=False)
    subscribed: bool = Field(default=True)
    created_at: float = Field(default=0.0)


class UpsGlobalSubscription(SQLModel, table=True):
    """An AE's Global Subscription State: kind "global" (1.2.840.10008.5.1.4.34.5) or
    "filtered" (1.2.840.10008.5.1.4.34.5.1, with its matching keys as JSON)."""

    __tablename__ = "ups_global_subscription"

    ae_title: str = Field(primary_key=True, max_length=16)
    kind: str = Field(primary_key=True, max_length=16)
    deletion_lock: bool = Field(default=False)
    filter_json: str = Field(default="[]", max_length=8000)
    created_at: float = Field(default=0.0)


class UpsEvent(SQLModel, table=True):
    """An event report for one subscriber AE, tailed by every server process.

    Ids are committed in increasing order (inserts are serialized), so a reader that
    has seen id n has seen every event up to n. Old rows are pruned.
    """

    __tablename__ = "ups_event"

    id: int | None = Field(default=None, primary_key=True)
    created_at: float = Field(default=0.0, index=True)
    ae_title: str = Field(max_length=16)
    workitem_uid: str = Field(max_length=64)
    message: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class MppsStep(SQLModel, table=True):
    """A Modality Performed Procedure Step instance (schema v7): its record as JSON.

    In the index, not beside one listener: several `serve` processes (hosts) may take
    the N-CREATE and the N-SET of one step."""

    __tablename__ = "mpps_step"

    uid: str = Field(primary_key=True, max_length=64)
    status: str = Field(max_length=16)
    record: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # Incremented by every write: an N-SET applies to the version it read or not at all.
    version: int = Field(default=1)
    updated_at: float = Field(default=0.0)


class WorkitemOutput(SQLModel, table=True):
    """An instance recorded as a workitem's output (schema v8): one row each, so linking
    the thousandth image of a C-STORE study is one insert, not a rewrite of the
    workitem's whole Output Information Sequence. Reads merge the rows back into it."""

    __tablename__ = "workitem_output"
    __table_args__ = (
        UniqueConstraint("workitem_uid", "sop_instance_uid", name="uq_workitem_output"),
    )

    pk: int | None = Field(default=None, primary_key=True)
    workitem_uid: str = Field(index=True, max_length=64)
    study_uid: str = Field(max_length=64)
    series_uid: str = Field(max_length=64)
    sop_class_uid: str = Field(max_length=64)
    sop_instance_uid: str = Field(max_length=64)
