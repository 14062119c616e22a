"""Hostile input on the HTTP surface of a real server, on both indexes: traversal and
injection strings on every path parameter of every route and on every QIDO parameter
the index supports, then a bounded hypothesis fuzz. Never a 5xx, never a hang, never
data or internals leaked."""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import keyword_for_tag
from starlette.routing import BaseRoute, Mount, Route

from dicomweb_server.config import load_settings
from dicomweb_server.storage.sql.query import SUPPORTED_TAGS
from dicomweb_server.web.app import create_app
from tests.conftest import Server, unexpected_tracebacks
from tests.conftest import http as shared_http
from tests.dicomgen import make_dataset, multipart, to_part10

# As they would appear in a URL: some raw, some percent-encoded once or twice.
PATH_ATTACKS = [
    "..", "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2f", "%252e%252e%252f",
    "%00", "1.2.3%00.4", "a" * 5000, "1." * 2000, "'%20OR%201=1%20--", "*", "%5C", "%5C..%5C",
    "1.2.3;DROP%20TABLE%20study", "%22%3E%3Cscript%3E", "%24%7Bjndi:ldap://x%7D", "%EF%BC%91",
    "%FF%FE", "1.2.840.10008.1.2.1/..", "~", "%20", "-1", "0.0",
]  # fmt: skip
QUERY_ATTACKS = [
    "' OR 1=1 --", "'; DROP TABLE study; --", "\" OR \"\"=\"", "\\", "\\\\'", "%", "_",
    "1) OR (1=1", "\x00", "a" * 10_000, "../../etc/passwd", "${jndi:ldap://x}",
    "20240101-20240102-", "*" * 100, "?" * 100, "[]{}", "\u202e\ufffd", "%00",
]  # fmt: skip
LEAKS = re.compile(
    r"Traceback|/work/|site-packages|sqlalchemy|psycopg|sqlite3|SELECT |File \"", re.IGNORECASE
)
UID = "1.2.826.0.1.3680043.8.498.777"
PATIENT = "FUZZ-PID"


VIEWER_CATCH_ALL = "/{path:path}"


def _routes() -> Iterator[tuple[str, str]]:
    app = create_app(load_settings(environ={}, data_dir=Path("unused")))

    def walk(routes: list[BaseRoute], prefix: str) -> Iterator[tuple[str, str]]:
        for route in routes:
            if isinstance(route, Mount):
                yield from walk(list(route.routes), prefix + route.path)
            elif isinstance(route, Route):
                for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                    yield method, prefix + route.path

    yield from walk(list(app.routes), "")


@pytest.fixture(scope="module")
def fuzzed(shared_server: Server) -> Iterator[Server]:
    ds = make_dataset(patient_id=PATIENT, patient_name="Fuzz^Target")
    body, content_type = multipart([to_part10(ds)])
    stored = shared_http().post(
        f"{shared_server.url}/studies", content=body, headers={"Content-Type": content_type}
    )
    assert stored.status_code == 200, stored.text
    yield shared_server
    assert shared_server.alive()
    httpx.get(f"{shared_server.root}/health", timeout=30).raise_for_status()
    assert not unexpected_tracebacks(shared_server.log())


def _raw(server: Server, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """A request whose target is sent exactly as given (httpx would normalize '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        conn.putheader("Content-Length", str(len(body)))
        if body:
            conn.putheader("Content-Type", "multipart/related; boundary=x")
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _check(status: int, body: bytes, what: str) -> None:
    assert status < 500, (what, status, body[:300])
    assert not LEAKS.search(body.decode("latin-1")), (what, body[:500])


def test_traversal_and_injection_on_every_path_parameter(fuzzed: Server) -> None:
    checked = 0
    for method, pattern in _routes():
        params = re.findall(r"\{([^}]+)\}", pattern)
        for param in params:
            for attack in PATH_ATTACKS:
                target = pattern
                for other in params:
                    target = target.replace("{" + other + "}", attack if other == param else UID)
                body = b"--x--\r\n" if method == "POST" else b""
                status, content = _raw(fuzzed, method, target, body)
                _check(status, content, f"{method} {target[:200]}")
                if pattern == VIEWER_CATCH_ALL:
                    # OHIF's client-side routes: any path may answer its index.html
                    # (checked above for leaks); file reads are tested in test_web_viewer.
                    assert status in (200, 404), (target[:200], status)
                else:
                    # A syntactically valid UID (0.0) may be searched: and finds nothing.
                    assert status >= 400 or content.strip() in (b"", b"[]"), (target, status)
                checked += 1
    assert checked > 300
    # Still serving, and still holding the one study.
    found = shared_http().get(f"{fuzzed.url}/studies", params={"PatientID": PATIENT})
    assert found.status_code == 200 and len(found.json()) == 1


def test_without_authentication_unknown_paths_stay_404(fuzzed: Server) -> None:
    assert _raw(fuzzed, "GET", "/dicom-web/no-such-route")[0] == 404
    assert _raw(fuzzed, "GET", "/admin/no-such-route")[0] == 404
    assert _raw(fuzzed, "PATCH", "/dicom-web/studies")[0] == 405


def _qido_names() -> list[str]:
    names = [keyword_for_tag(tag) or f"{tag:08X}" for tag in sorted(SUPPORTED_TAGS)]
    return [*names, "limit", "offset", "includefield", "fuzzymatching", "accept", "charset"]


def test_injection_on_every_qido_parameter(fuzzed: Server) -> None:
    for resource in ("studies", "series", "instances"):
        for name in _qido_names():
            for attack in QUERY_ATTACKS:
                target = f"/dicom-web/{resource}?{quote(name)}={quote(attack, safe='')}"
                status, content = _raw(fuzzed, "GET", target)
                _check(status, content, f"{name}={attack[:40]!r}")
                if status == 200 and not any(c in attack for c in "*?\\"):
                    # Matching our study would need the attack to be a real value of it;
                    # SQL or LIKE injection would return it. (* ? are DICOM wildcards and
                    # \ separates values, an empty one matching all: PS3.4 C.2.2.2.)
                    assert PATIENT.encode() not in content or name in _LEGIT, (name, attack)


# Parameters an attack string can legitimately match on (return keys, paging, negotiation).
_LEGIT = {"limit", "offset", "includefield", "fuzzymatching", "accept", "charset"}

SEGMENTS = st.sampled_from(
    ["dicom-web", "studies", "series", "instances", "metadata", "bulkdata", "frames",
     "rendered", "admin", "audit", "health", "wado", UID, "..", ".", "", "%2e%2e", "%00"]
)  # fmt: skip
TEXT = st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=40)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
    segments=st.lists(st.one_of(SEGMENTS, TEXT.map(lambda s: quote(s, safe=""))), max_size=8),
    query=st.lists(st.tuples(TEXT, TEXT), max_size=5),
    headers=st.dictionaries(
        st.sampled_from(["Accept", "Content-Type", "Range", "If-None-Match", "Accept-Charset"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
        max_size=3,
    ),
    body=st.binary(max_size=2000),
)
def test_fuzz_the_http_surface(
    fuzzed: Server,
    method: str,
    segments: list[str],
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes,
) -> None:
    path = "/" + "/".join(segments)
    if query:
        path += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
    conn = http.client.HTTPConnection("127.0.0.1", fuzzed.port, timeout=60)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True, skip_host=False)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body if method not in ("GET", "HEAD") else b"")
        response = conn.getresponse()
        content = response.read()
    except (http.client.RemoteDisconnected, ConnectionError) as exc:
        raise AssertionError(f"server dropped {method} {path[:200]}: {exc}") from exc
    finally:
        conn.close()
    _check(response.status, content, f"{method} {path[:200]} {headers}")
    assert fuzzed.alive()
