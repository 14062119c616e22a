"""Single frames answered by the HTTP protocol itself (web/protocol.py), on a real uvicorn
server in this process: the same answers, gate and audit records as the ASGI path, and
HTTP/1.1 kept (keep-alive, pipelining, Connection: close, HTTP/1.0)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote

import httpx
import orjson
import pytest
import uvicorn
from pydicom.dataset import Dataset

from dicomweb_server.bootstrap import Services, prepare
from dicomweb_server.config import Settings
from dicomweb_server.services.credentials import hash_secret
from dicomweb_server.storage import page_cache
from dicomweb_server.web.app import create_app
from dicomweb_server.web.protocol import DicomWebHttpProtocol
from tests.conftest import free_port
from tests.dicomgen import make_dataset
from tests.test_web_fast_frames import _shape, _split
from tests.test_web_pixel import OCTET_ANY, part10, path_of

KEY = "dwk_protocol-viewer-0123456789abcdef"
FRAME_BYTES = 32 * 32 * 2


@dataclass
class Running:
    url: str
    port: int
    services: Services
    source: Dataset
    data_dir: Path
    calls: list[tuple[bool, bool]]  # per shortcut call: (answered, from the file)

    def frame_path(self, number: int) -> str:
        return f"/dicom-web{path_of(self.source)}/frames/{number}"

    def frame(self, number: int) -> bytes:
        return bytes(self.source.PixelData)[(number - 1) * FRAME_BYTES : number * FRAME_BYTES]

    def audit(self) -> list[dict[str, Any]]:
        path = self.data_dir / "audit" / "audit.jsonl"
        return [orjson.loads(line) for line in path.read_bytes().splitlines()]


class _Protocol(DicomWebHttpProtocol):
    """pytest attaches its log capture to every non-propagating logger, uvicorn's access
    logger too, so uvicorn (and with it the shortcut) would see an access log where
    `serve` has none."""

    def connection_made(self, transport: Any) -> None:
        self.access_log = False
        super().connection_made(transport)


def _serve(tmp_path: Path, keep_alive: int = 5, **settings: Any) -> Iterator[Running]:
    config = Settings(data_dir=tmp_path / "data", viewer_enabled=False, **settings)
    prepare(config)
    app = create_app(config)
    shortcut = app.state.frame_shortcut
    calls: list[tuple[bool, bool]] = []
    answer = shortcut.answer

    def spying(scope: Any, to_file: bool) -> Any:
        found = answer(scope, to_file)
        calls.append((found is not None, found is not None and found.file is not None))
        return found

    shortcut.answer = spying
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            http=_Protocol,
            lifespan="on",
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_keep_alive=keep_alive,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        services: Services = app.state.services
        ds = make_dataset(frames=4, rows=32, columns=32)
        source = tmp_path / "one.dcm"
        source.write_bytes(part10(ds))
        assert services.store.store_copy(source).stored
        yield Running(f"http://127.0.0.1:{port}", port, services, ds, config.data_dir, calls)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    yield from _serve(tmp_path)


def _get(client: httpx.Client, run: Running, number: int, **headers: str) -> httpx.Response:
    return client.get(run.url + run.frame_path(number), headers={"Accept": OCTET_ANY, **headers})


def _request(run: Running, target: str, *extra: str, version: str = "1.1") -> bytes:
    lines = [f"GET {target} HTTP/{version}", f"Host: 127.0.0.1:{run.port}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(reader: Any) -> tuple[int, dict[str, str], bytes]:
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, reader.read(int(headers["content-length"]))


def test_frames_are_answered_before_the_asgi_stack_as_the_general_path_answers_them(
    running: Running,
) -> None:
    with httpx.Client(timeout=30) as client:
        first = _get(client, running, 2)  # locates the instance (general path)
        fast = _get(client, running, 2)
        general = client.get(f"{running.url}{running.frame_path(2)}?accept={quote(OCTET_ANY)}")
    assert first.status_code == fast.status_code == general.status_code == 200
    assert _shape(fast) == _shape(general) == _shape(first)
    assert _split(fast)[1] == running.frame(2)
    # The first was not ready; a query parameter never reaches the shortcut.
    assert [answered for answered, _ in running.calls] == [False, True]


@pytest.mark.parametrize("mode", ["sendfile", "partial", "blocked", "read"])
def test_every_way_of_sending_gives_the_same_bytes(
    running: Running, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """All of the frame by sendfile; part of it, the rest through the transport; none
    (the socket full); or read into memory when the page cache cannot be asked."""
    sendfile = os.sendfile
    if mode == "partial":
        monkeypatch.setattr(os, "sendfile", lambda s, f, o, n: sendfile(s, f, o, min(n, 1000)))
    elif mode == "blocked":

        def full(*_: Any) -> int:
            raise BlockingIOError

        monkeypatch.setattr(os, "sendfile", full)
    elif mode == "read":
        monkeypatch.setattr(page_cache, "all_cached", lambda fd, offset, length: False)
    with httpx.Client(timeout=30) as client:
        _get(client, running, 1)
        bodies = [_split(_get(client, running, n))[1] for n in (1, 2, 3, 4, 3)]
    assert bodies == [running.frame(n) for n in (1, 2, 3, 4, 3)]
    answered = running.calls[1:]
    assert all(done for done, _ in answered) and len(answered) == 5
    if mode == "read" or not _cachestat_works(running):
        assert not any(from_file for _, from_file in answered)
    else:
        assert all(from_file for _, from_file in answered)


def test_pipelined_requests_are_answered_in_order(running: Running) -> None:
    with httpx.Client(timeout=30) as client:
        assert _get(client, running, 1).status_code == 200
    accept = f"Accept: {OCTET_ANY}"
    requests = [
        _request(running, running.frame_path(3), accept),
        _request(running, "/health"),
        _request(running, running.frame_path(1), accept),
        _request(running, running.frame_path(4), accept),
    ]
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        sock.sendall(b"".join(requests))
        reader = sock.makefile("rb")
        answers = [_read_response(reader) for _ in requests]
    assert [status for status, _, _ in answers] == [200] * 4
    assert orjson.loads(answers[1][2])["status"] == "ok"
    for (_, headers, body), number in zip(
        (answers[0], answers[2], answers[3]), (3, 1, 4), strict=True
    ):
        boundary = headers["content-type"].split("boundary=")[1].encode()
        part = body.split(b"--" + boundary)[1].partition(b"\r\n\r\n")[2][:-2]
        assert part == running.frame(number)


@pytest.mark.parametrize("how", ["close", "http/1.0"])
def test_a_connection_that_asks_to_close_is_closed_after_the_frame(
    running: Running, how: str
) -> None:
    with httpx.Client(timeout=30) as client:
        assert _get(client, running, 2).status_code == 200
    accept = f"Accept: {OCTET_ANY}"
    if how == "close":
        request = _request(running, running.frame_path(2), accept, "Connection: close")
    else:
        request = _request(running, running.frame_path(2), accept, version="1.0")
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        status, headers, body = _read_response(reader)
        assert reader.read() == b""  # the server closed the connection
    assert status == 200 and headers["connection"] == "close"
    assert running.frame(2) in body
    assert running.calls[-1] == (True, running.calls[-1][1])


def test_many_frames_on_one_kept_alive_connection(running: Running) -> None:
    with httpx.Client(timeout=30) as client:
        numbers = [1 + k % 4 for k in range(60)]
        bodies = [_split(_get(client, running, n))[1] for n in numbers]
    assert bodies == [running.frame(n) for n in numbers]
    assert sum(done for done, _ in running.calls) >= 59


def test_head_requests_and_frames_not_in_memory_take_the_general_path(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    with httpx.Client(timeout=30) as client:
        assert _get(client, running, 1).status_code == 200
        head = client.head(running.url + running.frame_path(1), headers={"Accept": OCTET_ANY})
        assert head.status_code == 200 and head.content == b""
        monkeypatch.setattr(running.services.blobs, "read_now_into", lambda *_: False)
        monkeypatch.setattr(running.services.blobs, "open_cached", lambda *_: None)
        cold = _get(client, running, 3)
    assert cold.status_code == 200 and _split(cold)[1] == running.frame(3)
    assert [done for done, _ in running.calls] == [False, False]


def test_each_frame_is_audited_with_who_asked(tmp_path: Path) -> None:
    keys = (f"viewer:reader:{hash_secret(KEY, fast=True)}",)
    for run in _serve(tmp_path, auth_api_keys=keys):
        with httpx.Client(timeout=30) as client:
            assert _get(client, run, 1, **{"X-API-Key": KEY}).status_code == 200
            for number in (2, 3):
                answer = _get(client, run, number, **{"X-API-Key": KEY})
                assert _split(answer)[1] == run.frame(number)
            refused = _get(client, run, 2)
            wrong = _get(client, run, 2, **{"X-API-Key": KEY + "x"})
        assert [done for done, _ in run.calls] == [False, True, True, False, False]
        assert refused.status_code == wrong.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        records = run.audit()
        accessed = [r for r in records if r["event_id"]["code"] == "110103"]
        assert [r["path"] for r in accessed] == [run.frame_path(n) for n in (1, 2, 3)]
        for record in accessed:
            assert record["user"] == "viewer" and record["status"] == 200
            assert record["source_ip"] == "127.0.0.1"
            assert record["sop_instance_uids"] == [run.source.SOPInstanceUID]
        failed = [r for r in records if r["event_id"]["code"] == "110114"]
        assert len(failed) == 2 and all(r["status"] == 401 for r in failed)


def test_cross_origin_requests_get_the_cors_headers(tmp_path: Path) -> None:
    origin = "https://viewer.example.org"
    for run in _serve(tmp_path, cors_origins=(origin,)):
        with httpx.Client(timeout=30) as client:
            _get(client, run, 1)
            plain = _get(client, run, 1)
            crossing = _get(client, run, 1, Origin=origin)
        assert plain.status_code == crossing.status_code == 200
        assert crossing.headers["access-control-allow-origin"] == origin
        assert _split(crossing)[1] == run.frame(1)
        assert [done for done, _ in run.calls] == [False, True, False]


def _cachestat_works(run: Running) -> bool:
    """Whether this kernel answers cachestat(2) (Linux 6.5+): a file just read is cached."""
    probe = run.data_dir / "probe"
    probe.write_bytes(b"x" * 8192)
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.read(fd, 8192)
        return page_cache.all_cached(fd, 0, 8192)
    finally:
        os.close(fd)
        probe.unlink()


def test_page_cache_tells_cached_from_evicted(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(64 * 4096))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.read(fd, 64 * 4096)
        if not page_cache.all_cached(fd, 0, 64 * 4096):
            pytest.skip("this kernel has no cachestat(2) (Linux 6.5+): ranges count as uncached")
        assert page_cache.all_cached(fd, 5000, 20_000)
        assert not page_cache.all_cached(fd, 0, 0)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert not page_cache.all_cached(fd, 5000, 20_000)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead
        os.pread(fd, 8 * 4096, 0)
        assert page_cache.all_cached(fd, 100, 8 * 4096 - 200)
        assert not page_cache.all_cached(fd, 60 * 4096, 4096)
        assert not page_cache.all_cached(fd, 0, 64 * 4096)
    finally:
        os.close(fd)


def test_a_request_pipelined_behind_a_frame_outlives_the_keep_alive_timer(
    tmp_path: Path,
) -> None:
    """The answered frame arms the idle timer; the request right behind it (here a STOW
    whose body comes after the timeout) must still get its answer."""
    for run in _serve(tmp_path, keep_alive=1):
        with httpx.Client(timeout=30) as client:
            assert _get(client, run, 1).status_code == 200
        body = b"--b\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--b--\r\n"
        post = (
            f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1:{run.port}\r\n"
            'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        frame = _request(run, run.frame_path(2), f"Accept: {OCTET_ANY}")
        with socket.create_connection(("127.0.0.1", run.port), timeout=30) as sock:
            sock.sendall(frame + post)
            time.sleep(1.8)  # past the keep-alive timeout, the POST's body not yet sent
            sock.sendall(body)
            reader = sock.makefile("rb")
            status, _, _ = _read_response(reader)
            second, _, answer = _read_response(reader)
        assert status == 200
        assert run.calls[-1][0]  # the frame was answered by the shortcut
        assert second == 400, answer  # the STOW's own answer: its one part failed


def test_a_failure_after_the_head_closes_the_connection_and_nothing_else(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    with httpx.Client(timeout=30) as client:
        assert _get(client, running, 1).status_code == 200
    sendfile = os.sendfile

    def broken(fd: int, length: int, offset: int) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "sendfile", lambda s, f, o, n: sendfile(s, f, o, min(n, 100)))
    monkeypatch.setattr(os, "pread", broken)
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        sock.sendall(_request(running, running.frame_path(2), f"Accept: {OCTET_ANY}"))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 OK")
    assert b"Invalid HTTP request" not in received and b"HTTP/1.1 400" not in received
    monkeypatch.undo()
    with httpx.Client(timeout=30) as client:  # the server goes on serving
        assert _split(_get(client, running, 2))[1] == running.frame(2)


def test_other_requests_check_credentials_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shortcut declines anything but a frame before looking at credentials, so a
    key (scrypt-hashed ones are slow) is checked once per request, not twice."""
    from dicomweb_server.services import credentials

    spy = mock.Mock(wraps=credentials.verify_secret)
    monkeypatch.setattr(credentials, "verify_secret", spy)
    keys = (f"viewer:reader:{hash_secret(KEY, fast=True)}",)
    for run in _serve(tmp_path, auth_api_keys=keys):
        with httpx.Client(timeout=30) as client:
            for key in (KEY, KEY + "x"):
                client.get(f"{run.url}/health", headers={"X-API-Key": key})
    checked = [call.args[0] for call in spy.call_args_list]
    assert checked == [KEY, KEY + "x"]
