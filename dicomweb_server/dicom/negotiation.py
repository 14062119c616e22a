"""Accept-header negotiation for DICOMweb resources (PS3.18 8.7.5-8.7.8).

Viewers send Accept in many shapes: quoted and unquoted ``type``, a bare
``transfer-syntax=*``, lists with q-values. Parsing is lenient; choosing is exact.

- A missing or empty Accept header is treated as ``*/*`` (RFC 9110 12.5.1: "A request
  without any Accept header field implies that the user agent will accept any media
  type"), as every client expects, although PS3.18 8.4.1.1 asks clients to send one.
- Invalid or unsupported media ranges and parameters "shall be ignored" (PS3.18 8.7.7):
  a bad q value is ignored (the range keeps the default q=1), a ``transfer-syntax`` that
  is not a UID drops that one range; if no range is left that the resource supports,
  the answer is 406 (PS3.18 8.7.8.1).
- Ranges are tried by descending q, ties in the order sent (the server breaks ties,
  PS3.18 8.7.8.1). For instances, every range of the chosen form contributes its
  transfer syntax, in preference order, so that the syntax can be chosen per instance
  (PS3.18 8.7.8.2: the selected syntax is per part).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from dicomweb_server.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, is_valid_uid
from dicomweb_server.errors import NotAcceptable

_SPLIT_RE = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')
_PARAM_RE = re.compile(r';(?=(?:[^"]*"[^"]*")*[^"]*$)')
_QVALUE_RE = re.compile(r"^(0(\.\d{0,3})?|1(\.0{0,3})?)$")  # RFC 9110 12.4.2


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
    """Media ranges by descending q (stable for ties, as listed); q=0 ranges are dropped.

    An invalid q value is ignored (PS3.18 8.7.7): the range keeps q=1.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for item in _SPLIT_RE.split(header):
        pieces = [p.strip() for p in _PARAM_RE.split(item)]
        media_type = pieces[0].lower()
        if not media_type or "/" not in media_type:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            name = name.strip().lower()
            value = value.strip().strip('"').strip()
            if name == "q":
                q = float(value) if _QVALUE_RE.match(value) else 1.0
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
    # Every acceptable transfer syntax for this form, most preferred first (starts with
    # ``transfer_syntax``); empty where not applicable.
    alternatives: tuple[str, ...] = ()


def _transfer_syntax(rng: MediaRange) -> str | None:
    """The range's transfer syntax (default Explicit VR Little Endian, PS3.18 8.7.3.4).

    None when the parameter is not a UID nor ``*``: such a range is ignored (8.7.7).
    """
    ts = rng.params.get("transfer-syntax", EXPLICIT_VR_LITTLE_ENDIAN)
    if ts != "*" and not is_valid_uid(ts):
        return None
    return ts


def _wild(rng: MediaRange) -> bool:
    return rng.media_type in ("*/*", "multipart/*")


def _related(rng: MediaRange, inner: str) -> bool:
    """``multipart/related`` whose ``type`` is ``inner``, absent, or a wildcard that
    covers it (dicomweb-client asks for bulk data as ``type="*/*"``)."""
    if rng.media_type != "multipart/related":
        return False
    return rng.inner_type in (None, inner, "*/*", inner.split("/")[0] + "/*")


def _instance_form(rng: MediaRange, single_allowed: bool) -> tuple[Form, str] | None:
    if _related(rng, "application/dicom"):
        ts = _transfer_syntax(rng)
        return (Form.MULTIPART, ts) if ts else None
    if rng.media_type == "application/zip":
        return Form.ZIP, "*"
    if rng.media_type == "application/dicom" and single_allowed:
        ts = _transfer_syntax(rng)
        return (Form.SINGLE, ts) if ts else None
    if _wild(rng):
        return Form.MULTIPART, EXPLICIT_VR_LITTLE_ENDIAN
    return None


def choose_instances(accept: str | None, *, single_allowed: bool) -> Choice:
    """Study, series or instance retrieve (PS3.18 10.4.1.1.1); default multipart EVRLE.

    ``application/dicom`` (single part) only where one instance is addressed;
    ``application/zip`` returns the stored Part 10 files as they are.
    """
    chosen: Form | None = None
    alternatives: list[str] = []
    for rng in parse_accept(accept):
        found = _instance_form(rng, single_allowed)
        if found is None:
            continue
        form, ts = found
        if chosen is None:
            chosen = form
        if form is chosen and ts not in alternatives:
            alternatives.append(ts)
    if chosen is None:
        raise NotAcceptable(
            'acceptable here: multipart/related; type="application/dicom" (with an optional '
            "transfer-syntax), application/zip" + (", application/dicom" if single_allowed else "")
        )
    return Choice(chosen, alternatives[0], tuple(alternatives))


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
    """Bulk data (PS3.18 10.4.1.1.5): multipart octet-stream by default, or a single part.

    Values are sent uncompressed, little endian (PS3.18 Table 8.7.3-4), so only the
    octet-stream types are offered; a ``transfer-syntax`` parameter on them is ignored.
    """
    for rng in parse_accept(accept):
        if _related(rng, "application/octet-stream"):
            return Choice(Form.MULTIPART, EXPLICIT_VR_LITTLE_ENDIAN)
        if rng.media_type == "application/octet-stream":
            return Choice(Form.SINGLE, EXPLICIT_VR_LITTLE_ENDIAN)
        if rng.media_type == "application/*":
            return Choice(Form.SINGLE, EXPLICIT_VR_LITTLE_ENDIAN)
        if _wild(rng):
            return Choice(Form.MULTIPART, EXPLICIT_VR_LITTLE_ENDIAN)
    raise NotAcceptable(
        'acceptable here: multipart/related; type="application/octet-stream", '
        "application/octet-stream"
    )
