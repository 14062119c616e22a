"""De-identification by the Basic Application Level Confidentiality Profile (PS3.15 E.2).

WADO-URI ``anonymize=yes`` asks for the object with all Individually Identifiable
Information removed "as defined in PS3.15 Annex E Basic Profile with Clean Pixel Data
Option" (PS3.18 9.4, Table 9.4.1-1). This module is that profile, pure: a pydicom
Dataset in, the same Dataset cleaned in place.

The table (``dicom/confidentiality_table.py``) is PS3.15 Table E.1-1 (2026d),
"Basic Profile" column, as rows of (pydicom keyword, action code), and by tag the rows
pydicom's dictionary has no keyword for. Action codes
(Table E.1-1a): D dummy, Z zero length, X remove, K keep (sequences cleaned), U
replace UID consistently. The compound codes say "the first unless a later one is
needed for IOD conformance"; without each IOD's attribute types at hand we take the
one that is always conformant (``_RESOLVED``): still no identifying value survives.
Besides the table: every private attribute is removed (no Retain Safe Private
Option), overlay comments and data (60xx,4000 / 60xx,3000) and the retired curve
groups (50xx) are removed, and sequences not listed are kept with their items cleaned
by the same table, so Referenced SOP Instance UIDs inside any item are replaced.

UIDs (U) are replaced by ``uid_for``, which the caller derives from a secret (see
``keyed_uid``): the same original UID always becomes the same new UID, so the
instances of a study fetched one by one still form a coherent study, and references
between them still point at each other.

Out of scope: the options other than Basic (Retain Longitudinal Temporal Information,
Retain Patient Characteristics, Retain Device/Institution Identity, Retain UIDs, Clean
Descriptors, Clean Structured Content, Clean Graphics, Clean Recognizable Visual
Features), and any cleaning of pixel data. The Clean Pixel Data Option (PS3.15 E.3.1)
is met only by refusal: ``refusal`` names the objects whose pixels (or encapsulated
document) may carry identifying text, and the caller does not serve them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from pydicom.datadict import dictionary_has_tag, repeater_has_tag, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dicomweb_server.dicom.confidentiality_table import (
    BASIC_PROFILE_ROWS,
    BASIC_PROFILE_TAG_ROWS,
    BEYOND_TABLE_ROWS,
)
from dicomweb_server.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

UidFor = Callable[[str], str]

# "X unless Z/D/U* is needed for IOD conformance": the always-conformant choice.
_RESOLVED = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U*"}


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # a typo in the table must fail at import, not leak an attribute
        raise LookupError(f"unknown DICOM keyword in the de-identification table: {keyword}")
    return int(tag)


BASIC_PROFILE: dict[int, str] = {_tag(k): a for k, a in BASIC_PROFILE_ROWS}
# What is acted on: the table, its rows pydicom has no keyword for, and the few
# identifying attributes the table misses.
PROTECTED: dict[int, str] = {
    **BASIC_PROFILE,
    **{tag: a for tag, _, a in BASIC_PROFILE_TAG_ROWS},
    **{_tag(k): a for k, a in BEYOND_TABLE_ROWS},
}
__all__ = [
    "BASIC_PROFILE",
    "BASIC_PROFILE_ROWS",
    "PROTECTED",
    "deidentify",
    "keyed_uid",
    "refusal",
]

# Dummy values (action D) by VR: valid for the VR, obviously not real (PS3.15 E.1.1).
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY: dict[str, Any] = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "AT": 0,
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
    "OF": bytes(8),
    "OD": bytes(8),
    "OL": bytes(8),
    "OV": bytes(8),
}

DCM_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
DCM_CLEAN_PIXEL_DATA = ("113101", "Clean Pixel Data Option")
METHOD_TEXT = "PS3.15 E.1-1 Basic Profile (dicomweb-server)"

# SOP class families whose pixels often carry burned-in text, or are photographs:
# Secondary Capture (dose screens, scanned documents), ultrasound, visible light
# (PS3.15 E.3.1). A family is its root UID and every UID below it.
_TEXT_PRONE_ROOTS = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture and the multi-frame ones
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound (retired), Ultrasound, Enhanced US Volume
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame (retired and current)
    "1.2.840.10008.5.1.4.1.1.77.1",  # VL endoscopic, microscopic, photographic, WSI, ...
)


def _text_prone(sop_class: str) -> bool:
    return any(sop_class == r or sop_class.startswith(r + ".") for r in _TEXT_PRONE_ROOTS)


def keyed_uid(secret: bytes, uid: str) -> str:
    """The replacement for ``uid``: ``2.25.`` and 128 bits of HMAC-SHA256 under ``secret``.

    Deterministic, so repeated requests and the instances of one study agree; keyed, so
    nobody without the archive's secret can recompute or reverse the mapping. A UUID-
    derived UID (PS3.5 B.2) is at most 44 characters.
    """
    digest = hmac.new(secret, uid.encode("ascii", "replace"), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def refusal(ds: Dataset) -> str | None:
    """Why this object cannot be given out de-identified (None: it can).

    The archive cleans headers only. PS3.18 requires the Clean Pixel Data Option for
    ``anonymize`` (PS3.18 9.4) and lets the server refuse an object it cannot
    de-identify; PS3.15 E.3.1 keys pixel cleaning on Burned In Annotation (0028,0301).
    So: refuse when burned-in text or recognizable features are declared, when the
    object encapsulates a document, and when a text-prone SOP class does not say NO.
    """
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        return (
            "the object declares burned-in annotation (0028,0301 YES) and this archive "
            "does not clean pixel data (PS3.15 E.3.1)"
        )
    if str(ds.get("RecognizableVisualFeatures", "") or "").strip().upper() == "YES":
        return "the object declares recognizable visual features (0028,0302 YES)"
    if "EncapsulatedDocument" in ds:
        return "the encapsulated document's content cannot be de-identified"
    sop_class = str(ds.get("SOPClassUID", ""))
    if "PixelData" in ds and burned != "NO" and _text_prone(sop_class):
        return (
            f"SOP class {sop_class} often carries burned-in text and the object does not "
            "declare Burned In Annotation (0028,0301) NO"
        )
    return None


def _action(tag: BaseTag) -> str | None:
    action = PROTECTED.get(int(tag))
    if action is not None:
        return _RESOLVED.get(action, action)
    group = tag.group
    if 0x6000 <= group <= 0x601E and group % 2 == 0 and tag.element in (0x3000, 0x4000):
        return "X"  # Overlay Data, Overlay Comments
    if 0x5000 <= group <= 0x501E and group % 2 == 0:
        return "X"  # retired curve groups: Curve Data and the rest
    return None


def _known(tag: BaseTag) -> bool:
    return dictionary_has_tag(tag) or repeater_has_tag(int(tag))


def _dummy(vr: str) -> Any:
    # An ambiguous dictionary VR ("US or SS", "OB or OW"): either reading is valid.
    return _DUMMY.get(vr.split(" or ")[0], _DUMMY_TEXT)


def _replace_uids(value: Any, uid_for: UidFor) -> Any:
    if isinstance(value, MultiValue | list):
        return [uid_for(str(v)) if v else v for v in value]
    return uid_for(str(value)) if value else value


def _clean(ds: Dataset, uid_for: UidFor) -> None:
    for tag in list(ds.keys()):
        action = _action(tag)
        if action == "X" or tag.is_private or (action is None and not _known(tag)):
            # Unknown to pydicom's dictionary, so to what the table was checked against:
            # a newer attribute may identify (E.1.1 Note 1). Removed before its raw
            # value is read (which would warn that its VR is unknown).
            del ds[tag]
            continue
        elem = ds[tag]
        vr = str(elem.VR)
        if action == "Z":
            elem.value = Sequence() if vr == "SQ" else None
        elif action == "D":
            if vr == "SQ":
                elem.value = Sequence([Dataset()])
            elif vr == "UI":
                elem.value = uid_for(str(elem.value or tag))
            else:
                elem.value = _dummy(vr)
        elif action == "U":
            if vr == "UI":
                elem.value = _replace_uids(elem.value, uid_for)
            else:
                del ds[tag]  # a UID attribute in an unexpected VR: do not guess
        elif vr == "SQ":  # K, U* or not listed: keep the sequence, clean its items
            for item in elem.value or ():
                _clean(item, uid_for)


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def deidentify(ds: Dataset, uid_for: UidFor) -> None:
    """Apply the Basic Profile to ``ds`` in place and record that it was applied.

    Adds Patient Identity Removed YES, De-identification Method and its Code Sequence
    (DCM 113100; 113101 Clean Pixel Data Option only when the object itself declares
    no burned-in annotation), and Longitudinal Temporal Information Modified REMOVED,
    since no Retain Longitudinal option is applied (PS3.15 E.1.1, E.2). The file meta
    Media Storage SOP Instance UID follows the new SOP Instance UID.
    """
    clean_pixels = str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "NO"
    _clean(ds, uid_for)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD_TEXT
    codes = [_code(*DCM_BASIC_PROFILE)]
    if clean_pixels:
        codes.append(_code(*DCM_CLEAN_PIXEL_DATA))
    ds.DeidentificationMethodCodeSequence = Sequence(codes)
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    _replace_file_meta(ds)


def _replace_file_meta(ds: Dataset) -> None:
    """The File Meta Information and the 128-byte preamble are replaced with ones that
    describe this application (PS3.15 E.1.1 item 7): the originals may carry identity
    (a preamble with text, the sending station's AE titles, its implementation)."""
    ds.preamble = bytes(128)
    old = getattr(ds, "file_meta", None)
    if old is None:
        return
    meta = FileMetaDataset()
    for keyword in ("MediaStorageSOPClassUID", "TransferSyntaxUID"):
        if keyword in old:
            setattr(meta, keyword, getattr(old, keyword))
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
