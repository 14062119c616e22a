"""The Starlette application: routes under the DICOMweb root, services in app state."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from dicomweb_server import __version__
from dicomweb_server.bootstrap import Services, build_services
from dicomweb_server.config import Settings
from dicomweb_server.errors import DicomWebError
from dicomweb_server.web import qido, stow, wado, wado_uri
from dicomweb_server.web.admin_modalities import admin_modality_routes
from dicomweb_server.web.audit import audit_routes
from dicomweb_server.web.errors import handle_domain_error, handle_os_error
from dicomweb_server.web.fast_frames import FastFrames, FrameAnswers, FrameShortcut
from dicomweb_server.web.guard import Gate, SecurityMiddleware
from dicomweb_server.web.open_link import open_routes
from dicomweb_server.web.pixel import pixel_routes
from dicomweb_server.web.ups import ups_routes
from dicomweb_server.web.ups_subscriptions import ups_subscription_routes
from dicomweb_server.web.viewer import viewer_routes

log = logging.getLogger(__name__)

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"


def dicomweb_routes() -> list[Route]:
    return [
        Route("/studies", qido.search, methods=["GET"]),
        Route("/studies", stow.stow, methods=["POST"]),
        Route("/series", qido.search, methods=["GET"]),
        Route("/instances", qido.search, methods=["GET"]),
        Route(_STUDY, wado.retrieve_instances, methods=["GET"]),
        Route(_STUDY, stow.stow, methods=["POST"]),
        Route(_STUDY, wado.delete, methods=["DELETE"]),
        Route(_STUDY + "/metadata", wado.retrieve_metadata, methods=["GET"]),
        Route(_STUDY + "/series", qido.search, methods=["GET"]),
        Route(_STUDY + "/instances", qido.search, methods=["GET"]),
        Route(_SERIES, wado.retrieve_instances, methods=["GET"]),
        Route(_SERIES, wado.delete, methods=["DELETE"]),
        Route(_SERIES + "/metadata", wado.retrieve_metadata, methods=["GET"]),
        Route(_SERIES + "/instances", qido.search, methods=["GET"]),
        Route(_INSTANCE, wado.retrieve_instances, methods=["GET"]),
        Route(_INSTANCE, wado.delete, methods=["DELETE"]),
        Route(_INSTANCE + "/metadata", wado.retrieve_metadata, methods=["GET"]),
        Route(_INSTANCE + "/bulkdata/{path}", wado.retrieve_bulkdata, methods=["GET"]),
    ]


async def health(request: Request) -> Response:
    """200 while the index answers; 503 (for load balancers and probes) when it does not."""
    services: Services = request.app.state.services
    try:
        count = await anyio.to_thread.run_sync(services.index.count_instances)
    except Exception as exc:  # whatever the index raises, the answer is "not ready"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        log.warning("health check: the index does not answer: %s", reason)
        return JSONResponse(
            {"status": "unavailable", "version": __version__, "message": "index unavailable"},
            status_code=503,
        )
    return JSONResponse({"status": "ok", "version": __version__, "instances": count})


def security_middleware(settings: Settings, gate: Gate, frames: FrameAnswers) -> list[Middleware]:
    """CORS outermost (preflights carry no credentials), then the one security gate."""

    stack = []
    if settings.cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
                allow_headers=["Authorization", "X-API-Key", "Accept", "Content-Type", "Range"],
                expose_headers=["Warning", "Content-Location", "WWW-Authenticate", "ETag"],
                max_age=600,
            )
        )
    stack.append(Middleware(SecurityMiddleware, settings=settings, gate=gate))
    # Inside the gate: single frames served from memory skip the router (fast_frames.py).
    stack.append(Middleware(FastFrames, answers=frames))
    return stack


def create_app(settings: Settings, services: Services | None = None) -> Starlette:
    """Build the app; services are created in the lifespan unless given (tests)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Sync endpoints and streaming iterators run in anyio's thread pool.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.thread_limit
        owned = services is None
        app.state.services = services or build_services(settings)
        try:
            yield
        finally:
            if owned:
                app.state.services.close()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/wado", wado_uri.wado, methods=["GET"]),
        # Frames first: a viewer asks for them hundreds of times per study, and each
        # route ahead of them is a regex tried on every request.
        Mount(settings.dicomweb_root, routes=pixel_routes() + dicomweb_routes() + ups_routes()),
    ]
    routes[:0] = ups_subscription_routes(settings)  # full paths, ahead of the mount
    routes += audit_routes()
    routes += admin_modality_routes()
    routes += open_routes(settings)
    # The viewer's catch-all ("/{path}", SPA fallback) must stay the LAST route.
    routes += viewer_routes(settings)
    gate, frames = Gate(settings), FrameAnswers(settings)
    app = Starlette(
        routes=routes,
        middleware=security_middleware(settings, gate, frames),
        lifespan=lifespan,
        exception_handlers={DicomWebError: handle_domain_error, OSError: handle_os_error},
    )
    # For the HTTP protocol (web/protocol.py): frames answered before the ASGI stack.
    app.state.frame_shortcut = FrameShortcut(gate, frames, app.state)
    return app
