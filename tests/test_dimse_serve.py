"""`serve` and the DIMSE listener: one listener whatever the worker count, settings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.conftest import free_port, run_cli, start_server


def _listeners(port: int) -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "0A":
                count += 1
    return count


def _echo(port: int, aet: str = "DICOMWEB") -> int:
    result = subprocess.run(
        ["echoscu", "-aec", aet, "127.0.0.1", str(port)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode


def test_one_dimse_listener_beside_several_http_workers(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'i.sqlite3'}",
        "--workers",
        "2",
        "--dimse-aet",
        "ARCHIVE",
    )
    try:
        assert _listeners(server.dimse_port) == 1
        assert _echo(server.dimse_port, "ARCHIVE") == 0
        assert _echo(server.dimse_port, "DICOMWEB") != 0  # called AE title checked
        assert httpx.get(f"{server.root}/health", timeout=30).status_code == 200
    finally:
        server.stop()
    assert _listeners(server.dimse_port) == 0


def test_no_dimse_starts_http_only(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'i.sqlite3'}",
        "--no-dimse",
        env={"DICOMWEB_DIMSE_PORT": str(port)},
    )
    try:
        assert httpx.get(f"{server.root}/health", timeout=30).status_code == 200
        assert _listeners(port) == 0
    finally:
        server.stop()


def test_bad_dimse_settings_stop_serve_with_a_message(tmp_path: Path) -> None:
    cases = [
        (["--dimse-port", "70000"], {}, "dimse_port"),
        (["--dimse-aet", "A-TITLE-LONGER-THAN-16"], {}, "dimse_aet"),
        ([], {"DICOMWEB_DIMSE_MODALITIES": "PACS@host"}, "AET@host:port"),
        ([], {"DICOMWEB_DIMSE_MODALITIES": "PACS@h:104/fly"}, "unknown operation"),
    ]
    for args, env, message in cases:
        result = run_cli(
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--port",
            str(free_port()),
            *args,
            env=env,
            timeout=60,
        )
        assert result.returncode == 2, (args, env, result.stderr)
        assert message in result.stderr, result.stderr


def test_dimse_port_in_use_exits_with_a_message(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--port",
            str(free_port()),
            "--dimse-port",
            str(port),
            timeout=60,
        )
    assert result.returncode == 1
    assert "DIMSE port" in result.stderr and "--no-dimse" in result.stderr


def test_serve_help_documents_the_dimse_flags() -> None:
    text = " ".join(run_cli("serve", "--help").stdout.split())
    for env in ("DICOMWEB_DIMSE_AET", "DICOMWEB_DIMSE_PORT", "DICOMWEB_DIMSE_REJECT_UNKNOWN"):
        assert env in text


def test_stop_does_not_wait_for_an_idle_association(tmp_path: Path) -> None:
    """SIGTERM aborts open associations instead of waiting up to the network timeout."""
    import signal
    import time

    from pynetdicom import AE

    server = start_server(tmp_path / "data", f"sqlite:///{tmp_path / 'i.sqlite3'}")
    ae = AE(ae_title="IDLE")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMWEB")
    try:
        assert assoc.is_established
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted
    finally:
        server.stop()
        if assoc.is_established:
            assoc.abort()
