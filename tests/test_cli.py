"""The command line: import, serve's options and safety default, migrate, settings precedence."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import (
    REPO,
    free_port,
    make_database_url,
    qido_instances,
    retrieve_raw,
    run_cli,
    spooled,
    start_server,
)
from tests.dicomgen import make_dataset, multipart, to_part10, uid

SUMMARY = re.compile(r"^(\d+) stored, (\d+) duplicate, (\d+) rejected, (\d+) file\(s\) read$", re.M)


def summary(out: str) -> tuple[int, int, int, int]:
    match = SUMMARY.search(out)
    assert match, out
    stored, duplicate, rejected, read = (int(g) for g in match.groups())
    return stored, duplicate, rejected, read


def put(path: Path, data: bytes) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


# -- import ----------------------------------------------------------------------------


def test_import_folder_tree(tmp_path: Path, database_url: str) -> None:
    data_dir = tmp_path / "data"
    tree = tmp_path / "tree"
    study = uid()
    s1, s2 = uid(), uid()
    good = {
        "a": make_dataset(study=study, series=s1, instance_number=1, patient_name="Import^A"),
        "b": make_dataset(study=study, series=s1, instance_number=2, patient_name="Import^A"),
        "c": make_dataset(study=study, series=s2, series_number=2, patient_name="Import^A"),
    }
    sent = {
        good["a"].SOPInstanceUID: put(tree / "p1" / "s1" / "a.dcm", to_part10(good["a"])),
        good["b"].SOPInstanceUID: put(tree / "p1" / "s1" / "b", to_part10(good["b"])),
        good["c"].SOPInstanceUID: put(
            tree / "p1" / "s2" / "deep" / "er" / "c.dcm", to_part10(good["c"])
        ),
    }
    put(tree / "copies" / "a-again.dcm", sent[good["a"].SOPInstanceUID])  # duplicate
    skipped = {
        "DICOMDIR": make_dataset(),
        ".hidden.dcm": make_dataset(),
        ".git/objects/x.dcm": make_dataset(),
    }
    for name, ds in skipped.items():
        put(tree / name, to_part10(ds))
    put(tree / "notes.txt", b"not DICOM at all\n" * 20)
    whole = to_part10(make_dataset(rows=64, columns=64))
    put(tree / "p2" / "truncated.dcm", whole[: len(whole) * 2 // 3])

    result = run_cli(
        "import", "--data-dir", str(data_dir), "--database-url", database_url, "-j", "2",
        str(tree),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert summary(result.stdout) == (3, 1, 2, 6)
    rejected = [line for line in result.stderr.splitlines() if line.startswith("rejected ")]
    assert len(rejected) == 2, result.stderr
    assert any("notes.txt" in line for line in rejected)
    assert any(
        "truncated.dcm" in line and "truncated" in line.split(":", 1)[1] for line in rejected
    )
    assert "Traceback" not in result.stderr
    # The progress bar ran (to stderr) and reached the end.
    assert "6/6" in result.stderr

    # Nothing rejected: exit 0; what is already there counts as duplicate.
    extra = make_dataset(study=study, series=s2, series_number=2, instance_number=7)
    sent[extra.SOPInstanceUID] = put(tmp_path / "more" / "x.dcm", to_part10(extra))
    put(tmp_path / "more" / "again" / "c.dcm", sent[good["c"].SOPInstanceUID])
    result = run_cli(
        "import", "--quiet", "--data-dir", str(data_dir), "--database-url", database_url,
        str(tmp_path / "more"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout) == (1, 1, 0, 2)
    # --quiet: no progress bar at all, and nothing else on stderr either.
    assert result.stderr == ""

    # A server started afterwards on the same data sees exactly what was imported.
    server = start_server(data_dir, database_url)
    try:
        found = qido_instances(server)
        assert sorted(sop for _, _, sop in found) == sorted(sent)
        for st, se, sop in found:
            assert st == study
            assert retrieve_raw(server, st, se, sop) == sent[sop]
        skipped_uids = {ds.SOPInstanceUID for ds in skipped.values()}
        assert not skipped_uids & {sop for _, _, sop in found}
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_import_missing_path_and_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    data_dir = str(tmp_path / "data")
    result = run_cli("import", "-q", "--data-dir", data_dir, str(tmp_path / "empty"))
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout) == (0, 0, 0, 0)
    result = run_cli(
        "import", "-q", "--data-dir", data_dir, str(tmp_path / "empty"), str(tmp_path / "nope")
    )
    assert result.returncode == 1
    assert f"not found: {tmp_path / 'nope'}" in result.stderr


def test_import_of_a_single_file_argument(tmp_path: Path) -> None:
    ds = make_dataset()
    path = put(tmp_path / "one.dcm", to_part10(ds))
    del path
    result = run_cli("import", "-q", "--data-dir", str(tmp_path / "d"), str(tmp_path / "one.dcm"))
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout) == (1, 0, 0, 1)


# -- serve -----------------------------------------------------------------------------


def test_serve_help_documents_options_and_environment() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    for option, env in [
        ("--host", "DICOMWEB_HOST"),
        ("--port", "DICOMWEB_PORT"),
        ("--data-dir", "DICOMWEB_DATA_DIR"),
        ("--database-url", "DICOMWEB_DATABASE_URL"),
        ("--config", "DICOMWEB_CONFIG"),
        ("--workers", "DICOMWEB_WORKERS"),
        ("--insecure", "DICOMWEB_INSECURE"),
    ]:
        assert option in help_text, option
        assert f"[env {env}]" in help_text, env
    for command in ("import", "migrate"):
        sub = " ".join(run_cli(command, "--help").stdout.split())
        assert "[env DICOMWEB_DATA_DIR]" in sub and "[env DICOMWEB_DATABASE_URL]" in sub


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_serve_refuses_a_public_address_without_insecure(tmp_path: Path, how: str) -> None:
    data_dir = tmp_path / "data"
    port = str(free_port())
    args = ["serve", "--data-dir", str(data_dir), "--port", port]
    env: dict[str, str] = {}
    if how == "flag":
        args += ["--host", "0.0.0.0"]
    elif how == "env":
        env["DICOMWEB_HOST"] = "0.0.0.0"
    else:
        (tmp_path / "c.toml").write_text('[server]\nhost = "0.0.0.0"\n')
        args += ["--config", str(tmp_path / "c.toml")]
    started = time.monotonic()
    result = run_cli(*args, env=env, timeout=30)
    assert result.returncode == 2
    assert time.monotonic() - started < 20
    assert "refusing to serve on 0.0.0.0" in result.stderr
    assert "--insecure" in result.stderr
    assert "Uvicorn running" not in result.stderr + result.stdout
    assert not data_dir.exists()  # not even prepared


def test_serve_insecure_passes_the_bind_check_loudly(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is never ours: --insecure gets the start past the check,
    # then the bind itself fails, so nothing ever listens beyond loopback in tests.
    result = run_cli(
        "serve", "--host", "192.0.2.1", "--port", "8999", "--insecure",
        "--data-dir", str(tmp_path / "d"), timeout=60,
    )  # fmt: skip
    assert "SERVING WITHOUT AUTHENTICATION ON 192.0.2.1" in result.stderr
    assert "refusing to serve" not in result.stderr
    assert result.returncode != 0


def test_serve_with_a_bad_setting_exits_with_a_message(tmp_path: Path) -> None:
    result = run_cli(
        "serve", "--data-dir", str(tmp_path / "d"), env={"DICOMWEB_PORT": "eighty"}, timeout=30
    )
    assert result.returncode == 2
    assert "DICOMWEB_PORT: port must be an integer" in result.stderr
    assert "Traceback" not in result.stderr


# -- migrate and settings precedence -----------------------------------------------------


def _versions(database_url: str) -> list[int]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT version FROM schema_version"))]
    finally:
        engine.dispose()


def test_migrate_is_idempotent_and_records_the_version(tmp_path: Path, database_url: str) -> None:
    from dicomweb_server.storage.sql.engine import MIGRATIONS

    args = ("migrate", "--data-dir", str(tmp_path / "data"), "--database-url", database_url)
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "up to date" in first.stdout
    assert _versions(database_url) == sorted(MIGRATIONS)
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert _versions(database_url) == sorted(MIGRATIONS)


def test_migrate_on_an_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    url = "postgresql+psycopg://nobody:pw@/no_such_db_dwtest?host=/nonexistent-socket-dir"
    result = run_cli("migrate", "--data-dir", str(tmp_path / "d"), "--database-url", url)
    assert result.returncode == 1
    assert "cannot use the index database" in result.stderr
    assert "Traceback" not in result.stderr
    assert "pw" not in result.stderr.replace("pw@", "")  # password not echoed
    assert ":***@" in result.stderr


def test_settings_precedence_through_the_cli(tmp_path: Path) -> None:
    """defaults < --config file < environment < flags, seen by where migrate puts the index."""
    config = tmp_path / "c.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "from-file"}"\n')

    def index_dir(*args: str, env: dict[str, str] | None = None) -> set[str]:
        result = run_cli("migrate", *args, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return {p.parent.name for p in tmp_path.rglob("index.sqlite3")}

    assert index_dir() == {"data"}  # default ./data, relative to the working directory
    assert index_dir("--config", str(config)) == {"data", "from-file"}
    # The config file named by the environment is read too.
    env_config = {"DICOMWEB_CONFIG": str(config)}
    (tmp_path / "from-file" / "index.sqlite3").unlink()
    assert index_dir(env=env_config) == {"data", "from-file"}
    env = {"DICOMWEB_DATA_DIR": str(tmp_path / "from-env")}
    assert index_dir("--config", str(config), env=env) == {"data", "from-file", "from-env"}
    assert index_dir(
        "--config", str(config), "--data-dir", str(tmp_path / "from-flag"), env=env
    ) == {
        "data",
        "from-file",
        "from-env",
        "from-flag",
    }
    bad = run_cli("migrate", "--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert bad.returncode == 2
    assert "cannot read config file" in bad.stderr


# -- operational commands while serving ---------------------------------------------------


def _gated_body(body: bytes, gate: threading.Event) -> Iterator[bytes]:
    half = len(body) // 2
    yield body[:half]
    gate.wait(60)
    yield body[half:]


@pytest.mark.parametrize(("backend", "command"), [("sqlite", "migrate"), ("postgresql", "import")])
def test_commands_while_serving_keep_uploads_in_flight(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str, command: str
) -> None:
    """`prepare` cleans the spool only when no other process uses it."""
    database_url = make_database_url(backend, tmp_path, request)
    data_dir = tmp_path / "data"
    server = start_server(data_dir, database_url)
    try:
        ds = make_dataset(rows=256, columns=256)
        payload = to_part10(ds)
        body, content_type = multipart([payload])
        gate = threading.Event()
        outcome: dict[str, httpx.Response | BaseException] = {}

        def send() -> None:
            try:
                outcome["r"] = httpx.post(
                    f"{server.url}/studies",
                    content=_gated_body(body, gate),
                    headers={"Content-Type": content_type},
                    timeout=60,
                )
            except BaseException as exc:
                outcome["r"] = exc

        thread = threading.Thread(target=send)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not spooled(data_dir):
                assert time.monotonic() < deadline, "upload never reached the spool"
                time.sleep(0.05)
            other = tmp_path / "other.dcm"
            other.write_bytes(to_part10(make_dataset()))
            args = ["--data-dir", str(data_dir), "--database-url", database_url]
            if command == "import":
                args += ["-q", str(other)]
            result = run_cli(command, *args)
            assert result.returncode == 0, result.stderr
        finally:
            gate.set()
            thread.join(60)
        response = outcome["r"]
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200, response.text
        assert retrieve_raw(
            server, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        ) == (payload)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_serve_stops_cleanly_on_sigterm_and_sigint(tmp_path: Path) -> None:
    """Graceful shutdown; uvicorn then re-raises the signal, so the exit status is the
    signal (which service managers such as systemd count as a clean stop)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        server = start_server(tmp_path / "data", f"sqlite:///{tmp_path / 'i.sqlite3'}")
        server.stop(sig)
        assert server.process.returncode in (0, -sig), server.log()
        assert "Application shutdown complete" in server.log()
        assert "Traceback" not in server.log()


def test_module_entry_point_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicomweb_server.cli", "--version"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*\n", result.stdout)


def test_concurrent_migrations_on_one_database(tmp_path: Path, database_url: str) -> None:
    """Several servers/commands starting at once against one fresh index all succeed."""

    def migrate(n: int) -> subprocess.Popen[str]:
        args = ["migrate", "--data-dir", str(tmp_path / f"d{n}"), "--database-url", database_url]
        return subprocess.Popen(
            [sys.executable, "-m", "dicomweb_server.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    procs = [migrate(n) for n in range(4)]
    outcomes = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outcomes, strict=True):
        assert proc.returncode == 0, err
    from dicomweb_server.storage.sql.engine import MIGRATIONS

    assert _versions(database_url) == sorted(MIGRATIONS)


def test_serve_on_a_port_in_use_exits_with_a_message(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "serve", "--port", str(port), "--data-dir", str(tmp_path / "d"), timeout=60
        )
    assert result.returncode != 0
    assert "address already in use" in result.stderr
