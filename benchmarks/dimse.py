"""C-STORE throughput: DCMTK's storescu sends the small-instance corpus over DIMSE.

`python -m benchmarks dimse [--quick] [--compare orthanc] [--clients 1,4]`

For each target (ours, and Orthanc with its DICOM port enabled) and each client count,
a fresh server receives every small instance from `clients` concurrent storescu
processes (one association each, the folders split between them). The figure is
instances per second of wall time, from the first association to the last response;
the server's instance count is checked afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from . import report
from .corpus import CACHE_DIR, FULL, QUICK, load_or_generate
from .procmon import machine_facts
from .targets import OrthancTarget, OursTarget, free_port

AET = "BENCH"


class OursDimse(OursTarget):
    def __init__(self, workdir: Path, workers: int, database_url: str | None) -> None:
        self.dimse_port = free_port()
        super().__init__(
            workdir,
            workers,
            database_url,
            extra_args=["--dimse-port", str(self.dimse_port), "--dimse-aet", AET],
        )

    def count(self) -> int:
        return int(
            httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=60).json()["instances"]
        )


class OrthancDimse(OrthancTarget):
    def __init__(self, workdir: Path) -> None:
        self.dimse_port = free_port()
        super().__init__(workdir)

    def config(self) -> dict[str, object]:
        config = super().config()
        config.update(DicomServerEnabled=True, DicomPort=self.dimse_port, DicomAet=AET)
        return config

    def count(self) -> int:
        url = f"http://127.0.0.1:{self.port}/statistics"
        return int(httpx.get(url, timeout=60).json()["CountInstances"])


def _send(port: int, folders: list[list[Path]]) -> tuple[float, list[int]]:
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", AET, "+sd", "127.0.0.1", str(port), *map(str, group)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for group in folders
        if group
    ]
    codes = [p.wait(timeout=3600) for p in procs]
    elapsed = time.perf_counter() - started
    for proc in procs:
        if proc.stderr is not None:
            err = proc.stderr.read().decode(errors="replace").strip()
            if proc.returncode and err:
                print(err[-2000:], file=sys.stderr)
            proc.stderr.close()
    return elapsed, codes


def _target(name: str, work: Path, args: argparse.Namespace) -> OursDimse | OrthancDimse:
    work.mkdir(parents=True, exist_ok=True)
    if name == "ours":
        return OursDimse(work, args.workers, args.database_url)
    if name == "orthanc":
        return OrthancDimse(work)
    raise SystemExit(f"unknown target {name!r}")


def run_dimse(args: argparse.Namespace) -> int:
    corpus = load_or_generate(QUICK if args.quick else FULL)
    small = corpus.root / "small"
    folders = sorted(p for p in small.iterdir() if p.is_dir())
    expected = len(corpus.group("small"))
    clients = [int(c) for c in args.clients.split(",")]
    names = ["ours", *args.compare]
    work = Path(tempfile.mkdtemp(prefix="dimse-", dir=CACHE_DIR))
    payload: dict[str, Any] = {
        "benchmark": "dimse-c-store",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_facts(), "loadavg_at_start": os.getloadavg()},
        "instances": expected,
        "bytes": sum(f.stat().st_size for f in small.rglob("*.dcm")),
        "results": {},
    }
    ok = True
    try:
        for n in clients:
            groups: list[list[Path]] = [folders[i::n] for i in range(n)]
            for name in names:
                target = _target(name, work / f"{name}-{n}", args)
                target.prepare()
                target.start()
                try:
                    elapsed, codes = _send(target.dimse_port, groups)
                    stored = target.count()
                finally:
                    target.stop()
                    shutil.rmtree(target.workdir, ignore_errors=True)
                rate = expected / elapsed
                good = stored == expected and not any(codes)
                ok = ok and good
                payload["results"][f"{name}_c{n}"] = {
                    "seconds": round(elapsed, 2),
                    "instances_per_second": round(rate, 1),
                    "stored": stored,
                    "storescu_exit_codes": codes,
                }
                flag = "" if good else f"  (!) stored {stored}, exit codes {codes}"
                print(
                    f"{name:8s} {n} association(s): {rate:8.1f} instances/s ({elapsed:.1f} s){flag}"
                )
    finally:
        payload["machine"]["loadavg_at_end"] = os.getloadavg()
        path = report.write_json(CACHE_DIR, payload)
        print(f"results: {path}")
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1
