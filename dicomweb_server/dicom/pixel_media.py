"""Media types of pixel data (PS3.18 8.7.3.3, Tables 8.7.3-4 and 8.7.3-5) and the
Accept negotiation of frames and pixel bulk data.

Viewers ask for frames as ``multipart/related; type="application/octet-stream";
transfer-syntax=*`` (OHIF, quoted or not), ``type="image/jls"``, or with several
ranges and q-values. Each range becomes a ``Wanted`` (media type, transfer syntax or
``*``); the pixel service then takes, per frame, the first one it can produce.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomweb_server.dicom.negotiation import parse_accept
from dicomweb_server.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, is_valid_uid
from dicomweb_server.errors import NotAcceptable

OCTET_STREAM = "application/octet-stream"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
J2K_PART2_LOSSLESS = "1.2.840.10008.1.2.4.92"
J2K_PART2 = "1.2.840.10008.1.2.4.93"
RLE = "1.2.840.10008.1.2.5"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"

# Media type -> its transfer syntaxes, the default first (PS3.18 Table 8.7.3-5).
# ``image/x-dicom-rle`` is the older name of ``image/dicom-rle``; both are accepted.
MEDIA_SYNTAXES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (JPEG_LOSSLESS_SV1, JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS),
    "image/dicom-rle": (RLE,),
    "image/x-dicom-rle": (RLE,),
    "image/jls": (JPEG_LS_LOSSLESS, JPEG_LS_NEAR),
    "image/x-jls": (JPEG_LS_LOSSLESS, JPEG_LS_NEAR),
    "image/jp2": (J2K_LOSSLESS, J2K),
    "image/jpx": (J2K_PART2_LOSSLESS, J2K_PART2),
    "image/jphc": (HTJ2K_LOSSLESS, HTJ2K_RPCL, HTJ2K),
    "video/mpeg2": ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"),
    "video/mp4": tuple(f"1.2.840.10008.1.2.4.{n}" for n in (102, 103, 104, 105, 106)),
    "video/h265": ("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"),
}
_PREFERRED = (
    "image/jpeg", "image/dicom-rle", "image/jls", "image/jp2", "image/jpx", "image/jphc",
    "video/mpeg2", "video/mp4", "video/h265",
)  # fmt: skip


def media_type_of(transfer_syntax: str) -> str:
    """The media type frames stored in ``transfer_syntax`` travel in as they are."""
    for media in _PREFERRED:
        if transfer_syntax in MEDIA_SYNTAXES[media]:
            return media
    return OCTET_STREAM  # native (uncompressed) syntaxes


@dataclass(frozen=True)
class Wanted:
    """One acceptable representation of a frame.

    ``transfer_syntax`` is ``*`` (anything, as stored), a UID, or None (the media
    type's default, or any of its syntaxes if the frame is already stored in one).
    """

    media_type: str
    transfer_syntax: str | None
    multipart: bool


def _wanted(media: str, ts: str | None, multipart: bool) -> Wanted | None:
    if ts is not None and ts != "*" and not is_valid_uid(ts):
        return None  # an invalid parameter drops its range (PS3.18 8.7.7)
    if media in ("*/*", "application/*", "image/*"):
        if ts == "*":
            return Wanted(OCTET_STREAM, "*", multipart)
        media = OCTET_STREAM if media != "image/*" else "image/*"
    if media == OCTET_STREAM:
        if ts not in (None, "*", EXPLICIT_VR_LITTLE_ENDIAN):
            return None
        return Wanted(OCTET_STREAM, ts if ts == "*" else EXPLICIT_VR_LITTLE_ENDIAN, multipart)
    if media == "image/*":
        return Wanted(media, "*", multipart)  # any compressed type: as stored
    if media not in MEDIA_SYNTAXES:
        return None
    if ts is not None and ts != "*" and ts not in MEDIA_SYNTAXES[media]:
        return None
    return Wanted(media, ts, multipart)


def choose_pixel(accept: str | None, *, single_allowed: bool) -> list[Wanted]:
    """Acceptable frame representations, most preferred first (PS3.18 8.7.5, 8.7.8).

    Frames are answered multipart (PS3.18 10.4.1.1.4, Table 8.7.3-5 media types in
    ``multipart/related``); a single-part type is accepted where one frame is asked.
    A missing Accept, ``*/*`` or ``multipart/related`` without ``type`` means the
    default: uncompressed little endian octet-stream.
    """
    found: list[Wanted] = []
    for rng in parse_accept(accept):
        ts = rng.params.get("transfer-syntax")
        item: Wanted | None = None
        if rng.media_type == "multipart/related":
            item = _wanted(rng.inner_type or OCTET_STREAM, ts, True)
        elif rng.media_type in ("*/*", "multipart/*"):
            item = _wanted(OCTET_STREAM, ts, True)
        elif single_allowed:
            item = _wanted(rng.media_type, ts, False)
        if item is not None and item not in found:
            found.append(item)
    if not found:
        raise NotAcceptable(
            'acceptable here: multipart/related; type="application/octet-stream" (with '
            "transfer-syntax=* for the stored encoding), or type= one of "
            + ", ".join(sorted(MEDIA_SYNTAXES))
            + (", or one of these single part for one frame" if single_allowed else "")
        )
    return found
