"""Audit records for HTTP requests, derived from the path, and the admin search endpoint.

The event is chosen from the method and the path alone (PS3.15 A.5.3), so routes added
later (frames, rendered, thumbnails, WADO-URI, workitems) are recorded without work of
their own: UIDs come from ``studies/{uid}``, ``series/{uid}``, ``instances/{uid}``
segments and WADO-URI's ``studyUID``/``seriesUID``/``objectUID`` parameters. Handlers
that learn more (STOW: which instances were stored) add it with ``note(request)``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dicomweb_server.bootstrap import Services
from dicomweb_server.errors import InvalidRequest
from dicomweb_server.services import audit
from dicomweb_server.services.audit import AuditEvent

_SEGMENT = re.compile(r"(?:^|/)(studies|series|instances)/([^/]+)")
_SUBSCRIPTION = re.compile(r"/workitems/[^/]+/subscribers/[^/]+(/suspend)?")
_OBJECTS = re.compile(r"(/studies/[^/]+)(/series/[^/]+)?(/instances/[^/]+)?")
_LEVELS = ("studies", "series", "instances")
_SEARCH_ENDS = (*_LEVELS, "workitems")
_WADO_URI = {"studyUID": "study_uids", "seriesUID": "series_uids", "objectUID": "sop_instance_uids"}
_MAX_VALUE = 256
_MAX_PARAMS = 50


def note(request: Request) -> AuditEvent | None:
    """The audit event being built for this request (None when the request is not audited)."""
    event = request.scope.get("state", {}).get("audit_event")
    return event if isinstance(event, AuditEvent) else None


def _query(raw: bytes) -> dict[str, str]:
    if not raw:
        return {}
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)[:_MAX_PARAMS]
    return {k[:64]: v[:_MAX_VALUE] for k, v in pairs}


def classify(method: str, path: str, root: str, query_string: bytes) -> AuditEvent | None:
    """The PS3.15 A.5 event for a request, with what it addresses; None for non-data paths."""
    if path == "/admin/audit":
        return AuditEvent(audit.AUDIT_LOG_USED, "R", 0, query=_query(query_string))
    if path.startswith("/admin/"):
        return AuditEvent(audit.APPLICATION_ACTIVITY, "E", 0, query=_query(query_string))
    if path == "/wado":
        event = AuditEvent(audit.INSTANCES_TRANSFERRED, "R", 0, query=_query(query_string))
        for param, attr in _WADO_URI.items():
            if param in event.query:
                getattr(event, attr).append(event.query[param])
        return event
    if path != root and not path.startswith(root + "/"):
        return None
    rest = path[len(root) :]
    if "/subscribers/" in rest and _SUBSCRIPTION.fullmatch(rest):
        return None  # UPS subscriptions: AE titles and UIDs, no patient data
    segments = rest.rstrip("/").rsplit("/", 2)
    last = segments[-1]
    if method == "DELETE":
        event = AuditEvent(audit.STUDY_DELETED, "D", 0)
    elif method in ("POST", "PUT"):
        event = AuditEvent(audit.INSTANCES_TRANSFERRED, "C" if method == "POST" else "U", 0)
    elif last in _SEARCH_ENDS:
        event = AuditEvent(audit.QUERY, "E", 0, query=_query(query_string))
    elif len(segments) == 3 and segments[1] in _LEVELS and _OBJECTS.fullmatch(rest):
        # The objects themselves are sent to the requester.
        event = AuditEvent(audit.INSTANCES_TRANSFERRED, "R", 0, query=_query(query_string))
    else:  # metadata, bulk data, frames, rendered, thumbnails, ...
        event = AuditEvent(audit.INSTANCES_ACCESSED, "R", 0, query=_query(query_string))
    for kind, uid in _SEGMENT.findall(rest):
        target = {"studies": event.study_uids, "series": event.series_uids}.get(
            kind, event.sop_instance_uids
        )
        target.append(uid[:_MAX_VALUE])
    return event


def outcome_of(status: int) -> int:
    """EventOutcomeIndicator for an HTTP status (PS3.15 A.5.1)."""
    if status < 400:
        return audit.OUTCOME_SUCCESS
    return audit.OUTCOME_MINOR_FAILURE if status < 500 else audit.OUTCOME_SERIOUS_FAILURE


async def audit_endpoint(request: Request) -> Response:
    """GET /admin/audit?patient=&user=&since=&until=&limit= (admin only, by the policy)."""
    services: Services = request.app.state.services
    params = dict(request.query_params)
    unknown = set(params) - {"patient", "user", "since", "until", "limit"}
    if unknown:
        raise InvalidRequest(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    path = services.settings.audit_path
    records = await anyio.to_thread.run_sync(audit.search_params, services.query, path, params)
    return JSONResponse(records)


def audit_routes() -> list[Route]:
    return [Route("/admin/audit", audit_endpoint, methods=["GET"])]
