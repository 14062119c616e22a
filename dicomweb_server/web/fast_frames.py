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

import os
import re
from typing import Any, NamedTuple

from starlette.datastructures import URL, State
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomweb_server.bootstrap import Services
from dicomweb_server.config import Settings
from dicomweb_server.dicom.multipart import closing_delimiter, new_boundary, part_header
from dicomweb_server.dicom.pixel_media import Wanted, choose_pixel
from dicomweb_server.errors import NotAcceptable
from dicomweb_server.web.guard import Gate
from dicomweb_server.web.pixel import FRAMES_CACHE_CONTROL

# UIDs need no further check: a hit in the located-instance cache means the server
# stored (and validated) them; a miss goes to the routes, which check them.
_FRAME = re.compile(
    r"/studies/([0-9.]{1,64})/series/([0-9.]{1,64})/instances/([0-9.]{1,64})"
    r"/frames/([1-9][0-9]{0,8})"
)
# Distinct Accept headers (and hosts) remembered: a viewer sends the same ones every time.
_REMEMBERED = 64
_CACHE_CONTROL = FRAMES_CACHE_CONTROL.encode()


class Answer(NamedTuple):
    """A frame's response. Without ``file`` the body is ``body``; with it, ``body`` (the
    part header), the frame's bytes from the open file (descriptor, offset, length; the
    receiver closes it), then ``tail``."""

    headers: list[tuple[bytes, bytes]]
    body: bytes | bytearray
    file: tuple[int, int, int] | None = None
    tail: bytes = b""


class FrameAnswers:
    """The answer to a single-frame request that needs no waiting, built synchronously:
    shared by the ASGI middleware below and the HTTP protocol's shortcut
    (``web/protocol.py``), which calls it before any ASGI machinery runs."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.dicomweb_root
        self.prefix = self.root + "/studies/"
        self._wanted: dict[str | None, list[Wanted] | None] = {}
        # Content-Location's scheme and host part, per scheme, Host header and server.
        self._prefixes: dict[tuple[object, bytes | None, object], str] = {}

    def wants(self, scope: Scope) -> re.Match[str] | None:
        """The path's parts when the request is a single-frame GET this class may answer."""
        if (
            scope["method"] != "GET"
            or scope["query_string"]
            or scope.get("root_path")
            or not scope["path"].startswith(self.prefix)
        ):
            return None
        return _FRAME.fullmatch(scope["path"], len(self.root))

    def answer(self, scope: Scope, services: Services) -> Answer | None:
        """The response, the frame read into the body; None (nothing done) leaves the
        request to the routes, which also give every error its answer."""
        match = self.wants(scope)
        return None if match is None else self.answer_match(scope, services, match, False)

    def answer_match(
        self, scope: Scope, services: Services, match: re.Match[str], to_file: bool
    ) -> Answer | None:
        """``answer`` for a request ``wants`` matched. ``to_file``: the frame's bytes may
        be left in their file (in memory) for sendfile, when they are one span."""
        accepts = [v for k, v in scope["headers"] if k == b"accept"]
        if len(accepts) > 1:
            return None
        wanted = self._choice(accepts[0].decode("latin-1") if accepts else None)
        if wanted is None:
            return None
        study, series, sop, frame = match.groups()
        ready = services.pixels.ready_frame(study, series, sop, int(frame), wanted)
        if ready is None:
            return None
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
        headers = [
            (b"cache-control", _CACHE_CONTROL),
            (b"content-length", str(end + len(tail)).encode()),
            (b"content-type", media.encode("latin-1")),
        ]
        if to_file and (opened := services.pixels.open_ready(ready)) is not None:
            return Answer(headers, head, (*opened, ready.length), tail)
        body = bytearray(end + len(tail))
        body[:start] = head
        body[end:] = tail
        if not services.pixels.read_ready(ready, memoryview(body)[start:end]):
            return None
        return Answer(headers, body)

    def _choice(self, accept: str | None) -> list[Wanted] | None:
        if accept in self._wanted:
            return self._wanted[accept]
        try:
            wanted: list[Wanted] | None = choose_pixel(accept, single_allowed=True)
        except NotAcceptable:
            wanted = None  # the routes answer 406 with the reasons
        _remember(self._wanted, accept, wanted)
        return wanted

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


class FastFrames:
    """ASGI middleware: a frame ``FrameAnswers`` can answer is sent from here."""

    def __init__(self, app: ASGIApp, answers: FrameAnswers) -> None:
        self.app = app
        self.answers = answers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = self.answers.answer(scope, scope["app"].state.services)
            if found is not None:
                start = {"type": "http.response.start", "status": 200, "headers": found.headers}
                await send(start)
                await send({"type": "http.response.body", "body": found.body})
                return
        await self.app(scope, receive, send)


class FrameShortcut:
    """A single frame answered whole before any ASGI machinery runs (``web/protocol.py``):
    what the CORS middleware, the security gate and ``FastFrames`` would do with the
    request, when none of them needs to wait or to add anything."""

    def __init__(self, gate: Gate, answers: FrameAnswers, state: State) -> None:
        self.gate = gate
        self.answers = answers
        self.state = state  # the app's: services appear there when the lifespan starts
        self.cors = bool(gate.settings.cors_origins)

    def answer(self, scope: Scope, to_file: bool) -> Answer | None:
        services: Services | None = getattr(self.state, "services", None)
        if services is None:
            return None
        if self.cors and any(name == b"origin" for name, _ in scope["headers"]):
            return None  # the CORS middleware adds its headers
        match = self.answers.wants(scope)
        if match is None:
            return None  # before the credentials: checking them twice could cost scrypt twice
        principal = self.gate.admit_now(scope)
        if principal is None:
            return None
        found = self.answers.answer_match(scope, services, match, to_file)
        if found is None:
            return None
        try:
            self.gate.record_now(scope, principal, 200, services)
        except BaseException:
            if found.file is not None:
                os.close(found.file[0])
            raise
        if self.gate.hsts is not None:
            found.headers.append((b"strict-transport-security", self.gate.hsts))
        return found


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """A few distinct keys are expected (a viewer sends the same ones every time); any
    more, and the cache starts over rather than grow."""
    if len(cache) >= _REMEMBERED:
        cache.clear()
    cache[key] = value
