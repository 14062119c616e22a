"""The one table from domain errors to HTTP responses."""

from __future__ import annotations

import logging

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.DicomWebError], int] = {
    errors.InvalidRequest: 400,
    errors.NotFound: 404,
    errors.NotAcceptable: 406,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.StorageUnavailable: 500,
    errors.OutOfResources: 507,
}


def status_for(exc: errors.DicomWebError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, message: str) -> Response:
    body = orjson.dumps({"status": status, "message": message})
    return Response(body, status_code=status, media_type="application/json")


async def handle_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.DicomWebError)
    status = status_for(exc)
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    return error_response(status, exc.message)


async def handle_os_error(request: Request, exc: Exception) -> Response:
    """An OSError no layer turned into a domain error: a full disk is still 507."""
    assert isinstance(exc, OSError)
    if errors.is_no_space(exc):
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return error_response(507, "no space left on the archive")
    log.error("%s %s: unexpected I/O error", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal I/O error; see the server log")
