"""UPS-RS subscriptions and the event channel (PS3.18 11.10-11.13, 8.10.4-8.10.5).

    POST   {root}/workitems/{uid}/subscribers/{aetitle}[?deletionlock=true|false]
                                      Subscribe (11.10): 201, Content-Location = the
                                      event channel; 400 bad AE title, UID or filter;
                                      404 unknown workitem
    POST   {root}/workitems/1.2.840.10008.5.1.4.34.5/subscribers/{aetitle}
    POST   {root}/workitems/1.2.840.10008.5.1.4.34.5.1/subscribers/{aetitle}?{filter}
                                      worklist and filtered worklist subscriptions
    DELETE {root}/workitems/{uid}/subscribers/{aetitle}
                                      Unsubscribe (11.11): 200; 404 not subscribed
    POST   {root}/workitems/{1.2.840.10008.5.1.4.34.5[.1]}/subscribers/{aetitle}/suspend
                                      Suspend Global Subscription (11.12): 200; 404
    GET    {root}/ws/subscribers/{aetitle}  (WebSocket; also {root}/subscribers/{aetitle})
                                      Open Notification Connection (8.10.4): event
                                      reports as DICOM JSON text frames (8.10.5)

The event channel URL follows PS3.18 2019's ``{+WSSERVICE}/subscribers/{AETitle}`` with
``{+WSSERVICE}`` = ``ws(s)://host{root}/ws``; current editions leave the path to the
server, and the Subscribe response names it in Content-Location (Table 11.10.3-2).
Routes are given with their full path, ahead of the DICOMweb mount.
"""

from __future__ import annotations

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from dicomweb_server.bootstrap import Services
from dicomweb_server.config import Settings
from dicomweb_server.dicom import ups_events as ups
from dicomweb_server.dicom.ups_events import check_ae_title
from dicomweb_server.errors import DicomWebError
from dicomweb_server.services.ups_delivery import Overflow
from dicomweb_server.web.negotiate import check_charset
from dicomweb_server.web.qido import query_pairs
from dicomweb_server.web.urls import base_url

# RFC 6455 7.4.1: 1008 policy violation (a bad AE title), 1013 try again later (the
# client fell behind; it reconnects).
_POLICY, _TRY_AGAIN = 1008, 1013


def _services(request: Request | WebSocket) -> Services:
    services: Services = request.app.state.services
    return services


def channel_url(request: Request, settings: Settings, ae_title: str) -> str:
    base = base_url(request, settings)
    scheme, rest = base.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws/subscribers/{ae_title}"


async def subscribe(request: Request) -> Response:
    services = _services(request)
    check_charset(request, "subscription responses")
    pairs = query_pairs(request.scope.get("query_string", b""))
    lock = ups.parse_deletion_lock([v for k, v in pairs if k == "deletionlock"])
    keys = ups.subscription_filter(pairs)
    aet = check_ae_title(request.path_params["aetitle"])
    warnings = await anyio.to_thread.run_sync(
        services.subscriptions.subscribe, aet, request.path_params["uid"], lock, keys
    )
    headers = {"Content-Location": channel_url(request, services.settings, aet)}
    response = Response(status_code=201, headers=headers)
    for text in warnings:
        response.headers.append("Warning", f"299 dicomweb-server: {text}")
    return response


async def unsubscribe(request: Request) -> Response:
    services = _services(request)
    await anyio.to_thread.run_sync(
        services.subscriptions.unsubscribe,
        request.path_params["aetitle"],
        request.path_params["uid"],
    )
    return Response(status_code=200)


async def suspend(request: Request) -> Response:
    services = _services(request)
    await anyio.to_thread.run_sync(
        services.subscriptions.suspend, request.path_params["aetitle"], request.path_params["uid"]
    )
    return Response(status_code=200)


async def event_channel(websocket: WebSocket) -> None:
    """Send this AE's event reports, in order, until the client goes (PS3.18 8.10.4.2).

    What the client sends is read and ignored; reading is how its close is noticed.
    """
    try:
        aet = check_ae_title(websocket.path_params["aetitle"])
    except DicomWebError:
        await websocket.close(code=_POLICY)  # before accept: the handshake gets 403
        return
    hub = _services(websocket).ups_hub
    listener = await hub.connect(aet)
    try:
        # PS3.18 8.10.4 names no subprotocol; agreeing to the client's first keeps
        # browsers, which fail a handshake that ignores the ones they offered.
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol=offered[0] if offered else None)
        message_id = 0
        async with anyio.create_task_group() as tasks:

            async def until_closed() -> None:
                try:
                    while True:
                        await websocket.receive_text()
                except (WebSocketDisconnect, RuntimeError, KeyError):
                    pass
                tasks.cancel_scope.cancel()

            tasks.start_soon(until_closed)
            try:
                while True:
                    message = await listener.next()
                    # Message ID (0000,0110): per connection, 1..65535 (PS3.7 E.1).
                    message_id = message_id % 0xFFFF + 1
                    await websocket.send_text(ups.numbered(message, message_id))
            except Overflow:
                await websocket.close(code=_TRY_AGAIN)
            except WebSocketDisconnect:
                pass
            tasks.cancel_scope.cancel()
    finally:
        hub.disconnect(listener)


def ups_subscription_routes(settings: Settings) -> list[BaseRoute]:
    root = settings.dicomweb_root
    subscriber = root + "/workitems/{uid}/subscribers/{aetitle}"
    return [
        Route(subscriber, subscribe, methods=["POST"]),
        Route(subscriber, unsubscribe, methods=["DELETE"]),
        Route(subscriber + "/suspend", suspend, methods=["POST"]),
        WebSocketRoute(root + "/ws/subscribers/{aetitle}", event_channel),
        WebSocketRoute(root + "/subscribers/{aetitle}", event_channel),
    ]
