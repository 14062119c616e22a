"""Human-readable comparison table and the JSON results file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from .runner import TargetResult
from .stats import Metric

LABELS: dict[str, str] = {
    "stow_small_c1": "STOW small instances, 1 client",
    "stow_small_c8": "STOW small instances, 8 clients",
    "stow_ct_c1": "STOW CT 512x512 slices, 1 client",
    "stow_ct_c8": "STOW CT 512x512 slices, 8 clients",
    "stow_multiframe": "STOW multiframe instance",
    "qido_all": "QIDO all queries",
    "wado_series_mb_s": "WADO-RS series retrieve (best)",
    "wado_series_ttfb_ms": "WADO-RS series time to first byte",
    "wado_series_files_mb_s": "Series as single-file GETs (static only)",
    "metadata_cold_ms": "Series metadata, first after restart",
    "metadata_warm_ms": "Series metadata, warm median",
    "frame_p50_ms": "Single frame retrieve p50",
    "frame_p95_ms": "Single frame retrieve p95",
    "rss_peak_mb": "Peak RSS of server process tree",
    "storage_mb": "On-disk storage after load",
    "restart_ready_s": "Restart until ready",
}


_GROUPS = ["stow_", "wado_series", "metadata_", "frame_", "qido_", ""]
_SUFFIXES = {"_inst_s": "", "_mb_s": "", "_p50_ms": " p50", "_p95_ms": " p95"}


def _rank(name: str) -> int:
    return next(i for i, g in enumerate(_GROUPS) if name.startswith(g))


def metric_order(results: list[TargetResult]) -> list[str]:
    seen: list[str] = []
    for r in results:
        for name in r.metrics:
            if name not in seen:
                seen.append(name)
    return sorted(seen, key=_rank)  # stable: keeps insertion order inside a group


def _label(name: str) -> str:
    if name in LABELS:
        return LABELS[name]
    for suffix, tail in _SUFFIXES.items():
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if base in LABELS:
                return LABELS[base] + tail
            if base.startswith("qido_"):
                return "QIDO " + base[5:].replace("_", " ") + tail
    return name.replace("_", " ")


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def comparison_rows(
    results: list[TargetResult], static: TargetResult | None
) -> list[dict[str, Any]]:
    """One row per metric: values per target, ratio first/second and which side wins."""
    rows: list[dict[str, Any]] = []
    everything = results + ([static] if static else [])
    for name in metric_order(everything):
        first = next((r.metrics[name] for r in everything if name in r.metrics), None)
        if first is None:
            continue
        row: dict[str, Any] = {
            "metric": name,
            "label": _label(name),
            "unit": first.unit,
            "better": first.better,
        }
        for r in everything:
            m: Metric | None = r.metrics.get(name)
            row[r.name] = m.value if m else None
        if len(results) >= 2:
            a, b = row[results[0].name], row[results[1].name]
            if a is not None and b is not None and b != 0:
                ratio = a / b
                row["ratio"] = ratio
                wins = ratio > 1 if first.better == "higher" else ratio < 1
                row["winner"] = results[0].name if wins else results[1].name
                if abs(ratio - 1) < 0.03:
                    row["winner"] = "tie"
        rows.append(row)
    return rows


def render_table(rows: list[dict[str, Any]], names: list[str], static: str | None) -> str:
    cols = [*names, "ratio", "winner"] if len(names) >= 2 else list(names)
    if static:
        cols.append(static)
    header = ["metric", "unit", "better", *(c if c != static else f"{c} (ref)" for c in cols)]
    body: list[list[str]] = []
    for row in rows:
        cells = [row["label"], row["unit"], row["better"]]
        for c in cols:
            v = row.get(c)
            if c == "ratio":
                cells.append(f"{v:.2f}x" if v is not None else "-")
            elif c == "winner":
                cells.append(str(v or "-"))
            else:
                cells.append(_fmt(v))
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for cells in body:
        out = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1]), cells[2].ljust(widths[2])]
        out += [c.rjust(w) for c, w in zip(cells[3:], widths[3:], strict=True)]
        lines.append("  ".join(out))
    return "\n".join(lines)


def render_checks(results: list[TargetResult]) -> str:
    lines = []
    for r in results:
        bad = [c for c in r.checks if not c["ok"]]
        lines.append(f"{r.name}: {len(r.checks) - len(bad)}/{len(r.checks)} checks passed")
        for c in bad:
            info = {k: v for k, v in c.items() if k not in ("check", "ok")}
            lines.append(f"  FAILED {c['check']}: {info}")
        for e in r.errors[:10]:
            lines.append(f"  error: {e[:300]}")
    return "\n".join(lines)


def write_json(cache: Path, payload: dict[str, Any]) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    opts = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
    path.write_bytes(orjson.dumps(payload, option=opts, default=_default))
    return path


def _default(obj: object) -> object:
    if isinstance(obj, set):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)
