"""Rendered (PS3.18 10.4.1.1.3, 8.3.5) and thumbnail (10.4.1.1.6) resources.

Query parameters (PS3.18 Table 8.3.5-1): ``window=center,width[,function]``,
``viewport=vw,vh[,sx,sy,sw,sh]``, ``quality=1..100`` and ``annotation=patient,technique``
(accepted; this server burns no annotations into images, which the standard allows
as the parameter only asks for what "may" be included).
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from dicomweb_server.bootstrap import Services
from dicomweb_server.dicom.multipart import closing_delimiter, new_boundary, part_header
from dicomweb_server.dicom.negotiation import parse_accept
from dicomweb_server.dicom.render import (
    RENDERED_TYPES,
    RenderParams,
    parse_quality,
    parse_viewport,
    parse_window,
)
from dicomweb_server.errors import InvalidRequest, NotAcceptable
from dicomweb_server.services.rendering import Rendered
from dicomweb_server.web.negotiate import query_values

# The byte-range rules of bulk data (RFC 9110 14), shared rather than written twice.
from dicomweb_server.web.ranges import (
    RangeNotSatisfiable,
    content_range,
    single_range,
    unsatisfiable,
)
from dicomweb_server.web.urls import path_uids

_ANNOTATIONS = frozenset({"patient", "technique"})
_CACHE = "private, max-age=60"


def rendered_media_type(accept: str | None) -> str | None:
    """image/jpeg (the default, PS3.18 Table 8.7.4-1), image/png or image/gif."""
    for rng in parse_accept(accept):
        media = rng.inner_type if rng.media_type == "multipart/related" else rng.media_type
        if media in RENDERED_TYPES:
            return media
        if media in (None, "*/*", "image/*"):
            return "image/jpeg"
    return None


def _single(request: Request, name: str) -> str | None:
    values = query_values(request, name)
    if len(values) > 1:
        raise InvalidRequest(f"the {name} query parameter is given more than once")
    return values[0] if values else None


def render_params(request: Request, *, non_image_ok: bool = False) -> RenderParams:
    accepts = query_values(request, "accept")
    media = rendered_media_type(",".join(accepts)) if accepts else None
    media = media or rendered_media_type(request.headers.get("accept"))
    if media is None and not non_image_ok:
        raise NotAcceptable("rendered images are available as image/jpeg, image/png, image/gif")
    window = _single(request, "window")
    viewport = _single(request, "viewport")
    quality = _single(request, "quality")
    for value in query_values(request, "annotation"):
        unknown = {a.strip() for a in value.split(",")} - _ANNOTATIONS
        if unknown:
            raise InvalidRequest(f"annotation {sorted(unknown)[0]!r}: patient or technique")
    return RenderParams(
        media_type=media or "",  # "": no image type acceptable (documents may still be)
        quality=parse_quality(quality) if quality is not None else 90,
        window=parse_window(window) if window is not None else None,
        viewport=parse_viewport(viewport) if viewport is not None else None,
    )


async def rendered_instance(request: Request) -> Response:
    services: Services = request.app.state.services
    study, series, sop = path_uids(request)
    assert series is not None and sop is not None
    frame = None
    if "frame" in request.path_params:
        text = request.path_params["frame"]
        if not text.isdigit() or int(text) < 1:
            raise InvalidRequest(f"invalid frame number {text[:20]!r}: the first frame is 1")
        frame = int(text)
    params = render_params(request, non_image_ok=True)
    result = await anyio.to_thread.run_sync(
        services.rendering.instance, study, series, sop, frame, params
    )
    return respond(request, result)


def respond(request: Request, result: Rendered) -> Response:
    """A rendered answer; documents and video also by single byte range (RFC 9110 14)."""
    headers = {"Cache-Control": _CACHE, "Content-Length": str(result.length)}
    if result.cross_origin:
        headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    if result.part is not None:
        headers["Accept-Ranges"] = "bytes"
        try:
            span = single_range(request.headers.get("range"), result.length)
        except RangeNotSatisfiable:
            return unsatisfiable(request, result.length)
        if span is not None:
            start, length = span
            headers["Content-Length"] = str(length)
            headers["Content-Range"] = content_range(start, length, result.length)
            return StreamingResponse(
                result.part(start, length),
                status_code=206,
                media_type=result.media_type,
                headers=headers,
            )
    if isinstance(result.body, bytes):
        return Response(result.body, media_type=result.media_type, headers=headers)
    return StreamingResponse(result.body, media_type=result.media_type, headers=headers)


def _parts(first: bytes, rest: Iterator[bytes], media: str, boundary: str) -> Iterator[bytes]:
    yield part_header(boundary, {"Content-Type": media, "Content-Length": str(len(first))})
    yield first
    for data in rest:
        headers = {"Content-Type": media, "Content-Length": str(len(data))}
        yield part_header(boundary, headers, first=False) + data
    yield closing_delimiter(boundary)


async def rendered_many(request: Request) -> Response:
    """Study or series rendered: multipart/related, one rendered image per instance."""
    services: Services = request.app.state.services
    study, series, _ = path_uids(request)
    params = render_params(request)
    _, images = await anyio.to_thread.run_sync(services.rendering.images, study, series, params)
    first = await anyio.to_thread.run_sync(next, images, None)
    if first is None:
        raise NotAcceptable("none of the instances could be rendered")
    boundary = new_boundary()
    media = f'multipart/related; type="{params.media_type}"; boundary={boundary}'
    return StreamingResponse(
        _parts(first, images, params.media_type, boundary),
        media_type=media,
        headers={"Cache-Control": _CACHE},
    )


async def thumbnail(request: Request) -> Response:
    services: Services = request.app.state.services
    study, series, sop = path_uids(request)
    params = render_params(request)
    data = await anyio.to_thread.run_sync(services.rendering.thumbnail, study, series, sop, params)
    return Response(data, media_type=params.media_type, headers={"Cache-Control": _CACHE})


def routes(study: str, series: str, instance: str) -> list[Route]:
    return [
        Route(study + "/rendered", rendered_many, methods=["GET"]),
        Route(series + "/rendered", rendered_many, methods=["GET"]),
        Route(instance + "/rendered", rendered_instance, methods=["GET"]),
        Route(instance + "/frames/{frame}/rendered", rendered_instance, methods=["GET"]),
        Route(study + "/thumbnail", thumbnail, methods=["GET"]),
        Route(series + "/thumbnail", thumbnail, methods=["GET"]),
        Route(instance + "/thumbnail", thumbnail, methods=["GET"]),
    ]
