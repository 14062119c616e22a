"""Frames (PS3.18 10.4.1.1.4), rendered (10.4.1.1.3) and thumbnail (10.4.1.1.6)
resources of the Studies Service."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from dicomweb_server.bootstrap import Services
from dicomweb_server.dicom.multipart import closing_delimiter, new_boundary, part_header
from dicomweb_server.dicom.pixel_media import Wanted, choose_pixel
from dicomweb_server.errors import NotAcceptable
from dicomweb_server.services.pixels import Located, Output, parse_frame_list
from dicomweb_server.web import rendered
from dicomweb_server.web.negotiate import query_values
from dicomweb_server.web.responses import PiecesResponse, coalesced
from dicomweb_server.web.urls import path_uids

# Patient data: a browser may keep it (per user), but asks again before reusing it.
FRAMES_CACHE_CONTROL = "private, no-cache"
_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"


def wanted_from(request: Request, *, single_allowed: bool) -> list[Wanted]:
    """The ``accept`` query parameter wins over the Accept header when it names
    something acceptable (PS3.18 8.7.8.1)."""
    accepts = query_values(request, "accept")
    if accepts:
        try:
            return choose_pixel(",".join(accepts), single_allowed=single_allowed)
        except NotAcceptable:
            pass
    return choose_pixel(request.headers.get("accept"), single_allowed=single_allowed)


def _parts(
    first: bytes, rest: Iterator[bytes], out: Output, boundary: str, location: str
) -> Iterator[bytes]:
    headers = {"Content-Type": out.content_type, "Content-Location": location}
    yield part_header(boundary, {**headers, "Content-Length": str(len(first))}) + first
    for data in rest:
        yield part_header(boundary, {**headers, "Content-Length": str(len(data))}, first=False)
        yield data
    yield closing_delimiter(boundary)


# Up to this many frames are read and framed in one worker-thread call and sent as one
# body; longer lists are streamed in pieces of about a MiB (``coalesced``).
_IN_ONE_GO = 8


async def retrieve_frames(request: Request) -> Response:
    services: Services = request.app.state.services
    study, series, sop = path_uids(request)
    assert series is not None and sop is not None
    numbers = parse_frame_list(request.path_params["frames"])
    wanted = wanted_from(request, single_allowed=len(numbers) == 1)
    pixels = services.pixels

    def start() -> tuple[Output, list[bytes], Generator[bytes, None, None]]:
        # One thread hop for the common case. The first frame is always produced before
        # the status line, so a failure to decode or encode it is an error response.
        located: Located = pixels.locate(study, series, sop)
        pixels.check_numbers(located, numbers)
        out = pixels.output(located, wanted)
        frames = pixels.frames(located, numbers, out)
        ready = [next(frames)]
        if len(numbers) <= _IN_ONE_GO:
            ready += list(frames)
        return out, ready, frames

    out, ready, frames = await anyio.to_thread.run_sync(start)
    headers = {"Cache-Control": FRAMES_CACHE_CONTROL}
    if not out.multipart:
        frames.close()
        return Response(ready[0], media_type=out.content_type, headers=headers)
    boundary = new_boundary()
    media = f'multipart/related; type="{out.media_type}"; boundary={boundary}'
    location = str(request.url.remove_query_params(["accept"]))
    if len(numbers) <= _IN_ONE_GO:
        pieces = list(_parts(ready[0], iter(ready[1:]), out, boundary, location))
        return PiecesResponse(pieces, media_type=media, headers=headers)
    return StreamingResponse(
        coalesced(_parts(ready[0], frames, out, boundary, location)),
        media_type=media,
        headers=headers,
    )


def pixel_routes() -> list[Route]:
    return [
        Route(_INSTANCE + "/frames/{frames}", retrieve_frames, methods=["GET"]),
        *rendered.routes(_STUDY, _SERIES, _INSTANCE),
    ]
