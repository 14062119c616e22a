"""Durability and robustness on real servers: kill -9, a full disk, concurrent writers.

Crash model: SIGKILL of the server process. What a crash may leave, by design
(docs/architecture.md, "Durable before visible"):

- spool files in ``data_dir/tmp``: removed when the next server starts;
- a *complete* blob in ``data_dir/blobs`` that was renamed into place but whose index row
  was never committed (the crash landed between the rename and the commit). It is
  unreferenced, never served, and byte-identical to what the client sent; the tests
  accept it only in that form.

Never: a partial blob, an index row without its blob, or a blob whose bytes differ.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import (
    BACKENDS,
    Server,
    SmallFs,
    http,
    make_database_url,
    qido_instances,
    retrieve_raw,
    spooled,
    start_server,
    unexpected_tracebacks,
)
from tests.dicomgen import make_dataset, multipart, to_part10, uid

OUT_OF_RESOURCES = 0xA700


@dataclass(frozen=True)
class Sent:
    study: str
    series: str
    sop: str
    data: bytes


def make_instances(count: int, size: int, *, study: str | None = None) -> list[Sent]:
    study = study or uid()
    series = uid()
    out = []
    for n in range(count):
        ds = make_dataset(
            study=study, series=series, instance_number=n + 1, rows=size, columns=size,
            pixel_seed=n,
        )  # fmt: skip
        out.append(Sent(study, series, ds.SOPInstanceUID, to_part10(ds)))
    return out


@pytest.fixture(scope="module")
def big_study() -> list[Sent]:
    """40 instances of 512x512x16 bit (about 21 MB in one STOW)."""
    return make_instances(40, 512)


@pytest.fixture
def launch() -> Iterator[Any]:
    """start_server, with every server started stopped at teardown whatever happened."""
    started: list[Server] = []

    def start(
        data_dir: Path, database_url: str, *args: str, env: dict[str, str] | None = None
    ) -> Server:
        server = start_server(data_dir, database_url, *args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(params=BACKENDS)
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_database_url(request.param, tmp_path, request)


def blob_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "blobs").rglob("*") if p.is_file())


def spool_files(data_dir: Path) -> list[Path]:
    return sorted(spooled(data_dir))


def index_rows(database_url: str) -> dict[str, str]:
    """sop_uid -> blob_key, read straight from the index."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(text("SELECT sop_uid, blob_key FROM instance")).all())
    finally:
        engine.dispose()


def kill9(server: Server) -> None:
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=15)
    assert server.process.returncode == -signal.SIGKILL


def stow(
    server: Server, parts: list[bytes], timeout: float = 60, client: httpx.Client | None = None
) -> httpx.Response:
    body, content_type = multipart(parts)
    return (client or http()).post(
        f"{server.url}/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=timeout,
    )


class Background:
    """Run one call in a thread; keep its result or exception."""

    def __init__(self, target: Any, *args: Any, **kwargs: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = target(*args, **kwargs)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 60) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background call did not finish"


def check_after_crash(
    server: Server, database_url: str, sent: list[Sent], data_dir: Path
) -> tuple[set[str], set[Path]]:
    """Everything QIDO shows is whole; blobs are complete; returns (stored SOPs, orphans)."""
    by_sop = {s.sop: s for s in sent}
    contents = {s.data for s in sent}
    assert spool_files(data_dir) == [], "the spool was not cleaned at start"
    shown = qido_instances(server)
    for study, series, sop in shown:
        original = by_sop[sop]
        assert (study, series) == (original.study, original.series)
        assert retrieve_raw(server, study, series, sop) == original.data
    rows = index_rows(database_url)
    assert set(rows) == {sop for _, _, sop in shown}
    referenced = {data_dir / "blobs" / key for key in rows.values()}
    for path in referenced:
        assert path.is_file(), f"index row without its blob: {path}"
    orphans = set(blob_files(data_dir)) - referenced
    for path in blob_files(data_dir):
        # Complete: byte-identical to one instance the client sent (so no partial file).
        assert path.read_bytes() in contents, f"partial or foreign blob {path}"
    for path in orphans:
        # Renamed into place, not yet committed when the process died.
        assert (
            path.name.split("-")[0] not in rows
            or data_dir / "blobs" / rows[path.name.split("-")[0]] != path
        )
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
        finally:
            engine.dispose()
    return {sop for _, _, sop in shown}, orphans


def resend_everything(server: Server, sent: list[Sent]) -> None:
    """After a crash the archive takes the same study again, whole."""
    response = stow(server, [s.data for s in sent], timeout=120)
    assert response.status_code == 200, response.text[:500]
    shown = qido_instances(server)
    assert sorted(sop for _, _, sop in shown) == sorted(s.sop for s in sent)


# -- 1. crash safety -----------------------------------------------------------------------


def test_kill_9_while_the_request_body_streams_in(
    launch: Any, tmp_path: Path, index_url: str, big_study: list[Sent]
) -> None:
    data_dir = tmp_path / "data"
    server = launch(data_dir, index_url)
    body, content_type = multipart([s.data for s in big_study])
    halfway = threading.Event()

    def slowly() -> Iterator[bytes]:
        chunk = 256 * 1024
        deadline = time.monotonic() + 60
        for offset in range(0, len(body), chunk):
            if offset >= len(body) // 3:
                halfway.set()
                time.sleep(0.02)
            if time.monotonic() > deadline:
                return
            yield body[offset : offset + chunk]

    upload = Background(
        httpx.post,
        f"{server.url}/studies",
        content=slowly(),
        headers={"Content-Type": content_type},
        timeout=60,
    )
    assert halfway.wait(30)
    deadline = time.monotonic() + 20
    while not spool_files(data_dir):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    kill9(server)
    upload.join()
    assert isinstance(upload.error, httpx.TransportError), (upload.result, upload.error)
    left = spool_files(data_dir)
    assert left, "the kill did not land while parts were being spooled"
    assert blob_files(data_dir) == []  # nothing is stored before the body is complete

    server = launch(data_dir, index_url)
    try:
        stored, orphans = check_after_crash(server, index_url, big_study, data_dir)
        assert stored == set() and orphans == set()
        assert blob_files(data_dir) == []
        resend_everything(server, big_study)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_kill_9_while_instances_are_being_stored(
    launch: Any, tmp_path: Path, index_url: str, big_study: list[Sent]
) -> None:
    data_dir = tmp_path / "data"
    server = launch(data_dir, index_url)
    upload = Background(stow, server, [s.data for s in big_study])
    deadline = time.monotonic() + 60
    while len(blob_files(data_dir)) < 8:
        assert upload.thread.is_alive(), (upload.result, upload.error)
        assert time.monotonic() < deadline, "storing never started"
        time.sleep(0.002)
    kill9(server)
    upload.join()
    assert upload.error is not None, "the request finished before the kill"
    before_restart = len(blob_files(data_dir))
    # A batch's blobs are fsynced together and renamed in one quick loop, so the kill
    # may land after all of them are in place but before the index commit.
    assert 8 <= before_restart <= len(big_study)

    server = launch(data_dir, index_url)
    try:
        stored, orphans = check_after_crash(server, index_url, big_study, data_dir)
        # Every blob is either indexed and complete, or an unreferenced orphan; the
        # index never names a blob that is not complete (checked inside).
        assert len(stored) + len(orphans) == before_restart
        resend_everything(server, big_study)
        # A re-sent instance whose first copy was orphaned gets a fresh blob; the orphan
        # stays unreferenced (documented above) and is still complete.
        stored_again, orphans_again = check_after_crash(server, index_url, big_study, data_dir)
        assert len(stored_again) == len(big_study)
        assert orphans_again == orphans
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


# -- 2. out of space -------------------------------------------------------------------------


def _sequence(dataset: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(dataset.get(tag, {}).get("Value", []))


def _check_stow_outcome(response: httpx.Response, batch: list[Sent]) -> set[str]:
    """The response never claims more than was stored, nor hides a failure; returns stored."""
    assert response.status_code in (200, 202, 409), (response.status_code, response.text[:500])
    dataset = response.json()
    if isinstance(dataset, list):  # some clients' servers wrap it; ours must not
        raise AssertionError("STOW response must be one dataset")
    referenced = {i["00081155"]["Value"][0] for i in _sequence(dataset, "00081199")}
    failed = {
        i["00081155"]["Value"][0]: i["00081197"]["Value"][0] for i in _sequence(dataset, "00081198")
    }
    other = [i["00081197"]["Value"][0] for i in _sequence(dataset, "0008119A")]
    sops = {s.sop for s in batch}
    assert referenced <= sops and set(failed) <= sops
    assert not referenced & set(failed)
    assert len(referenced) + len(failed) + len(other) == len(batch), dataset
    assert set(failed.values()) <= {OUT_OF_RESOURCES}, failed
    assert set(other) <= {OUT_OF_RESOURCES}, other
    if response.status_code == 200:
        assert referenced == sops
    elif response.status_code == 202:
        assert referenced and (failed or other)
    else:
        assert not referenced
    return referenced


def _fill_until_full(
    server: Server, data_dir: Path, batches: int = 60
) -> tuple[dict[str, Sent], list[list[Sent]], int]:
    """STOW one study per batch until storing fails; returns (stored, batches sent, failures)."""
    stored: dict[str, Sent] = {}
    sent_batches: list[list[Sent]] = []
    failures = 0
    for _ in range(batches):
        batch = make_instances(6, 128)  # about 200 kB per request
        sent_batches.append(batch)
        response = stow(server, [s.data for s in batch])
        ok = _check_stow_outcome(response, batch)
        stored.update({s.sop: s for s in batch if s.sop in ok})
        assert spool_files(data_dir) == [], "spool files left after a request"
        if len(ok) < len(batch):
            failures += 1
            if failures >= 3:
                break
    return stored, sent_batches, failures


def _check_all_retrievable(server: Server, stored: dict[str, Sent]) -> None:
    shown = qido_instances(server)
    assert sorted(sop for _, _, sop in shown) == sorted(stored)
    for s in stored.values():
        assert retrieve_raw(server, s.study, s.series, s.sop) == s.data


def _free_studies_and_store_again(
    server: Server,
    data_dir: Path,
    stored: dict[str, Sent],
    sent_batches: list[list[Sent]],
    needed: int,
) -> None:
    """DELETE whole studies until ``needed`` bytes are free, then STOW works again."""
    whole = [b for b in sent_batches if all(s.sop in stored for s in b)]
    for victim in whole:
        if shutil.disk_usage(data_dir).free >= needed:
            break
        response = http().delete(f"{server.url}/studies/{victim[0].study}", timeout=30)
        assert response.status_code == 204, response.text
        for s in victim:
            del stored[s.sop]
    assert shutil.disk_usage(data_dir).free >= needed, "deleting did not free the disk"
    batch = make_instances(2, 128)
    response = stow(server, [s.data for s in batch])
    assert response.status_code == 200, (
        shutil.disk_usage(data_dir).free,
        response.headers.get_list("warning"),
    )
    stored.update({s.sop: s for s in batch})
    _check_all_retrievable(server, stored)


RESERVE = 2 * 1024 * 1024


@pytest.mark.parametrize("small_fs", [8], indirect=True)
def test_out_of_space_sqlite_with_a_reserve_recovers_by_delete(
    tmp_path: Path, small_fs: SmallFs, launch: Any
) -> None:
    """Blobs and the SQLite index on an 8 MB disk; new blobs stop at 2 MB free.

    (8 MB, not 3: SQLite's WAL alone grows to a few MB before its first checkpoint.)
    """
    data_dir = small_fs.path / "data"
    database_url = f"sqlite:///{data_dir / 'index.sqlite3'}"
    server = launch(data_dir, database_url, env={"DICOMWEB_MIN_FREE_BYTES": str(RESERVE)})
    try:
        stored, sent_batches, failures = _fill_until_full(server, data_dir)
        assert failures, f"the {small_fs.kind} filesystem never filled"
        assert stored, "nothing could be stored at all"
        free = shutil.disk_usage(small_fs.path).free
        assert 0 < free < RESERVE + 300_000
        _check_all_retrievable(server, stored)
        _free_studies_and_store_again(
            server, data_dir, stored, sent_batches, needed=RESERVE + 400_000
        )
    finally:
        server.stop()
    # The store service logs an index that is out of space with its traceback.
    assert unexpected_tracebacks(server.log(), "IndexFull") == []


def test_out_of_space_sqlite_without_reserve_stays_honest(
    tmp_path: Path, small_fs: SmallFs, launch: Any
) -> None:
    """No reserve: the disk really fills (spool, blob and index writes hit ENOSPC)."""
    data_dir = small_fs.path / "data"
    database_url = f"sqlite:///{data_dir / 'index.sqlite3'}"
    server = launch(data_dir, database_url, env={"DICOMWEB_MIN_FREE_BYTES": "0"})
    try:
        stored, sent_batches, failures = _fill_until_full(server, data_dir)
        assert failures, f"the {small_fs.kind} filesystem never filled"
        assert stored, "nothing could be stored at all"
        assert shutil.disk_usage(small_fs.path).free < 300_000
        _check_all_retrievable(server, stored)
        victim = next(b for b in sent_batches if all(s.sop in stored for s in b))
        response = http().delete(f"{server.url}/studies/{victim[0].study}", timeout=30)
        # Without a reserve even SQLite's journal may have no room left for the delete:
        # the answer is then an honest 507 and nothing changes (the reserve prevents it).
        assert response.status_code in (204, 507), response.text
        if response.status_code == 204:
            for s in victim:
                del stored[s.sop]
        _check_all_retrievable(server, stored)
    finally:
        server.stop()
    # The store service logs an index that is out of space with its traceback.
    assert unexpected_tracebacks(server.log(), "IndexFull") == []


@pytest.mark.postgres
def test_out_of_space_with_blobs_on_the_full_disk_and_postgresql(
    tmp_path: Path, small_fs: SmallFs, request: pytest.FixtureRequest, launch: Any
) -> None:
    """Only the blobs on the small disk, no reserve: spool and blob writes hit ENOSPC."""
    database_url = make_database_url("postgresql", tmp_path, request)
    data_dir = small_fs.path / "data"
    server = launch(data_dir, database_url, env={"DICOMWEB_MIN_FREE_BYTES": "0"})
    try:
        stored, sent_batches, failures = _fill_until_full(server, data_dir)
        assert failures, f"the {small_fs.kind} filesystem never filled"
        assert stored
        assert shutil.disk_usage(small_fs.path).free < 300_000
        _check_all_retrievable(server, stored)
        _free_studies_and_store_again(server, data_dir, stored, sent_batches, needed=400_000)
    finally:
        server.stop()
    # The store service logs an index that is out of space with its traceback.
    assert unexpected_tracebacks(server.log(), "IndexFull") == []


# -- 3. concurrency ---------------------------------------------------------------------------


def _db_counts(database_url: str) -> dict[str, int]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            counts = {
                table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                for table in ("patient", "study", "series", "instance")
            }
            counts["distinct_sop"] = int(
                conn.execute(text("SELECT count(DISTINCT sop_uid) FROM instance")).scalar_one()
            )
            return counts
    finally:
        engine.dispose()


def test_concurrent_stow_with_two_workers(launch: Any, tmp_path: Path, index_url: str) -> None:
    data_dir = tmp_path / "data"
    server = launch(data_dir, index_url, "--workers", "2")
    threads, rounds, per_series = 4, 3, 5
    try:
        expected: dict[str, Sent] = {}
        for _ in range(rounds):
            study = uid()
            shared = make_instances(1, 32, study=study)[0]  # sent by every thread at once
            own = [make_instances(per_series, 32, study=study) for _ in range(threads)]
            expected[shared.sop] = shared
            for series in own:
                expected.update({s.sop: s for s in series})
            barrier = threading.Barrier(threads)

            def send(
                mine: list[Sent], shared: Sent = shared, barrier: threading.Barrier = barrier
            ) -> httpx.Response:
                with httpx.Client(timeout=120) as client:
                    barrier.wait(30)
                    return stow(server, [shared.data] + [s.data for s in mine], client=client)

            workers = [Background(send, own[t]) for t in range(threads)]
            for w in workers:
                w.join(120)
                assert w.error is None, w.error
                assert w.result.status_code == 200, w.result.text[:500]
                referenced = _sequence(w.result.json(), "00081199")
                assert len(referenced) == per_series + 1
                assert all("00081196" not in item for item in referenced)  # no warning
            counts = _study_counts(server, study)
            assert counts == (threads + 1, threads * per_series + 1)
        rows = _db_counts(index_url)
        total = rounds * (threads * per_series + 1)
        assert rows == {
            "patient": 1,
            "study": rounds,
            "series": rounds * (threads + 1),
            "instance": total,
            "distinct_sop": total,
        }
        # The shared instance is stored once: one blob per instance, the losers' removed.
        assert len(blob_files(data_dir)) == total
        assert spool_files(data_dir) == []
        for s in expected.values():
            assert retrieve_raw(server, s.study, s.series, s.sop) == s.data
        # Both workers served requests.
        assert server.log().count("Started server process") == 2
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def _study_counts(server: Server, study: str) -> tuple[int, int]:
    response = http().get(
        f"{server.url}/studies",
        params={"StudyInstanceUID": study, "includefield": "all"},
        headers={"Accept": "application/dicom+json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    (item,) = json.loads(response.content)
    return item["00201206"]["Value"][0], item["00201208"]["Value"][0]


# -- 4. the index going away ---------------------------------------------------------------


@pytest.mark.postgres
def test_health_reports_an_unavailable_index(
    tmp_path: Path, request: pytest.FixtureRequest, launch: Any
) -> None:
    import psycopg

    from tests.conftest import PG_HOST

    database_url = make_database_url("postgresql", tmp_path, request)
    server = launch(tmp_path / "data", database_url)
    assert http().get(f"{server.root}/health").json()["status"] == "ok"
    name = database_url.split("///")[1].split("?")[0]
    with psycopg.connect(f"host={PG_HOST} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    response = http().get(f"{server.root}/health")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert server.alive()
    server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_an_os_error_no_layer_handled_still_gets_a_json_answer() -> None:
    import asyncio

    from starlette.requests import Request

    from dicomweb_server.web.errors import handle_os_error

    scope = {"type": "http", "method": "POST", "path": "/dicom-web/studies", "headers": []}
    full = asyncio.run(handle_os_error(Request(scope), OSError(errno.ENOSPC, "No space")))
    assert full.status_code == 507
    assert json.loads(bytes(full.body))["status"] == 507
    other = asyncio.run(handle_os_error(Request(scope), OSError(errno.EIO, "I/O error")))
    assert other.status_code == 500
