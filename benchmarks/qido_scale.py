"""QIDO-RS latency on a PostgreSQL index of about a million instances, in minutes.

`python -m benchmarks.qido_scale [--studies 200000] [--iterations 40] [--workers 2]`

Loading a million instances through STOW-RS takes most of an hour here (`run --scale`);
to study the queries alone, this fills a throw-away PostgreSQL with synthetic index rows
in SQL (patients, studies, two series each of eight modalities, about 2.8 instances per
series; the JSON columns hold stubs), starts our server on it and times the query types
of the main benchmark (OHIF's study-list parameters), checking each result count
against the generated data. The rows go in through the same schema and migrations as
stored instances, so the indexes and plans are the ones a real archive gets; only the
blobs are missing (no retrieve is timed).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from .httpio import BaseUrl, Client
from .pgtemp import TempPostgres
from .stats import summary_ms
from .targets import OursTarget

MODALITIES = ("MR", "CR", "DX", "US", "CT", "PT", "NM", "MG")
OHIF_STUDY = "limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
UID_ROOT = "1.2.826.0.1.9999.1"
NAMES = 5000  # distinct family names; patient g is NAME{g % NAMES}


def _fill_sql(studies: int) -> list[str]:
    patients = max(1, studies // 2)
    modality = "(ARRAY['" + "','".join(MODALITIES) + "'])[1 + ((s.pk * 7 + k * 3) % 8)]"
    return [
        f"""INSERT INTO patient (patient_id, issuer, name, name_norm, birth_date, sex)
        SELECT 'PID' || g, '', 'NAME' || (g % {NAMES}) || '^GIVEN' || (g % 97),
               ' NAME' || (g % {NAMES}) || ' GIVEN' || (g % 97) || ' ',
               to_char(date '1940-01-01' + (g % 25000), 'YYYYMMDD'),
               CASE WHEN g % 2 = 0 THEN 'F' ELSE 'M' END
        FROM generate_series(1, {patients}) g""",
        f"""INSERT INTO study (patient_fk, study_uid, study_date, study_time, accession_number,
                               study_id, description, patient_name_norm, attrs, created_at,
                               updated_at)
        SELECT p.pk, '{UID_ROOT}.' || g, to_char(date '2015-01-01' + (g % 3650), 'YYYYMMDD'),
               '101500.000000', 'ACC' || g, 'S' || g, 'Study ' || (g % 50), p.name_norm,
               convert_to('{{}}', 'UTF8'), 1, 1
        FROM generate_series(1, {studies}) g
        JOIN patient p ON p.patient_id = 'PID' || (1 + (g % {patients}))""",
        f"""INSERT INTO series (study_fk, series_uid, modality, series_number, description,
                                attrs, updated_at)
        SELECT s.pk, s.study_uid || '.' || k, {modality}, k, 'Series',
               convert_to('{{}}', 'UTF8'), 1
        FROM study s CROSS JOIN generate_series(1, 2) k""",
        """INSERT INTO instance (series_fk, sop_uid, sop_class_uid, instance_number, rows,
                                 columns, bits_allocated, transfer_syntax, blob_key,
                                 blob_size, content_hash, metadata, bulk, stored_at)
        SELECT se.pk, se.series_uid || '.' || k, '1.2.840.10008.5.1.4.1.1.4', k, 64, 64, 16,
               '1.2.840.10008.1.2.1', 'x/' || se.series_uid || '.' || k, 9000, 'h',
               convert_to('{}', 'UTF8'), convert_to('{}', 'UTF8'), 1
        FROM series se CROSS JOIN generate_series(1, 3) k
        WHERE (se.pk + k) % 6 <> 0 OR k < 3""",
        "ANALYZE",
    ]


def fill(dsn: str, studies: int) -> dict[str, int]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in _fill_sql(studies):
            conn.execute(statement)
        counts = {}
        for table in ("patient", "study", "series", "instance"):
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            counts[table] = int(row[0]) if row else 0
    return counts


def expected(dsn: str, sql: str, *params: Any) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return int(conn.execute(sql, params).fetchone()[0])  # type: ignore[index]


def queries(dsn: str, studies: int, per_type: int, seed: int = 7) -> list[tuple[str, str, int]]:
    """(type, path, expected result count) with deterministic parameters, shuffled."""
    rng = random.Random(seed)
    out: list[tuple[str, str, int]] = []
    for _ in range(per_type):
        g = rng.randint(1, studies)
        study_uid = f"{UID_ROOT}.{g}"
        prefix = f"NAME{rng.randint(1, NAMES - 1)}"[:7]
        year, month = rng.randint(2015, 2024), rng.randint(1, 12)
        lo, hi = f"{year}{month:02d}01", f"{year}{month:02d}28"
        modality = rng.choice(MODALITIES)
        n_name = expected(
            dsn, "SELECT count(*) FROM study WHERE patient_name_norm LIKE %s", f" {prefix}% "
        )
        n_date = expected(
            dsn, "SELECT count(*) FROM study WHERE study_date BETWEEN %s AND %s", lo, hi
        )
        n_inst = expected(
            dsn,
            "SELECT count(*) FROM instance i JOIN series s ON s.pk = i.series_fk"
            " WHERE s.series_uid = %s",
            f"{study_uid}.1",
        )
        n_mod = expected(
            dsn, "SELECT count(DISTINCT study_fk) FROM series WHERE modality = %s", modality
        )
        pid = expected(dsn, "SELECT patient_fk FROM study WHERE study_uid = %s", study_uid)
        n_pid = expected(dsn, "SELECT count(*) FROM study WHERE patient_fk = %s", pid)
        patient_id = f"PID{1 + (g % max(1, studies // 2))}"
        out += [
            ("study list all", f"/studies?{OHIF_STUDY}", min(studies, 101)),
            ("study patient name prefix", f"/studies?PatientName={prefix}*&{OHIF_STUDY}",
             min(n_name, 101)),
            ("study patient id", f"/studies?PatientID={patient_id}&{OHIF_STUDY}", n_pid),
            ("study date range", f"/studies?StudyDate={lo}-{hi}&{OHIF_STUDY}", min(n_date, 101)),
            ("study modalities", f"/studies?ModalitiesInStudy={modality}&{OHIF_STUDY}",
             min(n_mod, 101)),
            ("study accession", f"/studies?AccessionNumber=ACC{g}&{OHIF_STUDY}", 1),
            ("series in study", f"/studies/{study_uid}/series?includefield=0008103E", 2),
            (
                "instances in series",
                f"/studies/{study_uid}/series/{study_uid}.1/instances",
                n_inst,
            ),
        ]  # fmt: skip
    rng.shuffle(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.qido_scale", description=__doc__)
    parser.add_argument("--studies", type=int, default=200_000)
    parser.add_argument("--iterations", type=int, default=40, help="queries per type")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="qido-scale-"))
    pg = TempPostgres()
    ours: OursTarget | None = None
    try:
        pg.start()
        dsn = f"host=127.0.0.1 port={pg.port} user=postgres dbname=bench"
        ours = OursTarget(
            work, workers=args.workers, database_url=pg.url, extra_args=["--no-dimse"]
        )
        ours.start()  # migrates the empty database
        t0 = time.perf_counter()
        counts = fill(dsn, args.studies)
        fill_s = time.perf_counter() - t0
        print(f"filled {counts} in {fill_s:.0f} s", flush=True)
        plan = queries(dsn, args.studies, args.iterations)
        client = Client(BaseUrl.parse(ours.base_url))
        by_type: dict[str, list[float]] = {}
        wrong: list[str] = []
        for _kind, path, _want in plan[: len(MODALITIES)]:  # warm the caches once
            client.request("GET", path, {"Accept": "application/dicom+json"})
        for kind, path, want in plan:
            resp = client.request("GET", path, {"Accept": "application/dicom+json"})
            got = len(orjson.loads(resp.body)) if resp.status == 200 else 0
            if resp.status not in (200, 204) or got != want:
                wrong.append(
                    f"{kind}: {path} -> HTTP {resp.status}, {got} results, {want} expected"
                )
            by_type.setdefault(kind, []).append(resp.seconds)
        client.close()
        everything = [s for times in by_type.values() for s in times]
        report: dict[str, Any] = {
            "rows": counts,
            "fill_seconds": round(fill_s, 1),
            "workers": args.workers,
            "types": {k: summary_ms(v) for k, v in sorted(by_type.items())},
            "all": summary_ms(everything),
            "wrong_counts": wrong,
        }
        print(f"{'query type':<28} {'p50 ms':>8} {'p95 ms':>8}")
        for kind, stats in [*report["types"].items(), ("all queries", report["all"])]:
            print(f"{kind:<28} {stats['p50_ms']:>8.1f} {stats['p95_ms']:>8.1f}")
        print(f"result counts checked: {len(plan) - len(wrong)}/{len(plan)} right")
        for line in wrong[:10]:
            print("  WRONG", line)
        out = (
            Path(__file__).resolve().parent
            / ".cache"
            / f"qido-scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        print(f"results: {out}")
        return 1 if wrong else 0
    finally:
        if ours is not None:
            ours.stop()
        pg.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
