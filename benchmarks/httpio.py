"""Minimal, low-overhead HTTP/1.1 client helpers on top of http.client (keep-alive).

The benchmark client must not be the bottleneck, so request bodies are built before
timing starts and responses are read in large chunks.
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

BOUNDARY = "dcmbench-9f2c1e4b7a6d4e0f8b3c5a1d2e7f6a90"
DICOM_MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
ACCEPT_SERIES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class BaseUrl:
    host: str
    port: int
    prefix: str  # path prefix without trailing slash, e.g. "/dicom-web"

    @classmethod
    def parse(cls, url: str) -> BaseUrl:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http:// URLs are supported: {url}")
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"benchmarks only target loopback addresses: {url}")
        return cls(parts.hostname, parts.port or 80, parts.path.rstrip("/"))

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    nbytes: int  # bytes of body received (also when the body was not kept)
    seconds: float
    ttfb: float  # time until the status line and headers were received


class Client:
    """One keep-alive connection; reconnects transparently after errors."""

    def __init__(self, base: BaseUrl, timeout: float = 300.0) -> None:
        self.base = base
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(
                self.base.host, self.base.port, timeout=self.timeout
            )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        keep_body: bool = True,
    ) -> Response:
        """Send a request and read the full response; `path` is relative to the prefix."""
        url = path if path.startswith("http") else self.base.prefix + path
        t0 = time.perf_counter()
        conn = self._connection()
        try:
            conn.request(method, url, body=body, headers=headers or {})
            resp = conn.getresponse()
            ttfb = time.perf_counter() - t0
            data, nbytes = _read_all(resp, keep_body)
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        elapsed = time.perf_counter() - t0
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        if resp.will_close:
            self.close()
        return Response(resp.status, hdrs, data, nbytes, elapsed, ttfb)


def _read_all(resp: http.client.HTTPResponse, keep: bool) -> tuple[bytes, int]:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = resp.read(READ_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if keep:
            chunks.append(chunk)
    return b"".join(chunks), total


def multipart_body(parts: list[bytes], content_type: str = "application/dicom") -> bytes:
    """A multipart/related body with the fixed BOUNDARY."""
    sep = f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode()
    out: list[bytes] = []
    for part in parts:
        if BOUNDARY.encode() in part:
            raise ValueError("boundary occurs inside a part")
        out += [sep, part, b"\r\n"]
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


def boundary_of(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"')
    return None


def split_multipart(body: bytes, content_type: str) -> list[memoryview]:
    """Payloads of a multipart response (headers of each part stripped), as views of
    ``body``: checking a 512 KB frame copied it three times (0.2-0.3 ms of the client's
    time per request on the benchmark VM, on the cores the servers share)."""
    boundary = boundary_of(content_type)
    if not boundary:
        raise ValueError(f"no boundary in Content-Type: {content_type!r}")
    delim = b"--" + boundary.encode()
    view = memoryview(body)
    parts: list[memoryview] = []
    at = body.find(delim)
    while at >= 0:
        start = at + len(delim)
        if body.startswith(b"--", start):
            break
        following = body.find(delim, start)
        end = following if following >= 0 else len(body)
        head_end = body.find(b"\r\n\r\n", start, end)
        if head_end >= 0:
            payload = head_end + 4
            if body.endswith(b"\r\n", payload, end):
                end -= 2
            parts.append(view[payload:end])
        at = following
    return parts
