"""Static-server reference: client capacity (STOW to a null endpoint) and raw retrieve speed.

The same pre-built STOW bodies are POSTed to nginx's /null (body read and discarded), so
the numbers are an upper bound on what this client can push; series retrieve is compared
with nginx serving the same bytes as one multipart file and as individual files.
"""

from __future__ import annotations

import sys

from . import retrieve
from .corpus import Corpus
from .httpio import BaseUrl, Client, multipart_body
from .runner import Options, TargetResult, read_all, stow_metrics, stow_phases
from .stats import Budget, Metric
from .stow import make_batches, run_stow
from .targets import StaticTarget

CONCAT_NAME = "ct-series.multipart"


def ensure_concat(corpus: Corpus) -> str:
    """The CT series as one multipart/related body, as a WADO-RS response would carry it."""
    path = corpus.root / CONCAT_NAME
    ct = corpus.group("ct")
    expected = sum(r.size for r in ct)
    if not path.exists() or path.stat().st_size < expected:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(multipart_body(read_all(corpus, ct)))
        tmp.replace(path)
    return "/" + CONCAT_NAME


def run_static(target: StaticTarget, corpus: Corpus, opts: Options) -> TargetResult:
    res = TargetResult(target.name)
    res.details["server"] = target.kind
    concat = ensure_concat(corpus)
    target.start()
    try:
        base = BaseUrl.parse(target.base_url)
        cap = min(20.0, opts.workload_seconds)
        for name, records, clients, batched in stow_phases(corpus):
            print(f"  [static] {name} -> /null", file=sys.stderr)
            size = opts.stow_batch if batched else 1
            batches = make_batches(read_all(corpus, records), size)
            r = run_stow(base, batches, list(range(len(batches))), clients, cap, "/null", False)
            res.details[name] = r.as_json()
            stow_metrics(res, name, r)
        print("  [static] series retrieve", file=sys.stderr)
        client = Client(base)
        ct = corpus.group("ct")
        budget = Budget(opts.workload_seconds, opts.retrieve_repeats)
        out = retrieve.retrieve(client, concat, None, [r.size for r in ct], budget)
        res.details["wado_series"] = out
        if out.get("best_mb_per_s"):
            res.metrics["wado_series_mb_s"] = Metric(out["best_mb_per_s"], "MB/s", "higher")
            res.metrics["wado_series_ttfb_ms"] = Metric(out["ttfb"]["p50_ms"], "ms", "lower")
        files = retrieve.retrieve_files(
            client, ["/" + r.path for r in ct], opts.retrieve_repeats, opts.workload_seconds
        )
        res.details["wado_series_files"] = files
        if files.get("best_mb_per_s"):
            res.metrics["wado_series_files_mb_s"] = Metric(files["best_mb_per_s"], "MB/s", "higher")
        client.close()
    finally:
        target.stop()
    return res
