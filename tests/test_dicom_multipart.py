"""Tests for the streaming multipart/related codec (dicomweb_server.dicom.multipart)."""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import hashlib
import random
import re
from collections.abc import Iterator, Mapping
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from typing import Any

import pytest

from dicomweb_server.dicom.multipart import (
    MultipartError,
    MultipartParser,
    closing_delimiter,
    iter_multipart,
    new_boundary,
    parse_content_type,
    part_header,
)
from dicomweb_server.errors import InvalidRequest

B = "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"  # the boundary dicomweb-client hard-codes
BB = B.encode()

Part = tuple[dict[str, str], bytes]


class RecordingSink:
    """Collects parts and checks that the parser calls it in a legal order."""

    def __init__(self) -> None:
        self.parts: list[Part] = []
        self._open = False
        self._body = bytearray()
        self._headers: dict[str, str] = {}

    def start_part(self, headers: dict[str, str]) -> None:
        assert not self._open
        self._open, self._headers, self._body = True, dict(headers), bytearray()

    def write(self, data: bytes) -> None:
        assert self._open
        assert isinstance(data, bytes) and data
        self._body += data

    def end_part(self) -> None:
        assert self._open
        self._open = False
        self.parts.append((self._headers, bytes(self._body)))


class HashingSink:
    """Keeps only a digest, for the large-body test."""

    def __init__(self) -> None:
        self.digests: list[tuple[int, str]] = []
        self._hash = hashlib.sha256()
        self._size = 0

    def start_part(self, headers: dict[str, str]) -> None:
        self._hash, self._size = hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._size += len(data)

    def end_part(self) -> None:
        self.digests.append((self._size, self._hash.hexdigest()))


def parse(
    message: bytes, boundary: str | bytes = B, chunk: int | None = None, **limits: int
) -> list[Part]:
    sink = RecordingSink()
    parser = MultipartParser(boundary, sink, **limits)
    step = chunk or max(len(message), 1)
    for i in range(0, len(message), step):
        parser.feed(message[i : i + step])
    parser.close()
    assert parser.parts_seen == len(sink.parts)
    return sink.parts


def build(boundary: str, parts: list[Part]) -> bytes:
    return b"".join(iter_multipart(boundary, [(h, [body]) for h, body in parts]))


def lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


# Bodies that sit right next to the delimiter pattern without being one. (A body may not
# *start* with "--B": after the header block's CRLF that would be a real delimiter.)
TRICKY_BODIES = [
    b"",
    b"\r",
    b"\n",
    b"\r\n",
    b"-",
    b"--",
    b"\r\n-",
    b"\r\n--",
    b"\r\n--\r\n",
    b"-" + BB,
    b"x--" + BB + b"--",
    b"\r\n--" + BB[:-1],
    b"\r\n--" + BB[:-1] + b"\r\n",
    b"\r\n\r\n--" + BB[:-1] + b"\r\r\n--" + BB[:10],
    b"\r\n-" + BB,
    b"\n--" + BB + b"\r\n",
    b"\r--" + BB,
    b"\r\r\n",
    b"body\r\n" * 5,
    *(b"\r\n--" + BB[:k] for k in range(0, len(BB), 7)),
    bytes(range(256)),
]


@pytest.mark.parametrize("body", TRICKY_BODIES, ids=range(len(TRICKY_BODIES)))
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 41, 42, 43, None])
def test_tricky_body_round_trip(body: bytes, chunk: int | None) -> None:
    parts: list[Part] = [({"Content-Type": "application/dicom"}, body), ({}, body[::-1])]
    assert parse(build(B, parts), chunk=chunk) == [(lower(h), b) for h, b in parts]


@pytest.mark.parametrize("nparts", [0, 1, 2, 3, 7])
@pytest.mark.parametrize("seed", range(4))
def test_random_round_trip(nparts: int, seed: int) -> None:
    rng = random.Random(seed * 100 + nparts)
    boundary = rng.randbytes(16).hex()  # like new_boundary(), but reproducible
    fragments = [b"\r\n--" + boundary[:-1].encode(), b"\r\n", b"--", b"\r\n--"]
    parts: list[Part] = []
    for i in range(nparts):
        body = b"--" + boundary.encode()  # invalid, to enter the loop
        # Content holding a real delimiter cannot be framed; it arises here by chance only.
        while b"\r\n--" + boundary.encode() in b"\r\n" + body:
            pieces = [rng.randbytes(rng.randrange(0, 300)) for _ in range(4)]
            body = b"".join(p + rng.choice(fragments) for p in pieces)[rng.randrange(3) :]
        headers = {"Content-Type": "application/dicom", "Content-Location": f"/p/{i}"}
        parts.append((headers, body))
    message = build(boundary, parts)
    expected = [(lower(h), b) for h, b in parts]
    for chunk in [1, 7, 64, rng.randrange(1, 5000), None]:
        assert parse(message, boundary, chunk) == expected


def test_every_chunk_size() -> None:
    bodies = TRICKY_BODIES[:16]
    parts: list[Part] = [({"Content-Type": f"x/y{i}"}, b) for i, b in enumerate(bodies)]
    message = b"preamble\r\n" + build(B, parts) + b"epilogue"
    expected = [(lower(h), b) for h, b in parts]
    for chunk in range(1, len(message) + 1):
        assert parse(message, chunk=chunk) == expected, chunk


@pytest.mark.parametrize("chunk", [1, 3, None])
@pytest.mark.parametrize("preamble", [b"", b"\r\n", b"This is a preamble.\r\n", b"x--" + BB])
@pytest.mark.parametrize("epilogue", [b"", b"\r\n", b"trailing --" + BB + b"\r\n\r\n--" + BB])
def test_preamble_and_epilogue_are_ignored(
    chunk: int | None, preamble: bytes, epilogue: bytes
) -> None:
    if preamble and not preamble.endswith(b"\r\n"):
        preamble += b"\r\n"  # the CRLF before the first delimiter belongs to it
    message = preamble + b"--" + BB + b"\r\nA: 1\r\n\r\nbody\r\n--" + BB + b"--" + epilogue
    assert parse(message, chunk=chunk) == [({"a": "1"}, b"body")]


@pytest.mark.parametrize("chunk", [1, None])
@pytest.mark.parametrize("padding", [b" ", b"\t", b"  \t "])
def test_transport_padding_after_boundary(chunk: int | None, padding: bytes) -> None:
    message = (
        b"--" + BB + padding + b"\r\n\r\none\r\n--" + BB + padding + b"\r\n\r\ntwo"
        b"\r\n--" + BB + b"--" + padding + b"\r\n"
    )
    assert parse(message, chunk=chunk) == [({}, b"one"), ({}, b"two")]


@pytest.mark.parametrize("chunk", [1, 2, None])
def test_lf_only_headers(chunk: int | None) -> None:
    message = (
        b"--" + BB + b"\nContent-Type: application/dicom\nX-Mixed: yes\r\n\n\r\nbody\n"
        b"\r\n--" + BB + b"\n\nsecond\r\n--" + BB + b"--"
    )
    expected = [({"content-type": "application/dicom", "x-mixed": "yes"}, b"\r\nbody\n")]
    assert parse(message, chunk=chunk) == [*expected, ({}, b"second")]


def test_header_normalisation() -> None:
    message = (
        b"--" + BB + b"\r\nCONTENT-TYPE:   application/dicom  \r\nX-Long: first\r\n"
        b"\t second\r\nX-Dup: a\r\nx-dup: b\r\nX-Empty:\r\nX-Utf8: caf\xc3\xa9\r\n"
        b"X-Latin1: caf\xe9\r\n\r\nbody\r\n--" + BB + b"--\r\n"
    )
    [(headers, body)] = parse(message)
    assert headers == {
        "content-type": "application/dicom",
        "x-long": "first second",
        "x-dup": "a, b",
        "x-empty": "",
        "x-utf8": "caf\u00e9",
        "x-latin1": "caf\u00e9",
    }
    assert body == b"body"


def test_zero_parts_and_bytes_boundary() -> None:
    assert parse(b"--" + BB + b"--", BB) == []
    assert parse(closing_delimiter(B)) == []
    assert parse(b"--" + BB + b"\r\n\r\n\r\n--" + BB + b"--", BB) == [({}, b"")]


@pytest.mark.parametrize("chunk", [1, 5, None])
@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"", "no boundary delimiter"),
        (b"just some bytes with no delimiter at all", "no boundary delimiter"),
        (b"-" + BB + b"\r\n\r\nbody", "no boundary delimiter"),
        (b"--" + BB, "ended before the closing boundary"),
        (b"--" + BB + b"-", "ended before the closing boundary"),
        (b"--" + BB + b" \r", "ended before the closing boundary"),
        (b"--" + BB + b"\r\nA: 1\r\n", "ended before the closing boundary"),
        (b"--" + BB + b"\r\nA: 1\r\n\r\nbody", "ended before the closing boundary"),
        (b"--" + BB + b"\r\n\r\nbody\r\n--" + BB[:-1], "ended before the closing boundary"),
        (b"--" + BB + b"\r\n\r\nbody\r\n--" + BB + b"-", "ended before the closing boundary"),
        (b"--" + BB + b"x\r\n\r\nbody", "unexpected data b'x"),
        (b"--" + BB + b"-x\r\n", "unexpected data b'-x"),
        (b"--" + BB + b"  -\r\n", "unexpected data b'-"),
        (b"--" + BB + b"  --\r\n", "unexpected data b'-"),
        (b"--" + BB + b"\rx", "unexpected data b'\\rx"),
        (b"--" + BB + b"\r\n\r\nbody\r\n--" + BB + b"x--", "unexpected data b'x"),
        (b"--" + BB + b"\r\nNoColon\r\n\r\n", "malformed multipart header line b'NoColon'"),
        (b"--" + BB + b"\r\n: empty name\r\n\r\n", "malformed multipart header line"),
        (b"--" + BB + b"\r\nBad Name: x\r\n\r\n", "malformed multipart header line"),
        (b"--" + BB + b"\r\n folded: first\r\n\r\n", "malformed multipart header line"),
    ],
)
def test_malformed_bodies(message: bytes, error: str, chunk: int | None) -> None:
    with pytest.raises(MultipartError, match=re.escape(error)) as info:
        parse(message, chunk=chunk)
    assert isinstance(info.value, InvalidRequest)


def test_max_parts() -> None:
    parts: list[Part] = [({}, b"x")] * 3
    assert len(parse(build(B, parts), max_parts=3)) == 3
    with pytest.raises(MultipartError, match="more than 2 parts"):
        parse(build(B, parts), max_parts=2)


@pytest.mark.parametrize("chunk", [1, 100, None])
def test_max_header_bytes(chunk: int | None) -> None:
    ok = b"--" + BB + b"\r\nX: " + b"a" * 90 + b"\r\n\r\nbody\r\n--" + BB + b"--"
    assert parse(ok, chunk=chunk, max_header_bytes=100) == [({"x": "a" * 90}, b"body")]
    one_long_line = b"--" + BB + b"\r\nX: " + b"a" * 200  # never ends: caught while waiting
    many_lines = b"--" + BB + b"\r\n" + b"X: a\r\n" * 40 + b"\r\nbody\r\n--" + BB + b"--"
    padding = b"--" + BB + b" " * 200 + b"\r\n\r\n"
    for message in (one_long_line, many_lines, padding):
        with pytest.raises(MultipartError, match="headers exceed the limit of 100 bytes"):
            parse(message, chunk=chunk, max_header_bytes=100)


def test_parser_stays_failed() -> None:
    parser = MultipartParser(B, RecordingSink())
    with pytest.raises(MultipartError, match="unexpected data"):
        parser.feed(b"--" + BB + b"!")
    for _ in range(2):
        with pytest.raises(MultipartError, match="already failed: unexpected data"):
            parser.feed(b"\r\n")
    with pytest.raises(MultipartError, match="already failed"):
        parser.close()


def test_parser_fails_after_close_and_after_sink_error() -> None:
    parser = MultipartParser(B, RecordingSink())
    parser.feed(b"--" + BB + b"--")
    parser.close()
    with pytest.raises(MultipartError, match="already closed"):
        parser.feed(b"x")

    class Broken(RecordingSink):
        def start_part(self, headers: dict[str, str]) -> None:
            raise OSError("disk full")

    parser = MultipartParser(B, Broken())
    with pytest.raises(OSError, match="disk full"):
        parser.feed(b"--" + BB + b"\r\n\r\nbody")
    with pytest.raises(MultipartError, match="sink raised OSError"):
        parser.feed(b"more")


@pytest.mark.parametrize("boundary", ["", "a\r\nb", "caf\u00e9", "x" * 257, b""])
def test_invalid_parser_boundary(boundary: str | bytes) -> None:
    with pytest.raises(MultipartError, match="boundary"):
        MultipartParser(boundary, RecordingSink())


def test_large_body() -> None:
    rng = random.Random(0)
    boundary = rng.randbytes(16).hex()
    body = bytearray(rng.randbytes(50 * 2**20))
    near = b"\r\n--" + boundary[:-1].encode() + b"\0"  # "\0" can't complete the boundary
    for offset in range(12345, len(body) - 100, 2**20 + 7):  # near-delimiters, all alignments
        body[offset : offset + len(near)] = near
    small = b"tiny"
    message = build(boundary, [({}, bytes(body)), ({}, small)])
    sink = HashingSink()
    parser = MultipartParser(boundary, sink)
    view = memoryview(message)
    for i in range(0, len(message), 65536):
        parser.feed(bytes(view[i : i + 65536]))
    parser.close()
    assert sink.digests == [
        (len(body), hashlib.sha256(body).hexdigest()),
        (len(small), hashlib.sha256(small).hexdigest()),
    ]


# --- Content-Type parsing -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            'multipart/related; type="application/dicom"; boundary=abc',
            ("multipart/related", {"type": "application/dicom", "boundary": "abc"}),
        ),
        (
            f'multipart/related; type="application/dicom"; boundary="{B}"',
            ("multipart/related", {"type": "application/dicom", "boundary": B}),
        ),
        (
            '  Multipart/Related ;TYPE = "application/dicom+xml" ;  Boundary=  "a b:c"  ;',
            ("multipart/related", {"type": "application/dicom+xml", "boundary": "a b:c"}),
        ),
        (
            r'multipart/related; boundary="semi;colon \"quoted\" back\\slash"; start="<1@x>"',
            (
                "multipart/related",
                {"boundary": 'semi;colon "quoted" back\\slash', "start": "<1@x>"},
            ),
        ),
        ("application/dicom", ("application/dicom", {})),
        ("application/dicom;", ("application/dicom", {})),
        (
            "application/octet-stream; transfer-syntax=*",
            ("application/octet-stream", {"transfer-syntax": "*"}),
        ),
        ('multipart/related; boundary=""', ("multipart/related", {"boundary": ""})),
    ],
)
def test_parse_content_type(value: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_content_type(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "multipart",
        "/related",
        "multipart/",
        "multi part/related",
        "multipart/related; boundary",
        "multipart/related; boundary=a; =b",
        'multipart/related; boundary="unterminated',
        'multipart/related; boundary="x"y',
        'multipart/related; boundary=a"b',
        "multipart/related; boundary=a; Boundary=b",
    ],
)
def test_parse_content_type_rejects_garbage(value: str) -> None:
    with pytest.raises(MultipartError, match="Content-Type"):
        parse_content_type(value)


# --- writer ---------------------------------------------------------------------------


def test_writer_framing() -> None:
    headers = {"Content-Type": "application/dicom", "Content-Location": "/studies/1"}
    head = b"Content-Type: application/dicom\r\nContent-Location: /studies/1\r\n\r\n"
    assert part_header("B", headers) == b"--B\r\n" + head
    assert part_header("B", headers, first=False) == b"\r\n--B\r\n" + head
    assert part_header("B", {}) == b"--B\r\n\r\n"
    assert closing_delimiter("B") == b"\r\n--B--\r\n"
    message = b"".join(iter_multipart("B", [(headers, [b"one"]), ({}, [b"t", b"", b"wo"])]))
    assert message == (b"--B\r\n" + head + b"one\r\n--B\r\n\r\ntwo\r\n--B--\r\n")
    assert b"".join(iter_multipart("B", [])) == b"\r\n--B--\r\n"


def test_new_boundary() -> None:
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", b) for b in boundaries)


@pytest.mark.parametrize("boundary", ["", "x" * 71, "ends with space ", "semi;colon", "\u00e9"])
def test_writer_rejects_invalid_boundary(boundary: str) -> None:
    with pytest.raises(ValueError, match="boundary"):
        part_header(boundary, {})
    with pytest.raises(ValueError, match="boundary"):
        closing_delimiter(boundary)


@pytest.mark.parametrize(
    "headers", [{"X": "a\r\nInjected: 1"}, {"X": "a\nb"}, {"Bad Name": "x"}, {"": "x"}]
)
def test_writer_rejects_header_injection(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="invalid part header"):
        part_header(B, headers)


def test_iter_multipart_is_lazy_and_does_not_copy_bodies() -> None:
    events: list[str] = []
    chunks = [b"a" * 10, b"b" * 10]

    def body(name: str) -> Iterator[bytes]:
        events.append(f"{name} started")
        yield from chunks
        events.append(f"{name} done")

    def parts() -> Iterator[tuple[Mapping[str, str], Iterator[bytes]]]:
        for name in ("p1", "p2"):
            events.append(f"{name} produced")
            yield {"X-Name": name}, body(name)

    stream = iter_multipart(B, parts())
    assert events == []
    assert next(stream) == part_header(B, {"X-Name": "p1"})
    assert events == ["p1 produced"]
    assert next(stream) is chunks[0]  # passed through, not joined or copied
    assert next(stream) is chunks[1]
    assert events == ["p1 produced", "p1 started"]
    rest = list(stream)
    assert rest[-1] == closing_delimiter(B)
    assert events == [
        "p1 produced",
        "p1 started",
        "p1 done",
        "p2 produced",
        "p2 started",
        "p2 done",
    ]


# --- interoperability -----------------------------------------------------------------


def dicomweb_client_stow_body(parts: list[bytes]) -> bytes:
    """Hand-written copy of dicomweb-client's ``_encode_multipart_message`` framing.

    Every part is ``CRLF --B CRLF Content-Type: <type> CRLF CRLF <bytes>``, and the body ends
    with ``CRLF --B--`` and no final CRLF: the message starts with CRLF (an empty preamble).
    """
    out = [b"\r\n--" + BB + b"\r\nContent-Type: application/dicom\r\n\r\n" + p for p in parts]
    return b"".join(out) + b"\r\n--" + BB + b"--"


DICOMWEB_CLIENT_CONTENT_TYPE = (
    f'multipart/related; type="application/dicom"; boundary="{B}"'  # as the client sends it
)


@pytest.mark.parametrize("nparts", [1, 3])
@pytest.mark.parametrize("chunk", [1, 13, None])
def test_dicomweb_client_stow_framing(nparts: int, chunk: int | None) -> None:
    media_type, params = parse_content_type(DICOMWEB_CLIENT_CONTENT_TYPE)
    assert media_type == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": B}
    datasets = [b"\0" * 128 + b"DICM" + TRICKY_BODIES[i * 5] + b"\r\n" for i in range(nparts)]
    expected = [({"content-type": "application/dicom"}, d) for d in datasets]
    assert parse(dicomweb_client_stow_body(datasets), params["boundary"], chunk) == expected


def test_fixture_matches_installed_dicomweb_client() -> None:
    web = pytest.importorskip("dicomweb_client.web")
    datasets = [b"\0" * 128 + b"DICM\x02\x00", b"\r\n--" + BB[:-1]]
    real: bytes = web.DICOMwebClient._encode_multipart_message(
        datasets, DICOMWEB_CLIENT_CONTENT_TYPE
    )
    assert real == dicomweb_client_stow_body(datasets)


class FakeResponse:
    """Just enough of ``requests.Response`` for dicomweb-client's multipart decoder."""

    def __init__(self, content_type: str, body: bytes) -> None:
        self.headers = {"content-type": content_type}
        self.content = body

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        for i in range(0, len(self.content), chunk_size):
            yield self.content[i : i + chunk_size]

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_wado_response_decodes_with_dicomweb_client(chunk: int) -> None:
    web = pytest.importorskip("dicomweb_client.web")
    boundary = new_boundary()
    # dicomweb-client's decoder drops an empty part and finds headers by CRLF CRLF.
    bodies = [b for b in TRICKY_BODIES if b] + [bytes(range(256)) * 40]
    message = build(boundary, [({"Content-Type": "application/dicom"}, b) for b in bodies])
    content_type = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    client: Any = web.DICOMwebClient("http://localhost:1/dicomweb", chunk_size=chunk)  # no I/O
    decoded = client._decode_multipart_message(FakeResponse(content_type, message), stream=True)
    assert list(decoded) == bodies


@pytest.mark.parametrize("chunk", [1, 50, None])
def test_email_library_multipart(chunk: int | None) -> None:
    datasets = [b"\0" * 128 + b"DICM" + bytes(range(256)), b"\r\n--" + BB + b"\r\n"]
    message = MIMEMultipart("related", type="application/dicom", boundary=B)
    message.preamble = "This is a multi-part message in MIME format."
    message.epilogue = "the end"
    for i, data in enumerate(datasets):
        part = MIMEApplication(data, "dicom")
        part["Content-ID"] = f"<part{i}@example.org>"
        message.attach(part)
    raw = message.as_bytes(policy=email.policy.HTTP)
    head, _, body = raw.partition(b"\r\n\r\n")
    content_type = email.message_from_bytes(head + b"\r\n\r\n")["Content-Type"]
    media_type, params = parse_content_type(content_type)
    assert media_type == "multipart/related"
    assert (params["type"], params["boundary"]) == ("application/dicom", B)
    parts = parse(body, params["boundary"], chunk)
    assert [base64.b64decode(b) for _, b in parts] == datasets
    assert [h["content-type"] for h, _ in parts] == ["application/dicom"] * 2
    assert [h["content-transfer-encoding"] for h, _ in parts] == ["base64"] * 2
    assert [h["content-id"] for h, _ in parts] == ["<part0@example.org>", "<part1@example.org>"]


def test_our_messages_parse_with_the_email_library() -> None:
    bodies = [b"first part\r\nwith lines", b"\r\n--" + BB[:-1] + b"\r\nsecond", b""]
    boundary = new_boundary()
    parts = [
        ({"Content-Type": "application/dicom", "Content-ID": f"<{i}>"}, b)
        for i, b in enumerate(bodies)
    ]
    raw = (
        f"Content-Type: multipart/related; type=application/dicom; boundary={boundary}\r\n\r\n"
    ).encode() + build(boundary, parts)
    message = email.message_from_bytes(raw, policy=email.policy.HTTP)
    assert message.is_multipart()
    payloads = message.get_payload()
    assert isinstance(payloads, list)
    decoded = []
    for payload in payloads:
        assert isinstance(payload, email.message.Message)
        decoded.append((payload["Content-ID"], payload.get_payload(decode=True)))
    assert decoded == [(f"<{i}>", b) for i, b in enumerate(bodies)]
