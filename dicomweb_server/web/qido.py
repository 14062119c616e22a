"""QIDO-RS (PS3.18 10.6): search for studies, series and instances."""

from __future__ import annotations

from urllib.parse import unquote

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.bootstrap import Services
from dicomweb_server.dicom.attributes import Level
from dicomweb_server.dicom.matching import (
    SERIES_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    Condition,
    Kind,
    parse_query,
)
from dicomweb_server.dicom.negotiation import choose_dataset_form
from dicomweb_server.errors import InvalidRequest
from dicomweb_server.web.responses import datasets_response
from dicomweb_server.web.urls import base_url, path_uids


def query_pairs(raw: bytes) -> list[tuple[str, str]]:
    """Split a query string per RFC 3986: '+' is a literal plus, not a space."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequest("query string must be ASCII with percent-encoding") from None
    pairs = []
    for piece in text.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        try:
            pairs.append((unquote(name, errors="strict"), unquote(value, errors="strict")))
        except UnicodeDecodeError:
            raise InvalidRequest(
                "query parameter is not valid UTF-8 when percent-decoded"
            ) from None
    return pairs


def _level(request: Request) -> Level:
    last = request.url.path.rstrip("/").rsplit("/", 1)[-1]
    return {"studies": Level.STUDY, "series": Level.SERIES}.get(last, Level.INSTANCE)


async def search(request: Request) -> Response:
    services: Services = request.app.state.services
    settings = services.settings
    choice = choose_dataset_form(request.headers.get("accept"))
    scope: list[Condition] = []
    if "study" in request.path_params:
        study, series, _ = path_uids(request)
        scope.append(Condition(STUDY_INSTANCE_UID, Kind.SINGLE, (study,)))
        if series is not None:
            scope.append(Condition(SERIES_INSTANCE_UID, Kind.SINGLE, (series,)))
    query = parse_query(
        _level(request),
        query_pairs(request.scope.get("query_string", b"")),
        scope=scope,
        default_limit=settings.qido_default_limit,
        max_limit=settings.qido_max_limit,
    )
    base = base_url(request, settings)
    outcome = await anyio.to_thread.run_sync(services.query.search, query, base)
    response = datasets_response(choice, outcome.results)
    for warning in outcome.warnings:
        response.headers.append("Warning", f"299 {base}: {warning}")
    if outcome.remaining:
        response.headers.append(
            "Warning",
            f"299 {base}: There are {outcome.remaining} additional results that can be requested",
        )
    return response
