"""What the order-to-image loop costs the store path.

`python -m benchmarks.workitem_loop [--rounds 5] [--batch 64] [--postgres]`

Times `StoreService.store_batch` (the path of STOW-RS, C-STORE and import) for batches
of 64 small instances (`--batch 1`: one per call, as C-STORE stores them) in three
set-ups, interleaved round by round so that a busy
machine disturbs them alike, and reports the median milliseconds per instance:

- off: `worklist_link_on_store = false` (no hook at all);
- on, no match: 1000 open workitems, none for these images (one indexed lookup per batch);
- on, match: a workitem for the study's accession number (every instance linked).

Then the growth: one workitem receiving a 1024-instance study in calls of ``--batch``,
the cost per instance of the first and the last 64 (each call rewrites the workitem).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from dicomweb_server.bootstrap import Services, build_services, prepare
from dicomweb_server.config import Settings

PG_ADMIN = "host=/var/run/postgresql dbname=postgres"


def _order(accession: str) -> dict[str, Any]:
    def el(vr: str, *value: Any) -> dict[str, Any]:
        return {"vr": vr, "Value": list(value)} if value else {"vr": vr}

    return {
        "00100010": el("PN", {"Alphabetic": "Bench^Patient"}),
        "00100020": el("LO", "BENCH"),
        "00404005": el("DT", "20260101090000"),
        "00741204": el("LO", "Bench order"),
        "00741200": el("CS", "MEDIUM"),
        "00404041": el("CS", "READY"),
        "0040A370": el("SQ", {"00080050": el("SH", accession)}),
    }


def _instances(study: str, accession: str, count: int) -> list[bytes]:
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    series = str(generate_uid())
    out = []
    for n in range(count):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName, ds.AccessionNumber = "BENCH", "Bench^Patient", accession
        ds.Modality, ds.InstanceNumber = "OT", n + 1
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def _store(services: Services, blobs: list[bytes]) -> float:
    paths = []
    for data in blobs:
        path, fh = services.store.new_spool_file()
        with fh:
            fh.write(data)
        paths.append(path)
    start = time.perf_counter()
    outcomes = services.store.store_batch(paths)
    elapsed = time.perf_counter() - start
    assert all(o.stored for o in outcomes)
    return elapsed / len(blobs) * 1000


def _services(tmp: Path, name: str, url: str | None, **settings: Any) -> Services:
    config = Settings(data_dir=tmp / name, database_url=url, **settings)
    prepare(config)
    return build_services(config)


def run(rounds: int, url_for: Any, batch: int = 64) -> None:
    from pydicom.uid import generate_uid

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        setups = {
            "off": _services(tmp, "off", url_for("off"), worklist_link_on_store=False),
            "on, no match": _services(tmp, "nomatch", url_for("nomatch")),
            "on, match": _services(tmp, "match", url_for("match")),
        }
        for n in range(1000):
            setups["on, no match"].workitems.create(_order(f"OTHER{n}"))
        times: dict[str, list[float]] = {name: [] for name in setups}
        for r in range(rounds):
            for name, services in setups.items():
                accession = f"R{r}"
                if name == "on, match":
                    services.workitems.create(_order(accession))
                blobs = _instances(str(generate_uid()), accession, 64)
                for i in range(0, 64, batch):
                    times[name].append(_store(services, blobs[i : i + batch]))
        for name, values in times.items():
            print(f"{name:14s} {statistics.median(values):6.2f} ms/instance (batches of {batch})")
        growth = setups["on, match"]
        growth.workitems.create(_order("BIG"))
        study = str(generate_uid())
        # 16 groups of 64 instances, each stored in calls of ``batch`` (C-STORE: 1).
        per_group = []
        for _ in range(16):
            blobs = _instances(study, "BIG", 64)
            calls = [_store(growth, blobs[i : i + batch]) for i in range(0, 64, batch)]
            per_group.append(statistics.mean(calls))
        print(
            f"one workitem, 1024-instance study in calls of {batch}: first 64 instances "
            f"{per_group[0]:.2f}, last 64 {per_group[-1]:.2f} ms/instance"
        )
        for services in setups.values():
            services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--batch", type=int, default=64, help="instances per store_batch (C-STORE: 1)"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="throw-away databases on the PostgreSQL at /var/run/postgresql",
    )
    args = parser.parse_args()
    if not args.postgres:
        run(args.rounds, lambda name: None, args.batch)
        return
    import secrets

    import psycopg

    created: list[str] = []

    def url_for(name: str) -> str:
        db = f"bench_loop_{name}_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        created.append(db)
        return f"postgresql+psycopg:///{db}?host=/var/run/postgresql"

    try:
        run(args.rounds, url_for, args.batch)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            for db in created:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
