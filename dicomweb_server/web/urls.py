"""The public base URL of the DICOMweb root, right behind reverse proxies.

Order: a configured public base URL; else X-Forwarded-Proto/Host/Prefix when the
direct peer is a trusted proxy; else the request's own scheme and Host.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.requests import Request

from dicomweb_server.config import Settings
from dicomweb_server.dicom.uids import check_uid

_HOST_RE = re.compile(r"^[A-Za-z0-9.\-:\[\]]+$")
_PREFIX_RE = re.compile(r"^(/[A-Za-z0-9._~\-]+)*/?$")


def _trusted(settings: Settings, peer: str | None) -> bool:
    if not peer or not settings.trusted_proxies:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(
        address in ipaddress.ip_network(net, strict=False) for net in settings.trusted_proxies
    )


def _first(value: str | None) -> str | None:
    return value.split(",")[0].strip() if value else None


def base_url(request: Request, settings: Settings) -> str:
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    scheme = request.url.scheme
    host = request.headers.get("host") or f"{settings.host}:{settings.port}"
    prefix = ""
    trusted = _trusted(settings, request.client.host if request.client else None)
    server = request.scope.get("server")
    if not trusted and server and ":" not in host.rsplit("]", 1)[-1]:
        # Some clients (dicomweb-client) send Host without the port; use the port the
        # connection arrived on, unless it is the scheme's default.
        default = 443 if scheme == "https" else 80
        if server[1] and server[1] != default:
            host = f"{host}:{server[1]}"
    if trusted:
        proto = _first(request.headers.get("x-forwarded-proto"))
        if proto in ("http", "https"):
            scheme = proto
        fwd_host = _first(request.headers.get("x-forwarded-host"))
        if fwd_host and _HOST_RE.match(fwd_host):
            host = fwd_host
        fwd_prefix = _first(request.headers.get("x-forwarded-prefix"))
        if fwd_prefix and _PREFIX_RE.match(fwd_prefix):
            prefix = fwd_prefix.rstrip("/")
    if not _HOST_RE.match(host):
        host = f"{settings.host}:{settings.port}"
    return f"{scheme}://{host}{prefix}{settings.dicomweb_root}"


def path_uids(request: Request) -> tuple[str, str | None, str | None]:
    """Study, series and instance UIDs from the path, each checked before any use."""
    params = request.path_params
    study = check_uid(params["study"], "Study Instance UID")
    series = params.get("series")
    sop = params.get("instance")
    return (
        study,
        check_uid(series, "Series Instance UID") if series is not None else None,
        check_uid(sop, "SOP Instance UID") if sop is not None else None,
    )
