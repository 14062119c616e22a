"""Conditions from dicom.matching turned into SQL expressions over the index tables."""

from __future__ import annotations

import unicodedata
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, or_, select, true
from sqlalchemy.sql.schema import Column

from dicomweb_server.dicom.matching import MODALITIES_IN_STUDY, Condition, Kind
from dicomweb_server.storage.sql.models import Instance, Patient, Series, Study

PATIENT = Patient.__table__.c  # type: ignore[attr-defined]
STUDY = Study.__table__.c  # type: ignore[attr-defined]
SERIES = Series.__table__.c  # type: ignore[attr-defined]
INSTANCE = Instance.__table__.c  # type: ignore[attr-defined]

# Person names are matched on their normalized form: case- and accent-insensitive.
_NAME_COLUMNS: dict[int, Column[Any]] = {
    0x00100010: PATIENT.name_norm,
    0x00080090: STUDY.referring_norm,
}

COLUMNS: dict[int, Column[Any]] = {
    0x00100020: PATIENT.patient_id,
    0x00100021: PATIENT.issuer,
    0x00100030: PATIENT.birth_date,
    0x00100040: PATIENT.sex,
    0x0020000D: STUDY.study_uid,
    0x00080020: STUDY.study_date,
    0x00080030: STUDY.study_time,
    0x00080050: STUDY.accession_number,
    0x00200010: STUDY.study_id,
    0x00081030: STUDY.description,
    0x0020000E: SERIES.series_uid,
    0x00080060: SERIES.modality,
    0x00200011: SERIES.series_number,
    0x0008103E: SERIES.description,
    0x00180015: SERIES.body_part,
    0x00080021: SERIES.series_date,
    0x00400244: SERIES.pps_start_date,
    0x00400245: SERIES.pps_start_time,
    0x00080018: INSTANCE.sop_uid,
    0x00080016: INSTANCE.sop_class_uid,
    0x00200013: INSTANCE.instance_number,
}

SUPPORTED_TAGS = frozenset(COLUMNS) | frozenset(_NAME_COLUMNS) | {MODALITIES_IN_STUDY}


def _like_pattern(value: str) -> str:
    """DICOM wildcards (PS3.4 C.2.2.2.4) as a LIKE pattern with '\\' escaping."""
    out = []
    for ch in value:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _normalize_pattern(value: str) -> str:
    """The same folding as ingest.normalize_name, keeping the wildcard characters."""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = stripped.upper().replace("^", " ").replace("=", " ").split()
    return " " + " ".join(words) + " "


def _name_expr(column: Column[Any], cond: Condition) -> ColumnElement[bool]:
    if cond.kind is Kind.FUZZY:
        # Each query word must start some word of the name.
        return and_(*(column.like(f"% {_like_pattern(w)}%", escape="\\") for w in cond.values))
    pattern = _normalize_pattern(cond.values[0])
    if cond.kind is Kind.WILDCARD:
        return column.like(_like_pattern(pattern), escape="\\")
    exact: ColumnElement[bool] = column == pattern
    return exact


def _value_expr(column: Column[Any], cond: Condition) -> ColumnElement[bool]:
    values: list[Any] = list(cond.values)
    if column.type.python_type is int:
        values = [int(v) for v in values if v != ""] if cond.kind is not Kind.RANGE else values
    if cond.kind is Kind.SINGLE:
        single: ColumnElement[bool] = column == values[0]
        return single
    if cond.kind is Kind.LIST:
        return column.in_(values)
    if cond.kind is Kind.WILDCARD:
        return column.like(_like_pattern(cond.values[0]), escape="\\")
    if cond.kind is Kind.RANGE:
        low, high = cond.values
        parts = []
        if low:
            parts.append(column >= low)
        if high:
            parts.append(column <= high)
        return and_(*parts)
    if cond.kind is Kind.FUZZY:
        return or_(*(column.like(f"%{_like_pattern(w)}%", escape="\\") for w in cond.values))
    raise AssertionError(cond.kind)


def _datetime_expr(cond: Condition) -> ColumnElement[bool]:
    date_col, time_col = COLUMNS[cond.tag], COLUMNS[cond.partner or 0]
    d_low, t_low, d_high, t_high = cond.values
    parts = []
    if d_low:
        same_day = date_col == d_low
        if t_low:
            same_day = and_(same_day, or_(time_col >= t_low, time_col.is_(None)))
        parts.append(or_(date_col > d_low, same_day))
    if d_high:
        same_day = date_col == d_high
        if t_high:
            same_day = and_(same_day, or_(time_col <= t_high, time_col.is_(None)))
        parts.append(or_(date_col < d_high, same_day))
    return and_(*parts)


def condition_expr(cond: Condition) -> ColumnElement[bool]:
    if cond.kind is Kind.DATETIME_RANGE:
        return _datetime_expr(cond)
    if cond.tag == MODALITIES_IN_STUDY:
        inner = _value_expr(SERIES.modality, cond)
        return exists(select(SERIES.pk).where(SERIES.study_fk == STUDY.pk, inner))
    if cond.tag in _NAME_COLUMNS:
        return _name_expr(_NAME_COLUMNS[cond.tag], cond)
    column = COLUMNS.get(cond.tag)
    if column is None:
        return true()
    expr: ColumnElement[bool] = _value_expr(column, cond)
    return expr
