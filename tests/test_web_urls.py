"""Public URLs (RetrieveURL, BulkDataURI, Content-Location) and UIDs in request paths.

Two servers per index backend: one with --public-base-url, one trusting 127.0.0.1 as
a reverse proxy. Requests sent from 127.0.0.2 (still loopback) reach the second one
from an untrusted peer, so trusted and untrusted behaviour share one server.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient

from dicomweb_server.dicom.multipart import MultipartParser, parse_content_type
from tests.conftest import Server, make_database_url, start_server
from tests.dicomgen import make_dataset, multipart, to_part10

PUBLIC = "https://pacs.example.org/imaging/dicom-web"
FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "proxy.example:8443",
    "X-Forwarded-Prefix": "/pacs",
}
BEHIND_PROXY = "https://proxy.example:8443/pacs/dicom-web"
UNTRUSTED_PEER = "127.0.0.2"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def url_servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    options = {
        "public": ("--public-base-url", PUBLIC),
        "proxied": ("--trusted-proxies", "127.0.0.1"),
    }
    dirs = {name: tmp_path_factory.mktemp(f"urls-{name}") for name in options}
    urls = {name: make_database_url(str(request.param), d, request) for name, d in dirs.items()}
    with ThreadPoolExecutor(len(options)) as pool:
        futures = {
            name: pool.submit(start_server, dirs[name] / "data", urls[name], *args)
            for name, args in options.items()
        }
        servers = {name: future.result() for name, future in futures.items()}
    yield servers
    for srv in servers.values():
        srv.stop()
        assert "Traceback" not in srv.log(), srv.log()


@pytest.fixture(scope="module")
def proxied(url_servers: dict[str, Server]) -> Server:
    return url_servers["proxied"]


@pytest.fixture(scope="module")
def trusted() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def untrusted() -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(local_address=UNTRUSTED_PEER)
    with httpx.Client(transport=transport, timeout=30) as client:
        yield client


def _store(
    client: httpx.Client, server: Server, headers: dict[str, str] | None = None
) -> tuple[str, dict[str, str]]:
    """Store one instance; the response's top-level RetrieveURL and the instance's paths."""
    ds = make_dataset()
    body, header = multipart([to_part10(ds)])
    response = client.post(
        f"{server.url}/studies", content=body, headers={"Content-Type": header, **(headers or {})}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    path = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    [item] = result["00081199"]["Value"]
    return result["00081190"]["Value"][0], {
        "path": path,
        "study": ds.StudyInstanceUID,
        "item_url": item["00081190"]["Value"][0],
    }


def _urls_seen(
    client: httpx.Client, server: Server, path: str, headers: dict[str, str]
) -> dict[str, str]:
    """Every URL the server hands out for one instance, given these request headers."""
    meta = client.get(f"{server.url}{path}/metadata", headers=headers).json()[0]
    response = client.get(f"{server.url}{path}", headers=headers)
    _, params = parse_content_type(response.headers["content-type"])
    locations: list[str] = []

    class Sink:
        def start_part(self, part_headers: dict[str, str]) -> None:
            locations.append(part_headers["content-location"])

        def write(self, data: bytes) -> None:
            pass

        def end_part(self) -> None:
            pass

    parser = MultipartParser(params["boundary"], Sink())
    parser.feed(response.content)
    parser.close()
    study = path.split("/")[2]
    found = client.get(
        f"{server.url}/studies", params={"StudyInstanceUID": study}, headers=headers
    ).json()
    return {
        "bulk": meta["7FE00010"]["BulkDataURI"],
        "location": locations[0],
        "qido": found[0]["00081190"]["Value"][0],
    }


def test_public_base_url_wins(url_servers: dict[str, Server], trusted: httpx.Client) -> None:
    server = url_servers["public"]
    # Forwarded headers do not override it.
    top, info = _store(trusted, server, FORWARDED)
    assert top == f"{PUBLIC}/studies/{info['study']}"
    assert info["item_url"] == PUBLIC + info["path"]
    assert _urls_seen(trusted, server, info["path"], FORWARDED) == {
        "bulk": f"{PUBLIC}{info['path']}/bulkdata/7FE00010",
        "location": PUBLIC + info["path"],
        "qido": f"{PUBLIC}/studies/{info['study']}",
    }


def test_forwarded_headers_from_a_trusted_proxy(proxied: Server, trusted: httpx.Client) -> None:
    top, info = _store(trusted, proxied, FORWARDED)
    assert top == f"{BEHIND_PROXY}/studies/{info['study']}"
    assert info["item_url"] == BEHIND_PROXY + info["path"]
    assert _urls_seen(trusted, proxied, info["path"], FORWARDED) == {
        "bulk": f"{BEHIND_PROXY}{info['path']}/bulkdata/7FE00010",
        "location": BEHIND_PROXY + info["path"],
        "qido": f"{BEHIND_PROXY}/studies/{info['study']}",
    }
    # X-Forwarded-Port completes a Host without one; a default port is left out.
    ported = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs", "X-Forwarded-Port": "8443"}
    seen = _urls_seen(trusted, proxied, info["path"], ported)
    assert seen["location"] == f"https://pacs:8443/dicom-web{info['path']}"
    ported["X-Forwarded-Port"] = "443"
    seen = _urls_seen(trusted, proxied, info["path"], ported)
    assert seen["location"] == f"https://pacs/dicom-web{info['path']}"
    # Without forwarded headers the trusted peer is a direct client.
    assert _urls_seen(trusted, proxied, info["path"], {})["location"] == proxied.url + info["path"]
    # Values that are not a host, a scheme or a path prefix are not believed.
    bad = {"X-Forwarded-Host": "evil.example/<x>", "X-Forwarded-Prefix": "/a b"}
    location = _urls_seen(trusted, proxied, info["path"], bad)["location"]
    assert location == proxied.url + info["path"]  # httpx's Host carries the port
    gopher = _urls_seen(trusted, proxied, info["path"], {"X-Forwarded-Proto": "gopher"})
    assert gopher["location"] == proxied.url + info["path"]
    # Behind a proxy, a Host without port gets no port of ours (it means nothing there).
    seen = _urls_seen(trusted, proxied, info["path"], {"Host": "pacs", "X-Forwarded-Proto": "http"})
    assert seen["location"] == f"http://pacs/dicom-web{info['path']}"


def test_forwarded_headers_from_anyone_else_are_ignored(
    proxied: Server, untrusted: httpx.Client
) -> None:
    top, info = _store(untrusted, proxied, FORWARDED)
    assert top == f"{proxied.url}/studies/{info['study']}"
    assert info["item_url"] == proxied.url + info["path"]
    assert _urls_seen(untrusted, proxied, info["path"], FORWARDED) == {
        "bulk": f"{proxied.url}{info['path']}/bulkdata/7FE00010",
        "location": proxied.url + info["path"],
        "qido": f"{proxied.url}/studies/{info['study']}",
    }


def test_host_without_port_still_gives_the_right_port(
    proxied: Server, trusted: httpx.Client, untrusted: httpx.Client
) -> None:
    _, info = _store(untrusted, proxied)
    for client in (trusted, untrusted):  # a trusted peer without X-Forwarded-* is direct
        for host in ("127.0.0.1", "localhost"):
            base = f"http://{host}:{proxied.port}/dicom-web"
            seen = _urls_seen(client, proxied, info["path"], {"Host": host})
            assert seen["bulk"] == f"{base}{info['path']}/bulkdata/7FE00010"
            assert seen["location"] == base + info["path"]
    # dicomweb-client (requests) really sends "Host: 127.0.0.1" without the port.
    dicomweb = DICOMwebClient(proxied.url)
    result = dicomweb.store_instances([make_dataset()])
    assert result.RetrieveURL.startswith(f"{proxied.url}/studies/")
    assert result.ReferencedSOPSequence[0].RetrieveURL.startswith(proxied.url)
    study, series, sop = info["path"].split("/")[2::2]
    meta = dicomweb.retrieve_instance_metadata(study, series, sop)
    assert meta["7FE00010"]["BulkDataURI"] == f"{proxied.url}{info['path']}/bulkdata/7FE00010"
    # A Host header that is not a host name falls back to the configured address.
    seen = _urls_seen(untrusted, proxied, info["path"], {"Host": "exa_mple"})
    assert seen["location"] == proxied.url + info["path"]


# -- UIDs in paths ----------------------------------------------------------------------

BAD_UIDS = ["1.2.abc", "..", "1.02.3", "1." + "2" * 70, "1..2", "1.2.", "-1.2", "1.2.3 "]


def _snapshot(data_dir: Path) -> dict[Path, int]:
    # The audit trail records refused requests too; that is the one change expected.
    audit = data_dir / "audit"
    return {
        p: p.stat().st_mtime_ns
        for p in data_dir.rglob("*")
        if p != audit and audit not in p.parents
    }


def _raw_request(server: Server, method: str, target: str, extra: str = "") -> bytes:
    """Send a request line exactly as given (no client-side path normalisation)."""
    request = (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{extra}"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("bad", BAD_UIDS)
def test_malformed_uids_in_the_path_are_400(
    proxied: Server, trusted: httpx.Client, bad: str
) -> None:
    _, info = _store(trusted, proxied)
    study, series, sop = info["path"].split("/")[2::2]
    before = _snapshot(proxied.data_dir)
    quoted = "".join(c if c.isalnum() or c == "." else f"%{ord(c):02X}" for c in bad)
    inst = f"/studies/{study}/series/{series}/instances"
    gets = [
        f"/studies/{quoted}/metadata",
        f"/studies/{study}/series/{quoted}/metadata",
        f"{inst}/{quoted}/metadata",
        f"{inst}/{quoted}/bulkdata/7FE00010",
        f"/studies/{quoted}/series/{series}/instances/{sop}/bulkdata/7FE00010",
        f"/studies/{quoted}/series",
        f"/studies/{quoted}/instances",
        f"/studies/{study}/series/{quoted}/instances",
    ]
    both = [f"/studies/{quoted}", f"/studies/{study}/series/{quoted}", f"{inst}/{quoted}"]
    requests = [("GET", t) for t in gets + both] + [("DELETE", t) for t in both]
    for method, target in requests:
        raw = _raw_request(proxied, method, f"/dicom-web{target}")
        assert raw.split(b"\r\n", 1)[0] == b"HTTP/1.1 400 Bad Request", (method, target, raw)
        assert b"is not a valid DICOM UID" in raw
    # STOW to a malformed study: refused from the headers alone, the body is never read.
    head = (
        'Content-Type: multipart/related; type="application/dicom"; boundary=x\r\n'
        "Content-Length: 50000000\r\n"
    )
    raw = _raw_request(proxied, "POST", f"/dicom-web/studies/{quoted}", head)
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert _snapshot(proxied.data_dir) == before
    assert trusted.get(f"{proxied.url}{info['path']}/metadata").status_code == 200


def test_malformed_bulk_data_paths_are_400(proxied: Server, trusted: httpx.Client) -> None:
    _, info = _store(trusted, proxied)
    for path in ("7FE0001", "7FE00010.0", "7FE00010.x.00100010", "ZZZZZZZZ", ".."):
        raw = _raw_request(proxied, "GET", f"/dicom-web{info['path']}/bulkdata/{path}")
        assert raw.startswith(b"HTTP/1.1 400 "), (path, raw[:200])


def test_no_uid_reaches_the_filesystem_as_a_path(proxied: Server) -> None:
    """Traversal attempts never match a route with a UID in it, or are refused as UIDs."""
    outside = proxied.data_dir.parent / "outside.txt"
    outside.write_text("secret")
    before = _snapshot(proxied.data_dir)
    for target in (
        "/dicom-web/studies/../../outside.txt",
        "/dicom-web/studies/%2e%2e%2f%2e%2e%2foutside.txt",
        "/dicom-web/studies/1.2/series/..%2f..%2f..%2foutside.txt/instances/1.2",
    ):
        for method in ("GET", "DELETE"):
            raw = _raw_request(proxied, method, target)
            assert raw.split(b" ", 2)[1] in (b"400", b"404"), (method, target, raw[:200])
            assert b"secret" not in raw
    assert outside.read_text() == "secret"
    assert _snapshot(proxied.data_dir) == before
