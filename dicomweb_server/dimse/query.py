"""C-FIND / C-MOVE / C-GET identifiers through the one query engine (the QIDO one).

An identifier (PS3.4 C.4.1.1.3) becomes the same ``(name, value)`` parameters a QIDO-RS
URL carries, parsed by ``dicom.matching.parse_query``, so both protocols share the
PS3.4 C.2.2.2 matching rules: single value, list of UIDs (backslash-separated), universal
(empty), wildcard (* ?), range (DA/TM ``a-b``). Every element of the identifier is a
return key (C.2.2.1.3): a match returns exactly those keys, empty when the entity has
no value, plus Query/Retrieve Level and Specific Character Set (C.4.1.2.3).

Hierarchical queries are relational-free: a key below the query level is refused with
A900 (C.4.1.2.1); keys at or above it are matched, as in QIDO.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomweb_server.dicom.attributes import Level, tag_hex
from dicomweb_server.dicom.matching import QueryRequest, parse_query
from dicomweb_server.errors import InvalidRequest
from dicomweb_server.services.query import QueryService

PATIENT_ROOT = {
    "1.2.840.10008.5.1.4.1.2.1.1",
    "1.2.840.10008.5.1.4.1.2.1.2",
    "1.2.840.10008.5.1.4.1.2.1.3",
}
STUDY_ROOT = {
    "1.2.840.10008.5.1.4.1.2.2.1",
    "1.2.840.10008.5.1.4.1.2.2.2",
    "1.2.840.10008.5.1.4.1.2.2.3",
}
LEVELS = {
    "PATIENT": Level.PATIENT,
    "STUDY": Level.STUDY,
    "SERIES": Level.SERIES,
    "IMAGE": Level.INSTANCE,
}
QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
# Patient-level computed counts (PS3.4 C.3.4, Table C.6-1).
PATIENT_STUDIES, PATIENT_SERIES, PATIENT_INSTANCES = 0x00201200, 0x00201202, 0x00201204
_STUDY_SERIES, _STUDY_INSTANCES = 0x00201206, 0x00201208
PATIENT_ID, _ISSUER = 0x00100020, 0x00100021
_TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC", "CS", "AE"}
PAGE = 500


@dataclass
class Identifier:
    level: Level
    params: list[tuple[str, str]] = field(default_factory=list)
    requested: list[int] = field(default_factory=list)
    charset: list[str] = field(default_factory=list)


def _text(elem: DataElement) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        raise InvalidRequest(f"{tag_hex(elem.tag)}: binary values cannot be matched")
    return str(value).strip()


def parse_identifier(identifier: Dataset | None, model: str) -> Identifier:
    """Read the level and keys of a Query/Retrieve identifier; InvalidRequest -> A900."""
    if identifier is None:
        raise InvalidRequest("the request has no identifier")
    level_name = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level_name not in LEVELS:
        raise InvalidRequest(
            f"Query/Retrieve Level {level_name!r} is not PATIENT/STUDY/SERIES/IMAGE"
        )
    level = LEVELS[level_name]
    if level == Level.PATIENT and model in STUDY_ROOT:
        raise InvalidRequest("the Study Root model has no PATIENT level (PS3.4 C.6.2)")
    charset = identifier.get("SpecificCharacterSet") or []
    out = Identifier(level, charset=[charset] if isinstance(charset, str) else list(charset))
    for elem in identifier:
        tag = int(elem.tag)
        if tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET) or elem.tag.group == 0:
            continue
        if elem.tag.is_private:
            continue
        out.requested.append(tag)
        if elem.VR == "SQ":
            continue  # sequence matching is not indexed: returned, not matched
        value = _text(elem)
        if value:
            out.params.append((tag_hex(tag), value))
    return out


def _query(
    ident: Identifier, level: Level, match_empty: bool, extra: tuple[int, ...] = ()
) -> QueryRequest:
    params = list(ident.params)
    params += [("includefield", tag_hex(t)) for t in (*ident.requested, *extra)]
    query = parse_query(level, params, default_limit=PAGE, max_limit=PAGE)
    query.match_empty = match_empty
    return query


def _pages(service: QueryService, query: QueryRequest, cap: int) -> Iterator[dict[str, Any]]:
    """Every match, a page at a time (never more than ``cap``)."""
    seen = 0
    while seen < cap:
        page = service.search(query, "").results
        yield from page
        seen += len(page)
        if len(page) < query.limit:
            return
        query.offset += len(page)


def search(
    service: QueryService, ident: Identifier, match_empty: bool, cap: int = 1_000_000
) -> Iterator[dict[str, Any]]:
    """DICOM JSON of each match at the identifier's level; PATIENT groups studies."""
    if ident.level != Level.PATIENT:
        yield from _pages(service, _query(ident, ident.level, match_empty), cap)
        return
    query = _query(ident, Level.STUDY, match_empty, (_STUDY_SERIES, _STUDY_INSTANCES))
    patients: dict[tuple[str, str], dict[str, Any]] = {}
    for study in _pages(service, query, cap):
        key = (first(study, PATIENT_ID), first(study, _ISSUER))
        entry = patients.setdefault(key, {**study, "_studies": 0, "_series": 0, "_instances": 0})
        entry["_studies"] += 1
        entry["_series"] += int(first(study, _STUDY_SERIES) or 0)
        entry["_instances"] += int(first(study, _STUDY_INSTANCES) or 0)
    for entry in patients.values():
        counts = {
            PATIENT_STUDIES: entry.pop("_studies"),
            PATIENT_SERIES: entry.pop("_series"),
            PATIENT_INSTANCES: entry.pop("_instances"),
        }
        for tag, count in counts.items():
            entry[tag_hex(tag)] = {"vr": "IS", "Value": [count]}
        yield entry


def first(item: dict[str, Any], tag: int) -> str:
    values = item.get(tag_hex(tag), {}).get("Value") or [""]
    return str(values[0])


def render(item: dict[str, Any], ident: Identifier, our_aet: str) -> Dataset:
    """The C-FIND response identifier: the requested keys only (PS3.4 C.2.2.1.3)."""
    full = Dataset.from_json({k: v for k, v in item.items() if k in _wanted_hex(ident)})
    out = Dataset()
    out.QueryRetrieveLevel = next(k for k, v in LEVELS.items() if v == ident.level)
    for tag in ident.requested:
        if tag in full:
            out[tag] = full[tag]
        elif tag == RETRIEVE_AE_TITLE:
            out.RetrieveAETitle = our_aet
        else:
            out[tag] = DataElement(tag, _vr(tag), None)
    charset = _charset(out, ident.charset)
    if charset:
        out.SpecificCharacterSet = charset
    return out


def _wanted_hex(ident: Identifier) -> set[str]:
    return {tag_hex(t) for t in ident.requested}


def _vr(tag: int) -> str:
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _charset(ds: Dataset, asked: list[str]) -> str | list[str] | None:
    """PS3.4 C.4.1.1.3.1: answer in the requester's character set when the values fit,
    else in UTF-8 (ISO_IR 192) rather than lose characters."""
    texts = [str(e.value) for e in ds if e.VR in _TEXT_VRS and e.value not in (None, "")]
    if all(t.isascii() for t in texts):
        return asked[0] if len(asked) == 1 else (asked or None)
    if asked == ["ISO_IR 100"]:
        try:
            for t in texts:
                t.encode("latin-1")
            return "ISO_IR 100"
        except UnicodeEncodeError:
            pass
    return "ISO_IR 192"
