"""Single frames answered ahead of the router (web/fast_frames.py): the same answers as
the general path, served without it, and never for an instance that is gone."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydicom.dataset import Dataset
from starlette.applications import Starlette

from dicomweb_server.bootstrap import build_services, prepare
from dicomweb_server.config import Settings
from dicomweb_server.dicom.pixel_media import choose_pixel
from dicomweb_server.services import pixels
from dicomweb_server.web.app import create_app
from tests.conftest import Server, http
from tests.dicomgen import make_dataset
from tests.test_web_pixel import OCTET, OCTET_ANY, RLE, compressed, part10, path_of, store

SINGLE = "application/octet-stream"


def _split(response: httpx.Response) -> tuple[dict[str, str], bytes]:
    """The one part's headers (boundary-free) and body."""
    media = response.headers["content-type"]
    boundary = media.split("boundary=")[1]
    chunk = response.content.split(b"--" + boundary.encode())[1]
    head, _, body = chunk.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode().strip().split("\r\n"))
    assert response.content.endswith(b"\r\n--" + boundary.encode() + b"--\r\n")
    return headers, body[:-2]


def _shape(response: httpx.Response) -> dict[str, Any]:
    """What a client sees, minus the random boundary."""
    media = response.headers["content-type"]
    seen: dict[str, Any] = {
        "status": response.status_code,
        "media": media.split("; boundary=")[0],
        "cache": response.headers.get("cache-control"),
        "length": int(response.headers["content-length"]) - len(media.split("boundary=")[-1]) * 2,
    }
    if media.startswith("multipart/related"):
        seen["part"], seen["body"] = _split(response)
    else:
        seen["body"] = response.content
    return seen


@pytest.fixture(scope="module")
def sources(shared_server: Server) -> dict[str, Dataset]:
    found = {
        "native": make_dataset(frames=4, rows=32, columns=32),
        "rle": compressed(RLE, frames=3, size=32),
        "single": make_dataset(rows=64, columns=64),
    }
    store(shared_server, *found.values())
    return found


@pytest.mark.parametrize(
    ("name", "frame", "accept"),
    [
        ("native", 3, OCTET_ANY),
        ("native", 1, OCTET),
        ("native", 4, SINGLE),
        ("single", 1, OCTET_ANY),
        ("rle", 2, OCTET_ANY),
        ("rle", 3, 'multipart/related; type="image/x-dicom-rle"'),
    ],
)
def test_a_remembered_frame_is_answered_as_the_general_path_answers_it(
    shared_server: Server, sources: dict[str, Dataset], name: str, frame: int, accept: str
) -> None:
    url = f"{shared_server.url}{path_of(sources[name])}/frames/{frame}"
    first = http().get(url, headers={"Accept": accept})  # locates the instance
    fast = http().get(url, headers={"Accept": accept})
    # A query parameter always takes the general path; ``accept`` is left out of the
    # part's Content-Location there, so both name the same URL.
    general = http().get(f"{url}?accept={quote(accept)}")  # spaces as %20, not +
    assert fast.status_code == general.status_code == first.status_code == 200, general.text
    assert _shape(fast) == _shape(general) == _shape(first)


def test_errors_keep_their_answers(shared_server: Server, sources: dict[str, Dataset]) -> None:
    url = f"{shared_server.url}{path_of(sources['native'])}/frames"
    assert http().get(f"{url}/1", headers={"Accept": OCTET_ANY}).status_code == 200
    assert http().get(f"{url}/5", headers={"Accept": OCTET_ANY}).status_code == 404
    refused = http().get(f"{url}/1", headers={"Accept": "text/html"})
    assert refused.status_code == 406
    assert "acceptable" in refused.text


def test_a_deleted_instance_is_not_served_from_memory(server: Server) -> None:
    ds = make_dataset(frames=2, rows=16, columns=16)
    store(server, ds)
    url = f"{server.url}{path_of(ds)}"
    assert http().get(f"{url}/frames/2", headers={"Accept": OCTET_ANY}).status_code == 200
    assert http().get(f"{url}/frames/2", headers={"Accept": OCTET_ANY}).status_code == 200
    assert http().delete(url).status_code in (200, 204)
    assert http().get(f"{url}/frames/2", headers={"Accept": OCTET_ANY}).status_code == 404


def _app_and_source(tmp_path: Path) -> tuple[Starlette, Dataset, Path]:
    """An app on an empty archive, and a 3-frame 16x16 instance in a file to store."""
    settings = Settings(data_dir=tmp_path / "data")
    prepare(settings)
    ds = make_dataset(frames=3, rows=16, columns=16)
    source = tmp_path / "one.dcm"
    source.write_bytes(part10(ds))
    return create_app(settings), ds, source


@contextlib.asynccontextmanager
async def _served(app: Starlette, source: Path) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The app started, ``source`` stored, and a client of the app (no network)."""
    async with app.router.lifespan_context(app):
        services: Any = app.state.services
        assert services.store.store_copy(source).stored
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield services, c


def test_remembered_frames_skip_the_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, ds, source = _app_and_source(tmp_path)
    url = f"/dicom-web{path_of(ds)}/frames"
    located: list[str] = []

    async def scenario() -> list[bytes]:
        async with _served(app, source) as (services, c):
            locate = services.pixels.locate

            def counting(study: str, series: str, sop: str) -> Any:
                located.append(sop)
                return locate(study, series, sop)

            monkeypatch.setattr(services.pixels, "locate", counting)
            bodies = []
            for number in (1, 2, 3, 2):
                response = await c.get(f"{url}/{number}", headers={"Accept": OCTET_ANY})
                assert response.status_code == 200
                bodies.append(_split(response)[1])
            assert located == [ds.SOPInstanceUID]  # the first request only
            # Anything else still goes through the routes (and locates there).
            several = await c.get(f"{url}/1,2", headers={"Accept": OCTET_ANY})
            assert several.status_code == 200
            query = await c.get(f"{url}/1?accept={quote(OCTET_ANY)}")
            assert query.status_code == 200
            return bodies

    bodies = asyncio.run(scenario())
    assert len(located) == 3
    assert bodies[1] == bodies[3] == bytes(ds.PixelData)[512:1024]


@pytest.mark.parametrize("host", ["ex:99999", "user@host", "a b", "example.org:8443"])
def test_content_location_is_the_general_paths_for_any_host(tmp_path: Path, host: str) -> None:
    """Host values Starlette refuses give way to the server's address on both paths."""
    app, ds, source = _app_and_source(tmp_path)
    url = f"/dicom-web{path_of(ds)}/frames/2"

    async def scenario() -> list[str]:
        async with _served(app, source) as (_, c):
            seen = []
            for query in ("", "", f"?accept={quote(OCTET_ANY)}"):  # located, fast, general
                response = await c.get(url + query, headers={"Accept": OCTET_ANY, "Host": host})
                assert response.status_code == 200
                seen.append(_split(response)[0]["Content-Location"])
            return seen

    first, fast, general = asyncio.run(scenario())
    assert fast == general == first
    assert fast.endswith(url)


def test_a_frame_not_all_in_memory_goes_to_the_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When part of a frame's bytes (here: its second piece) would need the disk, the
    request is answered by the general path, whole and correct."""
    app, ds, source = _app_and_source(tmp_path)
    url = f"/dicom-web{path_of(ds)}/frames/2"
    reads: list[int] = []

    async def scenario() -> list[bytes]:
        async with _served(app, source) as (services, c):
            services.pixels.locate(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            ready = services.pixels.ready_frame(
                ds.StudyInstanceUID,
                ds.SeriesInstanceUID,
                ds.SOPInstanceUID,
                2,
                choose_pixel(OCTET_ANY, single_allowed=True),
            )
            ((start, length),) = ready.spans
            # The same frame as two pieces, the second of them not in memory.
            pieces = dataclasses.replace(ready, spans=[(start, 100), (start + 100, length - 100)])
            monkeypatch.setattr(services.pixels, "ready_frame", lambda *args: pieces)
            read_now_into = services.blobs.read_now_into

            def partly(key: str, offset: int, into: memoryview) -> bool:
                reads.append(offset)
                return offset == start and bool(read_now_into(key, offset, into))

            monkeypatch.setattr(services.blobs, "read_now_into", partly)
            bodies = []
            for _ in range(2):
                response = await c.get(url, headers={"Accept": OCTET_ANY})
                assert response.status_code == 200
                bodies.append(_split(response)[1])
            return bodies

    bodies = asyncio.run(scenario())
    assert reads[:2] == [reads[0], reads[0] + 100]  # both pieces tried, the second failed
    assert bodies == [bytes(ds.PixelData)[512:1024]] * 2


def test_large_frames_are_left_to_the_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copying a very large frame would hold up every other request on the event loop."""
    settings = Settings(data_dir=tmp_path / "data")
    prepare(settings)
    services = build_services(settings)
    try:
        ds = make_dataset(frames=2, rows=64, columns=64)  # 8 KB frames
        source = tmp_path / "one.dcm"
        source.write_bytes(part10(ds))
        assert services.store.store_copy(source).stored
        uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        services.pixels.locate(*uids)
        wanted = choose_pixel(OCTET_ANY, single_allowed=True)
        assert services.pixels.ready_frame(*uids, 2, wanted) is not None
        monkeypatch.setattr(pixels, "READY_FRAME_LIMIT", 8191)
        assert services.pixels.ready_frame(*uids, 2, wanted) is None
    finally:
        services.close()
