"""Who is asking: bearer JWTs, API keys and HTTP Basic, from request headers.

- ``Authorization: Bearer <JWT>`` (RFC 6750) when a JWKS is configured;
- ``X-API-Key: <key>``, or ``Authorization: Bearer <key>`` for a value that is not a
  JWT (clients that only know bearer tokens);
- ``Authorization: Basic`` (RFC 7617) for configured users.

A credential that is present but wrong raises ``AuthFailed``, whose reason goes to the
audit trail only: the client always gets the same 401, never which part failed.
"""

from __future__ import annotations

import base64
import binascii

import anyio.to_thread

from dicomweb_server.config import Settings
from dicomweb_server.services.credentials import Principal, StaticCredentials
from dicomweb_server.services.tokens import Jwks, TokenRejected, TokenVerifier

ALL_ROLES = frozenset({"reader", "writer", "admin"})
NOBODY = Principal("anonymous", "anonymous", frozenset())
# Without authentication (loopback development), everyone may do everything.
OPEN = Principal("anonymous", "anonymous", ALL_ROLES)


class AuthFailed(Exception):
    """Credentials were sent and are not valid."""


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth_enabled
        self.realm = settings.auth_realm.replace('"', "")
        self.static = StaticCredentials(settings.auth_api_keys, settings.auth_basic_users)
        self.tokens: TokenVerifier | None = None
        if settings.auth_jwks_url or settings.auth_jwks_file:
            jwks = Jwks(
                settings.auth_jwks_url,
                settings.auth_jwks_file,
                min_refresh=settings.auth_jwks_refresh_seconds,
            )
            self.tokens = TokenVerifier(
                jwks,
                issuer=settings.auth_issuer,
                audience=settings.auth_audience,
                roles_claim=settings.auth_roles_claim,
                role_map=settings.auth_role_map,
                user_claim=settings.auth_user_claim,
                leeway=settings.auth_leeway_seconds,
            )

    def challenges(self, invalid: bool = False, insufficient: bool = False) -> list[str]:
        """WWW-Authenticate values (RFC 9110 11.6.1, RFC 6750 3, RFC 7617 2)."""
        out = []
        if self.tokens is not None or self.static.api_keys:
            error = (
                ', error="invalid_token"'
                if invalid
                else ', error="insufficient_scope"'
                if insufficient
                else ""
            )
            out.append(f'Bearer realm="{self.realm}"{error}')
        if self.static.users:
            out.append(f'Basic realm="{self.realm}", charset="UTF-8"')
        return out

    async def authenticate(self, headers: dict[str, str]) -> Principal | None:
        """The principal; None when no credential was sent; AuthFailed when one is wrong."""
        if not self.enabled:
            return OPEN
        credential = self._credential(headers)
        if credential is None:
            return None
        if (known := self._known(*credential)) is not None:
            return known
        kind, value = credential
        if kind == "jwt":
            assert self.tokens is not None
            try:
                return await anyio.to_thread.run_sync(self.tokens.verify, value)
            except TokenRejected as exc:
                raise AuthFailed(f"bearer token: {exc}") from None
        user, password = _basic_pair(value)
        found = await anyio.to_thread.run_sync(self.static.check_basic, user, password)
        if found is None:
            raise AuthFailed(f"Basic: wrong user or password for {user[:100]!r}")
        return found

    def authenticate_now(self, headers: dict[str, str]) -> Principal | None:
        """The principal when it is known without a worker thread: no authentication, an
        API key, or a JWT or Basic user checked before. None otherwise (no credential,
        a wrong one, one still to check), for ``authenticate`` to settle and record."""
        if not self.enabled:
            return OPEN
        try:
            credential = self._credential(headers)
            return None if credential is None else self._known(*credential)
        except AuthFailed:
            return None

    def _known(self, kind: str, value: str) -> Principal | None:
        """The principal of a credential when no worker thread is needed (an API key, a
        JWT or Basic user checked before); None when one is; AuthFailed when wrong."""
        if kind == "key":
            return self._api_key(value)
        if kind == "jwt":
            return self.tokens.cached(value) if self.tokens is not None else None
        return self.static.cached_basic(*_basic_pair(value))

    def _credential(self, headers: dict[str, str]) -> tuple[str, str] | None:
        """("key" | "jwt" | "basic", value) of the credential sent; None when none was."""
        api_key = headers.get("x-api-key")
        if api_key is not None:
            return "key", api_key
        authorization = headers.get("authorization")
        if authorization is None:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and value:
            if value.count(".") == 2 and self.tokens is not None:
                return "jwt", value
            return "key", value
        if scheme == "basic" and self.static.users:
            return "basic", value
        raise AuthFailed(f"unsupported authorization scheme {scheme[:20]!r}")

    def _api_key(self, key: str) -> Principal:
        found = self.static.check_api_key(key) if self.static.api_keys else None
        if found is None:
            raise AuthFailed("unknown API key")
        return found


def _basic_pair(value: str) -> tuple[str, str]:
    """User and password of a Basic credential (RFC 7617 2)."""
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthFailed("malformed Basic credentials") from None
    if not sep:
        raise AuthFailed("malformed Basic credentials")
    return user, password
