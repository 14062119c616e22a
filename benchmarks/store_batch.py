"""What storing costs without HTTP: `StoreService.store_batch` over the small corpus.

`python -m benchmarks.store_batch [--count 2000] [--batch 10] [--rounds 3] [--profile]`

Spools the benchmark corpus's small instances (64x64, about 9 KB each; built by
`python -m benchmarks run` the first time) and stores them in batches through the one
ingest path of STOW-RS, C-STORE and import, into a fresh SQLite data folder per round;
prints the median milliseconds per instance (wall clock of `store_batch` only, no
spooling, HTTP or multipart). `--profile` prints a cProfile of the last round.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from dicomweb_server.bootstrap import build_services, prepare
from dicomweb_server.config import Settings
from dicomweb_server.dicom.ingest import configure_pydicom

from .corpus import FULL, corpus_dir


def _round(data: list[bytes], batch: int, profile: cProfile.Profile | None) -> float:
    work = Path(tempfile.mkdtemp(prefix="store-batch-"))
    try:
        settings = Settings(data_dir=work / "data")
        prepare(settings)
        services = build_services(settings)
        store, spent = services.store, 0.0
        try:
            for start in range(0, len(data), batch):
                paths = []
                for blob in data[start : start + batch]:
                    path, fh = store.new_spool_file()
                    with fh:
                        fh.write(blob)
                    paths.append(path)
                t0 = time.perf_counter()
                if profile is not None:
                    profile.enable()
                outcomes = store.store_batch(paths)
                if profile is not None:
                    profile.disable()
                spent += time.perf_counter() - t0
                failed = [o for o in outcomes if not o.stored]
                if failed:
                    raise RuntimeError(f"not stored: {failed[0]}")
        finally:
            services.close()
        return spent / len(data) * 1000
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store_batch", description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    folder = corpus_dir(FULL) / "small"
    files = sorted(folder.rglob("*.dcm"))[: args.count]
    if not files:
        print(f"no corpus in {folder}: run `python -m benchmarks run` once to build it")
        return 2
    configure_pydicom()
    data = [f.read_bytes() for f in files]
    results = []
    for n in range(args.rounds):
        last = args.profile and n == args.rounds - 1
        profile = cProfile.Profile() if last else None
        results.append(_round(data, args.batch, profile))
        print(f"round {n + 1}: {results[-1]:.3f} ms per instance", flush=True)
        if profile is not None:
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
    print(
        f"store_batch, {len(data)} small instances in batches of {args.batch}: "
        f"median {statistics.median(results):.3f} ms per instance"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
