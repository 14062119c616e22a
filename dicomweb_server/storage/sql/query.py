"""Conditions from dicom.matching turned into SQL expressions over the index tables.

The same expressions run on SQLite and PostgreSQL with the same results:

- Single value and wildcard matching are case-sensitive except for PN (PS3.4
  C.2.2.2.1, C.2.2.2.4). SQLite's LIKE ignores ASCII case unless a connection sets
  ``case_sensitive_like``, so wildcards are compiled to GLOB there, which needs no
  pragma, and to LIKE on PostgreSQL (``_Wildcard``).
- Person names are matched on their folded form (upper case, accents removed, words
  separated by single spaces, framed by spaces): case- and accent-insensitive.
- An entity whose value of a matching key is empty (NULL or '') matches every value of
  that key: PS3.4 C.2.2.1.2 for Required Keys, and C.2.2.1.3 for the Optional Keys we
  support matching on ("processed in the same manner as a Required Key"). Unique keys
  and SOP Class UID are never empty.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from sqlalchemy import ColumnElement, Integer, and_, exists, literal, not_, or_, select, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.schema import Column
from sqlalchemy.types import Boolean

from dicomweb_server.dicom.matching import MODALITIES_IN_STUDY, Condition, Kind
from dicomweb_server.storage.sql.models import Instance, Patient, Series, Study

PATIENT = Patient.__table__.c  # type: ignore[attr-defined]
STUDY = Study.__table__.c  # type: ignore[attr-defined]
SERIES = Series.__table__.c  # type: ignore[attr-defined]
INSTANCE = Instance.__table__.c  # type: ignore[attr-defined]

# The series of a study, under another name, for ModalitiesInStudy: in a series or
# instance search the outer query already has ``series`` in its FROM list, and a
# correlated subquery on the same table would test the outer series row instead.
_STUDY_SERIES = Series.__table__.alias("study_series")  # type: ignore[attr-defined]

# Person names are matched on their normalized form: case- and accent-insensitive.
_NAME_COLUMNS: dict[int, Column[Any]] = {
    0x00100010: STUDY.patient_name_norm,
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

# UID columns: unique keys and SOP Class UID, never empty, matched without the
# empty-value rule.
_NEVER_EMPTY = frozenset({0x0020000D, 0x0020000E, 0x00080018, 0x00080016})

SUPPORTED_TAGS = frozenset(COLUMNS) | frozenset(_NAME_COLUMNS) | {MODALITIES_IN_STUDY}


class _Wildcard(FunctionElement[bool]):
    """``column`` matches a DICOM wildcard pattern, case-sensitively, on any dialect.

    Arguments: the column, the pattern as LIKE (escape '\\'), the pattern as GLOB.
    Only the one the dialect uses is rendered (and bound).
    """

    type = Boolean()
    inherit_cache = True
    name = "dicom_wildcard"


@compiles(_Wildcard)
def _compile_like(element: _Wildcard, compiler: SQLCompiler, **kw: Any) -> str:
    column, like_pattern, _glob = list(element.clauses)
    return str(compiler.process(column.like(like_pattern, escape="\\"), **kw))


@compiles(_Wildcard, "sqlite")
def _compile_glob(element: _Wildcard, compiler: SQLCompiler, **kw: Any) -> str:
    column, _like, glob_pattern = list(element.clauses)
    return f"({compiler.process(column, **kw)} GLOB {compiler.process(glob_pattern, **kw)})"


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


def _glob_pattern(value: str) -> str:
    """DICOM wildcards as an SQLite GLOB pattern: '*' and '?' mean the same; '[' is
    the only other special character and is written as a one-character class."""
    return value.replace("[", "[[]")


def wildcard(column: Any, pattern: str) -> ColumnElement[bool]:
    """Case-sensitive DICOM wildcard matching of ``column`` against ``pattern``."""
    return _Wildcard(column, literal(_like_pattern(pattern)), literal(_glob_pattern(pattern)))


def fold_name(value: str) -> str:
    """The same folding as ingest.normalize_name, keeping any wildcard characters."""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = stripped.upper().replace("^", " ").replace("=", " ").split()
    return " " + " ".join(words) + " "


def _empty(column: Any) -> ColumnElement[bool]:
    """The stored value is zero length (PS3.4 C.2.2.1.2)."""
    if isinstance(column.type, Integer):
        null: ColumnElement[bool] = column.is_(None)
        return null
    return or_(column.is_(None), column == "")


def _name_expr(column: Column[Any], cond: Condition) -> ColumnElement[bool]:
    if cond.kind is Kind.FUZZY:
        # Each query word must start some word of the name (PS3.18 8.3.4.2).
        return and_(*(wildcard(column, f"* {w}*") for w in cond.values))
    pattern = fold_name(cond.values[0])
    if cond.kind is Kind.WILDCARD:
        return wildcard(column, pattern)
    exact: ColumnElement[bool] = column == pattern
    return exact


def _value_expr(column: Any, cond: Condition) -> ColumnElement[bool]:
    values: list[Any] = list(cond.values)
    if isinstance(column.type, Integer) and cond.kind in (Kind.SINGLE, Kind.LIST):
        values = [int(v) for v in values]
    if cond.kind is Kind.SINGLE:
        single: ColumnElement[bool] = column == values[0]
        return single
    if cond.kind is Kind.LIST:
        listed: ColumnElement[bool] = column.in_(values)
        return listed
    if cond.kind is Kind.WILDCARD:
        return wildcard(column, cond.values[0])
    if cond.kind is Kind.RANGE:
        low, high = cond.values
        parts = []
        if low:
            parts.append(column >= low)
        if high:
            parts.append(column <= high)
        return and_(*parts)
    raise AssertionError(cond.kind)


def _datetime_expr(cond: Condition, match_empty: bool) -> ColumnElement[bool]:
    """A combined date-time range (PS3.4 C.2.2.2.5.4): the date and time columns
    compared as one DT value; an empty time counts as any time of its day, an empty
    date matches (C.2.2.1.2)."""
    date_col, time_col = COLUMNS[cond.tag], COLUMNS[cond.partner or 0]
    d_low, t_low, d_high, t_high = cond.values
    parts = []
    if d_low:
        same_day = date_col == d_low
        if t_low:
            same_day = and_(same_day, or_(time_col >= t_low, _empty(time_col)))
        parts.append(or_(date_col > d_low, same_day))
    if d_high:
        same_day = date_col == d_high
        if t_high:
            same_day = and_(same_day, or_(time_col <= t_high, _empty(time_col)))
        parts.append(or_(date_col < d_high, same_day))
    return or_(_empty(date_col), and_(*parts)) if match_empty else and_(*parts)


def _modalities_expr(cond: Condition, match_empty: bool) -> ColumnElement[bool]:
    """ModalitiesInStudy: some series of the study has a matching Modality (C.2.2.3),
    or no series of the study has a Modality at all (an empty value, C.2.2.1.2)."""
    modality = _STUDY_SERIES.c.modality
    of_study = _STUDY_SERIES.c.study_fk == STUDY.pk
    matching = exists(select(_STUDY_SERIES.c.pk).where(of_study, _value_expr(modality, cond)))
    if not match_empty:
        return matching
    known = exists(select(_STUDY_SERIES.c.pk).where(of_study, not_(_empty(modality))))
    return or_(matching, not_(known))


def condition_expr(cond: Condition, match_empty: bool = False) -> ColumnElement[bool]:
    """SQL for one condition. ``match_empty`` applies PS3.4 C.2.2.1.2 (an entity whose
    value is empty matches any key); off by default, because an HIS looking a study up
    by Accession Number must not be handed studies that have none."""
    if cond.kind is Kind.DATETIME_RANGE:
        return _datetime_expr(cond, match_empty)
    if cond.tag == MODALITIES_IN_STUDY:
        return _modalities_expr(cond, match_empty)
    if cond.tag in _NAME_COLUMNS:
        name_column = _NAME_COLUMNS[cond.tag]
        named = _name_expr(name_column, cond)
        return or_(named, _empty(name_column)) if match_empty else named
    column = COLUMNS.get(cond.tag)
    if column is None:
        return true()
    expr: ColumnElement[bool] = _value_expr(column, cond)
    if cond.tag in _NEVER_EMPTY or not match_empty:
        return expr
    return or_(expr, _empty(column))
