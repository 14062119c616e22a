"""Runs every workload against one target and collects metrics, checks and errors."""

from __future__ import annotations

import http.client
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import queries, retrieve
from .corpus import Corpus, Record
from .httpio import ACCEPT_SERIES, BaseUrl, Client
from .procmon import RssSampler
from .stats import MB, Budget, Metric, median
from .stow import StowResult, make_batches, run_stow
from .targets import ExternalTarget, Target


@dataclass
class Options:
    stow_batch: int = 10
    qido_per_type: int = 50
    retrieve_repeats: int = 5
    metadata_repeats: int = 10
    frame_iterations: int = 50
    workload_seconds: float = 180.0
    max_seconds: float = 3600.0
    drop_caches: bool = False


@dataclass
class TargetResult:
    name: str
    metrics: dict[str, Metric] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def check(self, what: str, ok: bool, **info: Any) -> None:
        self.checks.append({"check": what, "ok": ok, **info})
        if not ok:
            print(f"  CHECK FAILED [{self.name}] {what}: {info}", file=sys.stderr)

    def as_json(self) -> dict[str, Any]:
        return {
            "metrics": {k: m.as_json() for k, m in self.metrics.items()},
            "details": self.details,
            "checks": self.checks,
            "errors": self.errors,
        }


def read_all(corpus: Corpus, records: list[Record]) -> list[bytes]:
    return [corpus.path(r).read_bytes() for r in records]


def stow_phases(corpus: Corpus) -> list[tuple[str, list[Record], int, bool]]:
    """(name, records, clients, batched): every instance is stored exactly once."""
    small, ct, mf = corpus.group("small"), corpus.group("ct"), corpus.group("mf")
    q, h = len(small) // 4, len(ct) // 2
    return [
        ("stow_small_c1", small[:q], 1, True),
        ("stow_small_c8", small[q:], 8, True),
        ("stow_ct_c1", ct[:h], 1, True),
        ("stow_ct_c8", ct[h:], 8, True),
        ("stow_multiframe", mf, 1, False),
    ]


def stow_metrics(res: TargetResult, name: str, r: StowResult) -> None:
    """instances/s (not for the single multiframe instance) and payload MB/s."""
    if r.seconds <= 0 or not r.instances:
        return
    if name != "stow_multiframe":
        res.metrics[f"{name}_inst_s"] = Metric(r.instances / r.seconds, "inst/s", "higher")
    res.metrics[f"{name}_mb_s"] = Metric(r.payload_bytes / MB / r.seconds, "MB/s", "higher")


class Runner:
    def __init__(self, target: Target, corpus: Corpus, opts: Options, deadline: float) -> None:
        self.t = target
        self.corpus = corpus
        self.opts = opts
        self.deadline = deadline
        self.res = TargetResult(target.name)
        self.rss_phases: dict[str, int] = {}
        self.sampler: RssSampler | None = None

    # -- helpers -------------------------------------------------------------------------
    def budget(self, max_iter: int = 1_000_000) -> Budget:
        left = max(0.0, self.deadline - time.monotonic())
        return Budget(min(self.opts.workload_seconds, left), max_iter)

    def client(self) -> Client:
        return Client(BaseUrl.parse(self.t.base_url))

    def phase(self, label: str) -> None:
        print(f"  [{self.t.name}] {label}", file=sys.stderr)
        if self.sampler:
            self.sampler.mark(label)

    def _sampled(self) -> RssSampler | nullcontext[None]:
        if self.t.pid is None:
            self.sampler = None
            return nullcontext()
        self.sampler = RssSampler(self.t.pid)
        return self.sampler

    def _collect_rss(self) -> None:
        if self.sampler:
            for k, v in self.sampler.phase_peaks.items():
                self.rss_phases[k] = max(self.rss_phases.get(k, 0), v)

    # -- the run -------------------------------------------------------------------------
    def run(self) -> TargetResult:
        try:
            self.t.start()
            self.res.details["startup_seconds"] = self.t.start_seconds[:1]
            with self._sampled():
                self.load()
                self.verify_counts()
            self._collect_rss()
            self.res.details["storage_bytes"] = self.t.data_bytes()
            self.restart()
            with self._sampled():
                self.metadata()
                self.qido()
                self.wado_series()
                self.wado_frames()
                self.phase("idle")
            self._collect_rss()
        except Exception as exc:  # report, keep going with other targets
            self.res.errors.append(f"{type(exc).__name__}: {exc}")
            print(f"  [{self.t.name}] aborted: {exc!r}", file=sys.stderr)
        finally:
            self._collect_rss()
            self.t.stop()
        self.res.details["stop_seconds"] = self.t.stop_seconds
        self.finish()
        return self.res

    def load(self) -> None:
        base = BaseUrl.parse(self.t.base_url)
        missing: list[Record] = []
        for name, records, clients, batched in stow_phases(self.corpus):
            self.phase(name)
            size = self.opts.stow_batch if batched else 1
            batches = make_batches(read_all(self.corpus, records), size)
            r = run_stow(base, batches, list(range(len(batches))), clients, self.budget().seconds)
            self.res.details[name] = r.as_json()
            self.res.errors += [f"{name}: {e}" for e in r.errors[:3]]
            stow_metrics(self.res, name, r)
            for i in range(len(batches)):
                if i not in r.completed:
                    missing += records[i * size : (i + 1) * size]
        if missing:  # time cap or errors: store the rest untimed so later workloads are valid
            self.phase("fill")
            batches = make_batches(read_all(self.corpus, missing), self.opts.stow_batch)
            left = max(60.0, self.deadline - time.monotonic())
            r = run_stow(base, batches, list(range(len(batches))), 8, left)
            self.res.details["fill"] = r.as_json()

    def verify_counts(self) -> None:
        """Count what the server says it stored, via QIDO (paged study query + CT series)."""
        self.phase("verify")
        c = self.client()
        studies = len({r.study for r in self.corpus.records})
        total, seen, offset, page = 0, 0, 0, 500
        for _ in range(studies // page + 5):
            resp = c.request(
                "GET",
                f"/studies?limit={page}&offset={offset}&includefield=00201208",
                {"Accept": "application/dicom+json"},
            )
            rows = queries.result_count(resp.status, resp.body)
            if not rows:
                break
            doc = orjson.loads(resp.body)
            total += sum(int((d.get("00201208") or {}).get("Value", [0])[0]) for d in doc)
            seen += rows
            offset += rows
        self.res.check("qido study count", seen == studies, got=seen, expected=studies)
        self.res.check(
            "qido NumberOfStudyRelatedInstances sum",
            total == len(self.corpus.records),
            got=total,
            expected=len(self.corpus.records),
        )
        ct = self.corpus.group("ct")
        resp = c.request(
            "GET",
            f"/studies/{ct[0].study}/series/{ct[0].series}/instances?limit=10000",
            {"Accept": "application/dicom+json"},
        )
        n = queries.result_count(resp.status, resp.body)
        self.res.check("qido CT series instance count", n == len(ct), got=n, expected=len(ct))
        for q in queries.charset_queries(self.corpus):
            resp = c.request("GET", q.path, {"Accept": "application/dicom+json"})
            n = queries.result_count(resp.status, resp.body)
            self.res.check(
                f"qido PatientName={q.kind}",
                n == q.expected,
                got=n,
                expected=q.expected,
                status=resp.status,
            )
        c.close()

    def restart(self) -> None:
        if isinstance(self.t, ExternalTarget):
            return
        self.t.stop()
        if self.opts.drop_caches:
            os.sync()
            try:
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
                self.res.details["page_cache_dropped"] = True
            except OSError as exc:
                self.res.errors.append(f"drop_caches: {exc}")
        self.t.start()
        self.res.details["restart_seconds"] = round(self.t.start_seconds[-1], 3)

    def metadata(self) -> None:
        self.phase("metadata")
        ct = self.corpus.group("ct")
        c = self.client()
        cold = retrieve.series_metadata(c, ct[0].study, ct[0].series, len(ct))
        warm = []
        budget = self.budget(self.opts.metadata_repeats)
        while budget.next():
            warm.append(retrieve.series_metadata(c, ct[0].study, ct[0].series, len(ct)))
        c.close()
        self.res.details["metadata"] = {
            "cold": cold,
            "warm_runs": len(warm),
            "warm_bytes": warm[0]["bytes"] if warm else None,
        }
        self.res.check(
            "series metadata lists every instance",
            bool(cold.get("ok")),
            instances=cold.get("instances"),
            status=cold.get("status"),
            error=cold.get("error"),
        )
        if cold.get("status") == 200:
            self.res.metrics["metadata_cold_ms"] = Metric(
                float(cold["seconds"]) * 1000, "ms", "lower"
            )
        ok = [float(w["seconds"]) for w in warm if w.get("status") == 200]
        if ok:
            self.res.metrics["metadata_warm_ms"] = Metric((median(ok) or 0) * 1000, "ms", "lower")

    def qido(self) -> None:
        self.phase("qido")
        qs = queries.build_queries(self.corpus.records, self.opts.qido_per_type)
        c = self.client()
        out = queries.run_queries(c, qs, self.budget(len(qs)))
        c.close()
        self.res.details["qido"] = out
        self.res.check(
            "qido result counts match the corpus",
            out["count_mismatches"] == 0,
            mismatches=out["count_mismatches"],
            examples=out["mismatch_examples"][:3],
        )
        if out["error_count"]:
            self.res.errors += [f"qido: {e}" for e in out["errors"][:3]]
        per_type: dict[str, dict[str, float]] = out["per_type"]
        for kind, s in per_type.items():
            for p in ("p50", "p95"):
                self.res.metrics[f"qido_{kind}_{p}_ms"] = Metric(s[f"{p}_ms"], "ms", "lower")
        everything: dict[str, float] = out["all"]
        for p in ("p50", "p95"):
            if everything.get(f"{p}_ms") is not None:
                self.res.metrics[f"qido_all_{p}_ms"] = Metric(everything[f"{p}_ms"], "ms", "lower")

    def wado_series(self) -> None:
        self.phase("wado_series")
        ct = self.corpus.group("ct")
        c = self.client()
        path = f"/studies/{ct[0].study}/series/{ct[0].series}"
        out = retrieve.retrieve(
            c,
            path,
            ACCEPT_SERIES,
            [r.size for r in ct],
            self.budget(self.opts.retrieve_repeats),
        )
        c.close()
        self.res.details["wado_series"] = out
        if "error" in out:
            self.res.errors.append(f"wado_series: {out['error']}")
            return
        check: dict[str, Any] = out["check"]
        self.res.check(
            "series retrieve returns every instance as Part 10",
            bool(check.get("ok")),
            **{
                k: check.get(k)
                for k in (
                    "parts",
                    "part10_parts",
                    "payload_bytes",
                    "expected_payload_bytes",
                    "identical_sizes",
                )
            },
        )
        if out["best_mb_per_s"] is not None:
            self.res.metrics["wado_series_mb_s"] = Metric(
                out["best_mb_per_s"], "MB/s", "higher", {"median": out["median_mb_per_s"]}
            )
            ttfb: dict[str, float] = out["ttfb"]
            self.res.metrics["wado_series_ttfb_ms"] = Metric(ttfb["p50_ms"], "ms", "lower")

    def wado_frames(self) -> None:
        self.phase("wado_frames")
        mf = self.corpus.group("mf")[0]
        c = self.client()
        path = f"/studies/{mf.study}/series/{mf.series}/instances/{mf.sop}"
        try:
            out = retrieve.frames(
                c,
                path,
                mf.frames,
                mf.rows * mf.cols * mf.bits // 8,
                self.budget(self.opts.frame_iterations),
            )
        except (OSError, http.client.HTTPException, ValueError) as exc:
            out = {"error_count": 1, "errors": [f"{type(exc).__name__}: {exc}"]}
        c.close()
        self.res.details["wado_frames"] = out
        self.res.check(
            "frame retrieve returns one frame of the right size",
            out.get("error_count") == 0,
            errors=out.get("errors"),
        )
        if out.get("p50_ms") is not None:
            self.res.metrics["frame_p50_ms"] = Metric(out["p50_ms"], "ms", "lower")
            self.res.metrics["frame_p95_ms"] = Metric(out["p95_ms"], "ms", "lower")

    def finish(self) -> None:
        if self.rss_phases:
            peak = max(self.rss_phases.values())
            self.res.metrics["rss_peak_mb"] = Metric(
                peak / MB,
                "MB",
                "lower",
                {"phases_mb": {k: round(v / MB, 1) for k, v in self.rss_phases.items()}},
            )
        if self.res.details.get("storage_bytes"):
            self.res.metrics["storage_mb"] = Metric(
                self.res.details["storage_bytes"] / MB, "MB", "lower"
            )
        if self.res.details.get("restart_seconds") is not None:
            self.res.metrics["restart_ready_s"] = Metric(
                self.res.details["restart_seconds"], "s", "lower"
            )
