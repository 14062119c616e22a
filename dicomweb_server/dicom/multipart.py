"""Streaming ``multipart/related`` codec for STOW-RS requests and WADO-RS responses.

Framing follows RFC 2046 section 5.1.1 (multipart syntax; RFC 2387 adds only the
``type``/``start`` parameters) as profiled by DICOM PS3.18 section 8.6.1.2
(multipart media types). Everything here is pure: bytes in, callbacks or bytes out.

Parsing is incremental: :class:`MultipartParser` takes chunks of any size and calls a
:class:`PartSink`. Between chunks it keeps at most a delimiter-length tail while in a part
body (plus at most ``max_header_bytes`` while in part headers), and each byte is scanned
by ``bytes.find`` a bounded number of times, so multi-gigabyte bodies stream in linear time.

Writer framing scheme: the CRLF in front of ``--boundary`` belongs to the delimiter
(RFC 2046), so the first part header starts with ``--boundary`` and every later part
header, and the closing delimiter, start with ``\\r\\n--boundary``. Parts never end with
a CRLF of their own, so ``part_header(first=True) + body + part_header(first=False) + body
+ closing_delimiter()`` is a correct message. With zero parts the leading CRLF of the
closing delimiter is read as an empty preamble.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from dicomweb_server.errors import InvalidRequest

__all__ = [
    "MultipartError",
    "MultipartParser",
    "PartSink",
    "closing_delimiter",
    "iter_multipart",
    "new_boundary",
    "parse_content_type",
    "part_header",
]


class MultipartError(InvalidRequest):
    """The multipart body or its Content-Type is malformed."""


# RFC 7230 token; used for media types, parameter names and header field names.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOKEN_B = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# One ';'-separated parameter: name=token or name="quoted \"string\"", or an empty segment.
_PARAM = re.compile(
    r'[ \t]*(?:([!#$%&\'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^";]*?))?'
    r"[ \t]*(?:;|\Z)",
    re.DOTALL,
)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)
# RFC 2046 bchars; a boundary is 1-70 of them and must not end with a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# Clients are not all RFC-strict about boundaries; accept longer ones, but bound the tail.
_MAX_PARSER_BOUNDARY = 256


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into a lower-cased media type and its parameters.

    ``'multipart/related; type="application/dicom"; boundary=abc'`` gives
    ``('multipart/related', {'type': 'application/dicom', 'boundary': 'abc'})``.
    """
    media, _, rest = value.partition(";")  # a media type can never contain ';' or '"'
    media = media.strip().lower()
    main, slash, sub = media.partition("/")
    if not slash or not _TOKEN.fullmatch(main) or not _TOKEN.fullmatch(sub):
        raise MultipartError(f"malformed Content-Type {value!r}: expected type/subtype")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None:
            raise MultipartError(f"malformed Content-Type parameters in {value!r}")
        pos = m.end()
        name, raw = m.group(1), m.group(2)
        if name is None:  # tolerate empty segments such as a trailing ';'
            continue
        name = name.lower()
        if name in params:  # ambiguous (e.g. two boundaries): refuse rather than guess
            raise MultipartError(f"duplicate Content-Type parameter {name!r} in {value!r}")
        params[name] = _UNESCAPE.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
    return media, params


class PartSink(Protocol):
    """Receives the parts found by :class:`MultipartParser`, in order."""

    def start_part(self, headers: dict[str, str]) -> None: ...

    def write(self, data: bytes) -> None: ...

    def end_part(self) -> None: ...


_PREAMBLE, _DELIM, _PAD, _HEADERS, _BODY, _EPILOGUE = range(6)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # HTTP's historical header charset; never fails
        return raw.decode("latin-1")


class MultipartParser:
    """Incremental ``multipart/related`` parser pushing parts into a :class:`PartSink`."""

    def __init__(
        self,
        boundary: str | bytes,
        sink: PartSink,
        *,
        max_header_bytes: int = 16384,
        max_parts: int = 100_000,
    ) -> None:
        try:
            raw = boundary.encode("ascii") if isinstance(boundary, str) else bytes(boundary)
        except UnicodeEncodeError:
            raise MultipartError("multipart boundary must be ASCII") from None
        if not 0 < len(raw) <= _MAX_PARSER_BOUNDARY or b"\r" in raw or b"\n" in raw:
            raise MultipartError(f"invalid multipart boundary {boundary!r}")
        self._delim = b"\r\n--" + raw
        self._boundary = raw
        self._sink = sink
        self._max_header_bytes = max_header_bytes
        self._max_parts = max_parts
        self._state = _PREAMBLE
        # Pretend the body starts with CRLF, so a first delimiter at offset 0 matches the
        # same pattern as all others; a body that really starts with CRLF just gets a
        # two-CRLF preamble, which is ignored.
        self._buf = b"\r\n"
        self._parts = 0
        self._header_bytes = 0
        self._headers: dict[str, str] = {}
        self._last_name: str | None = None
        self._failure: str | None = None
        self._closed = False

    @property
    def parts_seen(self) -> int:
        """Number of parts whose headers were complete (``start_part`` was called)."""
        return self._parts

    def feed(self, chunk: bytes) -> None:
        """Parse the next chunk of the body; chunks may split the framing anywhere."""
        self._check_usable()
        if not chunk or self._state == _EPILOGUE:
            return
        if not isinstance(chunk, bytes):  # a caller's bytearray could change under the sink
            chunk = bytes(chunk)
        buf = self._buf + chunk if self._buf else chunk
        try:
            self._buf = buf[self._run(buf) :]
        except MultipartError as exc:
            self._failure = exc.message
            raise
        except Exception as exc:  # the sink failed: our state is unknown from here on
            self._failure = f"part sink raised {type(exc).__name__}"
            raise

    def close(self) -> None:
        """Finish parsing; raise :class:`MultipartError` unless the message was complete."""
        self._check_usable()
        self._closed = True
        if self._state == _EPILOGUE:
            return
        if self._state == _PREAMBLE:
            message = f"multipart body contains no boundary delimiter {b'--' + self._boundary!r}"
        else:
            message = "multipart body ended before the closing boundary"
        self._failure = message
        raise MultipartError(message)

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise MultipartError(f"multipart parser already failed: {self._failure}")
        if self._closed:
            raise MultipartError("multipart parser is already closed")

    def _run(self, buf: bytes) -> int:
        """Consume as much of ``buf`` as possible; return the offset of what must be kept."""
        delim, n, pos = self._delim, len(buf), 0
        while pos < n:
            state = self._state
            if state == _BODY:  # the hot path: one find() per chunk for big parts
                idx = buf.find(delim, pos)
                if idx < 0:
                    # Only a CR in the last len(delim)-1 bytes can start a split delimiter.
                    cr = buf.find(b"\r", max(pos, n - len(delim) + 1))
                    end = n if cr < 0 else cr
                    if end > pos:  # avoid copying when the whole chunk is body
                        self._sink.write(buf if pos == 0 and end == n else buf[pos:end])
                    return end
                if idx > pos:
                    self._sink.write(buf[pos:idx])
                self._sink.end_part()
                pos = idx + len(delim)
                self._state = _DELIM
            elif state == _PREAMBLE:
                idx = buf.find(delim, pos)
                if idx < 0:
                    return max(pos, n - len(delim) + 1)
                pos = idx + len(delim)
                self._state = _DELIM
            elif state == _DELIM:  # right after "--boundary": "--" closes, else a new part
                if buf[pos] == 0x2D:
                    if pos + 1 == n:
                        return pos
                    if buf[pos + 1] != 0x2D:
                        raise self._after_boundary(buf, pos)
                    self._state = _EPILOGUE
                    return n
                self._state, self._header_bytes = _PAD, 0
            elif state == _PAD:  # transport padding, then the CRLF ending the delimiter line
                start = pos
                while pos < n and buf[pos] in b" \t":  # usually zero iterations
                    pos += 1
                self._count_header_bytes(pos - start, 0)
                if pos == n:
                    return pos
                if buf[pos] == 0x0D:
                    if pos + 1 == n:
                        return pos
                    if buf[pos + 1] != 0x0A:
                        raise self._after_boundary(buf, pos)
                    pos += 1
                elif buf[pos] != 0x0A:
                    raise self._after_boundary(buf, pos)
                pos += 1
                if self._parts >= self._max_parts:
                    raise MultipartError(f"multipart body has more than {self._max_parts} parts")
                self._state, self._headers, self._last_name = _HEADERS, {}, None
            elif state == _HEADERS:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    self._count_header_bytes(0, n - pos)
                    return pos
                self._count_header_bytes(nl + 1 - pos, 0)
                line = buf[pos : nl - 1 if nl > pos and buf[nl - 1] == 0x0D else nl]
                pos = nl + 1
                if line:
                    self._header_line(line)
                else:  # the empty line ends the headers
                    self._parts += 1
                    self._state = _BODY
                    self._sink.start_part(self._headers)
            else:  # _EPILOGUE: ignored, like the preamble
                return n
        return pos

    def _count_header_bytes(self, consumed: int, pending: int) -> None:
        self._header_bytes += consumed
        if self._header_bytes + pending > self._max_header_bytes:
            raise MultipartError(
                f"multipart part headers exceed the limit of {self._max_header_bytes} bytes"
            )

    def _after_boundary(self, buf: bytes, pos: int) -> MultipartError:
        return MultipartError(
            f"unexpected data {buf[pos : pos + 16]!r} after multipart boundary "
            f"{b'--' + self._boundary!r}: expected '--' or a line end"
        )

    def _header_line(self, line: bytes) -> None:
        if line[:1] in (b" ", b"\t"):  # obsolete line folding (RFC 5322 3.2.2)
            if self._last_name is None:
                raise MultipartError(f"malformed multipart header line {line[:80]!r}")
            self._headers[self._last_name] += " " + _decode(line).strip()
            return
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN_B.fullmatch(name):
            raise MultipartError(f"malformed multipart header line {line[:80]!r}")
        key, text = name.decode("ascii").lower(), _decode(value).strip()
        # Repeated fields combine as in HTTP (RFC 9110 5.3).
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text
        self._last_name = key


def new_boundary() -> str:
    """A random boundary (32 hex digits): 128 bits make a collision with content negligible."""
    return secrets.token_hex(16)


def _boundary_bytes(boundary: str) -> bytes:
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError(f"invalid multipart boundary {boundary!r} (RFC 2046 bchars, 1-70)")
    return boundary.encode("ascii")


def part_header(boundary: str, headers: Mapping[str, str], *, first: bool = True) -> bytes:
    """The delimiter and header block that open a part.

    ``first=True`` gives ``b"--B\\r\\nName: value\\r\\n\\r\\n"``; later parts need
    ``first=False``, which prefixes the CRLF that ends the previous part's body.
    """
    lines = [b"--" + _boundary_bytes(boundary) + b"\r\n"]
    if not first:
        lines.insert(0, b"\r\n")
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value:
            raise ValueError(f"invalid part header {name!r}: {value!r}")
        lines.append(f"{name}: {value}\r\n".encode())
    lines.append(b"\r\n")
    return b"".join(lines)


def closing_delimiter(boundary: str) -> bytes:
    """``b"\\r\\n--B--\\r\\n"``: ends the last part body and the message."""
    return b"\r\n--" + _boundary_bytes(boundary) + b"--\r\n"


def iter_multipart(
    boundary: str, parts: Iterable[tuple[Mapping[str, str], Iterable[bytes]]]
) -> Iterator[bytes]:
    """Lazily frame ``(headers, body_chunks)`` pairs; body chunks are passed through as-is."""
    first = True
    for headers, body in parts:
        yield part_header(boundary, headers, first=first)
        first = False
        for chunk in body:
            if chunk:  # an empty chunk carries nothing and some servers read it as EOF
                yield chunk
    yield closing_delimiter(boundary)
