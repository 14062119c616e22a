"""Accept-header negotiation for DICOMweb resources (PS3.18 8.7.5-8.7.8).

Viewers send Accept in many shapes: quoted and unquoted ``type``, a bare
``transfer-syntax=*``, lists with q-values. Parsing is lenient; choosing is exact.
A missing Accept header is treated as ``*/*`` (RFC 9110 12.5.1), as every client expects.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from dicomweb_server.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, is_valid_uid
from dicomweb_server.errors import InvalidRequest, NotAcceptable

_SPLIT_RE = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')
_PARAM_RE = re.compile(r';(?=(?:[^"]*"[^"]*")*[^"]*$)')


@dataclass(frozen=True)
class MediaRange:
    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def inner_type(self) -> str | None:
        """The ``type`` parameter of a multipart/related range, lower-cased."""
        value = self.params.get("type")
        return value.lower() if value else None


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges by descending q (stable for ties, as listed)."""
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for item in _SPLIT_RE.split(header):
        pieces = [p.strip() for p in _PARAM_RE.split(item)]
        media_type = pieces[0].lower()
        if not media_type:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            name = name.strip().lower()
            value = value.strip().strip('"')
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    raise InvalidRequest(f"invalid q value {value!r} in Accept") from None
            elif name:
                params[name] = value
        if q > 0:
            ranges.append(MediaRange(media_type, params, q))
    return sorted(ranges, key=lambda r: -r.q)


class Form(enum.Enum):
    MULTIPART = "multipart"
    SINGLE = "single"
    ZIP = "zip"
    JSON = "json"
    XML = "xml"


@dataclass(frozen=True)
class Choice:
    form: Form
    # Requested transfer syntax UID, "*" for "as stored", or None where not applicable.
    transfer_syntax: str | None = None


def _transfer_syntax(rng: MediaRange) -> str:
    ts = rng.params.get("transfer-syntax", EXPLICIT_VR_LITTLE_ENDIAN).strip()
    if ts != "*" and not is_valid_uid(ts):
        raise InvalidRequest(f"invalid transfer-syntax {ts!r} in Accept")
    return ts


def _wild(rng: MediaRange) -> bool:
    return rng.media_type in ("*/*", "multipart/*")


def choose_instances(accept: str | None, *, single_allowed: bool) -> Choice:
    """Study, series or instance retrieve (PS3.18 10.4.1.1.1); default multipart EVRLE."""
    for rng in parse_accept(accept):
        if rng.media_type == "multipart/related" and rng.inner_type in (None, "application/dicom"):
            return Choice(Form.MULTIPART, _transfer_syntax(rng))
        if rng.media_type == "application/zip":
            return Choice(Form.ZIP, "*")
        if rng.media_type == "application/dicom" and single_allowed:
            return Choice(Form.SINGLE, _transfer_syntax(rng))
        if _wild(rng):
            return Choice(Form.MULTIPART, EXPLICIT_VR_LITTLE_ENDIAN)
    raise NotAcceptable(
        'acceptable here: multipart/related; type="application/dicom" (with an optional '
        "transfer-syntax), application/zip" + (", application/dicom" if single_allowed else "")
    )


def choose_dataset_form(accept: str | None) -> Choice:
    """Metadata, search results and store responses: DICOM JSON by default, or XML."""
    for rng in parse_accept(accept):
        if rng.media_type in ("application/dicom+json", "application/json", "*/*", "application/*"):
            return Choice(Form.JSON)
        if rng.media_type == "multipart/related" and rng.inner_type == "application/dicom+xml":
            return Choice(Form.XML)
        if rng.media_type == "application/dicom+xml":
            return Choice(Form.XML)
    raise NotAcceptable(
        'acceptable here: application/dicom+json, multipart/related; type="application/dicom+xml"'
    )


def choose_bulkdata(accept: str | None) -> Choice:
    """Bulk data (PS3.18 10.4.1.1.5): multipart octet-stream by default, or a single part."""
    for rng in parse_accept(accept):
        if rng.media_type == "multipart/related" and rng.inner_type in (
            None,
            "application/octet-stream",
        ):
            return Choice(Form.MULTIPART, _transfer_syntax(rng))
        if rng.media_type == "application/octet-stream":
            return Choice(Form.SINGLE, _transfer_syntax(rng))
        if _wild(rng) or rng.media_type == "application/*":
            return Choice(Form.MULTIPART, EXPLICIT_VR_LITTLE_ENDIAN)
    raise NotAcceptable(
        'acceptable here: multipart/related; type="application/octet-stream", '
        "application/octet-stream"
    )
