"""QIDO-RS / C-FIND query parameters turned into pure condition objects.

Matching types follow PS3.4 C.2.2.2: single value, list of UIDs, universal,
wildcard (* and ?), range (dates and times), plus fuzzy person-name matching
(PS3.18 8.3.4.1). The storage layer turns conditions into SQL; nothing here
knows about a database, so the rules are tested without one.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dicomweb_server.dicom.attributes import Level, keyword_of, parse_attribute, tag_hex, vr_of
from dicomweb_server.dicom.ingest import normalize_name, normalize_time
from dicomweb_server.dicom.uids import check_uid
from dicomweb_server.errors import InvalidRequest

MODALITIES_IN_STUDY = 0x00080061
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018

# Attributes the index can match on, with the level of the entity that holds them.
MATCHABLE: dict[int, Level] = {
    0x00100010: Level.PATIENT,  # PatientName
    0x00100020: Level.PATIENT,  # PatientID
    0x00100021: Level.PATIENT,  # IssuerOfPatientID
    0x00100030: Level.PATIENT,  # PatientBirthDate
    0x00100040: Level.PATIENT,  # PatientSex
    STUDY_INSTANCE_UID: Level.STUDY,
    0x00080020: Level.STUDY,  # StudyDate
    0x00080030: Level.STUDY,  # StudyTime
    0x00080050: Level.STUDY,  # AccessionNumber
    0x00200010: Level.STUDY,  # StudyID
    0x00081030: Level.STUDY,  # StudyDescription
    0x00080090: Level.STUDY,  # ReferringPhysicianName
    MODALITIES_IN_STUDY: Level.STUDY,
    SERIES_INSTANCE_UID: Level.SERIES,
    0x00080060: Level.SERIES,  # Modality
    0x00200011: Level.SERIES,  # SeriesNumber
    0x0008103E: Level.SERIES,  # SeriesDescription
    0x00180015: Level.SERIES,  # BodyPartExamined
    0x00080021: Level.SERIES,  # SeriesDate
    0x00400244: Level.SERIES,  # PerformedProcedureStepStartDate
    0x00400245: Level.SERIES,  # PerformedProcedureStepStartTime
    SOP_INSTANCE_UID: Level.INSTANCE,
    0x00080016: Level.INSTANCE,  # SOPClassUID
    0x00200013: Level.INSTANCE,  # InstanceNumber
}

# Attributes computed by the server; they may be requested but are never stored values.
COMPUTED = frozenset(
    {
        MODALITIES_IN_STUDY,
        0x00201206,  # NumberOfStudyRelatedSeries
        0x00201208,  # NumberOfStudyRelatedInstances
        0x00201209,  # NumberOfSeriesRelatedInstances
        0x00080056,  # InstanceAvailability
        0x00081190,  # RetrieveURL
        0x00080062,  # SOPClassesInStudy
    }
)

_DATE_RE = re.compile(r"^\d{8}$")
_TIME_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_CONTROL_PARAMS = frozenset({"limit", "offset", "fuzzymatching", "includefield"})


class Kind(enum.Enum):
    SINGLE = "single"
    LIST = "list"
    WILDCARD = "wildcard"
    RANGE = "range"
    FUZZY = "fuzzy"
    # A date range and a time range matched as one date-time range (PS3.4 C.2.2.2.5.4).
    DATETIME_RANGE = "datetime-range"


@dataclass(frozen=True)
class Condition:
    """One matching key: ``values`` holds the value(s); RANGE has (low, high), '' = open."""

    tag: int
    kind: Kind
    values: tuple[str, ...]
    # For DATETIME_RANGE: the time attribute paired with the date in ``tag``;
    # values are then (low date, low time, high date, high time).
    partner: int | None = None

    @property
    def keyword(self) -> str:
        return keyword_of(self.tag)


@dataclass
class QueryRequest:
    level: Level
    conditions: list[Condition] = field(default_factory=list)
    include_all: bool = False
    includefields: set[int] = field(default_factory=set)
    fuzzy: bool = False
    limit: int = 100
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def _split_values(raw: str) -> list[str]:
    """UID lists may be separated by ',' (PS3.18 8.3.4.1) or '\\' (the DICOM form OHIF sends)."""
    return [v for v in re.split(r"[,\\]", raw) if v != ""]


def _check_date(value: str, name: str) -> str:
    if not _DATE_RE.match(value):
        raise InvalidRequest(f"{name}: {value!r} is not a date of the form YYYYMMDD")
    month, day = int(value[4:6]), int(value[6:8])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise InvalidRequest(f"{name}: {value!r} is not a valid date")
    return value


def _check_time(value: str, name: str) -> str:
    value = value.replace(":", "")
    if not _TIME_RE.match(value) or int(value[0:2]) > 23:
        raise InvalidRequest(f"{name}: {value!r} is not a time of the form HHMMSS.FFFFFF")
    normalized = normalize_time(value)
    assert normalized is not None
    return normalized


def _range(tag: int, raw: str, vr: str) -> Condition:
    name = keyword_of(tag)
    low, _, high = raw.partition("-")
    low, high = low.strip(), high.strip()
    if not low and not high:
        raise InvalidRequest(f"{name}: a range needs at least one bound")
    check = _check_date if vr == "DA" else _check_time
    low_n = check(low, name) if low else ""
    high_n = check(high, name) if high else ""
    if vr == "TM" and high_n:
        # A bound like 1030 means up to the end of that minute (PS3.4 C.2.2.2.5).
        digits = len(high.replace(":", "").partition(".")[0])
        if digits < 6 and "." not in high:
            high_n = (high.replace(":", "") + "595959")[:6] + ".999999"
    if low_n and high_n and low_n > high_n:
        raise InvalidRequest(f"{name}: range start {low!r} is after its end {high!r}")
    return Condition(tag, Kind.RANGE, (low_n, high_n))


def parse_condition(tag: int, raw: str, fuzzy: bool) -> Condition | None:
    """Turn one attribute=value pair into a Condition; None means universal matching."""
    if raw == "" or raw == "*":
        return None
    vr = vr_of(tag)
    name = keyword_of(tag)
    if vr == "UI":
        uids = [check_uid(v.strip(), name) for v in _split_values(raw)]
        return Condition(tag, Kind.LIST if len(uids) > 1 else Kind.SINGLE, tuple(uids))
    if vr in ("DA", "TM"):
        if "-" in raw:
            return _range(tag, raw, vr)
        check = _check_date if vr == "DA" else _check_time
        value = check(raw.strip(), name)
        if vr == "TM":
            # A time given to the minute matches the whole minute (PS3.4 C.2.2.2.5).
            digits = len(raw.strip().replace(":", "").partition(".")[0])
            if digits < 6 and "." not in raw:
                stem = raw.strip().replace(":", "")
                return Condition(tag, Kind.RANGE, (value, (stem + "595959")[:6] + ".999999"))
        return Condition(tag, Kind.SINGLE, (value,))
    if vr == "IS":
        try:
            return Condition(tag, Kind.SINGLE, (str(int(raw.strip())),))
        except ValueError:
            raise InvalidRequest(f"{name}: {raw!r} is not an integer") from None
    if vr == "PN":
        # Names always match case- and accent-insensitively; with fuzzymatching a plain
        # value matches any name one of whose words starts with each query word.
        if "*" in raw or "?" in raw:
            return Condition(tag, Kind.WILDCARD, (raw,))
        if fuzzy:
            words = normalize_name(raw).split()
            return Condition(tag, Kind.FUZZY, tuple(words)) if words else None
        return Condition(tag, Kind.SINGLE, (raw,))
    if tag in (MODALITIES_IN_STUDY, 0x00080060) and ("\\" in raw or "," in raw):
        return Condition(tag, Kind.LIST, tuple(v.strip() for v in _split_values(raw)))
    if "*" in raw or "?" in raw:
        return Condition(tag, Kind.WILDCARD, (raw,))
    return Condition(tag, Kind.SINGLE, (raw,))


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise InvalidRequest(f"{name} must be true or false, not {raw!r}")


def _parse_count(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a non-negative integer, not {raw!r}") from None
    if value < 0:
        raise InvalidRequest(f"{name} must be a non-negative integer, not {raw!r}")
    return value


def parse_query(
    level: Level,
    params: Sequence[tuple[str, str]],
    *,
    scope: Iterable[Condition] = (),
    default_limit: int = 100,
    max_limit: int = 1000,
) -> QueryRequest:
    """Parse QIDO-RS query parameters (PS3.18 8.3.4) for a search at ``level``.

    Raises InvalidRequest for unknown attributes, malformed values and bad paging
    parameters. Attributes that exist but are not indexed are ignored with a
    warning, as PS3.18 8.3.4.1 asks of an origin server.
    """
    query = QueryRequest(level=level, limit=default_limit)
    fuzzy_values = [v for n, v in params if n.lower() == "fuzzymatching"]
    if fuzzy_values:
        query.fuzzy = _parse_bool("fuzzymatching", fuzzy_values[-1])
    query.conditions.extend(scope)
    seen: set[int] = {c.tag for c in query.conditions}
    for name, raw in params:
        lowered = name.lower()
        if lowered == "limit":
            query.limit = _parse_count("limit", raw)
            if query.limit > max_limit:
                query.warnings.append(
                    f"The limit {query.limit} exceeds the maximum of {max_limit}; "
                    f"at most {max_limit} results are returned"
                )
                query.limit = max_limit
            continue
        if lowered == "offset":
            query.offset = _parse_count("offset", raw)
            continue
        if lowered == "fuzzymatching":
            continue
        if lowered == "includefield":
            for item in _split_values(raw):
                if item.strip().lower() == "all":
                    query.include_all = True
                else:
                    query.includefields.add(parse_attribute(item.strip().split(".")[0]))
            continue
        if "." in name:
            top = parse_attribute(name.split(".")[0])
            query.includefields.add(top)
            query.warnings.append(f"The {name} query parameter is not supported")
            continue
        tag = parse_attribute(name)
        query.includefields.add(tag)
        attr_level = MATCHABLE.get(tag)
        if attr_level is None:
            query.warnings.append(f"The {keyword_of(tag)} query parameter is not supported")
            continue
        if attr_level > level:
            raise InvalidRequest(
                f"{keyword_of(tag)} ({tag_hex(tag)}) is a {attr_level.name.lower()}-level "
                f"attribute and cannot be matched in a {level.name.lower()} search"
            )
        if tag in seen:
            raise InvalidRequest(f"{keyword_of(tag)} is given more than once")
        seen.add(tag)
        condition = parse_condition(tag, raw, query.fuzzy)
        if condition is not None:
            query.conditions.append(condition)
    query.conditions = _combine_date_time(query.conditions)
    return query


_DATE_TIME_PAIRS = ((0x00080020, 0x00080030), (0x00400244, 0x00400245))


def _combine_date_time(conditions: list[Condition]) -> list[Condition]:
    """QIDO-RS performs combined date-time matching (PS3.18 8.3.4.1.1): a date range with a
    time range means one span from (start date, start time) to (end date, end time)."""
    by_tag = {c.tag: c for c in conditions}
    for date_tag, time_tag in _DATE_TIME_PAIRS:
        date, time = by_tag.get(date_tag), by_tag.get(time_tag)
        if date is None or time is None or Kind.RANGE not in (date.kind, time.kind):
            continue
        if date.kind not in (Kind.RANGE, Kind.SINGLE) or time.kind not in (Kind.RANGE, Kind.SINGLE):
            continue
        d_low, d_high = date.values if date.kind is Kind.RANGE else (date.values[0],) * 2
        t_low, t_high = time.values if time.kind is Kind.RANGE else (time.values[0],) * 2
        combined = Condition(
            date_tag,
            Kind.DATETIME_RANGE,
            (d_low, t_low if d_low else "", d_high, t_high if d_high else ""),
            time_tag,
        )
        conditions = [c for c in conditions if c.tag not in (date_tag, time_tag)] + [combined]
    return conditions
