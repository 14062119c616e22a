"""Response bodies shared by the DICOMweb resources: DICOM JSON or XML datasets, and
bodies sent piece by piece."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dicomweb_server.dicom.multipart import closing_delimiter, new_boundary, part_header
from dicomweb_server.dicom.negotiation import Choice, Form
from dicomweb_server.dicom.xmlmodel import to_xml

DICOM_JSON = "application/dicom+json"


def xml_multipart(datasets: Iterable[dict[str, Any]]) -> tuple[bytes, str]:
    """One Native DICOM Model document per part (PS3.18 F.3 / 8.6.1.2)."""
    boundary = new_boundary()
    out = bytearray()
    for index, dataset in enumerate(datasets):
        out += part_header(boundary, {"Content-Type": "application/dicom+xml"}, first=index == 0)
        out += to_xml(dataset)
    out += closing_delimiter(boundary)
    media = f'multipart/related; type="application/dicom+xml"; boundary={boundary}'
    return bytes(out), media


def datasets_response(
    choice: Choice,
    datasets: list[dict[str, Any]],
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    if choice.form is Form.XML:
        body, media = xml_multipart(datasets)
        return Response(body, status_code=status, media_type=media, headers=headers)
    return Response(
        orjson.dumps(datasets), status_code=status, media_type=DICOM_JSON, headers=headers
    )


def dataset_response(choice: Choice, dataset: dict[str, Any], status: int = 200) -> Response:
    """A single dataset (a STOW response): a JSON object, or one XML part."""
    if choice.form is Form.XML:
        body, media = xml_multipart([dataset])
        return Response(body, status_code=status, media_type=media)
    return Response(orjson.dumps(dataset), status_code=status, media_type=DICOM_JSON)


class PiecesResponse(Response):
    """A body sent as the pieces it was made of (multipart part headers and frames),
    without joining them into one more copy; Content-Length is their sum."""

    def __init__(
        self, pieces: list[bytes], media_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.pieces = pieces
        super().__init__(b"", media_type=media_type, headers=headers)
        self.headers["content-length"] = str(sum(len(piece) for piece in pieces))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        last = len(self.pieces) - 1
        for i, piece in enumerate(self.pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": i < last})
        if last < 0:
            await send({"type": "http.response.body", "body": b""})


# Streamed bodies go out in pieces of about this size (``coalesced``).
PIECE = 1 << 20


def coalesced(pieces: Iterator[bytes], size: int = PIECE) -> Iterator[bytes]:
    """Consecutive pieces joined up to about ``size`` bytes. Starlette runs each step of
    a sync body iterator in a worker thread (85-110 us a hop here); a multipart body
    yielding every part header and every frame or small file on its own made all 200
    frames of an instance a third as fast as the same bytes as one bulk data value."""
    batch: list[bytes] = []
    held = 0
    for piece in pieces:
        batch.append(piece)
        held += len(piece)
        if held >= size:
            yield batch[0] if len(batch) == 1 else b"".join(batch)
            batch, held = [], 0
    if batch:
        yield b"".join(batch)
