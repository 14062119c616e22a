"""The bundled OHIF viewer, served at "/" next to the DICOMweb root.

The OHIF production build (``@ohif/app`` from the npm registry, unpacked by
``scripts/fetch-viewer.py``) has its public path "/" compiled in, so it is served at the
site root. What this module adds to plain static file serving:

- an index of the build's files made once at startup: only those files are served
  (no path is ever joined onto the file system from a request);
- OHIF's client-side routes (``/viewer``, ``/mode/...``, the study list) get
  ``index.html`` (SPA fallback); paths with a file extension that do not exist, and
  the server's own prefixes (``/dicom-web``, ``/wado``, ``/admin``...), get a 404;
- our ``app-config.js`` in place of the build's, preceded by one line naming the
  configured DICOMweb root;
- bundles whose names carry a content hash are cached for a year as immutable;
  everything else is revalidated (``no-cache`` with an ETag);
- text and wasm files are sent gzip-compressed from the ``.gz`` copies made at fetch
  time, so no response is compressed on the fly (DICOM responses are never touched);
- security headers on every viewer response (never on DICOMweb ones): a
  Content-Security-Policy allowing only this origin, ``nosniff``, no referrer, no
  framing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import mimetypes
import os
import re
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from dicomweb_server.config import Settings

log = logging.getLogger(__name__)

# The repository checkout this package runs from (editable install, the usual case).
_REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = _REPO / "viewer_static" / "dist"
DEFAULT_APP_CONFIG = _REPO / "viewer_static" / "app-config.js"

# Prefixes that belong to the server, never to the SPA fallback.
SERVER_PREFIXES = ("/wado", "/admin", "/health", "/metrics", "/open", "/api")

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".jsonc": "application/json",
    ".map": "application/json",
    ".webapp": "application/x-web-app-manifest+json",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".xml": "application/xml",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".txt": "text/plain; charset=utf-8",
}
# A webpack content hash: 16+ hex digits as its own dot/dash-separated name part.
_HASHED = re.compile(r"(^|[.\-_])[0-9a-f]{16,}\.[A-Za-z0-9]+$")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S)


def content_security_policy(
    script_hashes: tuple[str, ...] = (), allowed_origins: tuple[str, ...] = ()
) -> str:
    """The minimum OHIF 3 runs under, found with the browser tests.

    Scripts only from this origin plus index.html's own inline scripts (by hash).
    ``'wasm-unsafe-eval'`` compiles the image codecs (WebAssembly); ``'unsafe-eval'``
    too, because the codecs' Emscripten bindings build their call wrappers with
    ``new Function`` (the JPEG 2000 browser test fails without it). Workers from
    this origin and blob: URLs; inline styles (React sets style attributes); images
    from data:/blob: (thumbnails, canvases). ``connect-src 'self'``: the viewer can
    reach nothing but this server, plus ``allowed_origins`` (an OpenID Connect
    provider: token calls, and its silent-renew iframe).
    """
    extra = "".join(" " + origin for origin in allowed_origins)
    scripts = " ".join(["'self'", "'unsafe-eval'", "'wasm-unsafe-eval'", *script_hashes])
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {scripts}",
            "worker-src 'self' blob:",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "font-src 'self' data:",
            f"connect-src 'self' data: blob:{extra}",
            f"frame-src 'self'{extra}",
            "media-src 'self' blob:",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


@dataclass(frozen=True)
class _File:
    path: Path
    stat: os.stat_result
    media_type: str
    cache: str
    gz: tuple[Path, os.stat_result] | None


@dataclass
class ViewerBundle:
    """The indexed build, or ``files`` empty when it is absent."""

    root: Path
    files: dict[str, _File]
    app_config: bytes
    headers: dict[str, str]

    @property
    def present(self) -> bool:
        return "index.html" in self.files


def _media_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _scan(root: Path) -> dict[str, _File]:
    files: dict[str, _File] = {}
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in names:
            if name.startswith(".") or name.endswith(".gz"):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            gz_path = path.with_name(name + ".gz")
            gz = (gz_path, gz_path.stat()) if gz_path.is_file() else None
            cache = IMMUTABLE if _HASHED.search(name) else REVALIDATE
            files[rel] = _File(path, path.stat(), _media_type(name), cache, gz)
    return files


def _inline_script_hashes(index_html: Path) -> tuple[str, ...]:
    """CSP hashes of index.html's inline scripts, so no 'unsafe-inline' is needed."""
    found = _INLINE_SCRIPT.findall(index_html.read_bytes())
    return tuple(
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
        for body in found
        if body.strip()
    )


def load_bundle(settings: Settings) -> ViewerBundle:
    root = (settings.viewer_dir or DEFAULT_DIR).resolve()
    config_path = settings.viewer_app_config or DEFAULT_APP_CONFIG
    files = _scan(root) if (root / "index.html").is_file() else {}
    app_config = b""
    hashes: tuple[str, ...] = ()
    if files:
        try:
            config_text = config_path.read_bytes()
        except OSError as exc:
            # The API must still serve; '/' then says the viewer is not usable.
            log.error("viewer: cannot read %s (%s); viewer disabled", config_path, exc.strerror)
            files = {}
    if files:
        # One line ahead of the committed file: the DICOMweb root is a setting.
        prelude = f"window.dicomwebServerRoot = {json.dumps(settings.dicomweb_root)};\n"
        app_config = prelude.encode() + config_text
        hashes = _inline_script_hashes(root / "index.html")
        log.info("viewer: OHIF from %s (%d files) at /", root, len(files))
    else:
        log.warning(
            "viewer: no OHIF build in %s; '/' explains how to install it "
            "(scripts/fetch-viewer.py or make viewer); the DICOMweb API serves as usual",
            root,
        )
    headers = {
        "Content-Security-Policy": content_security_policy(hashes, settings.viewer_allowed_origins),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        # No page of another origin that opened the viewer keeps a handle on it.
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    return ViewerBundle(root, files, app_config, headers)


def _accepts_gzip(request: Request) -> bool:
    for item in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=").strip()
            return not (q and _is_zero(q))
    return False


def _is_zero(q: str) -> bool:
    try:
        return float(q) == 0
    except ValueError:
        return False


def _etag(stat: os.stat_result, suffix: str = "") -> str:
    return f'"{stat.st_size:x}-{stat.st_mtime_ns:x}{suffix}"'


def _not_modified(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match")
    if not wanted:
        return False
    return wanted.strip() == "*" or etag in [t.strip() for t in wanted.split(",")]


class ViewerApp:
    """The catch-all endpoint: files of the build, app-config.js, SPA fallback."""

    def __init__(self, bundle: ViewerBundle, settings: Settings) -> None:
        self.bundle = bundle
        self.reserved = (settings.dicomweb_root, *SERVER_PREFIXES)

    def _secure(self, response: Response) -> Response:
        for name, value in self.bundle.headers.items():
            response.headers.setdefault(name, value)
        return response

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        if any(path == p or path.startswith(p + "/") for p in self.reserved):
            return self._secure(_not_found_page(path))
        if not self.bundle.present:
            return self._secure(_missing_page(self.bundle.root))
        rel = path.lstrip("/")
        if rel == "app-config.js":
            return self._secure(self._app_config(request))
        entry = self.bundle.files.get(rel)
        if entry is None:
            last = rel.rsplit("/", 1)[-1]
            if "." in last:
                # A missing asset must not come back as HTML (nosniff would reject it anyway).
                return self._secure(_not_found_page(path))
            entry = self.bundle.files["index.html"]
        return self._secure(self._file(request, entry))

    def _app_config(self, request: Request) -> Response:
        body = self.bundle.app_config
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"Cache-Control": REVALIDATE, "ETag": etag}
        if _not_modified(request, etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=_TYPES[".js"], headers=headers)

    def _file(self, request: Request, entry: _File) -> Response:
        path, stat, encoding = entry.path, entry.stat, None
        if entry.gz is not None and _accepts_gzip(request):
            path, stat = entry.gz
            encoding = "gzip"
        etag = _etag(stat, "-gz" if encoding else "")
        headers = {"Cache-Control": entry.cache, "ETag": etag}
        if entry.gz is not None:
            headers["Vary"] = "Accept-Encoding"
        if _not_modified(request, etag):
            return Response(status_code=304, headers=headers)
        if encoding:
            headers["Content-Encoding"] = encoding
        return FileResponse(path, stat_result=stat, headers=headers, media_type=entry.media_type)


def _page(status: int, title: str, body: str) -> HTMLResponse:
    text = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
        f"{body}</body></html>"
    )
    return HTMLResponse(text, status_code=status, headers={"Cache-Control": REVALIDATE})


def _not_found_page(path: str) -> HTMLResponse:
    return _page(404, "Not found", f"<p>Nothing is served at {html.escape(path)}.</p>")


def _missing_page(root: Path) -> HTMLResponse:
    return _page(
        200,
        "dicomweb-server: the viewer is not installed",
        "<p>The DICOMweb API is running. To use the bundled OHIF viewer here, fetch it "
        "once and restart the server:</p><pre>make viewer   # or: scripts/fetch-viewer.py"
        f"</pre><p>It is looked for in <code>{html.escape(str(root))}</code>.</p>",
    )


def viewer_routes(settings: Settings) -> list[BaseRoute]:
    """The catch-all viewer route: it must come after every other route."""
    if not settings.viewer_enabled:
        return []
    app = ViewerApp(load_bundle(settings), settings)
    return [Route("/{path:path}", app.handle, methods=["GET", "HEAD"])]
