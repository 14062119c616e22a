"""The ``accept`` and ``charset`` query parameters, shared by every DICOMweb resource.

Media types contain a literal '+' (``application/dicom+json``), so these two parameters
are percent-decoded without the '+'-as-space rule that attribute values get in QIDO.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote

from starlette.requests import Request

from dicomweb_server.dicom.negotiation import Choice
from dicomweb_server.errors import InvalidRequest, NotAcceptable

_UTF8 = frozenset({"utf-8", "utf8", "iso_ir 192", "*"})


def query_values(request: Request, name: str) -> list[str]:
    """Values of one query parameter, percent-decoded, '+' kept as a plus."""
    raw = request.scope.get("query_string", b"").decode("latin-1")
    values = []
    for piece in raw.split("&"):
        key, _, value = piece.partition("=")
        if unquote(key) == name:
            values.append(unquote(value))
    return values


def negotiate(request: Request, choose: Callable[[str | None], Choice]) -> Choice:
    """The ``accept`` query parameter, if it names a supported type, wins over the
    Accept header (PS3.18 8.7.8.1, Table 10.4.1-5); 406 if neither does."""
    accepts = query_values(request, "accept")
    if accepts:
        try:
            return choose(",".join(accepts))
        except NotAcceptable:
            pass
    return choose(request.headers.get("accept"))


def check_charset(request: Request, what: str) -> None:
    """Responses are UTF-8 only (PS3.18 F.2, 8.7.3.5.3): a ``charset`` query parameter
    must allow it; an empty one is malformed (400), any other is 406 (8.3.3.2)."""
    values = query_values(request, "charset")
    if not values:
        return
    names = [c.split(";")[0].strip().lower() for v in values for c in v.split(",")]
    if not any(names):
        raise InvalidRequest("the charset query parameter is empty")
    if not _UTF8.intersection(names):
        raise NotAcceptable(f"{what} are only available in UTF-8")
