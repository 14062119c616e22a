"""Single-frame requests answered on the event loop, ahead of the router.

A viewer scrolling a series asks for one frame per request, hundreds of times. When the
instance was located before and the frame's stored bytes are already in memory
(``PixelService.ready_frame``), the answer needs no index query, no disk wait and no
worker thread, so it is sent from here: a path match, a cached Accept choice, one
non-blocking read. Everything else (several frames, query parameters, a frame not in
memory, anything to decode or encode, every error) goes on to the routes unchanged.

It sits inside the security middleware, so authentication, authorization and the audit
record are the same as on the general path; the answer is the same too (media type,
part headers, Cache-Control).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.datastructures import URL
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomweb_server.bootstrap import Services
from dicomweb_server.config import Settings
from dicomweb_server.dicom.multipart import closing_delimiter, new_boundary, part_header
from dicomweb_server.dicom.pixel_media import Wanted, choose_pixel
from dicomweb_server.errors import NotAcceptable
from dicomweb_server.web.pixel import FRAMES_CACHE_CONTROL

# UIDs need no further check: a hit in the located-instance cache means the server
# stored (and validated) them; a miss goes to the routes, which check them.
_FRAME = re.compile(
    r"/studies/([0-9.]{1,64})/series/([0-9.]{1,64})/instances/([0-9.]{1,64})"
    r"/frames/([1-9][0-9]{0,8})"
)
# Distinct Accept headers (and hosts) remembered: a viewer sends the same ones every time.
_REMEMBERED = 64


class FastFrames:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.root = settings.dicomweb_root
        self.prefix = self.root + "/studies/"
        self._wanted: dict[str | None, list[Wanted] | None] = {}
        # Content-Location's scheme and host part, per scheme, Host header and server.
        self._prefixes: dict[tuple[object, bytes | None, object], str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and not scope["query_string"]
            and not scope.get("root_path")
            and scope["path"].startswith(self.prefix)
        ):
            match = _FRAME.fullmatch(scope["path"], len(self.root))
            if match is not None and await self._answer(scope, send, *match.groups()):
                return
        await self.app(scope, receive, send)

    def _choice(self, accept: str | None) -> list[Wanted] | None:
        if accept in self._wanted:
            return self._wanted[accept]
        try:
            wanted: list[Wanted] | None = choose_pixel(accept, single_allowed=True)
        except NotAcceptable:
            wanted = None  # the routes answer 406 with the reasons
        _remember(self._wanted, accept, wanted)
        return wanted

    async def _answer(
        self, scope: Scope, send: Send, study: str, series: str, sop: str, frame: str
    ) -> bool:
        """True when the response was sent; False (nothing sent) to leave it to the routes."""
        accepts = [v for k, v in scope["headers"] if k == b"accept"]
        if len(accepts) > 1:
            return False
        wanted = self._choice(accepts[0].decode("latin-1") if accepts else None)
        if wanted is None:
            return False
        services: Services = scope["app"].state.services
        ready = services.pixels.ready_frame(study, series, sop, int(frame), wanted)
        if ready is None:
            return False
        out = ready.output
        # The whole body in one buffer, the frame read straight into its place: one
        # write to the socket and no copy of the frame after the read.
        if out.multipart:
            boundary = new_boundary()
            head = part_header(
                boundary,
                {
                    "Content-Type": out.content_type,
                    "Content-Location": self._location(scope),
                    "Content-Length": str(ready.length),
                },
            )
            tail = closing_delimiter(boundary)
            media = f'multipart/related; type="{out.media_type}"; boundary={boundary}'
        else:
            head = tail = b""
            media = out.content_type
        start, end = len(head), len(head) + ready.length
        body = bytearray(end + len(tail))
        body[:start] = head
        body[end:] = tail
        if not services.pixels.read_ready(ready, memoryview(body)[start:end]):
            return False
        headers = [
            (b"cache-control", FRAMES_CACHE_CONTROL.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", media.encode("latin-1")),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True

    def _location(self, scope: Scope) -> str:
        """The request's URL as Starlette's ``URL(scope=scope)`` gives it (the general
        path's Content-Location), its scheme and host part parsed once per distinct
        scheme, Host header and server address: the path is all that changes."""
        host = next((value for name, value in scope["headers"] if name == b"host"), None)
        key = (scope.get("scheme"), host, scope.get("server"))
        path: str = scope["path"]
        prefix = self._prefixes.get(key)
        if prefix is not None:
            return prefix + path
        url = str(URL(scope=scope))
        if url.endswith(path):  # always, for the requests answered here
            _remember(self._prefixes, key, url[: len(url) - len(path)])
        return url


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """A few distinct keys are expected (a viewer sends the same ones every time); any
    more, and the cache starts over rather than grow."""
    if len(cache) >= _REMEMBERED:
        cache.clear()
    cache[key] = value
