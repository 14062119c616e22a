"""Scale mode: ingest N generated instances, report the rate per 10% slice, then QIDO p95."""

from __future__ import annotations

import argparse
import http.client
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import queries
from .httpio import DICOM_MULTIPART, BaseUrl, Client, multipart_body
from .procmon import RssSampler
from .runner import Options
from .scalegen import ScaleGenerator
from .stats import MB, Budget, percentile, summary_ms
from .stow import stored_count
from .targets import Target


@dataclass
class Ingest:
    total: int
    batch: int
    stored: int = 0
    payload_bytes: int = 0
    done_batches: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    marks: list[tuple[int, float]] = field(default_factory=list)  # (stored, seconds)
    latencies: list[tuple[int, float]] = field(default_factory=list)  # (slice, seconds)

    def slices(self) -> list[dict[str, Any]]:
        out, prev_n, prev_t = [], 0, 0.0
        for k, (n, t) in enumerate(self.marks, start=1):
            lat = [s for sl, s in self.latencies if sl == k - 1]
            secs = t - prev_t
            out.append(
                {
                    "slice": f"{(k - 1) * 10}-{k * 10}%",
                    "instances": n - prev_n,
                    "seconds": round(secs, 2),
                    "inst_per_s": round((n - prev_n) / secs, 1) if secs > 0 else None,
                    "request_p50_ms": percentile([x * 1000 for x in lat], 50),
                    "request_p95_ms": percentile([x * 1000 for x in lat], 95),
                }
            )
            prev_n, prev_t = n, t
        return out


def ingest(
    base: BaseUrl, gen: ScaleGenerator, total: int, batch: int, clients: int, deadline: float
) -> Ingest:
    state = Ingest(total, batch)
    n_batches = (total + batch - 1) // batch
    lock = threading.Lock()
    next_batch = [0]
    step = max(1, total // 10)
    headers = {"Content-Type": DICOM_MULTIPART, "Accept": "application/dicom+json"}
    t0 = time.perf_counter()

    def worker() -> None:
        client = Client(base)
        while time.monotonic() < deadline and len(state.errors) < 50:
            with lock:
                b = next_batch[0]
                if b >= n_batches:
                    break
                next_batch[0] += 1
            lo, hi = b * batch, min(total, (b + 1) * batch)
            parts = [gen.instance(i) for i in range(lo, hi)]
            body = multipart_body(parts)
            try:
                resp = client.request("POST", "/studies", headers, body)
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    state.errors.append(f"batch {b}: {type(exc).__name__}: {exc}")
                continue
            _, failed = stored_count(resp.body, hi - lo)
            with lock:
                state.latencies.append((len(state.marks), resp.seconds))
                if resp.status not in (200, 202) or failed:
                    state.errors.append(f"batch {b}: HTTP {resp.status}: {resp.body[:200]!r}")
                    continue
                state.stored += hi - lo
                state.payload_bytes += sum(len(p) for p in parts)
                state.done_batches.add(b)
                while len(state.marks) < 10 and state.stored >= step * (len(state.marks) + 1):
                    state.marks.append((state.stored, time.perf_counter() - t0))
        client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(state.marks) < 10 and (not state.marks or state.marks[-1][0] < state.stored):
        state.marks.append((state.stored, time.perf_counter() - t0))
    return state


def scale_one(
    target: Target, n: int, clients: int, opts: Options, deadline: float
) -> dict[str, Any]:
    gen = ScaleGenerator()
    result: dict[str, Any] = {"target": target.describe(), "instances_requested": n}
    target.start()
    try:
        assert target.pid is not None
        with RssSampler(target.pid) as sampler:
            sampler.mark("ingest")
            print(f"  [{target.name}] ingesting {n} instances, {clients} clients", file=sys.stderr)
            base = BaseUrl.parse(target.base_url)
            t0 = time.perf_counter()
            state = ingest(base, gen, n, opts.stow_batch, clients, deadline)
            secs = time.perf_counter() - t0
            result["ingest"] = {
                "stored": state.stored,
                "seconds": round(secs, 1),
                "inst_per_s": round(state.stored / secs, 1),
                "mb_per_s": round(state.payload_bytes / MB / secs, 2),
                "slices": state.slices(),
                "errors": state.errors[:5],
                "request_latency": summary_ms([s for _, s in state.latencies]),
            }
            sampler.mark("qido")
            print(f"  [{target.name}] QIDO after ingest", file=sys.stderr)
            records = [
                gen.record(i)
                for b in sorted(state.done_batches)
                for i in range(b * state.batch, min(n, (b + 1) * state.batch))
            ]
            qs = queries.build_queries(records, opts.qido_per_type) if records else []
            client = Client(base)
            left = max(30.0, min(opts.workload_seconds, deadline - time.monotonic()))
            result["qido"] = queries.run_queries(client, qs, Budget(left, len(qs)))
            client.close()
        result["rss_peak_mb"] = round(sampler.peak / MB, 1)
        result["rss_phases_mb"] = {k: round(v / MB, 1) for k, v in sampler.phase_peaks.items()}
    finally:
        target.stop()
    result["storage_mb"] = round(target.data_bytes() / MB, 1)
    return result


def render(name: str, res: dict[str, Any]) -> str:
    ing = res["ingest"]
    lines = [
        f"{name}: {ing['stored']} instances in {ing['seconds']} s "
        f"({ing['inst_per_s']} inst/s, {ing['mb_per_s']} MB/s), "
        f"peak RSS {res.get('rss_peak_mb')} MB, storage {res.get('storage_mb')} MB",
        "     slice instances  seconds   inst/s  req p50  req p95",
    ]
    for s in ing["slices"]:
        p50, p95 = s["request_p50_ms"], s["request_p95_ms"]
        lines.append(
            f"  {s['slice']:>8} {s['instances']:>9} {s['seconds']:>8} {s['inst_per_s']!s:>8}"
            f" {p50 or 0:>8.1f} {p95 or 0:>8.1f}"
        )
    q = res["qido"]
    lines.append(
        f"  QIDO after ingest: p50 {q['all']['p50_ms'] or 0:.1f} ms, "
        f"p95 {q['all']['p95_ms'] or 0:.1f} ms over {q['all']['n']} queries; "
        f"count mismatches {q['count_mismatches']}, errors {q['error_count']}"
    )
    for kind, s in q["per_type"].items():
        lines.append(f"    {kind:<30} p50 {s['p50_ms']:8.1f} ms   p95 {s['p95_ms']:8.1f} ms")
    return "\n".join(lines)


def run_scale(
    targets: list[Target], args: argparse.Namespace, opts: Options, deadline: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in targets:
        print(f"scale run on {t.name} ({args.scale} instances)", file=sys.stderr)
        try:
            out[t.name] = scale_one(t, args.scale, args.scale_clients, opts, deadline)
        except Exception as exc:
            out[t.name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  [{t.name}] aborted: {exc!r}", file=sys.stderr)
            continue
        print(render(t.name, out[t.name]))
    return out
