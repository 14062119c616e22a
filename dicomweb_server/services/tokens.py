"""OIDC / OAuth2 bearer tokens (RFC 7519 JWTs) checked against a JWKS (RFC 7517).

Keys come from a URL (the provider's ``jwks_uri``) or a file. They are cached; a token
signed with a key id we do not know triggers one refetch, at most every
``min_refresh`` seconds (so a flood of forged kids cannot hammer the provider), which
is how key rotation works. The cache also expires after ``max_age`` so retired keys
drop out. Only asymmetric algorithms are accepted, and only the one the key declares:
no ``none``, no HMAC with a public key as the secret.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Iterable
from typing import Any

import jwt

from dicomweb_server.services.credentials import Principal

log = logging.getLogger(__name__)

ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
ROLES = ("reader", "writer", "admin")
CACHE_SECONDS = 60.0
CACHE_SIZE = 4096


class TokenRejected(Exception):
    """A token that must not be accepted; the reason is for the audit log, not the client."""


class Jwks:
    """A cached key set from a URL or a file."""

    def __init__(
        self,
        url: str | None = None,
        path: str | None = None,
        *,
        min_refresh: float = 10.0,
        max_age: float = 300.0,
        timeout: float = 5.0,
    ) -> None:
        if bool(url) == bool(path):
            raise ValueError("a JWKS needs exactly one of url or path")
        self.url, self.path = url, path
        self.min_refresh, self.max_age, self.timeout = min_refresh, max_age, timeout
        # kid -> (key, the algorithm the JWK declares, if any)
        self._keys: dict[str | None, tuple[jwt.PyJWK, str | None]] = {}
        self._fetched = -1e18
        self._file_mtime: float | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        if self.path:
            with open(self.path, "rb") as fh:
                return dict(json.load(fh))
        assert self.url
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return dict(json.loads(response.read(1024 * 1024)))

    def _refresh(self) -> None:
        self._fetched = time.monotonic()
        try:
            data = self._load()
            keys: dict[str | None, tuple[jwt.PyJWK, str | None]] = {}
            for item in data.get("keys", []):
                if item.get("use", "sig") != "sig":
                    continue
                try:
                    key = jwt.PyJWK(item)
                except jwt.PyJWTError as exc:  # one unusable key must not hide the others
                    log.warning("JWKS: ignoring key %s: %s", item.get("kid"), exc)
                    continue
                keys[key.key_id] = (key, item.get("alg"))
            self._keys = keys
        except (OSError, ValueError) as exc:
            log.error("cannot load the JWKS from %s: %s", self.url or self.path, exc)

    def _file_changed(self) -> bool:
        if not self.path:
            return False
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            return False
        changed = mtime != self._file_mtime
        self._file_mtime = mtime
        return changed

    def key(self, kid: str | None) -> tuple[jwt.PyJWK, str | None]:
        with self._lock:
            age = time.monotonic() - self._fetched
            stale = age > self.max_age or self._file_changed()
            if stale or (kid not in self._keys and age > self.min_refresh):
                self._refresh()
            key = self._keys.get(kid)
            if key is None and kid is None and len(self._keys) == 1:
                key = next(iter(self._keys.values()))  # a single key set needs no kid
        if key is None:
            raise TokenRejected(f"no key with kid {kid!r}")
        return key


def claim_at(claims: dict[str, Any], dotted: str) -> Any:
    value: Any = claims
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class TokenVerifier:
    def __init__(
        self,
        jwks: Jwks,
        *,
        issuer: str | None,
        audience: str | None,
        roles_claim: str = "roles",
        role_map: Iterable[str] = (),
        user_claim: str = "preferred_username",
        leeway: float = 30,
    ) -> None:
        self.jwks = jwks
        self.issuer, self.audience = issuer, audience
        self.roles_claim, self.user_claim, self.leeway = roles_claim, user_claim, leeway
        self.role_map = dict(pair.split("=", 1) for pair in role_map)
        # Verified tokens (by digest) -> (principal, accept until); signature checks cost
        # about a millisecond, and a viewer sends the same token with every request.
        self._verified: dict[bytes, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified recently and not expired since; else None."""
        with self._lock:
            hit = self._verified.get(hashlib.sha256(token.encode()).digest())
        if hit is not None and time.time() < hit[1]:
            return hit[0]
        return None

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; TokenRejected (with a reason) otherwise."""
        principal, claims = self._verify(token)
        # Kept at most CACHE_SECONDS, so a key withdrawn from the JWKS stops working soon.
        until = min(float(claims["exp"]) + self.leeway, time.time() + CACHE_SECONDS)
        with self._lock:
            if len(self._verified) >= CACHE_SIZE:
                self._verified.clear()
            self._verified[hashlib.sha256(token.encode()).digest()] = (principal, until)
        return principal

    def _verify(self, token: str) -> tuple[Principal, dict[str, Any]]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenRejected(f"algorithm {alg!r} is not accepted")
        key, declared = self.jwks.key(header.get("kid"))
        if declared and declared != alg:
            raise TokenRejected(f"key {key.key_id} is for {declared}, not {alg}")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": ["exp"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"{type(exc).__name__}: {exc}") from None
        return Principal(self._name(claims), "jwt", self._roles(claims)), claims

    def _name(self, claims: dict[str, Any]) -> str:
        name = claim_at(claims, self.user_claim) or claims.get("sub") or "unknown"
        return str(name)[:200]

    def _roles(self, claims: dict[str, Any]) -> frozenset[str]:
        raw = claim_at(claims, self.roles_claim)
        names = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
        mapped = {self.role_map.get(str(n), str(n)) for n in names}
        return frozenset(mapped & set(ROLES))
