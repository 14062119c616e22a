"""Search over workitems (PS3.18 11.9, PS3.4 CC.2.8): QIDO parameters evaluated on the
stored DICOM JSON.

Worklists are small, so matching runs in Python over each candidate workitem after
the index has narrowed them by its columns (state, patient, accession, start range);
the matching rules are those of QIDO-RS (PS3.18 8.3.4, PS3.4 C.2.2.2), shared with
``dicom/matching.py``'s parser for single value, list of UIDs, wildcard, DA/TM range
and fuzzy person names, plus:

- DT range matching (C.2.2.2.5.1) on e.g. ScheduledProcedureStepStartDateTime: bounds
  of reduced precision cover their whole period (``20260101-20260101`` is that day);
  UTC offsets are ignored (values are compared as written).
- Sequence matching (C.2.2.2.6): ``ScheduledStationNameCodeSequence.CodeValue=CT1``
  (or ``00404025.00080100=CT1``); the keys under one sequence must all match within
  one item. Any depth of nesting.
- Multi-valued attributes match when any value does (C.2.2.3).
- An empty or absent attribute matches only universal matching.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dicomweb_server.dicom.attributes import keyword_of, parse_attribute_path, tag_hex, vr_of
from dicomweb_server.dicom.ingest import normalize_name, normalize_time
from dicomweb_server.dicom.matching import (
    TRANSACTION_PARAMS,
    Condition,
    Kind,
    parse_bool,
    parse_condition,
    parse_includefield,
    parse_limit,
    parse_offset,
)
from dicomweb_server.dicom.workitem import TRANSACTION_UID, normalize_dt, values
from dicomweb_server.errors import InvalidRequest

_DT_RE = re.compile(r"^[0-9]{4,14}(\.[0-9]{1,6})?([+-][0-9]{4})?$")


@dataclass
class WorkitemQuery:
    """Parsed search parameters: a tree of conditions keyed by attribute paths."""

    conditions: list[tuple[tuple[str, ...], Condition]] = field(default_factory=list)
    includefields: set[str] = field(default_factory=set)  # top-level keys to return
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    warnings: list[str] = field(default_factory=list)

    def single(self, path: tuple[str, ...]) -> str | None:
        """The value of a single-value condition on ``path`` (for index prefilters)."""
        for cond_path, cond in self.conditions:
            if cond_path == path and cond.kind is Kind.SINGLE:
                return cond.values[0]
        return None

    def dt_range(self, key: str) -> tuple[str, str] | None:
        for cond_path, cond in self.conditions:
            if cond_path == (key,) and cond.kind is Kind.RANGE and vr_of(cond.tag) == "DT":
                return cond.values[0], cond.values[1]
        return None


def _dt_condition(tag: int, raw: str) -> Condition:
    """DT single value or range (PS3.4 C.2.2.2.1, C.2.2.2.5.1); a value of reduced
    precision stands for its whole period, so a single value is a range too."""
    raw = raw.strip()
    if "*" in raw or "?" in raw:
        return Condition(tag, Kind.WILDCARD, (raw,))
    if _DT_RE.match(raw):
        return Condition(tag, Kind.RANGE, (normalize_dt(raw) or "", normalize_dt(raw, "9") or ""))
    for i, ch in enumerate(raw):
        if ch != "-":
            continue
        low, high = raw[:i].strip(), raw[i + 1 :].strip()
        if (low or high) and all(not b or _DT_RE.match(b) for b in (low, high)):
            low_n, high_n = normalize_dt(low) or "", normalize_dt(high, "9") or ""
            if low_n and high_n and low_n > high_n:
                raise InvalidRequest(
                    f"{keyword_of(tag)}: range start {low!r} is after its end {high!r}"
                )
            return Condition(tag, Kind.RANGE, (low_n, high_n))
    raise InvalidRequest(f"{keyword_of(tag)}: {raw!r} is not a date-time (DT) or a DT range")


def parse_search(
    params: Mapping[str, Sequence[str]], *, max_limit: int | None = None
) -> WorkitemQuery:
    """Parse Search Workitems query parameters (PS3.18 11.9.1, 8.3.4).

    Raises InvalidRequest for unknown attributes, malformed values and bad paging.
    """
    query = WorkitemQuery()
    flat = [(name, raw) for name, raws in params.items() for raw in raws]
    for name, raw in flat:
        if "\x00" in name or "\x00" in raw:
            raise InvalidRequest("query parameters must not contain NUL characters")
        if name.lower() == "fuzzymatching":
            query.fuzzy = parse_bool("fuzzymatching", raw)
    seen: set[tuple[str, ...]] = set()
    for name, raw in flat:
        lowered = name.lower()
        if lowered == "limit":
            query.limit = parse_limit(raw, max_limit, query.warnings)
            continue
        if lowered == "offset":
            query.offset = parse_offset(raw)
            continue
        if lowered == "fuzzymatching" or lowered in TRANSACTION_PARAMS:
            continue
        if lowered == "includefield":
            everything, fields = parse_includefield(raw)
            query.include_all |= everything
            query.includefields.update(tag_hex(t) for t in fields)
            continue
        tags = parse_attribute_path(name)
        path = tuple(tag_hex(t) for t in tags)
        if TRANSACTION_UID in path:
            # Table CC.2.5-3: the Transaction UID "cannot be queried".
            raise InvalidRequest("TransactionUID (00081195) cannot be queried")
        for parent in tags[:-1]:
            if vr_of(parent) != "SQ":
                raise InvalidRequest(f"{name}: {keyword_of(parent)} is not a sequence")
        query.includefields.add(path[0])
        if path in seen:
            raise InvalidRequest(f"{name} is given more than once")
        seen.add(path)
        tag = tags[-1]
        if vr_of(tag) == "SQ":
            if raw not in ("", "*"):
                raise InvalidRequest(f"{name} is a sequence: match on its items' attributes")
            continue
        if vr_of(tag) == "DT":
            condition = _dt_condition(tag, raw) if raw not in ("", "*") else None
        else:
            condition = parse_condition(tag, raw, query.fuzzy)
        if condition is not None:
            query.conditions.append((path, condition))
    return query


# -- evaluation -------------------------------------------------------------------------


def _wildcard_re(pattern: str, fold: bool) -> re.Pattern[str]:
    body = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile(f"^{body}$", re.DOTALL | (re.IGNORECASE if fold else 0))


def _fold(name: str) -> str:
    """Case- and accent-insensitive form of a name, components kept (PS3.4 C.2.2.2.1.1)."""
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def _strings(element: dict[str, Any] | None) -> list[str]:
    if not isinstance(element, dict):
        return []
    out: list[str] = []
    for value in element.get("Value") or []:
        if isinstance(value, dict):
            # A person name matches by any of its component groups, or as a whole.
            groups = [value.get(g) or "" for g in ("Alphabetic", "Ideographic", "Phonetic")]
            out += [g for g in groups if g]
            whole = "=".join(groups).rstrip("=")
            if whole and whole not in out:
                out.append(whole)
        elif value is not None and str(value) != "":
            out.append(str(value))
    return out


def _value_matches(cond: Condition, value: str) -> bool:
    vr = vr_of(cond.tag)
    if vr == "PN":
        stored = normalize_name(value)
        if cond.kind is Kind.WILDCARD:
            return bool(_wildcard_re(_fold(cond.values[0]), False).match(_fold(value)))
        if cond.kind is Kind.FUZZY:
            return all(f" {word}" in stored for word in cond.values)
        return stored == normalize_name(cond.values[0])
    if cond.kind is Kind.WILDCARD:
        return bool(_wildcard_re(cond.values[0], False).match(value))
    if cond.kind is Kind.RANGE:
        low, high = cond.values
        if vr == "DT":
            stored_low, stored_high = normalize_dt(value), normalize_dt(value, pad="9")
            if stored_low is None or stored_high is None:
                return False
            return (not low or stored_high >= low) and (not high or stored_low <= high)
        if vr == "TM":
            stored_time = normalize_time(value) or ""
            return (not low or stored_time >= low) and (not high or stored_time <= high)
        return (not low or value >= low) and (not high or value <= high)
    if vr == "TM":
        return normalize_time(value) == cond.values[0]
    return value in cond.values


def _matches_here(dataset: dict[str, Any], conds: list[tuple[tuple[str, ...], Condition]]) -> bool:
    nested: dict[str, list[tuple[tuple[str, ...], Condition]]] = {}
    for path, cond in conds:
        if len(path) > 1:
            nested.setdefault(path[0], []).append((path[1:], cond))
            continue
        found = _strings(dataset.get(path[0]))
        if not any(_value_matches(cond, v) for v in found):
            return False
    for key, sub in nested.items():
        item_list = [i for i in values(dataset, key) if isinstance(i, dict)]
        if not any(_matches_here(item, sub) for item in item_list):
            return False
    return True


def matches(dataset: dict[str, Any], query: WorkitemQuery) -> bool:
    """Whether the workitem matches every key of the query (PS3.4 C.2.2)."""
    return _matches_here(dataset, query.conditions)


# What every search result carries besides the matching keys and includefields
# (the Return Key attributes a worklist client needs to act on a workitem).
DEFAULT_RESULT_KEYS = frozenset(
    {
        "00080005",  # SpecificCharacterSet
        "00080016",  # SOPClassUID
        "00080018",  # SOPInstanceUID
        "00100010",  # PatientName
        "00100020",  # PatientID
        "00100030",  # PatientBirthDate
        "00100040",  # PatientSex
        "00404005",  # ScheduledProcedureStepStartDateTime
        "00404010",  # ScheduledProcedureStepModificationDateTime
        "00404025",  # ScheduledStationNameCodeSequence
        "00404026",  # ScheduledStationClassCodeSequence
        "00404041",  # InputReadinessState
        "0040A370",  # ReferencedRequestSequence
        "00741000",  # ProcedureStepState
        "00741200",  # ScheduledProcedureStepPriority
        "00741202",  # WorklistLabel
        "00741204",  # ProcedureStepLabel
    }
)


def result(dataset: dict[str, Any], query: WorkitemQuery) -> dict[str, Any]:
    """A search result: the default keys, the matching keys and the includefields."""
    if query.include_all:
        return dict(dataset)
    wanted = DEFAULT_RESULT_KEYS | query.includefields
    return {k: v for k, v in dataset.items() if k in wanted}
