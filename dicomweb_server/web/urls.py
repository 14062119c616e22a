"""The public base URL of the DICOMweb root, right behind reverse proxies.

RetrieveURL (PS3.18 Annex I, 10.6.3), BulkDataURI (F.2.6) and Content-Location
(8.6.1.2) must be URLs the client can use, so they are built from, in order:

1. a configured public base URL (``--public-base-url``), used as is;
2. X-Forwarded-Proto/Host/Port/Prefix, when the direct peer is a trusted proxy and
   sent at least one of them (a trusted peer without them is a direct client);
3. the request's own scheme and Host header. A Host without a port (as
   dicomweb-client/requests sends it) gets the port the connection arrived on, unless
   that is the scheme's default (RFC 9110 7.2: Host omits a default port).

Header values that are not a plain host, port or path prefix are ignored.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.requests import Request

from dicomweb_server.config import Settings
from dicomweb_server.dicom.uids import check_uid

_HOST_RE = re.compile(r"^[A-Za-z0-9.\-:\[\]]+$")
_PREFIX_RE = re.compile(r"^(/[A-Za-z0-9._~\-]+)*/?$")
_FORWARDED = ("x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-forwarded-prefix")
_DEFAULT_PORT = {"http": 80, "https": 443}


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
    """The first (client-most) value of a comma-separated forwarded header."""
    return value.split(",")[0].strip() if value else None


def _has_port(host: str) -> bool:
    return ":" in host.rsplit("]", 1)[-1]  # "[::1]" has colons but no port


def base_url(request: Request, settings: Settings) -> str:
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    scheme = request.url.scheme
    host = request.headers.get("host", "")
    prefix = ""
    server = request.scope.get("server")
    port: int | None = server[1] if server else None
    peer = request.client.host if request.client else None
    headers = request.headers
    if _trusted(settings, peer) and any(name in headers for name in _FORWARDED):
        proto = _first(headers.get("x-forwarded-proto"))
        if proto in _DEFAULT_PORT:
            scheme = proto
        fwd_host = _first(headers.get("x-forwarded-host"))
        if fwd_host and _HOST_RE.match(fwd_host):
            host = fwd_host
        # Behind a proxy our own port means nothing; only a forwarded one does.
        fwd_port = _first(headers.get("x-forwarded-port"))
        port = int(fwd_port) if fwd_port and fwd_port.isdigit() else None
        fwd_prefix = _first(headers.get("x-forwarded-prefix"))
        if fwd_prefix and _PREFIX_RE.match(fwd_prefix):
            prefix = fwd_prefix.rstrip("/")
    if not host or not _HOST_RE.match(host):
        host, port = settings.host, settings.port
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal (RFC 3986 3.2.2)
    if not _has_port(host) and port and port != _DEFAULT_PORT.get(scheme):
        host = f"{host}:{port}"
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
