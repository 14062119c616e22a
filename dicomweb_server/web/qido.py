"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

Query strings are percent-decoded as UTF-8 (RFC 3986, PS3.18 8.3.1). A bare '+' is read
as a space, as URL query parsers do (WHATWG URL, form encoding): dicomweb-client encodes
spaces that way, and every encoder sends a literal plus as %2B. The
``accept`` query parameter takes precedence over the Accept header (PS3.18 8.7.8.1);
``charset`` may only ask for UTF-8, the one charset results are sent in (8.3.3.2).
Warnings use the PS3.18 8.3.4.4.1 form: ``299 <service>: <text>``.
"""

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
from dicomweb_server.web.negotiate import check_charset, negotiate
from dicomweb_server.web.responses import datasets_response
from dicomweb_server.web.urls import base_url, path_uids


def query_pairs(raw: bytes) -> list[tuple[str, str]]:
    """Split and percent-decode a query string; '+' is a space, '%2B' a plus."""
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
            pairs.append(
                (
                    unquote(name.replace("+", " "), errors="strict"),
                    unquote(value.replace("+", " "), errors="strict"),
                )
            )
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
    pairs = query_pairs(request.scope.get("query_string", b""))
    check_charset(request, "search results")
    choice = negotiate(request, choose_dataset_form)
    scope: list[Condition] = []
    if "study" in request.path_params:
        study, series, _ = path_uids(request)
        scope.append(Condition(STUDY_INSTANCE_UID, Kind.SINGLE, (study,)))
        if series is not None:
            scope.append(Condition(SERIES_INSTANCE_UID, Kind.SINGLE, (series,)))
    query = parse_query(
        _level(request),
        pairs,
        scope=scope,
        default_limit=settings.qido_default_limit,
        max_limit=settings.qido_max_limit,
    )
    query.match_empty = settings.qido_match_empty
    base = base_url(request, settings)
    outcome = await anyio.to_thread.run_sync(services.query.search, query, base)
    response = datasets_response(choice, outcome.results)
    for warning in outcome.warnings:
        text = warning.encode("ascii", "replace").decode("ascii")
        response.headers.append("Warning", f"299 {base}: {text}")
    if outcome.remaining:
        response.headers.append(
            "Warning",
            f"299 {base}: There are {outcome.remaining} additional results that can be requested",
        )
    return response
