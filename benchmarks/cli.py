"""Command line: `python -m benchmarks run [options]` and `python -m benchmarks corpus`."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import pixels, report
from .baseline import run_static
from .corpus import CACHE_DIR, FULL, QUICK, Corpus, load_or_generate
from .pgtemp import TempPostgres
from .procmon import machine_facts
from .runner import Options, Runner, TargetResult
from .scale import run_scale
from .targets import ExternalTarget, OrthancTarget, OursTarget, StaticTarget, Target


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("corpus", help="generate (or show) the cached corpus")
    c.add_argument("--quick", action="store_true")
    r = sub.add_parser("run", help="run the benchmark")
    r.add_argument("--quick", action="store_true", help="small corpus and fewer iterations")
    r.add_argument("--targets", default="ours", help="comma list of: ours, orthanc")
    r.add_argument(
        "--compare",
        action="append",
        default=[],
        choices=["orthanc"],
        help="also run the same workloads against this server and compare",
    )
    r.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="an already running DICOMweb server to include (not restarted)",
    )
    r.add_argument("--no-static", action="store_true", help="skip the static-server reference")
    r.add_argument("--workers", type=int, default=2, help="--workers for our server")
    r.add_argument("--database-url", help="passed to our server (e.g. postgresql+psycopg://...)")
    r.add_argument(
        "--postgres",
        action="store_true",
        help="start a throw-away PostgreSQL on loopback and pass its URL to our server",
    )
    r.add_argument("--ours-root", default="/dicom-web", help="DICOMweb root of our server")
    r.add_argument("--stow-batch", type=int, default=10, help="instances per STOW request")
    r.add_argument("--qido-iterations", type=int, help="queries per QIDO query type")
    r.add_argument("--retrieve-repeats", type=int, help="timed whole-series retrieves")
    r.add_argument("--metadata-repeats", type=int, help="warm series metadata requests")
    r.add_argument("--frame-iterations", type=int, help="single-frame retrieves")
    r.add_argument("--workload-seconds", type=float, help="time cap of each workload")
    r.add_argument("--max-minutes", type=float, default=60.0, help="time cap of the whole run")
    r.add_argument(
        "--drop-caches",
        action="store_true",
        help="drop the OS page cache before the cold metadata request (root)",
    )
    r.add_argument("--keep-data", action="store_true", help="keep the servers' data dirs")
    r.add_argument(
        "--scale",
        type=int,
        nargs="?",
        const=100_000,
        metavar="N",
        help="scale mode: load N generated instances (default 100000)",
    )
    r.add_argument("--scale-clients", type=int, default=8)
    # --- pixel workloads (issue #3) ---
    x = sub.add_parser("pixels", help="frames/s and rendered images/s, 1 and 8 clients")
    x.add_argument("--quick", action="store_true", help="small corpus")
    x.add_argument("--compare", action="append", default=[], choices=["orthanc"])
    x.add_argument("--seconds", type=float, default=15.0, help="duration of each workload")
    x.add_argument("--workers", type=int, default=2, help="--workers for our server")
    x.set_defaults(targets="ours", url=[], database_url=None, ours_root="/dicom-web")
    d = sub.add_parser("dimse", help="C-STORE instances/s of the small corpus with storescu")
    d.add_argument("--quick", action="store_true", help="the quick corpus")
    d.add_argument("--compare", action="append", default=[], choices=["orthanc"])
    d.add_argument("--clients", default="1,4", help="comma list of concurrent associations")
    d.add_argument("--workers", type=int, default=2, help="--workers for our server")
    d.add_argument("--database-url", help="passed to our server")
    return p


def options(args: argparse.Namespace) -> Options:
    quick = args.quick
    return Options(
        stow_batch=args.stow_batch,
        qido_per_type=args.qido_iterations or (20 if quick else 50),
        retrieve_repeats=args.retrieve_repeats or (3 if quick else 5),
        metadata_repeats=args.metadata_repeats or (5 if quick else 10),
        frame_iterations=args.frame_iterations or (20 if quick else 50),
        workload_seconds=args.workload_seconds or (60.0 if quick else 300.0),
        max_seconds=args.max_minutes * 60.0,
        drop_caches=args.drop_caches,
    )


def make_targets(args: argparse.Namespace, work: Path) -> list[Target]:
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    names += [c for c in args.compare if c not in names]
    out: list[Target] = []
    for name in names:
        if name == "ours":
            out.append(OursTarget(work / "ours", args.workers, args.database_url, args.ours_root))
        elif name == "orthanc":
            out.append(OrthancTarget(work / "orthanc"))
        else:
            raise SystemExit(f"unknown target {name!r}")
    for spec in args.url:
        name, _, url = spec.partition("=")
        out.append(ExternalTarget(name, url, work / name))
    return out


def run(args: argparse.Namespace) -> int:
    started = time.time()
    deadline = time.monotonic() + args.max_minutes * 60.0
    opts = options(args)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE_DIR))
    if os.getloadavg()[0] > 1.0:
        print(
            f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores - "
            "other processes will distort the numbers",
            file=sys.stderr,
        )
    payload: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_facts(), "loadavg_at_start": os.getloadavg()},
        "argv": sys.argv[1:],
        "options": vars(opts),
    }
    pg = None
    try:
        if args.postgres:
            pg = TempPostgres()
            pg.start()
            args.database_url = pg.url
        targets = make_targets(args, work)
        payload["target_info"] = {t.name: t.describe() for t in targets}
        if args.scale:
            payload["scale"] = run_scale(targets, args, opts, deadline)
            return 0 if all("error" not in v for v in payload["scale"].values()) else 1
        corpus = load_or_generate(QUICK if args.quick else FULL)
        payload["corpus"] = corpus_info(corpus)
        return run_workloads(args, opts, corpus, targets, work, deadline, payload)
    finally:
        payload["duration_seconds"] = round(time.time() - started, 1)
        payload["machine"]["loadavg_at_end"] = os.getloadavg()
        path = report.write_json(CACHE_DIR, payload)
        print(f"\nresults: {path} ({payload['duration_seconds']:.0f}s)")
        if pg:
            pg.cleanup()
        if not args.keep_data:
            shutil.rmtree(work, ignore_errors=True)


def run_workloads(
    args: argparse.Namespace,
    opts: Options,
    corpus: Corpus,
    targets: list[Target],
    work: Path,
    deadline: float,
    payload: dict[str, Any],
) -> int:
    static = None
    if not args.no_static:
        print("static reference server ...", file=sys.stderr)
        static = run_static(StaticTarget(work / "static", corpus.root), corpus, opts)
        payload["static"] = static.as_json()
    results: list[TargetResult] = []
    for t in targets:
        print(f"target {t.name}: {t.base_url}", file=sys.stderr)
        results.append(Runner(t, corpus, opts, deadline).run())
        payload["targets"] = {r.name: r.as_json() for r in results}
    rows = report.comparison_rows(results, static)
    payload["comparison"] = rows
    print()
    print(report.render_table(rows, [r.name for r in results], static.name if static else None))
    print()
    print(report.render_checks(results))
    return 0 if all(c["ok"] for r in results for c in r.checks) else 1


def corpus_info(corpus: Corpus) -> dict[str, Any]:
    return {
        "mode": corpus.spec.mode,
        "dir": str(corpus.root),
        "instances": len(corpus.records),
        "studies": len({r.study for r in corpus.records}),
        "series": len({r.series for r in corpus.records}),
        "bytes": corpus.total_bytes,
        "groups": {g: len(corpus.group(g)) for g in ("ct", "small", "mf")},
        "generation_seconds": round(corpus.generation_seconds, 1),
    }


def run_pixels_command(args: argparse.Namespace) -> int:
    corpus = load_or_generate(QUICK if args.quick else FULL)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pixels-", dir=CACHE_DIR))
    try:
        targets = make_targets(args, work)
        payload: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {**machine_facts(), "loadavg_at_start": os.getloadavg()},
            "corpus": corpus_info(corpus),
        }
        payload["pixels"] = pixels.run_pixels(targets, corpus, args.seconds, work=work)
        payload["machine"]["loadavg_at_end"] = os.getloadavg()
        path = report.write_json(CACHE_DIR, payload)
        names = [t.name for t in targets] + ["static"]
        print(pixels.render_table(payload["pixels"], names))
        print(f"raw frames, page cache: {payload['pixels']['raw_disk_frames']}")
        print(f"raw frames, device (O_DIRECT): {payload['pixels']['device_frames']}")
        print(f"results: {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop servers


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = build_parser().parse_args(argv)
    if args.command == "pixels":
        return run_pixels_command(args)
    if args.command == "corpus":
        c = load_or_generate(QUICK if args.quick else FULL)
        print(corpus_info(c))
        return 0
    if args.command == "dimse":
        from .dimse import run_dimse

        return run_dimse(args)
    return run(args)
