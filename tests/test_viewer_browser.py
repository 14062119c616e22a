"""The bundled OHIF viewer in a real browser: Debian's Chromium driven by Playwright.

One server (SQLite) and one browser for the module; each test gets a fresh browser
context and fails if the page logs a console error, a script error, a request to any
other origin, or a 4xx/5xx answer to a DICOMweb call. Screenshots land in
test-artifacts/. Without /usr/bin/chromium or the OHIF build (``make viewer``) the
module is skipped, except under CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests.conftest import REPO, Server, http, start_server
from tests.dicomgen import make_dataset, multipart, to_part10
from tests.viewer_studies import ct_series, jpeg2000, multiframe

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
BUNDLE = REPO / "viewer_static" / "dist" / "index.html"
ARTIFACTS = REPO / "test-artifacts"
# The machine's closed network: no background connections, no QUIC (python.md).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000
CT_SLICES = 20

# Pixel statistics of the viewport canvas: how many pixels are lit, and a checksum
# that changes when the displayed image does.
CANVAS_STATS = """() => {
  const canvas = document.querySelector('canvas.cornerstone-canvas');
  if (!canvas || !canvas.width || !canvas.height) return null;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0, sum = 0;
  for (let i = 0; i < data.length; i += 4) {
    const v = data[i] + data[i + 1] + data[i + 2];
    if (v > 60) lit++;
    sum = (sum * 31 + v) % 1000000007;
  }
  return {lit: lit, total: data.length / 4, checksum: sum};
}"""


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests must run under CI: {reason}")
    pytest.skip(reason)


@dataclass
class Archive:
    server: Server
    studies: dict[str, str] = field(default_factory=dict)


def _stow(server: Server, parts: list[bytes]) -> str:
    body, content_type = multipart(parts)
    response = http().post(
        f"{server.url}/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=120,
    )
    assert response.status_code == 200, response.text[:500]
    stored = response.json()["00081199"]["Value"]
    retrieve_url: str = stored[0]["00081190"]["Value"][0]
    return retrieve_url.split("/studies/")[1].split("/")[0]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    if not BUNDLE.is_file():
        _skip_or_fail(f"the OHIF build is not installed ({BUNDLE}); run `make viewer`")
    tmp = tmp_path_factory.mktemp("viewer")
    server = start_server(tmp / "data", f"sqlite:///{tmp / 'index.sqlite3'}")
    archive = Archive(server)
    try:
        archive.studies["ct"] = _stow(
            server,
            ct_series(
                CT_SLICES, patient_name="Phantom^Disc", patient_id="P-CT", accession="ACC-CT"
            ),
        )
        archive.studies["multiframe"] = _stow(
            server,
            [multiframe(8, patient_name="Phantom^Multi", patient_id="P-MF", accession="ACC-MF")],
        )
        archive.studies["jpeg2000"] = _stow(
            server,
            [jpeg2000(patient_name="Phantom^Jtwok", patient_id="P-J2K", accession="ACC-J2K")],
        )
        for name in ("Pair^One", "Pair^Two"):
            pair = make_dataset(patient_name=name, patient_id="P-PAIR", accession="ACC-PAIR")
            _stow(server, [to_part10(pair)])
        yield archive
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        _skip_or_fail("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the dev extra installs it
        _skip_or_fail("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        # Playwright gives each launch a new, empty --user-data-dir.
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Watched:
    page: Any
    problems: list[str]
    dicomweb_calls: list[str]


@pytest.fixture
def viewer(browser: Any, archive: Archive, request: pytest.FixtureRequest) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    watched = Watched(page, [], [])
    origin = archive.server.root
    dicomweb = archive.server.url

    def on_console(message: Any) -> None:
        if message.type == "error":
            watched.problems.append(f"console error: {message.text[:500]}")

    def on_response(response: Any) -> None:
        if response.url.startswith(dicomweb):
            watched.dicomweb_calls.append(f"{response.request.method} {response.url}")
            if response.status >= 400:
                watched.problems.append(f"{response.status} from {response.url}")

    def on_request(req: Any) -> None:
        if not req.url.startswith((origin, "data:", "blob:")):
            watched.problems.append(f"request to another origin: {req.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: watched.problems.append(f"page error: {exc}"))
    page.on("response", on_response)
    page.on("request", on_request)
    yield watched
    ARTIFACTS.mkdir(exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    page.screenshot(path=str(ARTIFACTS / f"viewer-{name}.png"))
    context.close()
    assert not watched.problems, "\n".join(watched.problems[:20])


def _dismiss_overlays(page: Any) -> None:
    """OHIF's one-time notices: the investigational-use banner and the guided tour."""
    for label in ("Confirm and hide", "Skip all"):
        button = page.get_by_role("button", name=label)
        if button.count() and button.first.is_visible():
            button.first.click()


def _wait_for_image(page: Any, previous: int | None = None) -> dict[str, int]:
    """Canvas statistics once it shows a non-blank image (different from ``previous``)."""
    stats: dict[str, int] | None = None
    for _ in range(120):
        stats = page.evaluate(CANVAS_STATS)
        shows_image = bool(stats) and 0.01 < stats["lit"] / stats["total"] < 0.99
        if shows_image and (previous is None or stats["checksum"] != previous):
            return stats
        page.wait_for_timeout(250)
    raise AssertionError(f"the viewport shows no (new) image: {stats}")


def _scroll(page: Any, before: dict[str, int], steps: int = 5) -> dict[str, int]:
    box = page.locator("canvas.cornerstone-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(steps):
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(100)
    return _wait_for_image(page, previous=before["checksum"])


def test_study_list_shows_patients_and_modalities(viewer: Watched, archive: Archive) -> None:
    page = viewer.page
    page.goto(archive.server.root + "/")
    for name, modality, description in (
        ("Phantom, Disc", "CT", "CT phantom"),
        ("Phantom, Multi", "OT", "Multiframe phantom"),
        ("Phantom, Jtwok", "CT", "JPEG 2000 phantom"),
    ):
        row = page.locator("tr", has_text=name)
        row.first.wait_for()
        cells = [c.strip() for c in row.first.inner_text().split("\n") if c.strip()]
        assert modality in cells, cells
        assert description in cells, cells
    _dismiss_overlays(page)
    assert any("/studies?" in url for url in viewer.dicomweb_calls)


def test_open_link_shows_ct_and_scrolling_changes_the_slice(
    viewer: Watched, archive: Archive
) -> None:
    page = viewer.page
    page.goto(archive.server.root + "/open?AccessionNumber=ACC-CT")
    url = urlparse(page.url)
    assert url.path == "/viewer"
    assert parse_qs(url.query)["StudyInstanceUIDs"] == [archive.studies["ct"]]
    first = _wait_for_image(page)
    _dismiss_overlays(page)
    first = _wait_for_image(page)
    after = _scroll(page, first)
    assert after["checksum"] != first["checksum"]
    # The disc's radius differs per slice, so the lit area changes, not only noise.
    assert after["lit"] != first["lit"]
    assert any("/frames/" in url for url in viewer.dicomweb_calls)
    assert any("/thumbnail" in url for url in viewer.dicomweb_calls)


def test_open_link_with_several_studies_lands_on_the_filtered_list(
    viewer: Watched, archive: Archive
) -> None:
    page = viewer.page
    page.goto(archive.server.root + "/open?AccessionNumber=ACC-PAIR")
    url = urlparse(page.url)
    assert (url.path, parse_qs(url.query)) == ("/", {"accession": ["ACC-PAIR"]})
    page.locator("tr", has_text="Pair, Two").first.wait_for()
    page.locator("tr", has_text="Pair, One").first.wait_for()
    assert page.locator("tr", has_text="Phantom, Disc").count() == 0
    assert any("AccessionNumber=" in call for call in viewer.dicomweb_calls)


def test_multiframe_study_shows_frames(viewer: Watched, archive: Archive) -> None:
    page = viewer.page
    page.goto(f"{archive.server.root}/viewer?StudyInstanceUIDs={archive.studies['multiframe']}")
    _wait_for_image(page)
    _dismiss_overlays(page)
    first = _wait_for_image(page)
    after = _scroll(page, first, steps=3)
    assert after["lit"] != first["lit"]


def test_jpeg2000_study_is_decoded_in_the_browser(viewer: Watched, archive: Archive) -> None:
    page = viewer.page
    page.goto(f"{archive.server.root}/viewer?StudyInstanceUIDs={archive.studies['jpeg2000']}")
    _wait_for_image(page)
    _dismiss_overlays(page)
    stats = _wait_for_image(page)
    # A disc of radius 40 on 128x128: about 30% of the image area is lit.
    assert 0.05 < stats["lit"] / stats["total"] < 0.9, stats


def test_upload_from_the_browser_stores_through_stow(
    viewer: Watched, archive: Archive, tmp_path: Path
) -> None:
    files = []
    for index, data in enumerate(
        ct_series(3, patient_name="Upload^Test", patient_id="P-UP", accession="ACC-UP", size=32)
    ):
        path = tmp_path / f"{index}.dcm"
        path.write_bytes(data)
        files.append(str(path))
    page = viewer.page
    page.goto(archive.server.root + "/")
    page.locator("tr", has_text="Phantom, Disc").first.wait_for()
    _dismiss_overlays(page)
    page.get_by_text("Upload", exact=True).click()
    # OHIF's upload dialog: the first file input takes files, the second a folder.
    page.locator("input[type=file]").first.set_input_files(files)
    page.get_by_text("3 files completed.").wait_for()
    page.wait_for_timeout(500)  # let the last response events arrive
    stows = [c for c in viewer.dicomweb_calls if c.startswith("POST ")]
    assert stows == [f"POST {archive.server.url}/studies"] * 3, viewer.dicomweb_calls
    found = http().get(
        f"{archive.server.url}/studies",
        params={"AccessionNumber": "ACC-UP"},
        headers={"Accept": "application/dicom+json"},
    )
    assert found.status_code == 200
    (study,) = found.json()
    assert study["00201208"]["Value"] == [3]
