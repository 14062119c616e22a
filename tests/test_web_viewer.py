"""Serving the viewer over real HTTP: files, SPA fallback, caching, compression, headers.

The server runs against a small build folder made here with the shape of OHIF's
(index.html with inline scripts, content-hashed bundles with .gz copies, wasm), so
these tests do not need the 250 MB bundle; the browser tests use the real one.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, http, start_server
from tests.dicomgen import make_dataset, multipart, to_part10

INLINE = b'console.time("scriptToView"),window.PUBLIC_URL="/"'
INDEX = (
    b"<!doctype html><html><head><script>" + INLINE + b"</script>"
    b'<script src="/app-config.js"></script>'
    b'<script defer src="/app.bundle.0f6159c501addfe9.js"></script></head>'
    b'<body><div id="root"></div></body></html>'
)
BUNDLE = b"/* app */ " + b"console.log('hello viewer');\n" * 200
WASM = b"\x00asm\x01\x00\x00\x00" + bytes(2000)


def make_build(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "index.html.gz").write_bytes(gzip.compress(INDEX))
    (root / "app-config.js").write_text("window.config = {name: 'the build default'};")
    (root / "app.bundle.0f6159c501addfe9.js").write_bytes(BUNDLE)
    (root / "app.bundle.0f6159c501addfe9.js.gz").write_bytes(gzip.compress(BUNDLE))
    (root / "app.bundle.css").write_text("body{color:#fff}")
    (root / "0ddf166f7a343eda.wasm").write_bytes(WASM)
    (root / "assets").mkdir()
    (root / "assets" / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    return root


def _stow(server: Server, *datasets: bytes) -> None:
    body, content_type = multipart(list(datasets))
    response = http().post(
        f"{server.url}/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text[:300]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("site")
    build = make_build(tmp / "build")
    server = start_server(
        tmp / "data", f"sqlite:///{tmp / 'index.sqlite3'}", "--viewer-dir", str(build)
    )
    studies = {
        "single": make_dataset(accession="ACC-ONE", patient_id="PAT-A"),
        "shared1": make_dataset(accession="ACC-TWO", patient_id="PAT-B"),
        "shared2": make_dataset(accession="ACC-TWO", patient_id="PAT-B"),
    }
    _stow(server, *(to_part10(ds) for ds in studies.values()))
    yield server, {k: str(ds.StudyInstanceUID) for k, ds in studies.items()}
    server.stop()
    assert "Traceback" not in server.log(), server.log()


def get(server: Server, path: str, **headers: str) -> httpx.Response:
    # No automatic decompression: the test checks what was on the wire.
    with httpx.Client(timeout=30) as client:
        return client.get(
            server.root + path,
            headers={"Accept-Encoding": "identity", **headers},
            follow_redirects=False,
        )


def assert_viewer_headers(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "connect-src 'self'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


def test_root_serves_index_html_with_security_headers(site: tuple[Server, dict[str, str]]) -> None:
    server, _ = site
    response = get(server, "/")
    assert response.status_code == 200
    assert response.content == INDEX
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert_viewer_headers(response)
    # The inline script is allowed by its hash, not by 'unsafe-inline'.
    digest = base64.b64encode(hashlib.sha256(INLINE).digest()).decode()
    script_src = next(
        d for d in response.headers["content-security-policy"].split(";") if "script-src" in d
    )
    assert f"'sha256-{digest}'" in script_src
    assert "'unsafe-inline'" not in script_src


@pytest.mark.parametrize(
    "path",
    ["/viewer?StudyInstanceUIDs=1.2.3", "/mode/viewer/x", "/local", "/viewer/dicomweb"],
)
def test_spa_routes_fall_back_to_index_html(site: tuple[Server, dict[str, str]], path: str) -> None:
    server, _ = site
    response = get(server, path)
    assert response.status_code == 200
    assert response.content == INDEX
    assert response.headers["cache-control"] == "no-cache"


def test_hashed_bundle_is_immutable_and_sent_precompressed(
    site: tuple[Server, dict[str, str]],
) -> None:
    server, _ = site
    plain = get(server, "/app.bundle.0f6159c501addfe9.js")
    assert plain.status_code == 200
    assert plain.content == BUNDLE
    assert "content-encoding" not in plain.headers
    assert plain.headers["content-type"] == "text/javascript; charset=utf-8"
    assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert plain.headers["vary"] == "Accept-Encoding"
    packed = get(server, "/app.bundle.0f6159c501addfe9.js", **{"Accept-Encoding": "gzip, br"})
    assert packed.headers["content-encoding"] == "gzip"
    # httpx decodes the body: it was valid gzip of the same bytes, and much smaller.
    assert packed.content == BUNDLE
    assert int(packed.headers["content-length"]) < len(BUNDLE) / 5
    assert packed.headers["etag"] != plain.headers["etag"]
    refused = get(server, "/app.bundle.0f6159c501addfe9.js", **{"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers


@pytest.mark.parametrize(
    ("path", "media_type", "cache"),
    [
        ("/0ddf166f7a343eda.wasm", "application/wasm", "immutable"),
        ("/app.bundle.css", "text/css; charset=utf-8", "no-cache"),
        ("/assets/logo.svg", "image/svg+xml", "no-cache"),
    ],
)
def test_media_types_and_cache_policy(
    site: tuple[Server, dict[str, str]], path: str, media_type: str, cache: str
) -> None:
    server, _ = site
    response = get(server, path)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert cache in response.headers["cache-control"]


def test_conditional_get_answers_304(site: tuple[Server, dict[str, str]]) -> None:
    server, _ = site
    first = get(server, "/app.bundle.css")
    again = get(server, "/app.bundle.css", **{"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    head = httpx.head(server.root + "/app.bundle.css", timeout=30)
    assert head.status_code == 200
    assert head.headers["etag"] == first.headers["etag"]


def test_our_app_config_replaces_the_builds(site: tuple[Server, dict[str, str]]) -> None:
    server, _ = site
    response = get(server, "/app-config.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    text = response.text
    assert "the build default" not in text
    assert text.startswith('window.dicomwebServerRoot = "/dicom-web";\n')
    for option in (
        "qidoSupportsIncludeField: true",
        "supportsWildcard: true",
        "supportsFuzzyMatching: true",
        "imageRendering: 'wadors'",
        "enableStudyLazyLoad: true",
        "dicomUploadEnabled: true",
    ):
        assert option in text
    # No third-party origins: every URL is built from the page's own origin.
    assert "http://" not in text
    assert "https://" not in text


@pytest.mark.parametrize(
    "path",
    [
        "/missing.js",
        "/assets/nothing.png",
        "/admin/anything",
        "/metrics",
        "/health/extra",
        "/dicom-web/no-such-resource",
    ],
)
def test_unknown_files_and_server_paths_are_404_not_the_app(
    site: tuple[Server, dict[str, str]], path: str
) -> None:
    server, _ = site
    response = get(server, path)
    assert response.status_code == 404
    assert response.content != INDEX


def test_path_traversal_never_reaches_the_file_system(
    site: tuple[Server, dict[str, str]],
) -> None:
    server, _ = site
    for raw in ("/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc%2fpasswd", "/assets/../../x"):
        with httpx.Client(timeout=30) as client:
            request = client.build_request("GET", server.root + "/")
            request.url = request.url.copy_with(raw_path=raw.encode())
            response = client.send(request)
        assert b"root:" not in response.content
        assert response.status_code in (200, 404)


def test_dicomweb_responses_carry_no_viewer_headers_and_no_compression(
    site: tuple[Server, dict[str, str]],
) -> None:
    server, _ = site
    response = get(
        server, "/dicom-web/studies", **{"Accept-Encoding": "gzip", "Accept": "application/json"}
    )
    assert response.status_code == 200
    assert "content-security-policy" not in response.headers
    assert "content-encoding" not in response.headers
    assert len(response.json()) == 3


def test_open_one_study_redirects_to_the_viewer(site: tuple[Server, dict[str, str]]) -> None:
    server, studies = site
    for query in ("AccessionNumber=ACC-ONE", f"StudyInstanceUID={studies['single']}"):
        response = get(server, "/open?" + query)
        assert response.status_code == 302, response.text
        assert response.headers["location"] == (f"/viewer?StudyInstanceUIDs={studies['single']}")
        assert response.headers["cache-control"] == "no-store"


def test_open_several_studies_redirects_to_the_filtered_study_list(
    site: tuple[Server, dict[str, str]],
) -> None:
    server, _ = site
    response = get(server, "/open?AccessionNumber=ACC-TWO")
    assert response.status_code == 302
    assert response.headers["location"] == "/?accession=ACC-TWO"
    response = get(server, "/open?PatientID=PAT-B")
    assert response.status_code == 302
    assert response.headers["location"] == "/?mrn=PAT-B"
    # PatientID with one study goes straight to it.
    response = get(server, "/open?PatientID=PAT-A")
    assert response.headers["location"].startswith("/viewer?StudyInstanceUIDs=")


def test_open_no_match_is_404(site: tuple[Server, dict[str, str]]) -> None:
    server, _ = site
    response = get(server, "/open?AccessionNumber=NOPE")
    assert response.status_code == 404
    assert "No study has AccessionNumber NOPE" in response.text
    response = get(server, "/open?StudyInstanceUID=1.2.3.4")
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "exactly one"),
        ("AccessionNumber=A&PatientID=B", "exactly one"),
        ("Accession=A", "unknown parameter"),
        ("AccessionNumber=", "must not be empty"),
        ("AccessionNumber=AC*", "no wildcards"),
        ("PatientID=P%5CQ", "no wildcards"),
        ("StudyInstanceUID=1.2.x", "not a valid DICOM UID"),
        ("AccessionNumber=" + "A" * 17, "longer than 16"),
        ("AccessionNumber=%FF", "UTF-8"),
    ],
)
def test_open_bad_parameters_are_400(
    site: tuple[Server, dict[str, str]], query: str, message: str
) -> None:
    server, _ = site
    response = get(server, "/open?" + query)
    assert response.status_code == 400
    assert message in response.text
    assert response.headers["content-type"].startswith("text/html")


def test_without_the_build_root_explains_and_the_api_serves(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'index.sqlite3'}",
        "--viewer-dir",
        str(tmp_path / "no-build"),
    )
    try:
        response = get(server, "/")
        assert response.status_code == 200
        assert "viewer is not installed" in response.text
        assert "make viewer" in response.text
        assert get(server, "/viewer").status_code == 200
        assert get(server, "/dicom-web/studies").status_code == 200
        assert "viewer: no OHIF build in" in server.log()
    finally:
        server.stop()


def test_no_viewer_serves_only_the_api(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "data", f"sqlite:///{tmp_path / 'index.sqlite3'}", "--no-viewer"
    )
    try:
        assert get(server, "/").status_code == 404
        assert get(server, "/open?AccessionNumber=A").status_code == 404
        assert get(server, "/dicom-web/studies").status_code == 200
    finally:
        server.stop()


def test_viewer_settings_from_environment_file_and_flags(tmp_path: Path) -> None:
    from dicomweb_server.config import load_settings, to_environ

    assert load_settings(environ={}).viewer_enabled is True
    assert load_settings(environ={}).viewer_dir is None
    env = {"DICOMWEB_VIEWER_DIR": "/srv/ohif", "DICOMWEB_VIEWER_ENABLED": "false"}
    settings = load_settings(environ=env)
    assert settings.viewer_dir == Path("/srv/ohif")
    assert settings.viewer_enabled is False
    round_trip = load_settings(environ=to_environ(settings))
    assert (round_trip.viewer_dir, round_trip.viewer_enabled) == (Path("/srv/ohif"), False)
    config = tmp_path / "s.toml"
    config.write_text('[server]\nviewer_app_config = "/etc/ohif/app-config.js"\n')
    from_file = load_settings(config, environ={})
    assert from_file.viewer_app_config == Path("/etc/ohif/app-config.js")
    with pytest.raises(ValueError, match="viewer_dir must be a non-empty path"):
        load_settings(environ={}, viewer_dir=3)


def test_serve_help_documents_the_viewer_flags() -> None:
    from tests.conftest import run_cli

    result = run_cli("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag in ("--viewer-dir", "--viewer-app-config", "--no-viewer"):
        assert flag in text
    assert "DICOMWEB_VIEWER_DIR" in text
    assert "DICOMWEB_VIEWER_ENABLED=false" in text


def test_allowed_origins_extend_connect_and_frame_src_only() -> None:
    from dicomweb_server.config import load_settings
    from dicomweb_server.web.viewer import content_security_policy

    env = {"DICOMWEB_VIEWER_ALLOWED_ORIGINS": "https://idp.example.org:8443"}
    origins = load_settings(environ=env).viewer_allowed_origins
    assert origins == ("https://idp.example.org:8443",)
    directives = dict(
        d.strip().split(" ", 1) for d in content_security_policy((), origins).split(";")
    )
    assert "https://idp.example.org:8443" in directives["connect-src"]
    assert "https://idp.example.org:8443" in directives["frame-src"]
    assert "idp" not in directives["script-src"]
    for bad in ("https://idp.example.org/path", "idp.example.org", "javascript:alert(1)"):
        with pytest.raises(ValueError, match="is not an origin"):
            load_settings(environ={"DICOMWEB_VIEWER_ALLOWED_ORIGINS": bad})


def test_unreadable_app_config_disables_the_viewer_not_the_api(tmp_path: Path) -> None:
    build = make_build(tmp_path / "build")
    server = start_server(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'index.sqlite3'}",
        "--viewer-dir",
        str(build),
        "--viewer-app-config",
        str(tmp_path / "missing-app-config.js"),
    )
    try:
        assert "viewer is not installed" in get(server, "/").text
        assert get(server, "/dicom-web/studies").status_code == 200
        assert "cannot read" in server.log()
    finally:
        server.stop()
