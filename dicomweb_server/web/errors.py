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
    errors.Refused: 403,  # --- wado-anon ---
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


# --- ups-core ---
# UPS-RS refusals by transaction and UPS status (PS3.4 CC.2.1.4, CC.2.2.4, CC.2.6.4):
# the HTTP status and the Warning text PS3.18 gives for them. Update: Tables 11.6.3-1/-2
# (a final state or a missing or wrong Transaction UID is 400); Change State: Tables
# 11.7.3-1/-2 (Transaction UID missing or wrong: 400; a transition the state forbids,
# including unmet final-state requirements: 409); Request Cancellation: Tables
# 11.8.3-1/-2 (COMPLETED: 409).
_INCONSISTENT_UPDATE = (
    "The submitted request is inconsistent with the current state of the Workitem."
)
_INCONSISTENT_STATE = "The submitted request is inconsistent with the state of the UPS Instance."
UPS_REFUSALS: dict[str, dict[int, tuple[int, str]]] = {
    "update": {
        0xC300: (400, _INCONSISTENT_UPDATE),
        0xC301: (400, "The target URI did not reference a claimed Workitem."),
    },
    "state": {
        0xC300: (409, _INCONSISTENT_STATE),
        0xC302: (409, _INCONSISTENT_STATE),
        0xC303: (409, _INCONSISTENT_STATE),
        0xC304: (409, _INCONSISTENT_STATE),
        0xC310: (409, _INCONSISTENT_STATE),
    },
    "cancel": {
        0xC311: (409, "The UPS is already COMPLETED."),
        0xC312: (409, "The performer cannot be contacted."),
        0xC313: (409, "Performer chooses not to cancel."),
    },
}
_MISSING_UID = "The Transaction UID is missing."
_WRONG_UID = "The Transaction UID is incorrect."


def ups_refusal(
    transaction: str, status: int, missing_uid: bool, message: str, service: str
) -> Response:
    """The response to a refused UPS-RS request: status, Warning header, JSON message."""
    if transaction == "state" and status == 0xC301:
        code, text = 400, _MISSING_UID if missing_uid else _WRONG_UID
    else:
        code, text = UPS_REFUSALS.get(transaction, {}).get(status, (409, _INCONSISTENT_STATE))
    response = error_response(code, message)
    response.headers["Warning"] = f"299 {service}: {text}"
    return response
