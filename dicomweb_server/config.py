"""Frozen settings, built once from defaults, a TOML file and the environment.

This is the only module that reads environment variables. Precedence, lowest first:
defaults < config file < environment < explicit overrides (command-line flags).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "DICOMWEB_"
DUPLICATE_POLICIES = ("keep-first", "replace", "reject")
BLOB_SYNC_MODES = ("syncfs", "fsync")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_TRUE = ("1", "true", "yes", "on")
ROLES = ("reader", "writer", "admin")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8042
    data_dir: Path = Path("data")
    # None means "SQLite file inside data_dir".
    database_url: str | None = None
    workers: int = 1
    # Externally visible base of the DICOMweb root; when set it wins over request headers.
    public_base_url: str | None = None
    # Peers whose X-Forwarded-Proto/Host/Prefix headers are believed.
    trusted_proxies: tuple[str, ...] = ()
    dicomweb_root: str = "/dicom-web"
    max_request_bytes: int = 4 * 1024**3
    # New instances are refused (Out of Resources) once the blob filesystem has less
    # free space than this, so the index can still write, e.g. to delete; 0 disables.
    min_free_bytes: int = 64 * 1024**2
    # How stored files are made durable before the index names them: "syncfs" (one
    # syncfs(2) for a request's files, shared with concurrent requests; Linux 5.8+,
    # else fsync is used) or "fsync" (each file and each changed directory). See
    # docs/architecture.md: syncfs also flushes other programs' writes to the same
    # filesystem, so give the data folder its own filesystem or choose "fsync".
    blob_sync: str = "syncfs"
    max_parts: int = 100_000
    qido_max_limit: int = 1000
    # PS3.4 C.2.2.1.2: entities with an empty value match every key. Off by default:
    # a lookup by Accession Number must not return studies that have none.
    qido_match_empty: bool = False
    qido_default_limit: int = 1000
    duplicate_policy: str = "keep-first"
    # Binary values longer than this become BulkDataURIs in DICOM JSON metadata.
    bulk_data_threshold: int = 1024
    insecure: bool = False
    log_level: str = "info"
    thread_limit: int = 64
    # --- viewer ---
    # The bundled OHIF viewer at "/". viewer_dir None means the repository's
    # viewer_static/dist (filled by scripts/fetch-viewer.py); viewer_app_config None
    # means our committed viewer_static/app-config.js.
    viewer_enabled: bool = True
    viewer_dir: Path | None = None
    viewer_app_config: Path | None = None
    # Origins (scheme://host[:port]) the viewer may also reach, e.g. an OpenID Connect
    # provider; added to the CSP's connect-src and frame-src.
    viewer_allowed_origins: tuple[str, ...] = ()
    # --- security (access control, audit trail, transport) ---
    # OIDC/OAuth2 bearer tokens: keys from a JWKS URL or file; iss/aud checked when set.
    auth_jwks_url: str | None = None
    auth_jwks_file: str | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    # Dotted path of the claim holding the roles (Keycloak: realm_access.roles).
    auth_roles_claim: str = "roles"
    # "external=internal" pairs, e.g. "pacs-admins=admin"; unmapped names are kept as is.
    auth_role_map: tuple[str, ...] = ()
    auth_user_claim: str = "preferred_username"
    auth_leeway_seconds: int = 30
    # A token with an unknown key id refetches the JWKS at most this often (key rotation).
    auth_jwks_refresh_seconds: int = 10
    # "name:role:hash" entries; hashes from `dicomweb-server hash-password`.
    auth_api_keys: tuple[str, ...] = ()
    auth_basic_users: tuple[str, ...] = ()
    auth_realm: str = "dicomweb"
    # JSON lines file; None means <data_dir>/audit/audit.jsonl.
    audit_file: str | None = None
    # RFC 5424 syslog copy of every audit record: udp://host:514 or tcp://host:601.
    audit_syslog: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    hsts_max_age: int = 31_536_000
    cors_origins: tuple[str, ...] = ()
    max_header_bytes: int = 64 * 1024
    # A request body that sends nothing for this long is refused (408).
    body_timeout_seconds: int = 60
    keep_alive_seconds: int = 30

    # --- dimse ---
    # The DIMSE gateway (PS3.7/PS3.8), started beside HTTP by `serve`, on the same host.
    dimse_enabled: bool = True
    dimse_aet: str = "DICOMWEB"
    dimse_port: int = 11112
    dimse_max_associations: int = 10
    # Seconds for ACSE, DIMSE and network inactivity timeouts.
    dimse_timeout: int = 60
    # Largest P-DATA PDU we receive (PS3.8 D.3.3.1); 0 means unlimited.
    dimse_max_pdu: int = 116794
    # Refuse associations whose calling AE title is not a known modality.
    dimse_reject_unknown: bool = False
    # Refuse associations whose called AE title is not ours.
    dimse_check_called_aet: bool = True
    # Known remote AEs from the configuration: "AET@host:port" or
    # "AET@host:port/echo+store+find+move+get+commit" (allowed operations; default all).
    dimse_modalities: tuple[str, ...] = ()
    # DIMSE over TLS (PS3.15 B.1): PEM certificate and key turn the listener to TLS;
    # with a CA file, callers must present a certificate it signed.
    dimse_tls_cert: Path | None = None
    dimse_tls_key: Path | None = None
    dimse_tls_ca: Path | None = None
    # --- ups-events ---
    # How often each server process reads the UPS event reports queued by any process
    # (while it has WebSocket subscribers connected), and how long reports are kept.
    ups_event_poll_ms: int = 200
    ups_event_retention_seconds: int = 300

    # --- hl7-loop ---
    # HL7 v2 orders (ORM^O01, OMI^O23) over MLLP, started by `serve` beside DIMSE.
    hl7_enabled: bool = False
    hl7_port: int = 2575
    hl7_max_connections: int = 10
    hl7_max_message_bytes: int = 1024 * 1024
    # A connection that completes no message for this many seconds is closed.
    hl7_idle_timeout: int = 600
    # MLLP has no authentication: addresses/networks allowed to send orders (empty: any).
    hl7_allowed_peers: tuple[str, ...] = ()
    # The order-to-image loop: stored instances whose Accession Number (else Study
    # Instance UID) matches an open workitem are recorded as its output.
    worklist_link_on_store: bool = True
    # "never": completion is left to MPPS or UPS-RS; "first-instance": the workitem is
    # completed when its first instance is stored.
    worklist_complete_on_store: str = "never"

    @property
    def auth_enabled(self) -> bool:
        return bool(
            self.auth_jwks_url or self.auth_jwks_file or self.auth_api_keys or self.auth_basic_users
        )

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    @property
    def audit_path(self) -> Path:
        return Path(self.audit_file) if self.audit_file else self.data_dir / "audit" / "audit.jsonl"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "index.sqlite3"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.sqlite_path.resolve()}"

    @property
    def database_url_for_display(self) -> str:
        """The index URL for logs and messages: no password, no query string."""
        url = self.effective_database_url.split("?")[0]
        return re.sub(r"^([^:/]+://[^:/@]*):[^@/]*@", r"\1:***@", url)

    def is_loopback_bind(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def validate(self) -> None:
        if self.duplicate_policy not in DUPLICATE_POLICIES:
            raise ValueError(
                f"duplicate_policy must be one of {', '.join(DUPLICATE_POLICIES)}, "
                f"not {self.duplicate_policy!r}"
            )
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range")
        if not self.host:
            raise ValueError("host must not be empty")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if not self.dicomweb_root.startswith("/") or self.dicomweb_root.endswith("/"):
            raise ValueError("dicomweb_root must start with '/' and not end with one")
        for name in ("max_request_bytes", "max_parts", "qido_max_limit", "qido_default_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.thread_limit < 1:
            raise ValueError("thread_limit must be at least 1")
        if self.min_free_bytes < 0:
            raise ValueError("min_free_bytes must not be negative")
        if self.blob_sync not in BLOB_SYNC_MODES:
            raise ValueError(
                f"blob_sync must be one of {', '.join(BLOB_SYNC_MODES)}, not {self.blob_sync!r}"
            )
        if self.bulk_data_threshold < 0:
            raise ValueError("bulk_data_threshold must not be negative")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}"
            )
        for origin in self.viewer_allowed_origins:
            if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", origin):
                raise ValueError(
                    f"viewer_allowed_origins: {origin!r} is not an origin (scheme://host[:port])"
                )
        _validate_dimse(self)
        if not 10 <= self.ups_event_poll_ms <= 60_000:
            raise ValueError("ups_event_poll_ms must be 10 to 60000")
        if self.ups_event_retention_seconds < 10:
            raise ValueError("ups_event_retention_seconds must be at least 10")
        _validate_hl7_loop(self)
        for peer in self.trusted_proxies:
            try:
                ipaddress.ip_network(peer, strict=False)
            except ValueError as exc:
                raise ValueError(f"trusted_proxies: {exc}") from None
        _validate_security(self)


def _validate_dimse(self: Settings) -> None:
    if not 1 <= len(self.dimse_aet.strip()) <= 16 or "\\" in self.dimse_aet:
        raise ValueError("dimse_aet must be 1 to 16 characters (PS3.5 AE), without '\\'")
    if not 1 <= self.dimse_port <= 65535:
        raise ValueError(f"dimse_port {self.dimse_port} is out of range")
    if self.dimse_enabled and self.dimse_port == self.port:
        raise ValueError("dimse_port must differ from the HTTP port")
    if self.dimse_max_associations < 1:
        raise ValueError("dimse_max_associations must be at least 1")
    if self.dimse_timeout < 1:
        raise ValueError("dimse_timeout must be at least 1 second")
    if (self.dimse_tls_cert is None) != (self.dimse_tls_key is None):
        raise ValueError("dimse_tls_cert and dimse_tls_key must be given together")
    if self.dimse_tls_ca is not None and self.dimse_tls_cert is None:
        raise ValueError("dimse_tls_ca needs dimse_tls_cert and dimse_tls_key")
    if self.dimse_max_pdu != 0 and not 4096 <= self.dimse_max_pdu <= 2**32 - 1:
        raise ValueError("dimse_max_pdu must be 0 (unlimited) or 4096 to 4294967295")


COMPLETE_ON_STORE = ("never", "first-instance")


def _validate_hl7_loop(s: Settings) -> None:
    if not 1 <= s.hl7_port <= 65535:
        raise ValueError(f"hl7_port {s.hl7_port} is out of range")
    if s.hl7_enabled and s.hl7_port in (s.port, s.dimse_port if s.dimse_enabled else -1):
        raise ValueError("hl7_port must differ from the HTTP and DIMSE ports")
    for name in ("hl7_max_connections", "hl7_idle_timeout"):
        if getattr(s, name) < 1:
            raise ValueError(f"{name} must be at least 1")
    if s.hl7_max_message_bytes < 1024:
        raise ValueError("hl7_max_message_bytes must be at least 1024")
    for peer in s.hl7_allowed_peers:
        try:
            ipaddress.ip_network(peer, strict=False)
        except ValueError as exc:
            raise ValueError(f"hl7_allowed_peers: {exc}") from None
    if s.worklist_complete_on_store not in COMPLETE_ON_STORE:
        raise ValueError(
            f"worklist_complete_on_store must be one of {', '.join(COMPLETE_ON_STORE)}, "
            f"not {s.worklist_complete_on_store!r}"
        )


def _validate_security(s: Settings) -> None:
    if s.auth_jwks_url and s.auth_jwks_file:
        raise ValueError("give auth_jwks_url or auth_jwks_file, not both")
    if s.auth_jwks_url and not s.auth_jwks_url.startswith(("https://", "http://")):
        raise ValueError("auth_jwks_url must be an http(s) URL")
    for name in ("auth_api_keys", "auth_basic_users"):
        for entry in getattr(s, name):
            parts = entry.split(":", 2)
            if len(parts) != 3 or not parts[0] or parts[1] not in ROLES or "$" not in parts[2]:
                raise ValueError(
                    f"{name}: entries are name:role:hash with role one of {', '.join(ROLES)} "
                    "and a hash from `dicomweb-server hash-password`"
                )
    for pair in s.auth_role_map:
        if pair.count("=") != 1 or pair.split("=")[1] not in ROLES:
            raise ValueError(f"auth_role_map: {pair!r} is not external=reader|writer|admin")
    if bool(s.tls_cert) != bool(s.tls_key):
        raise ValueError("tls_cert and tls_key go together")
    if s.audit_syslog and not re.match(r"^(udp|tcp)://[^:/]+:\d+$", s.audit_syslog):
        raise ValueError("audit_syslog must be udp://host:port or tcp://host:port")
    for name in ("max_header_bytes", "body_timeout_seconds", "keep_alive_seconds"):
        if getattr(s, name) < 1:
            raise ValueError(f"{name} must be at least 1")
    if min(s.auth_leeway_seconds, s.hsts_max_age, s.auth_jwks_refresh_seconds) < 0:
        raise ValueError(
            "auth_leeway_seconds, auth_jwks_refresh_seconds and hsts_max_age must not be negative"
        )


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any, source: str) -> Any:
    """``value`` as the type of field ``name``; ``source`` names where it came from."""
    kind = _FIELDS[name].type
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"{source}: {name} must be an integer, not {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{source}: {name} must be an integer, not {value!r}") from None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"{source}: {name} must be true or false, not {value!r}")
    if kind in ("Path", "Path | None"):
        if not isinstance(value, (str, Path)) or not str(value):
            raise ValueError(f"{source}: {name} must be a non-empty path, not {value!r}")
        return Path(value)
    if kind == "tuple[str, ...]":
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, (list, tuple)):
            return tuple(str(v) for v in value)
        raise ValueError(f"{source}: {name} must be a list or a comma-separated string")
    if isinstance(value, (dict, list)):
        raise ValueError(f"{source}: {name} must be a string, not {value!r}")
    return None if value is None else str(value)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build Settings from a TOML file, the environment and explicit overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file
    if path is None and env.get(env_name("config")):
        path = Path(env[env_name("config")])
    if path is not None:
        values.update(_read_config(path))
    for name in _FIELDS:
        if env_name(name) in env:
            values[name] = _coerce(name, env[env_name(name)], env_name(name))
    for name, value in overrides.items():
        if name not in _FIELDS:
            raise TypeError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = _coerce(name, value, name.replace("_", "-"))
    settings = Settings(**values)
    settings.validate()
    return settings


def _read_config(path: Path) -> dict[str, Any]:
    """Settings from a TOML file: keys at top level and/or under ``[server]`` (which wins)."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
    server = raw.pop("server", {})
    if not isinstance(server, dict):
        raise ValueError(f"{path}: [server] must be a table")
    values: dict[str, Any] = {}
    for section in (raw, server):
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in _FIELDS:
                raise ValueError(f"{path}: unknown setting {key!r}")
            values[name] = _coerce(name, value, str(path))
    return values


def to_environ(settings: Settings) -> dict[str, str]:
    """Settings as environment variables, so worker processes rebuild the same Settings."""
    out: dict[str, str] = {}
    for name in _FIELDS:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, Path):
            value = str(value.resolve())
        out[env_name(name)] = str(value)
    return out
