"""Shared fixtures: index databases (SQLite and PostgreSQL) and a real uvicorn server.

PostgreSQL: each test session creates a throwaway database on the cluster reachable at
DICOMWEB_TEST_PG (default: the local socket /var/run/postgresql) and drops it after.
Where PostgreSQL is unreachable the PostgreSQL variants are skipped, except under CI
(CI=true), where that is a failure: CI must test both indexes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dicomweb_server.storage.sql.index import SqlIndex

PG_HOST = os.environ.get("DICOMWEB_TEST_PG", "/var/run/postgresql")
REPO = Path(__file__).resolve().parent.parent
BACKENDS = ["sqlite", "postgresql"]


def _pg_admin_url() -> str:
    return f"host={PG_HOST} dbname=postgres"


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(_pg_admin_url(), connect_timeout=3):
            return None
    except Exception as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class PgDatabases:
    """Creates and drops throwaway PostgreSQL databases."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self) -> str:
        import psycopg

        name = "dwtest_" + secrets.token_hex(6)
        with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return f"postgresql+psycopg:///{name}?host={PG_HOST}"

    def drop_all(self) -> None:
        import psycopg

        with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    problem = _pg_available()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required under CI but unreachable: {problem}")
        pytest.skip(f"PostgreSQL unreachable at {PG_HOST}: {problem}")
    dbs = PgDatabases()
    yield dbs
    dbs.drop_all()


def make_database_url(backend: str, tmp: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'index.sqlite3'}"
    dbs: PgDatabases = request.getfixturevalue("pg_databases")
    return dbs.create()


@pytest.fixture
def index(database_url: str) -> Iterator[SqlIndex]:
    """A migrated SqlIndex on each backend (storage-layer tests)."""
    idx = SqlIndex(database_url)
    idx.migrate()
    yield idx
    idx.close()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty index database of each kind."""
    return make_database_url(request.param, tmp_path, request)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A real `dicomweb-server serve` process on loopback."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    database_url: str
    log_path: Path
    # --- dimse --- the DIMSE listener's port (0 when started with --no-dimse)
    dimse_port: int = 0

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.root}/dicom-web"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def spooled(data_dir: Path) -> set[Path]:
    """Spool files holding (part of) an object. Empty ones are left out: the spool
    keeps empty files made ahead of need (services/spool_reserve.py)."""
    folder = data_dir / "tmp"
    if not folder.exists():
        return set()
    found = set()
    for p in folder.rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # handed out and stored meanwhile
            if p.is_file() and p.stat().st_size > 0:
                found.add(p)
    return found


def start_server(
    data_dir: Path, database_url: str, *extra_args: str, env: dict[str, str] | None = None
) -> Server:
    port = free_port()
    # Every server gets its own DIMSE port, so servers of concurrent tests never collide.
    dimse_port = 0
    if not any(a in extra_args for a in ("--dimse-port", "--no-dimse")):
        dimse_port = free_port()
        extra_args = (*extra_args, "--dimse-port", str(dimse_port))
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"server-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "dicomweb_server.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--database-url",
        database_url,
        "--log-level",
        "info",
        *extra_args,
    ]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    full_env.update(env or {})
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO
        )
    server = Server(process, port, data_dir, database_url, log_path, dimse_port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.root}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not become ready:\n{server.log()}")


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A fresh server with an empty archive, once per index backend."""
    url = make_database_url(request.param, tmp_path, request)
    srv = start_server(tmp_path / "data", url)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log(), srv.log()


@pytest.fixture(scope="module", params=BACKENDS)
def shared_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server per module and backend, for read-mostly tests that set up data once."""
    tmp = tmp_path_factory.mktemp("shared")
    url = make_database_url(request.param, tmp, request)
    srv = start_server(tmp / "data", url)
    yield srv
    srv.stop()


# -- helpers for the durability and CLI tests ----------------------------------------


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`dicomweb-server ARGS` in a clean environment (no inherited DICOMWEB_ variables)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dicomweb_server.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=timeout,
        check=False,
    )


_http_client: httpx.Client | None = None


def http() -> httpx.Client:
    """One shared client: each top-level httpx.get() would build a new SSL context (slow)."""
    global _http_client
    if _http_client is None:
        _http_client = httpx.Client(timeout=60)
    return _http_client


def retrieve_raw(server: Server, study: str, series: str, sop: str) -> bytes:
    """One instance exactly as stored (transfer-syntax=*), or AssertionError."""
    response = http().get(
        f"{server.url}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": "application/dicom; transfer-syntax=*"},
        timeout=30,
    )
    assert response.status_code == 200, (response.status_code, response.text[:300])
    return response.content


def qido_instances(server: Server, **params: str) -> list[tuple[str, str, str]]:
    """(study, series, sop) of every instance QIDO reports, paging through all of them."""
    found: list[tuple[str, str, str]] = []
    for page in range(1000):
        response = http().get(
            f"{server.url}/instances",
            params={**params, "limit": "500", "offset": str(page * 500)},
            headers={"Accept": "application/dicom+json"},
            timeout=30,
        )
        assert response.status_code in (200, 204), response.text[:300]
        items = response.json() if response.status_code == 200 and response.content else []
        for item in items:
            found.append(
                (
                    item["0020000D"]["Value"][0],
                    item["0020000E"]["Value"][0],
                    item["00080018"]["Value"][0],
                )
            )
        if len(items) < 500:
            return found
    raise AssertionError("QIDO paging did not end")


@pytest.fixture(scope="session", autouse=True)
def _close_shared_http_client() -> Iterator[None]:
    yield
    global _http_client
    if _http_client is not None:
        _http_client.close()
        _http_client = None


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


@dataclass
class SmallFs:
    path: Path
    kind: str


@pytest.fixture
def small_fs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SmallFs]:
    """A small filesystem (3 MB unless parametrized indirectly with a size in MB): tmpfs,
    else a loop-mounted ext4 image (needs root); unmounted afterwards. Skips if neither
    can be mounted."""
    megabytes = int(getattr(request, "param", 3))
    mount = tmp_path / "small"
    mount.mkdir()
    tmpfs = _run("mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(mount))
    if tmpfs.returncode == 0:
        fs = SmallFs(mount, "tmpfs")
    else:
        image = tmp_path / "small.img"
        with open(image, "wb") as fh:
            fh.truncate((megabytes + 1) * 1024 * 1024)
        made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        loop = _run("mount", "-o", "loop", str(image), str(mount))
        if made.returncode or loop.returncode:
            pytest.skip(
                "cannot mount a small filesystem here (tmpfs: "
                f"{tmpfs.stderr.strip()}; loop ext4: {loop.stderr.strip() or made.stderr.strip()})"
            )
        fs = SmallFs(mount, "ext4-loop")
    try:
        yield fs
    finally:
        if _run("umount", str(mount)).returncode:
            _run("umount", "-l", str(mount))


def unexpected_tracebacks(log: str, *expected: str) -> list[str]:
    """Tracebacks in a server log, except those whose text names one of ``expected``."""
    blocks = log.split("Traceback (most recent call last):")[1:]
    return [b[:2000] for b in blocks if not any(e in b for e in expected)]
