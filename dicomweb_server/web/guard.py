"""The one gate every HTTP request passes: authenticate, authorize, audit, harden.

A plain ASGI middleware (not BaseHTTPMiddleware) so streamed bodies stay streamed.
For each request:

1. the policy (``web/policy.py``) names the role the method and path need;
2. the credentials are checked (``web/auth.py``): none, when the route needs one, or
   wrong ones, give 401 with WWW-Authenticate; too small a role gives 403. Both are
   recorded (User Authentication, Security Alert);
3. data accesses are recorded after the response with their outcome (``web/audit.py``);
4. a request body that stalls for ``body_timeout_seconds`` is answered 408, headers
   larger than ``max_header_bytes`` 431; with TLS every response carries HSTS.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb_server.bootstrap import Services
from dicomweb_server.config import Settings
from dicomweb_server.services import audit
from dicomweb_server.services.audit import AuditEvent
from dicomweb_server.services.credentials import Principal
from dicomweb_server.web import policy
from dicomweb_server.web.audit import classify, outcome_of
from dicomweb_server.web.auth import NOBODY, OPEN, Authenticator, AuthFailed
from dicomweb_server.web.errors import error_response

log = logging.getLogger(__name__)


class _SlowBody(Exception):
    """The client stopped sending its request body (not an OSError, so no handler eats it)."""


class Gate:
    """What the gate decides with (credentials, the policy table, HSTS), shared by the
    middleware and the HTTP protocol's shortcut for single frames (``web/protocol.py``),
    so both see the same credential caches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.auth = Authenticator(settings)
        self.rules = policy.default_rules(settings.dicomweb_root, viewer=settings.viewer_enabled)
        self.hsts = (
            f"max-age={settings.hsts_max_age}; includeSubDomains".encode()
            if settings.tls_enabled and settings.hsts_max_age
            else None
        )

    def admit_now(self, scope: Scope) -> Principal | None:
        """The principal when ``SecurityMiddleware`` would let the request through without
        waiting (and without a record of its own); None leaves the decision, with its 401,
        403 or 431 and their records, to the middleware."""
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        if self.oversized(raw_headers):
            return None
        if not self.auth.enabled:
            return OPEN
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        principal = self.auth.authenticate_now(headers)
        if principal is None:
            return None
        required = policy.required_role(self.rules, scope["method"], scope["path"])
        return principal if policy.allows(principal.roles, required) else None

    def oversized(self, raw_headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the request's headers pass ``max_header_bytes`` (431)."""
        return sum(len(k) + len(v) for k, v in raw_headers) > self.settings.max_header_bytes

    def record_now(
        self, scope: Scope, principal: Principal, status: int, services: Services
    ) -> None:
        """The data access record the middleware writes for an admitted request."""
        method, path = scope["method"], scope["path"]
        event = classify(method, path, self.settings.dicomweb_root, scope["query_string"])
        if event is not None:
            ip = scope["client"][0] if scope.get("client") else None
            _identify(event, principal, ip, scope)
            event.status, event.outcome = status, outcome_of(status)
            services.audit.record(event)


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, gate: Gate | None = None) -> None:
        self.app = app
        self.settings = settings
        self.gate = gate or Gate(settings)
        self.auth = self.gate.auth
        self.rules = self.gate.rules
        self.hsts = self.gate.hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._with_headers(send)
        method, path = scope["method"], scope["path"]
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        if self.gate.oversized(raw_headers):
            await _reply(send, 431, "request header fields too large")
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        services: Services = scope["app"].state.services
        ip = scope["client"][0] if scope.get("client") else None
        required = policy.required_role(self.rules, method, path)
        try:
            principal = await self.auth.authenticate(headers)
        except AuthFailed as exc:
            self._security_event(services, NOBODY, ip, scope, 401, str(exc))
            await _reply(send, 401, "authentication required", self.auth.challenges(invalid=True))
            return
        if principal is None:
            if required != policy.ANONYMOUS:
                self._security_event(services, NOBODY, ip, scope, 401, "no credentials")
                await _reply(send, 401, "authentication required", self.auth.challenges())
                return
            principal = NOBODY
        # Without authentication (loopback only) there is nothing to enforce: unknown
        # paths keep their plain 404/405.
        if self.auth.enabled and not policy.allows(principal.roles, required):
            self._security_event(
                services, principal, ip, scope, 403, f"needs role {required}", forbidden=True
            )
            jwt = principal.kind == "jwt"
            challenge = self.auth.challenges(insufficient=True)[:1] if jwt else []
            await _reply(send, 403, "not permitted for this user", challenge)
            return
        scope.setdefault("state", {})["principal"] = principal
        event = classify(method, path, self.settings.dicomweb_root, scope["query_string"])
        if event is not None:
            _identify(event, principal, ip, scope)
            scope["state"]["audit_event"] = event
            if method == "DELETE" and event.study_uids:
                await self._patient_before_delete(services, event)
        await self._run(scope, self._timed(receive), send, event, services)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """WebSockets pass the same policy (as GET); refused ones are closed with 1008."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self._origin_allowed(headers):
            # Cross-site WebSocket hijacking: a page elsewhere could ride on credentials
            # the browser holds for us (Basic); browsers always send Origin.
            origin = headers.get("origin", "")[:200]
            self._security_event(
                scope["app"].state.services,
                NOBODY,
                scope["client"][0] if scope.get("client") else None,
                {**scope, "method": "GET"},
                403,
                f"websocket from {origin}",
                forbidden=True,
            )
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        required = policy.required_role(self.rules, "GET", scope["path"])
        try:
            principal = await self.auth.authenticate(headers) or NOBODY
        except AuthFailed:
            principal = NOBODY
        if self.auth.enabled and not policy.allows(principal.roles, required):
            services: Services = scope["app"].state.services
            ip = scope["client"][0] if scope.get("client") else None
            _ws = {**scope, "method": "GET"}
            self._security_event(services, principal, ip, _ws, 403, f"websocket needs {required}")
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _origin_allowed(self, headers: dict[str, str]) -> bool:
        """No Origin (not a browser), our own origin (the Host asked for), or a
        configured CORS origin."""
        origin = headers.get("origin")
        if origin is None:
            return True
        allowed = set(self.settings.cors_origins) | set(self.settings.viewer_allowed_origins)
        if origin.rstrip("/") in allowed:
            return True
        _, _, netloc = origin.partition("://")
        return bool(netloc) and netloc.lower() == headers.get("host", "").lower()

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        event: AuditEvent | None,
        services: Services,
    ) -> None:
        status = 500
        recorded = started = False

        def record() -> None:
            nonlocal recorded
            if event is not None and not recorded:
                recorded = True
                event.status, event.outcome = status, outcome_of(status)
                services.audit.record(event)

        async def tracking(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                # Before the client can see the outcome: a 204 is complete with its headers.
                record()
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except _SlowBody:
            if started:
                raise
            status = 408
            await _reply(send, 408, "request body not received in time")
        finally:
            record()

    def _timed(self, receive: Receive) -> Receive:
        limit = self.settings.body_timeout_seconds

        async def timed() -> Message:
            try:
                with anyio.fail_after(limit):
                    return await receive()
            except TimeoutError:
                raise _SlowBody from None

        return timed

    def _with_headers(self, send: Send) -> Send:
        if self.hsts is None:
            return send
        hsts = self.hsts

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"strict-transport-security", hsts)]
            await send(message)

        return sending

    async def _patient_before_delete(self, services: Services, event: AuditEvent) -> None:
        try:
            patient = await anyio.to_thread.run_sync(
                audit.patient_of_study, services.query, event.study_uids[0]
            )
        except Exception:  # a malformed UID: the handler will answer 400 itself
            return
        if patient:
            event.patient_ids.append(patient)

    def _security_event(
        self,
        services: Services,
        principal: Principal,
        ip: str | None,
        scope: Scope,
        status: int,
        detail: str,
        forbidden: bool = False,
    ) -> None:
        if forbidden:
            event = AuditEvent(
                audit.SECURITY_ALERT, "E", audit.OUTCOME_MINOR_FAILURE,
                event_type=audit.USE_OF_RESTRICTED_FUNCTION,
            )  # fmt: skip
        else:
            event = AuditEvent(
                audit.USER_AUTHENTICATION, "E", audit.OUTCOME_MINOR_FAILURE, event_type=audit.LOGIN
            )
        _identify(event, principal, ip, scope)
        event.status, event.detail = status, detail
        services.audit.record(event)


def _identify(event: AuditEvent, principal: Principal, ip: str | None, scope: Scope) -> None:
    event.user, event.user_kind = principal.name, principal.kind
    event.roles = sorted(principal.roles)
    event.source_ip, event.method = ip, scope["method"]
    event.path = str(scope["path"])[:1024]


async def _reply(send: Send, status: int, message: str, challenges: Sequence[str] = ()) -> None:
    response = error_response(status, message)
    for value in challenges:
        response.headers.append("WWW-Authenticate", value)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}
