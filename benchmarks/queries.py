"""QIDO-RS query mix modelled on what a viewer (OHIF) sends, with expected result counts."""

from __future__ import annotations

import calendar
import contextlib
import http.client
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from .corpus import Corpus, Record
from .httpio import Client
from .stats import Budget, percentile, summary_ms

LIMIT = 101
OHIF_STUDY = f"limit={LIMIT}&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
QUERY_TYPES = [
    "study_list_all",
    "study_patient_name_wildcard",
    "study_patient_id",
    "study_date_range",
    "study_modalities",
    "study_accession",
    "series_in_study",
    "instances_in_series",
]


@dataclass(frozen=True)
class Query:
    kind: str
    path: str
    expected: int | None  # expected number of results, None when not checked


@dataclass
class _StudyRow:
    uid: str
    patient_id: str
    patient_name: str
    date: str
    accession: str
    modalities: set[str]
    series: dict[str, int]


def study_rows(records: list[Record]) -> list[_StudyRow]:
    rows: dict[str, _StudyRow] = {}
    series: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in records:
        if r.study not in rows:
            rows[r.study] = _StudyRow(
                r.study, r.patient_id, r.patient_name, r.study_date, r.accession, set(), {}
            )
        rows[r.study].modalities.add(r.modality)
        series[r.study][r.series] += 1
    for uid, row in rows.items():
        row.series = dict(series[uid])
    return list(rows.values())


def _capped(n: int) -> int:
    return min(n, LIMIT)


def build_queries(records: list[Record], per_type: int, seed: int = 7) -> list[Query]:
    """`per_type` queries of each type with deterministic parameters, interleaved."""
    rng = random.Random(seed)
    rows = study_rows(records)
    ascii_rows = [r for r in rows if r.patient_name.isascii()]
    queries: list[Query] = []
    for _ in range(per_type):
        row = rng.choice(ascii_rows)
        prefix = row.patient_name[:3]
        n_prefix = sum(1 for r in rows if r.patient_name.lower().startswith(prefix.lower()))
        year, month = rng.randint(2015, 2024), rng.randint(1, 12)
        last_day = calendar.monthrange(year, month)[1]
        lo, hi = f"{year}{month:02d}01", f"{year}{month:02d}{last_day:02d}"
        n_dates = sum(1 for r in rows if lo <= r.date <= hi)
        modality = rng.choice(["MR", "CR", "DX", "US", "CT", "PT", "NM", "MG"])
        n_mod = sum(1 for r in rows if modality in r.modalities)
        series_uid = rng.choice(list(row.series))
        queries += [
            Query("study_list_all", f"/studies?{OHIF_STUDY}", _capped(len(rows))),
            Query(
                "study_patient_name_wildcard",
                f"/studies?PatientName={quote(prefix)}*&{OHIF_STUDY}",
                _capped(n_prefix),
            ),
            Query(
                "study_patient_id",
                f"/studies?PatientID={quote(row.patient_id)}&{OHIF_STUDY}",
                _capped(sum(1 for r in rows if r.patient_id == row.patient_id)),
            ),
            Query(
                "study_date_range", f"/studies?StudyDate={lo}-{hi}&{OHIF_STUDY}", _capped(n_dates)
            ),
            Query(
                "study_modalities",
                f"/studies?ModalitiesInStudy={modality}&{OHIF_STUDY}",
                _capped(n_mod),
            ),
            Query(
                "study_accession",
                f"/studies?AccessionNumber={quote(row.accession)}&{OHIF_STUDY}",
                1,
            ),
            Query(
                "series_in_study",
                f"/studies/{row.uid}/series?includefield=0008103E%2C00200011",
                len(row.series),
            ),
            Query(
                "instances_in_series",
                f"/studies/{row.uid}/series/{series_uid}/instances?includefield=00200013",
                row.series[series_uid],
            ),
        ]
    rng.shuffle(queries)
    return queries


def charset_queries(corpus: Corpus) -> list[Query]:
    """Exact-match queries for the Latin-1 and UTF-8 patient names (checks only)."""
    rows = study_rows(corpus.records)
    out: list[Query] = []
    for row in rows:
        if not row.patient_name.isascii() and all(q.kind != row.patient_name for q in out):
            n = sum(1 for r in rows if r.patient_name == row.patient_name)
            path = f"/studies?PatientName={quote(row.patient_name)}&{OHIF_STUDY}"
            out.append(Query(row.patient_name, path, n))
    return out


def result_count(status: int, body: bytes) -> int | None:
    if status == 204:
        return 0
    if status != 200:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return len(doc) if isinstance(doc, list) else None


def run_queries(client: Client, queries: list[Query], budget: Budget) -> dict[str, Any]:
    """Sequential queries on one keep-alive connection; per-type and overall latency."""
    headers = {"Accept": "application/dicom+json"}
    for q in queries[:5]:  # warm-up, not measured
        with contextlib.suppress(OSError, http.client.HTTPException):
            client.request("GET", q.path, headers)
    by_type: dict[str, list[float]] = defaultdict(list)
    mismatches: list[str] = []
    errors: list[str] = []
    for q in queries:
        if not budget.next():
            break
        try:
            resp = client.request("GET", q.path, headers)
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{q.path}: {type(exc).__name__}: {exc}")
            continue
        count = result_count(resp.status, resp.body)
        if count is None:
            errors.append(f"{q.path}: HTTP {resp.status}: {resp.body[:200]!r}")
            continue
        by_type[q.kind].append(resp.seconds)
        if q.expected is not None and count != q.expected:
            mismatches.append(f"{q.kind}: {q.path} -> {count} results, expected {q.expected}")
    everything = [s for v in by_type.values() for s in v]
    return {
        "per_type": {k: summary_ms(v) for k, v in sorted(by_type.items())},
        "all": summary_ms(everything),
        "p95_ms": percentile([s * 1000 for s in everything], 95),
        "queries_run": budget.done,
        "timed_out": budget.expired,
        "count_mismatches": len(mismatches),
        "mismatch_examples": mismatches[:8],
        "error_count": len(errors),
        "errors": errors[:5],
    }
