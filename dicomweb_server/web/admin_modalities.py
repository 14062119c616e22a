"""``/admin/modalities``: known remote AEs, and outbound DIMSE to them, over REST.

    GET    /admin/modalities                   every known AE (configured and stored)
    GET    /admin/modalities/{aet}             one
    PUT    /admin/modalities/{aet}             add or replace: {"host", "port",
                                               "operations"?, "allowed_ips"?}
    DELETE /admin/modalities/{aet}             remove a stored one
    POST   /admin/modalities/{aet}/echo        C-ECHO
    POST   /admin/modalities/{aet}/store       C-STORE {"study", "series"?, "instance"?}
    POST   /admin/modalities/{aet}/query       C-FIND {"level", "keys": {keyword: value}}
    POST   /admin/modalities/{aet}/retrieve    C-MOVE to us {"level", "keys"}

Outbound results answer 200 when the remote's final status is Success, else 502
(the remote refused or failed) with the DIMSE status and counts in the body. Every
path is under /admin/ so that one rule can protect them all.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomweb_server.bootstrap import Services
from dicomweb_server.errors import InvalidRequest
from dicomweb_server.services.modalities import RemoteResult


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _outcome(result: RemoteResult, extra: dict[str, Any] | None = None) -> Response:
    body = {**result.as_json(), **(extra or {})}
    return _json(body, 200 if result.status == 0 else 502)


async def list_modalities(request: Request) -> Response:
    service = _services(request).modalities
    found = await run_in_threadpool(service.all)
    return _json([m.as_json() for m in found])


async def get_modality(request: Request) -> Response:
    service = _services(request).modalities
    found = await run_in_threadpool(service.get, request.path_params["aet"])
    return _json(found.as_json())


async def put_modality(request: Request) -> Response:
    body = await _body(request)
    service = _services(request).modalities
    modality, created = await run_in_threadpool(service.put, request.path_params["aet"], body)
    return _json(modality.as_json(), 201 if created else 200)


async def delete_modality(request: Request) -> Response:
    service = _services(request).modalities
    await run_in_threadpool(service.delete, request.path_params["aet"])
    return Response(status_code=204)


async def echo(request: Request) -> Response:
    service = _services(request).modalities
    return _outcome(await run_in_threadpool(service.echo, request.path_params["aet"]))


def _uid(body: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{key} must be a UID string")
    return value


async def store(request: Request) -> Response:
    body = await _body(request)
    services = _services(request)
    study = _uid(body, "study", required=True)
    assert study is not None
    series, sop = _uid(body, "series"), _uid(body, "instance")

    def work() -> RemoteResult:
        instances = services.retrieve.instances(study, series, sop)
        return services.modalities.send(request.path_params["aet"], iter(instances))

    return _outcome(await run_in_threadpool(work))


def _query_args(body: dict[str, Any]) -> tuple[str, dict[str, str]]:
    level, keys = body.get("level"), body.get("keys", {})
    if not isinstance(level, str):
        raise InvalidRequest("level must be PATIENT, STUDY, SERIES or IMAGE")
    if not isinstance(keys, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in keys.items()
    ):
        raise InvalidRequest("keys must be an object of keyword: string value")
    return level, keys


async def query(request: Request) -> Response:
    level, keys = _query_args(await _body(request))
    service = _services(request).modalities
    result = await run_in_threadpool(service.query, request.path_params["aet"], level, keys)
    return _outcome(result, {"matches": result.matches})


async def retrieve(request: Request) -> Response:
    level, keys = _query_args(await _body(request))
    service = _services(request).modalities
    result = await run_in_threadpool(service.retrieve, request.path_params["aet"], level, keys)
    return _outcome(result)


def admin_modality_routes() -> list[Route]:
    base = "/admin/modalities"
    one = base + "/{aet}"
    return [
        Route(base, list_modalities, methods=["GET"]),
        Route(one, get_modality, methods=["GET"]),
        Route(one, put_modality, methods=["PUT"]),
        Route(one, delete_modality, methods=["DELETE"]),
        Route(one + "/echo", echo, methods=["POST"]),
        Route(one + "/store", store, methods=["POST"]),
        Route(one + "/query", query, methods=["POST"]),
        Route(one + "/retrieve", retrieve, methods=["POST"]),
    ]
