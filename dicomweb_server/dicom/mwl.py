"""Modality Worklist (PS3.4 Annex K) over workitems: pure mapping and matching.

A workitem is a UPS dataset in DICOM JSON, written as the workitem contract says
(the Modality in ScheduledStationClassCodeSequence, the station's AE title in
ScheduledStationNameCodeSequence, the order in ReferencedRequestSequence). A modality
asks for the Modality Worklist Information Model attributes of Table K.6-1, so each
workitem is first turned into its worklist entry (``entry``), then matched against
the C-FIND identifier (``parse`` and ``matches``) and shaped into the response with the
requested keys only (``render``).

Derived values (documented in conformance/README.md):

- Scheduled Procedure Step ID (0040,0009): the workitem's own 00400009 when it has one,
  else ``step_id(uid)``, 16 decimal digits of the SHA-256 of the workitem UID: stable,
  so an MPPS naming it finds the workitem again.
- Study Instance UID (0020,000D) is Type 1 in a worklist response; a workitem without
  one gets ``2.25.<SHA-256 of the workitem UID as an integer, 128 bits>``, also stable.
- Scheduled Procedure Step Status (0040,0020): SCHEDULED for a SCHEDULED workitem,
  STARTED for one IN PROGRESS (PS3.3 C.4.10 defined terms).

An explicit ScheduledProcedureStepSequence (0040,0100) on a workitem wins over the
derived item, attribute by attribute.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicomweb_server.dicom.attributes import keyword_of, tag_hex, vr_of
from dicomweb_server.dicom.ingest import normalize_time
from dicomweb_server.dicom.matching import Condition, Kind, parse_condition
from dicomweb_server.errors import InvalidRequest

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"

# Workitem (UPS, PS3.4 Table CC.2.5-3) attributes read here.
_PROCEDURE_STEP_LABEL = "00741204"
_SPS_START_DATETIME = "00404005"
_SPS_PRIORITY = "00741200"
_STATION_CLASS = "00404026"
_STATION_NAME = "00404025"
_HUMAN_PERFORMERS = "00404034"
_HUMAN_PERFORMER_NAME = "00404037"
_WORKITEM_CODE = "00404018"
_REFERENCED_REQUEST = "0040A370"
_CODE_VALUE, _CODE_MEANING = "00080100", "00080104"

# Modality Worklist attributes (PS3.4 Table K.6-1).
SPS_SEQUENCE = 0x00400100
SPS_STATUS = 0x00400020
ACCESSION_NUMBER = 0x00080050
STUDY_INSTANCE_UID = 0x0020000D
PATIENT_ID = 0x00100020
SPS_ID = "00400009"
SPECIFIC_CHARACTER_SET = 0x00080005
# Neither matched nor returned: the character set is answered on its own, and the
# worklist model has no Query/Retrieve Level.
_NOT_KEYS = frozenset({SPECIFIC_CHARACTER_SET, 0x00080052})

# Workitem states (the contract's values) and the worklist's step status for each.
SCHEDULED, IN_PROGRESS = "SCHEDULED", "IN PROGRESS"
STEP_STATUS = {SCHEDULED: "SCHEDULED", IN_PROGRESS: "STARTED"}

_TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR", "UI", "DA", "TM", "DT"}


# -- workitem -> worklist entry ------------------------------------------------------


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _first_item(data: dict[str, Any], tag: str) -> dict[str, Any]:
    items = (data.get(tag) or {}).get("Value") or []
    return items[0] if items and isinstance(items[0], dict) else {}


def _value(data: dict[str, Any], tag: str) -> Any:
    values = (data.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def step_id(workitem_uid: str) -> str:
    """The derived Scheduled Procedure Step ID (SH, at most 16 characters)."""
    digest = hashlib.sha256(workitem_uid.encode()).digest()
    return str(int.from_bytes(digest[:8], "big") % 10**16).zfill(16)


def study_uid_for(workitem_uid: str) -> str:
    """A stable Study Instance UID for a workitem that names none (PS3.5 B.2, 2.25 form)."""
    digest = hashlib.sha256(b"study:" + workitem_uid.encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def step_id_of(uid: str, data: dict[str, Any]) -> str:
    """The Scheduled Procedure Step ID the worklist shows for a workitem."""
    explicit = _value(_first_item(data, tag_hex(SPS_SEQUENCE)), SPS_ID)
    return str(explicit or _value(data, SPS_ID) or step_id(uid))


def order_study_uid(data: dict[str, Any]) -> str | None:
    """The workitem's own Study Instance UID (order item, else top level), if any."""
    request = _first_item(data, _REFERENCED_REQUEST)
    found = _value(request, "0020000D") or _value(data, "0020000D")
    return str(found) if found else None


def study_uid_of(uid: str, data: dict[str, Any]) -> str:
    """The Study Instance UID the worklist shows for a workitem."""
    return order_study_uid(data) or study_uid_for(uid)


def _split_datetime(dt: str) -> tuple[str, str]:
    """DT 'YYYYMMDDHHMMSS.FFFFFF&ZZXX' -> (DA, TM), the UTC offset dropped."""
    text = dt.strip()
    for sign in ("+", "-"):
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    return text[:8], text[8:]


def scheduled_step(uid: str, state: str, data: dict[str, Any]) -> dict[str, Any]:
    """The Scheduled Procedure Step Sequence item (PS3.4 Table K.6-1) of a workitem."""
    item: dict[str, Any] = {}
    station_class = _first_item(data, _STATION_CLASS)
    station = _first_item(data, _STATION_NAME)
    if _value(station_class, _CODE_VALUE):
        item["00080060"] = _element("CS", _value(station_class, _CODE_VALUE))
    if _value(station, _CODE_VALUE):
        item["00400001"] = _element("AE", _value(station, _CODE_VALUE))
    if _value(station, _CODE_MEANING):
        item["00400010"] = _element("SH", str(_value(station, _CODE_MEANING))[:16])
    start = _value(data, _SPS_START_DATETIME)
    if start:
        date, time = _split_datetime(str(start))
        item["00400002"] = _element("DA", date)
        if time:
            item["00400003"] = _element("TM", time)
    if _value(data, _PROCEDURE_STEP_LABEL):
        item["00400007"] = _element("LO", _value(data, _PROCEDURE_STEP_LABEL))
    performer = _first_item(data, _HUMAN_PERFORMERS)
    if _value(performer, _HUMAN_PERFORMER_NAME):
        item["00400006"] = {"vr": "PN", "Value": [_value(performer, _HUMAN_PERFORMER_NAME)]}
    if (data.get(_WORKITEM_CODE) or {}).get("Value"):
        item["00400008"] = {"vr": "SQ", "Value": data[_WORKITEM_CODE]["Value"]}
    item[SPS_ID] = _element("SH", _value(data, SPS_ID) or step_id(uid))
    item[tag_hex(SPS_STATUS)] = _element("CS", STEP_STATUS.get(state, state))
    # An explicit item (a workitem made from a worklist entry) wins, attribute by attribute.
    item.update(_first_item(data, tag_hex(SPS_SEQUENCE)))
    return item


def entry(uid: str, state: str, data: dict[str, Any]) -> dict[str, Any]:
    """The worklist entry (DICOM JSON) of one workitem: its own attributes (patient,
    referring physician, ...) plus those Table K.6-1 takes from the order and the step."""
    out = {k: v for k, v in data.items() if k != tag_hex(SPS_SEQUENCE)}
    request = _first_item(data, _REFERENCED_REQUEST)
    for tag in ("00080050", "0020000D", "00401001", "00321060", "00321032", "00321064"):
        if request.get(tag, {}).get("Value"):
            out[tag] = request[tag]
    if not _value(out, "0020000D"):
        out["0020000D"] = _element("UI", study_uid_for(uid))
    priority = _value(data, _SPS_PRIORITY)
    if priority and "00401003" not in out:
        out["00401003"] = _element("SH", priority)  # HIGH/MEDIUM/LOW are defined terms too
    out[tag_hex(SPS_SEQUENCE)] = {"vr": "SQ", "Value": [scheduled_step(uid, state, data)]}
    return out


# -- the identifier: matching keys and return keys -----------------------------------


@dataclass
class Key:
    """One key of the identifier: a condition (None: universal) or, for a sequence,
    the keys of its single item (PS3.4 C.2.2.2.6)."""

    tag: int
    condition: Condition | None = None
    item: list[Key] | None = None  # set for SQ keys; [] = return the whole items


@dataclass
class Query:
    keys: list[Key] = field(default_factory=list)
    charset: list[str] = field(default_factory=list)

    def condition(self, tag: int, inside: int | None = None) -> Condition | None:
        keys = self.keys
        if inside is not None:
            keys = next((k.item or [] for k in keys if k.tag == inside), [])
        return next((k.condition for k in keys if k.tag == tag), None)


def _text(elem: DataElement) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        raise InvalidRequest(f"{tag_hex(int(elem.tag))}: binary values cannot be matched")
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _keys(ds: Dataset) -> list[Key]:
    keys = []
    for elem in ds:
        tag = int(elem.tag)
        if elem.tag.group == 0 or elem.tag.is_private or tag in _NOT_KEYS:
            continue
        if elem.VR == "SQ":
            items = list(elem.value or [])
            if len(items) > 1:
                raise InvalidRequest(f"{elem.keyword}: a sequence key has at most one item")
            keys.append(Key(tag, item=_keys(items[0]) if items else []))
            continue
        keys.append(Key(tag, condition=_condition(tag, _text(elem))))
    return keys


def _condition(tag: int, raw: str) -> Condition | None:
    """As QIDO parses it, except that any text key may carry several values, each of
    which may match (multiple value matching, PS3.4 C.2.2.2.8)."""
    if "\\" in raw and vr_of(tag) in ("AE", "CS", "LO", "SH"):
        values = tuple(v.strip() for v in raw.split("\\") if v.strip())
        if any("*" in v or "?" in v for v in values):
            raise InvalidRequest(f"{keyword_of(tag)}: wildcards are not allowed in a list")
        return Condition(tag, Kind.LIST, values) if values else None
    return parse_condition(tag, raw, False)


def parse(identifier: Dataset | None) -> Query:
    """Matching and return keys of a worklist C-FIND identifier (PS3.4 K.6.1.2, C.2.2).

    Raises InvalidRequest (-> A900) for values that are not of their VR or a sequence
    key with several items. A Query/Retrieve Level, which the worklist model does not
    have, is ignored rather than refused: some modalities send one.
    """
    if identifier is None:
        raise InvalidRequest("the request has no identifier")
    charset = identifier.get("SpecificCharacterSet") or []
    query = Query(_keys(identifier), [charset] if isinstance(charset, str) else list(charset))
    return query


def states(query: Query) -> tuple[str, ...]:
    """Workitem states to answer from: SCHEDULED, and IN PROGRESS only when the
    identifier asks for STARTED steps (a modality looks for what is still to do)."""
    cond = query.condition(SPS_STATUS, inside=SPS_SEQUENCE)
    if cond is None or cond.kind not in (Kind.SINGLE, Kind.LIST):
        return (SCHEDULED,)
    wanted = {v.upper() for v in cond.values}
    return tuple(s for s, step in STEP_STATUS.items() if step in wanted)


def exact(query: Query, tag: int) -> str | None:
    """The single value of a top-level key, for the index prefilter (no wildcards)."""
    cond = query.condition(tag)
    if cond is not None and cond.kind == Kind.SINGLE:
        return cond.values[0]
    return None


def _fold(text: str) -> str:
    """Names match case- and accent-insensitively, as in QIDO (PS3.4 C.2.2.2.1.1)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def _strings(elem: dict[str, Any] | None) -> list[str]:
    out = []
    for v in (elem or {}).get("Value") or []:
        if isinstance(v, dict):  # PN: the alphabetic group is the one matched
            v = v.get("Alphabetic", "")
        out.append(str(v))
    return [v for v in out if v != ""]


def _glob(pattern: str) -> str:
    """Only * and ? are wildcards in DICOM (C.2.2.2.4); '[' is a plain character."""
    return pattern.replace("[", "[[]")


def _one(cond: Condition, vr: str, value: str) -> bool:
    if vr == "TM":
        value = normalize_time(value) or ""
    if cond.kind is Kind.RANGE:
        low, high = cond.values
        value = value[:8] if vr == "DA" else value
        return (not low or value >= low) and (not high or value <= high)
    if cond.kind is Kind.WILDCARD:
        pattern = cond.values[0]
        if vr == "PN":
            return fnmatchcase(_fold(value), _glob(_fold(pattern)))
        return fnmatchcase(value, _glob(pattern))
    if vr == "PN":
        return any(_fold(value) == _fold(v) for v in cond.values)
    return value in cond.values


def _satisfied(cond: Condition, elem: dict[str, Any] | None, match_empty: bool) -> bool:
    values = _strings(elem)
    if not values:
        return match_empty  # PS3.4 C.2.2.1.2 when so configured
    vr = (elem or {}).get("vr") or vr_of(cond.tag)
    return any(_one(cond, vr, v) for v in values)


def _item_matches(keys: Iterable[Key], item: dict[str, Any], match_empty: bool) -> bool:
    for key in keys:
        elem = item.get(tag_hex(key.tag))
        if key.item is not None:
            sub = [k for k in key.item if k.condition is not None or k.item]
            if not sub:
                continue  # universal sequence matching
            items = (elem or {}).get("Value") or []
            if not any(_item_matches(sub, i, match_empty) for i in items):
                return False
        elif key.condition is not None and not _satisfied(key.condition, elem, match_empty):
            return False
    return True


def matches(query: Query, entry_json: dict[str, Any], match_empty: bool = False) -> bool:
    """Every matching key holds for the entry; a sequence key holds when one of the
    entry's items matches all of its item's keys (PS3.4 C.2.2.2.6)."""
    return _item_matches(query.keys, entry_json, match_empty)


# -- the response: requested keys only ----------------------------------------------


def _empty(tag: int) -> DataElement:
    vr = vr_of(tag).split(" or ")[0]
    return DataElement(tag, vr, [] if vr == "SQ" else None)


def _shape(keys: list[Key], full: Dataset) -> Dataset:
    out = Dataset()
    for key in keys:
        if key.tag not in full:
            out[key.tag] = _empty(key.tag)
            continue
        elem = full[key.tag]
        if key.item is not None and key.item and elem.VR == "SQ":
            out[key.tag] = DataElement(
                key.tag, "SQ", Sequence([_shape(key.item, i) for i in elem.value])
            )
        else:
            out[key.tag] = elem  # a zero-item sequence key returns whole items
    return out


def render(query: Query, entry_json: dict[str, Any]) -> Dataset:
    """The C-FIND response identifier: exactly the requested keys (PS3.4 C.2.2.1.3),
    empty when the entry has no value; sequence items with their requested keys."""
    wanted = {tag_hex(k.tag) for k in query.keys}
    full = Dataset.from_json({k: v for k, v in entry_json.items() if k in wanted})
    return _shape(query.keys, full)


def text_values(ds: Dataset) -> list[str]:
    """Every text value of a dataset, items included (to choose the response charset)."""
    out: list[str] = []
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                out += text_values(item)
        elif elem.VR in _TEXT_VRS and elem.value not in (None, ""):
            out.append(str(elem.value))
    return out
