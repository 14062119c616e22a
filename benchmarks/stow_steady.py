"""Steady-state STOW-RS of the small corpus, with where the servers' CPU time went.

`python -m benchmarks.stow_steady [--clients 1] [--workers 2]
[--target ours|orthanc|both] [--warmup 50] [--rounds 1] [--dir DIR]`

The full run's STOW phases are short (2,500 small instances with one client, about two
seconds) and begin on a server just started, so they mix start-up costs and the VM's
noise into the rate. This stores the corpus's 10,000 small instances (10 per request)
into a fresh server: ``--warmup`` requests first, untimed, then the rest timed; prints
instances/s, request p50 and how busy the machine and the server's processes were
(user and kernel time, from /proc), which says whether a change saved CPU or waiting.
Each round uses a new server and data folder.

``--target both`` runs ours and Orthanc back to back in every round, in turns (ours first
in odd rounds), and prints each round's ratio and their median: on a VM whose speed
drifts by tens of percent within minutes, a ratio of two runs seconds apart says more
than two runs of a full benchmark minutes apart.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from .corpus import FULL, corpus_dir
from .httpio import BaseUrl
from .procmon import descendants
from .stow import make_batches, run_stow
from .targets import OrthancTarget, OursTarget, Target

_TICK = os.sysconf("SC_CLK_TCK")


def _machine() -> tuple[int, int]:
    """(all jiffies, idle jiffies) of every CPU."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    return sum(values), values[3] + values[4]


def _cpu(pids: list[int]) -> tuple[int, int]:
    """(user, system) clock ticks of ``pids`` so far."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user, system


def _round(target: Target, data: list[bytes], clients: int, warmup: int) -> dict[str, float]:
    batches = make_batches(data, 10)
    target.start()
    try:
        base = BaseUrl.parse(target.base_url)
        run_stow(base, batches, list(range(warmup)), clients, 120)
        pid = target.pid
        pids = descendants(pid) if pid else []
        machine0, cpu0 = _machine(), _cpu(pids)
        result = run_stow(base, batches, list(range(warmup, len(batches))), clients, 300)
        machine1, cpu1 = _machine(), _cpu(pids)
    finally:
        target.stop()
    if result.errors:
        raise RuntimeError(f"STOW failed: {result.errors[:2]}")
    secs = result.seconds
    total, idle = machine1[0] - machine0[0], machine1[1] - machine0[1]
    return {
        "instances_per_s": result.instances / secs,
        "request_p50_ms": statistics.median(result.latencies) * 1000,
        "machine_busy_pct": 100 * (1 - idle / total) if total else 0.0,
        "server_user_pct": (cpu1[0] - cpu0[0]) / _TICK / secs * 100,
        "server_kernel_pct": (cpu1[1] - cpu0[1]) / _TICK / secs * 100,
    }


def _one(name: str, n: int, data: list[bytes], args: argparse.Namespace) -> float:
    """One round of one server, printed; its instances/s."""
    work = Path(tempfile.mkdtemp(prefix="stow-steady-", dir=args.dir))
    try:
        target: Target = (
            OursTarget(work, workers=args.workers) if name == "ours" else OrthancTarget(work)
        )
        r = _round(target, data, args.clients, args.warmup)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"round {n}: {name}, {args.clients} client(s): "
        f"{r['instances_per_s']:,.0f} instances/s, request p50 {r['request_p50_ms']:.1f} ms;"
        f" machine {r['machine_busy_pct']:.0f}% busy; server user"
        f" {r['server_user_pct']:.0f}% + kernel {r['server_kernel_pct']:.0f}% of one core",
        flush=True,
    )
    return r["instances_per_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stow_steady", description=__doc__)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--target", choices=("ours", "orthanc", "both"), default="ours")
    parser.add_argument("--warmup", type=int, default=50, help="untimed requests first")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(__file__).parent / ".cache",
        help="where the servers' data folders go (e.g. another filesystem)",
    )
    args = parser.parse_args(argv)
    files = sorted((corpus_dir(FULL) / "small").rglob("*.dcm"))
    if not files:
        print("no corpus: run `python -m benchmarks corpus` once to build it")
        return 2
    data = [f.read_bytes() for f in files]
    ratios: list[float] = []
    for n in range(1, args.rounds + 1):
        names = ["ours", "orthanc"] if args.target == "both" else [args.target]
        rates: dict[str, float] = {}
        for name in names if n % 2 else names[::-1]:
            rates[name] = _one(name, n, data, args)
            time.sleep(1)
        if len(rates) == 2:
            ratios.append(rates["ours"] / rates["orthanc"])
            print(f"round {n}: ours / orthanc = {ratios[-1]:.2f}x", flush=True)
    if ratios:
        print(
            f"{args.clients} client(s), {len(ratios)} round(s): ours / orthanc median"
            f" {statistics.median(ratios):.2f}x (range {min(ratios):.2f}x-{max(ratios):.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
