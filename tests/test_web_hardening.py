"""Transport and limits on a real server: HTTPS with a CA made in the test, HSTS,
CORS, oversized and slow requests refused while the server keeps serving."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dicomweb_server.services.credentials import hash_secret
from tests.conftest import REPO, free_port
from tests.dicomgen import make_dataset, multipart, to_part10
from tests.tlsgen import TlsFiles, make_tls

KEY = "dwk_hardening-0123456789abcdef"
ORIGIN = "https://viewer.example.test"


@dataclass
class TlsServer:
    process: subprocess.Popen[bytes]
    port: int
    tls: TlsFiles
    log_path: Path

    @property
    def root(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self, **kwargs: object) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        return httpx.Client(verify=context, timeout=30, **kwargs)  # type: ignore[arg-type]

    def alive(self) -> bool:
        return self.process.poll() is None


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    tmp = tmp_path_factory.mktemp("tls")
    tls = make_tls(tmp)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    env.update(
        DICOMWEB_AUTH_API_KEYS=f"ci:writer:{hash_secret(KEY, fast=True)}",
        DICOMWEB_MAX_REQUEST_BYTES=str(1024 * 1024),
        DICOMWEB_MAX_PARTS="3",
        DICOMWEB_MAX_HEADER_BYTES="8192",
        DICOMWEB_BODY_TIMEOUT_SECONDS="2",
    )
    cmd = [
        sys.executable, "-m", "dicomweb_server.cli", "serve", "--port", str(port),
        "--data-dir", str(tmp / "data"), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
        "--cors-origins", ORIGIN, "--no-dimse",  # 11112 may be another run's
    ]  # fmt: skip
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    server = TlsServer(process, port, tls, log_path)
    try:
        with server.client() as client:
            for _ in range(300):
                assert server.alive(), log_path.read_text()
                try:
                    if client.get(server.root + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            else:
                raise AssertionError("TLS server did not start:\n" + log_path.read_text())
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def test_https_with_hsts(tls_server: TlsServer) -> None:
    with tls_server.client() as client:
        response = client.get(tls_server.root + "/health")
        assert response.status_code == 200
        assert response.headers["strict-transport-security"].startswith("max-age=31536000")
        refused = client.get(tls_server.root + "/dicom-web/studies")
        assert refused.status_code == 401 and "strict-transport-security" in refused.headers
        ok = client.get(tls_server.root + "/dicom-web/studies", headers={"X-API-Key": KEY})
        assert ok.status_code in (200, 204)
    # A client that does not trust our CA refuses the connection; plain HTTP gets nothing.
    with pytest.raises(httpx.ConnectError):
        httpx.get(tls_server.root + "/health", timeout=10)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/health", timeout=10)
    assert "https://127.0.0.1" in tls_server.log_path.read_text()


def test_cors_allows_only_configured_origins(tls_server: TlsServer) -> None:
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    with tls_server.client() as client:
        url = tls_server.root + "/dicom-web/studies"
        ok = client.options(url, headers={"Origin": ORIGIN, **preflight})
        assert ok.status_code == 200  # preflights carry no credentials and need none
        assert ok.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        evil = client.options(url, headers={"Origin": "https://evil.test", **preflight})
        assert "access-control-allow-origin" not in evil.headers
        got = client.get(url, headers={"Origin": ORIGIN, "X-API-Key": KEY})
        assert got.headers["access-control-allow-origin"] == ORIGIN
        assert "warning" in got.headers["access-control-expose-headers"].lower()


def _stow_chunks(count: int, size: int) -> Iterator[bytes]:
    yield b"--x\r\nContent-Type: application/dicom\r\n\r\n"
    for _ in range(count):
        yield b"\0" * size


def test_oversized_bodies_are_refused_streaming(tls_server: TlsServer) -> None:
    content_type = 'multipart/related; type="application/dicom"; boundary=x'
    headers = {"X-API-Key": KEY, "Content-Type": content_type}
    url = tls_server.root + "/dicom-web/studies"
    with tls_server.client() as client:
        # Chunked: no length announced; refused once 1 MiB has arrived.
        chunked = client.post(url, headers=headers, content=_stow_chunks(64, 64 * 1024))
        assert chunked.status_code == 413, chunked.text
        parts = [to_part10(make_dataset()) for _ in range(4)]
        body, content_type = multipart(parts)  # more parts than max_parts (3)
        many = client.post(
            url, headers={"X-API-Key": KEY, "Content-Type": content_type}, content=body
        )
        assert many.status_code in (400, 413) and "part" in many.text
        assert client.get(tls_server.root + "/health").status_code == 200


def test_a_declared_huge_length_is_refused_at_once(tls_server: TlsServer) -> None:
    with _tls_socket(tls_server) as sock:
        sock.sendall(
            b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
            + b"\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=x\r\n"
            b"Content-Length: 1099511627776\r\n\r\n"
        )  # fmt: skip
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_huge_headers_are_refused(tls_server: TlsServer) -> None:
    with tls_server.client() as client:
        try:
            response = client.get(tls_server.root + "/health", headers={"X-Big": "a" * 20_000})
            assert response.status_code in (400, 431)
        except httpx.RemoteProtocolError:
            pass  # the server closed the connection: also a refusal
        assert client.get(tls_server.root + "/health").status_code == 200


def test_endless_headers_are_cut_off(tls_server: TlsServer) -> None:
    """httptools alone would buffer them all; our protocol stops at max_header_bytes."""
    sent = 0
    with _tls_socket(tls_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(400):  # up to 20 MB
                sock.sendall(b"X-Filler: " + b"a" * 50_000 + b"\r\n")
                sent += 50_000
        except OSError:
            pass
        try:
            reply = sock.recv(4096)
        except OSError:
            reply = b""
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    # Over TLS the transport reads and drops what follows; it is never kept.
    status = Path(f"/proc/{tls_server.process.pid}/status").read_text()
    rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
    assert rss_kb < 250_000, (rss_kb, sent)
    with tls_server.client() as client:
        assert client.get(tls_server.root + "/health").status_code == 200


def _tls_socket(server: TlsServer) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(server.tls.ca_cert))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_a_stalled_body_is_answered_408(tls_server: TlsServer) -> None:
    with _tls_socket(tls_server) as sock:
        sock.sendall(
            b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
            + b"\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=x\r\n"
            b"Content-Length: 100000\r\n\r\n--x\r\n"
        )  # fmt: skip
        started = time.monotonic()
        reply = sock.recv(4096)
        waited = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert 1.5 < waited < 20
    with tls_server.client() as client:
        assert client.get(tls_server.root + "/health").status_code == 200


def test_anonymous_uploads_are_refused_without_reading_them(tls_server: TlsServer) -> None:
    content_type = 'multipart/related; type="application/dicom"; boundary=x'
    with tls_server.client() as client:
        started = time.monotonic()
        response = client.post(
            tls_server.root + "/dicom-web/studies",
            headers={"Content-Type": content_type},
            content=_stow_chunks(48, 64 * 1024),  # 3 MiB, chunked
        )
        assert response.status_code == 401
        assert time.monotonic() - started < 20
        assert client.get(tls_server.root + "/health").status_code == 200
