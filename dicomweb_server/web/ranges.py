"""Single byte ranges (RFC 9110 14) for bulk data and rendered documents and video."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from dicomweb_server.web.errors import error_response

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(Exception):
    """A valid range that does not overlap the value: 416 (RFC 9110 15.5.17)."""


def single_range(header: str | None, total: int) -> tuple[int, int] | None:
    """A single byte range (RFC 9110 14.1.2) as (start, length); None for the whole value.

    A syntactically invalid Range, or several ranges, is ignored and the whole value is
    sent (RFC 9110 14.2: a server MAY ignore Range); a valid range that does not
    overlap the value raises RangeNotSatisfiable, answered with 416 (RFC 9110 15.5.17).
    """
    if not header:
        return None
    match = _RANGE_RE.match(header.strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        length = min(int(last), total)
        if length == 0:
            raise RangeNotSatisfiable
        return total - length, length
    start = int(first)
    if last and int(last) < start:
        return None  # invalid byte-range-spec (RFC 9110 14.1.1): ignore the header
    if start >= total:
        raise RangeNotSatisfiable
    end = min(int(last), total - 1) if last else total - 1
    return start, end - start + 1


def content_range(start: int, length: int, total: int) -> str:
    return f"bytes {start}-{start + length - 1}/{total}"


def unsatisfiable(request: Request, total: int) -> Response:
    """416 naming the value's size, as RFC 9110 15.5.17 asks (Content-Range: bytes */N)."""
    response = error_response(
        416, f"range {request.headers.get('range')} is outside the {total} bytes of the value"
    )
    response.headers["Content-Range"] = f"bytes */{total}"
    return response
