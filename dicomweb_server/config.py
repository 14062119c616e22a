"""Frozen settings, built once from defaults, a TOML file and the environment.

This is the only module that reads environment variables. Precedence, lowest first:
defaults < config file < environment < explicit overrides (command-line flags).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "DICOMWEB_"
DUPLICATE_POLICIES = ("keep-first", "replace", "reject")


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
    max_parts: int = 100_000
    qido_max_limit: int = 1000
    qido_default_limit: int = 1000
    duplicate_policy: str = "keep-first"
    # Binary values longer than this become BulkDataURIs in DICOM JSON metadata.
    bulk_data_threshold: int = 1024
    insecure: bool = False
    log_level: str = "info"
    thread_limit: int = 64

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "index.sqlite3"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.sqlite_path.resolve()}"

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
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if not self.dicomweb_root.startswith("/") or self.dicomweb_root.endswith("/"):
            raise ValueError("dicomweb_root must start with '/' and not end with one")
        for peer in self.trusted_proxies:
            ipaddress.ip_network(peer, strict=False)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    if kind == "int":
        return int(value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    if kind == "Path":
        return Path(value)
    if kind == "tuple[str, ...]":
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return tuple(str(v) for v in value)
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
    path = config_file or (Path(env[env_name("config")]) if env_name("config") in env else None)
    if path is not None:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
        section = raw.get("server", raw)
        for key, value in section.items():
            key = key.replace("-", "_")
            if key not in _FIELDS:
                raise ValueError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(key, value)
    for name in _FIELDS:
        if env_name(name) in env:
            values[name] = _coerce(name, env[env_name(name)])
    for name, value in overrides.items():
        if value is not None:
            values[name] = _coerce(name, value)
    settings = Settings(**values)
    settings.validate()
    return settings


def replace(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes)


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
