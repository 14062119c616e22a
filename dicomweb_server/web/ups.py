"""UPS-RS, the Worklist Service (PS3.18 11): create, retrieve, update, change state,
request cancellation and search of workitems, over the workitem service.

Request bodies are DICOM JSON (``application/dicom+json``, or ``application/json``): one
dataset, as an object or an array holding one object (PS3.18 F.2). The Workitem UID of
Create and the Transaction UID of Update are the bare query string (PS3.18 11.4.1,
11.6.1: ``/workitems?{workitem}``, ``/workitems/{workitem}?{transaction-uid}``).
Warnings use the ``299 <service>: <text>`` form with the texts PS3.18 lists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomweb_server.bootstrap import Services
from dicomweb_server.dicom.negotiation import choose_dataset_form
from dicomweb_server.dicom.uids import check_uid
from dicomweb_server.dicom.workitem import PROCEDURE_STEP_STATE, TRANSACTION_UID, public, text
from dicomweb_server.dicom.workitem_states import MissingTransactionUid, UpsConflict
from dicomweb_server.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from dicomweb_server.web.errors import ups_refusal
from dicomweb_server.web.negotiate import check_charset, negotiate
from dicomweb_server.web.qido import query_pairs
from dicomweb_server.web.responses import datasets_response
from dicomweb_server.web.urls import base_url

T = TypeVar("T")
_JSON_TYPES = frozenset({"application/dicom+json", "application/json"})


def ups_routes() -> list[Route]:
    """The Worklist Service resources (PS3.18 Table 11.3-1), under the DICOMweb root."""
    return [
        Route("/workitems", create, methods=["POST"]),
        Route("/workitems", search, methods=["GET"]),
        Route("/workitems/{workitem}", retrieve, methods=["GET"]),
        Route("/workitems/{workitem}", update, methods=["POST"]),
        Route("/workitems/{workitem}/state", change_state, methods=["PUT"]),
        Route("/workitems/{workitem}/cancelrequest", request_cancellation, methods=["POST"]),
    ]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _service_url(request: Request) -> str:
    return base_url(request, _services(request).settings)


def _bare_uid(request: Request, what: str) -> str | None:
    """The bare UID of ``?{uid}`` among the query parameters (others have a '=')."""
    raw = request.scope.get("query_string", b"").decode("latin-1")
    found = [unquote(p) for p in raw.split("&") if p and "=" not in p]
    if len(found) > 1:
        raise InvalidRequest(f"more than one {what} in the query string")
    return check_uid(found[0], what) if found else None


def _workitem_uid(request: Request) -> str:
    return check_uid(request.path_params["workitem"], "Workitem UID")


async def _dataset(request: Request, required: bool = True) -> dict[str, Any]:
    """The request's one DICOM JSON dataset; {} for an empty optional body."""
    limit = _services(request).settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    if not body.strip() and not required:
        return {}
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in _JSON_TYPES:
        raise UnsupportedMediaType(
            f"workitems are accepted as application/dicom+json, not {media or 'no type'}"
        )
    try:
        parsed = orjson.loads(bytes(body))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from None
    if isinstance(parsed, list):
        if len(parsed) != 1:
            raise InvalidRequest("the body must hold exactly one dataset")
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        raise InvalidRequest("the body must be a DICOM JSON dataset (an object)")
    return parsed


async def _run(
    request: Request, transaction: str, call: Callable[..., T], *args: Any
) -> T | Response:
    """Run a service call off the event loop; a UPS refusal becomes its PS3.18 answer."""
    try:
        return await anyio.to_thread.run_sync(call, *args)
    except (UpsConflict, MissingTransactionUid) as exc:
        missing = isinstance(exc, MissingTransactionUid)
        return ups_refusal(transaction, exc.status, missing, exc.message, _service_url(request))


def _with_warnings(response: Response, request: Request, warnings: list[str]) -> Response:
    service = _service_url(request)
    for warning in warnings:
        ascii_text = warning.encode("ascii", "replace").decode("ascii")
        response.headers.append("Warning", f"299 {service}: {ascii_text}")
    return response


async def create(request: Request) -> Response:
    """Create Workitem (PS3.18 11.4): 201 with Location; 409 if the UID exists."""
    uid = _bare_uid(request, "Workitem UID")
    dataset = await _dataset(request)
    if uid is None and not text(dataset, "00080018"):
        raise InvalidRequest(
            "the Workitem UID is required: as the query (/workitems?{uid}) or as the "
            "dataset's SOPInstanceUID (00080018) (PS3.18 11.4.1.1)"
        )
    service = _services(request).workitems
    item = await anyio.to_thread.run_sync(service.create, dataset, uid)
    location = f"{_service_url(request)}/workitems/{item.uid}"
    return Response(status_code=201, headers={"Location": location, "Content-Location": location})


async def retrieve(request: Request) -> Response:
    """Retrieve Workitem (PS3.18 11.5): the dataset, never its Transaction UID."""
    uid = _workitem_uid(request)
    check_charset(request, "workitems")
    choice = negotiate(request, choose_dataset_form)
    item = await anyio.to_thread.run_sync(_services(request).workitems.get, uid)
    response = datasets_response(choice, [public(item.dataset)])
    response.headers["Content-Location"] = f"{_service_url(request)}/workitems/{uid}"
    return response


async def update(request: Request) -> Response:
    """Update Workitem (PS3.18 11.6): the Transaction UID is the bare query string."""
    uid = _workitem_uid(request)
    transaction_uid = _bare_uid(request, "Transaction UID")
    changes = await _dataset(request)
    service = _services(request).workitems
    outcome = await _run(request, "update", service.update, uid, changes, transaction_uid)
    if isinstance(outcome, Response):
        return outcome
    return _with_warnings(Response(status_code=200), request, outcome)


async def change_state(request: Request) -> Response:
    """Change Workitem State (PS3.18 11.7): the body carries ProcedureStepState and
    TransactionUID (PS3.4 Table CC.2.1-1)."""
    uid = _workitem_uid(request)
    body = await _dataset(request)
    state = text(body, PROCEDURE_STEP_STATE)
    if state is None:
        raise InvalidRequest("ProcedureStepState (00741000) is required to change the state")
    transaction_uid = text(body, TRANSACTION_UID) or ""
    service = _services(request).workitems
    outcome = await _run(request, "state", service.change_state, uid, state, transaction_uid)
    if isinstance(outcome, Response):
        return outcome
    return _with_warnings(Response(status_code=200), request, outcome)


async def request_cancellation(request: Request) -> Response:
    """Request Cancellation (PS3.18 11.8): 202; the body (optional) may give the reason
    and a contact (PS3.4 Table CC.2.2-1)."""
    uid = _workitem_uid(request)
    info = await _dataset(request, required=False)
    service = _services(request).workitems
    outcome = await _run(request, "cancel", service.request_cancellation, uid, info)
    if isinstance(outcome, Response):
        return outcome
    return _with_warnings(Response(status_code=202), request, outcome)


async def search(request: Request) -> Response:
    """Search for Workitems (PS3.18 11.9): 200 with the matches (an empty list too)."""
    pairs = query_pairs(request.scope.get("query_string", b""))
    check_charset(request, "search results")
    choice = negotiate(request, choose_dataset_form)
    params: dict[str, list[str]] = {}
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    service = _services(request).workitems
    page = await anyio.to_thread.run_sync(service.search_page, params)
    warnings = list(page.warnings)
    if page.more:
        warnings.append("There are additional results that can be requested")
    return _with_warnings(datasets_response(choice, page.results), request, warnings)
