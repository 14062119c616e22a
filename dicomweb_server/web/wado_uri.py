"""WADO-URI (PS3.18 9): ``GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``.

Still used by report links and hospital portals. ``contentType`` (PS3.18 9.1.2.1.5):
``application/dicom`` (with ``transferSyntax``; a syntax the
server cannot produce falls back to Explicit VR Little Endian as PS3.18 9.1.2.1.13
requires), ``image/jpeg`` (the default for images), ``image/png``, ``image/gif``, and
the natural type of non-image objects (``application/pdf`` for Encapsulated PDF, the
video stream). Image parameters: ``frameNumber``, ``rows``, ``columns``,
``windowCenter`` with ``windowWidth``, ``imageQuality``. ``anonymize=yes`` (PS3.18 9.4,
Table 9.4.1-1; 9.4.2.3) with ``application/dicom`` only: the object de-identified by
the Basic Profile (``services/anonymize.py``), 403 for an object the archive cannot
safely de-identify. ``region``, ``presentationUID`` and ``annotation`` burning are not
supported: 400 rather than silently ignoring what the caller asked for (except
``annotation``, which only says what "may" be shown).
"""

from __future__ import annotations

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomweb_server.bootstrap import Services
from dicomweb_server.dicom.negotiation import parse_accept
from dicomweb_server.dicom.render import RENDERED_TYPES, RenderParams, Viewport, Window
from dicomweb_server.dicom.render import parse_quality as _quality
from dicomweb_server.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, check_uid, is_valid_uid
from dicomweb_server.errors import InvalidRequest, NotAcceptable
from dicomweb_server.web.negotiate import query_values
from dicomweb_server.web.rendered import respond

_REQUIRED = ("requestType", "studyUID", "seriesUID", "objectUID")
_UNSUPPORTED = ("region", "presentationUID", "presentationSeriesUID")
_NATURAL = ("application/pdf", "video/mp4", "video/mpeg2", "video/h265")
_CACHE = "private, max-age=60"


def _param(request: Request, name: str) -> str | None:
    values = query_values(request, name)
    if len(values) > 1:
        raise InvalidRequest(f"WADO-URI parameter {name} is given more than once")
    return values[0].strip() if values else None


def _positive(request: Request, name: str, limit: int = 8192) -> int | None:
    text = _param(request, name)
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= limit:
        raise InvalidRequest(f"{name}={text[:20]!r}: an integer from 1 to {limit}")
    return int(text)


def _float(request: Request, name: str) -> float | None:
    text = _param(request, name)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidRequest(f"{name}={text[:20]!r} is not a number") from None


def _content_types(request: Request) -> list[str]:
    text = _param(request, "contentType")
    if not text:
        return []
    return [r.media_type for r in parse_accept(text)]


async def _dicom(
    request: Request, services: Services, study: str, series: str, sop: str
) -> Response:
    requested = _param(request, "transferSyntax") or EXPLICIT_VR_LITTLE_ENDIAN
    if requested != "*" and not is_valid_uid(requested):
        raise InvalidRequest(f"transferSyntax={requested[:70]!r} is not a UID")
    headers = {"Cache-Control": _CACHE}
    anonymize = _param(request, "anonymize")
    if anonymize is not None:
        if anonymize.lower() != "yes":
            raise InvalidRequest(f"anonymize={anonymize[:20]!r}: the only value is yes")
        data, syntax = await anyio.to_thread.run_sync(
            services.anonymize.instance,
            study,
            series,
            sop,
            (requested, EXPLICIT_VR_LITTLE_ENDIAN),
        )
        media = f"application/dicom; transfer-syntax={syntax}"
        return Response(data, media_type=media, headers=headers)
    retrieve = services.retrieve
    found = await anyio.to_thread.run_sync(retrieve.instances, study, series, sop)
    # Unproducible syntax: Explicit VR Little Endian instead (PS3.18 9.1.2.1.13).
    item = retrieve.plan(found, (requested, EXPLICIT_VR_LITTLE_ENDIAN))[0]
    media = f"application/dicom; transfer-syntax={item.transfer_syntax}"
    if item.as_stored:
        headers["Content-Length"] = str(item.instance.blob_size)
        return StreamingResponse(retrieve.chunks(item), media_type=media, headers=headers)
    data = await anyio.to_thread.run_sync(retrieve.converted, item)
    return Response(data, media_type=media, headers=headers)


async def wado(request: Request) -> Response:
    services: Services = request.app.state.services
    values = {name: _param(request, name) for name in _REQUIRED}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise InvalidRequest(f"WADO-URI request without {', '.join(missing)} (PS3.18 9.1.2.1)")
    if values["requestType"] != "WADO":
        raise InvalidRequest(f"requestType={values['requestType']!r}: only WADO is supported")
    study = check_uid(values["studyUID"] or "", "studyUID")
    series = check_uid(values["seriesUID"] or "", "seriesUID")
    sop = check_uid(values["objectUID"] or "", "objectUID")
    for name in _UNSUPPORTED:
        if _param(request, name) is not None:
            raise InvalidRequest(f"WADO-URI parameter {name} is not supported by this server")
    types = _content_types(request)
    usable = ("application/dicom", *RENDERED_TYPES, *_NATURAL, "*/*", "image/*")
    first = next((t for t in types if t in usable), None)
    if types and first is None:
        raise NotAcceptable(
            f"contentType {', '.join(types)}: available are application/dicom, image/jpeg, "
            "image/png, image/gif, and the natural type of non-image objects"
        )
    if first == "application/dicom":
        return await _dicom(request, services, study, series, sop)
    if _param(request, "transferSyntax") is not None:
        raise InvalidRequest("transferSyntax is only allowed with contentType=application/dicom")
    if _param(request, "anonymize") is not None:
        # PS3.18 9.4.2.3: only with the application/dicom media type.
        raise InvalidRequest("anonymize is only allowed with contentType=application/dicom")
    media = first if first in RENDERED_TYPES else None
    center, width = _float(request, "windowCenter"), _float(request, "windowWidth")
    if (center is None) != (width is None):
        raise InvalidRequest("windowCenter and windowWidth go together")
    if width is not None and width < 1:
        raise InvalidRequest("windowWidth must be at least 1")
    rows, columns = _positive(request, "rows"), _positive(request, "columns")
    viewport = None
    if rows or columns:
        viewport = Viewport(columns or 8192, rows or 8192)
    quality_text = _param(request, "imageQuality")
    params = RenderParams(
        media_type=media or "image/jpeg",
        quality=_quality(quality_text) if quality_text else 90,
        window=Window(center, width) if center is not None and width is not None else None,
        viewport=viewport,
    )
    frame = _positive(request, "frameNumber", 1 << 31)
    try:
        result = await anyio.to_thread.run_sync(
            services.rendering.instance, study, series, sop, frame, params
        )
    except NotAcceptable:
        if types or frame is not None:
            raise
        # No pixel data and no contentType asked: the object itself is its natural type.
        return await _dicom(request, services, study, series, sop)
    if media is not None and result.media_type != media:
        raise NotAcceptable(f"this object is available as {result.media_type}, not {media}")
    return respond(request, result)
