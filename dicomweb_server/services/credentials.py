"""Static credentials: API keys and HTTP Basic users, stored only as hashes.

Hash formats (what `dicomweb-server hash-password` prints):

- ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``: for passwords people choose; scrypt is
  deliberately slow, so verified (user, password) pairs are remembered, as a digest, for
  the life of the process.
- ``sha256$<hex>``: enough for long random API keys, whose entropy does the work.

Every comparison is constant-time and every entry is checked, so the time taken does not
tell which name exists.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_CACHE_SIZE = 256


@dataclass(frozen=True)
class Principal:
    """Who made a request: ``kind`` is jwt, api-key, basic, anonymous (or ae-title)."""

    name: str
    kind: str
    roles: frozenset[str]


def hash_secret(secret: str, *, fast: bool = False) -> str:
    """A storable hash of ``secret``: sha256 when ``fast`` (random API keys), else scrypt."""
    if fast:
        return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024**2
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    """True when ``secret`` matches ``stored`` (either format); False for anything malformed."""
    scheme, _, rest = stored.partition("$")
    try:
        if scheme == "sha256":
            got = hashlib.sha256(secret.encode()).hexdigest()
            return hmac.compare_digest(got, rest.lower())
        if scheme == "scrypt":
            n, r, p, salt, want = rest.split("$")
            digest = hashlib.scrypt(
                secret.encode(),
                salt=base64.b64decode(salt),
                n=int(n),
                r=int(r),
                p=int(p),
                maxmem=256 * 1024**2,
            )
            return hmac.compare_digest(digest, base64.b64decode(want))
    except (ValueError, TypeError):
        return False
    return False


@dataclass(frozen=True)
class _Entry:
    name: str
    role: str
    hash: str


def _entries(raw: Iterable[str]) -> list[_Entry]:
    out = []
    for item in raw:
        name, role, hashed = item.split(":", 2)
        out.append(_Entry(name, role, hashed))
    return out


class StaticCredentials:
    """API keys and Basic users from Settings (entries ``name:role:hash``)."""

    def __init__(self, api_keys: Iterable[str], basic_users: Iterable[str]) -> None:
        self.api_keys = _entries(api_keys)
        self.users = _entries(basic_users)
        self._verified: dict[bytes, _Entry] = {}
        self._lock = threading.Lock()
        self._dummy_hash: str | None = None

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = hash_secret(secrets.token_hex(8))
        return self._dummy_hash

    def check_api_key(self, key: str) -> Principal | None:
        found = None
        for entry in self.api_keys:  # all of them, whatever matches first
            if verify_secret(key, entry.hash) and found is None:
                found = entry
        return Principal(found.name, "api-key", frozenset({found.role})) if found else None

    @staticmethod
    def _cache_key(user: str, password: str) -> bytes:
        # Binds user and password; a digest, so no password stays in memory.
        return hashlib.sha256(f"{len(user)}:{user}:{password}".encode()).digest()

    def cached_basic(self, user: str, password: str) -> Principal | None:
        """A Basic user verified before (no hashing), else None."""
        with self._lock:
            hit = self._verified.get(self._cache_key(user, password))
        return Principal(hit.name, "basic", frozenset({hit.role})) if hit else None

    def check_basic(self, user: str, password: str) -> Principal | None:
        key = self._cache_key(user, password)
        with self._lock:
            hit = self._verified.get(key)
        if hit is None:
            named = [e for e in self.users if hmac.compare_digest(e.name.encode(), user.encode())]
            # An unknown name costs one hash as well, so timing does not tell names apart.
            target = named[0].hash if named else self._dummy()
            if verify_secret(password, target) and named:
                hit = named[0]
            if hit is None:
                return None
            with self._lock:
                if len(self._verified) >= _CACHE_SIZE:
                    self._verified.clear()
                self._verified[key] = hit
        return Principal(hit.name, "basic", frozenset({hit.role}))
