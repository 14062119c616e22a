"""QIDO-RS / C-FIND query parameters turned into pure condition objects.

Matching types follow PS3.4 C.2.2.2: single value, list of UIDs, universal,
wildcard (* and ?), range (dates and times), combined date-time (C.2.2.2.5.4,
always performed for QIDO-RS per PS3.18 8.3.4.1.1), plus fuzzy person-name
matching (PS3.18 8.3.4.2). The storage layer turns conditions into SQL; nothing
here knows about a database, so the rules are tested without one.

Decisions where the standard leaves room (documented for the conformance statement):

- PN literal matching is case- and accent-insensitive (PS3.4 C.2.2.2.1.1 allows it);
  ``fuzzymatching=true`` adds word-prefix matching: each query word must start a word
  of the name, in any component or component group.
- DA and TM values match by meaning (PS3.4 C.2.2.2.1.3 note 1): TM "2230" is 22:30:00
  exactly, both as a single value and as a range bound.
- Query parameter names ``limit``, ``offset``, ``fuzzymatching`` and ``includefield``
  are also recognised in other letter cases; attribute keywords are case-sensitive.
- A UID list may be separated by ',' (PS3.18 8.3.4.1) or by '\\' (the DICOM VM
  delimiter, which OHIF sends).
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dicomweb_server.dicom.attributes import (
    SERIES_TAGS,
    Level,
    keyword_of,
    parse_attribute,
    parse_attribute_path,
    tag_hex,
    vr_of,
)
from dicomweb_server.dicom.ingest import normalize_name, normalize_time
from dicomweb_server.dicom.uids import check_uid
from dicomweb_server.errors import InvalidRequest

MODALITIES_IN_STUDY = 0x00080061
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018
NUMBER_OF_STUDY_RELATED_SERIES = 0x00201206
NUMBER_OF_STUDY_RELATED_INSTANCES = 0x00201208
NUMBER_OF_SERIES_RELATED_INSTANCES = 0x00201209
INSTANCE_AVAILABILITY = 0x00080056
RETRIEVE_URL = 0x00081190
SOP_CLASSES_IN_STUDY = 0x00080062

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

# Attributes computed by the server, with the highest level whose results carry them.
# They may be requested (includefield) but are never stored values. RetrieveURL and
# InstanceAvailability describe whichever entity the result is, so every level has them.
COMPUTED_LEVEL: dict[int, Level] = {
    MODALITIES_IN_STUDY: Level.STUDY,
    SOP_CLASSES_IN_STUDY: Level.STUDY,
    NUMBER_OF_STUDY_RELATED_SERIES: Level.STUDY,
    NUMBER_OF_STUDY_RELATED_INSTANCES: Level.STUDY,
    NUMBER_OF_SERIES_RELATED_INSTANCES: Level.SERIES,
    INSTANCE_AVAILABILITY: Level.STUDY,
    RETRIEVE_URL: Level.STUDY,
}
COMPUTED = frozenset(COMPUTED_LEVEL)
STUDY_COMPUTED = frozenset(
    {MODALITIES_IN_STUDY, NUMBER_OF_STUDY_RELATED_SERIES, NUMBER_OF_STUDY_RELATED_INSTANCES}
)
SERIES_COMPUTED = frozenset({NUMBER_OF_SERIES_RELATED_INSTANCES})

# Transaction-wide query parameters handled by the web adapter (PS3.18 8.3.3).
TRANSACTION_PARAMS = frozenset({"accept", "charset"})

_DATE_RE = re.compile(r"^[0-9]{8}$")
_TIME_RE = re.compile(r"^([0-9]{2})(([0-9]{2})(([0-9]{2})(\.[0-9]{1,6})?)?)?$")
_COUNT_RE = re.compile(r"^[0-9]+$")
# Bigger offsets cannot match anything, but would overflow a 64-bit SQL integer.
_MAX_OFFSET = 2**62
_IS_MIN, _IS_MAX = -(2**31), 2**31 - 1  # PS3.5 6.2: IS is a 32-bit signed value
_CONTROL_PARAMS = frozenset({"limit", "offset", "fuzzymatching", "includefield"})
_DATE_TIME_PAIRS = ((0x00080020, 0x00080030), (0x00400244, 0x00400245))


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
    """One matching key: ``values`` holds the value(s); RANGE has (low, high), '' = open.

    PN conditions keep the query text; the storage layer folds it the same way as the
    stored names. FUZZY holds the folded words, each of which must start a name word.
    """

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
    # Apply PS3.4 C.2.2.1.2 (stored empty values match every key); see storage/sql/query.
    match_empty: bool = False
    # The entity named in the resource path (PS3.18 Table 10.6.1-1): None for the
    # "All Studies/Series/Instances" resources, STUDY for /studies/{study}/...,
    # SERIES for /studies/{study}/series/{series}/instances. It decides which
    # higher-level attributes are returned (PS3.18 10.6.3.3.2, 10.6.3.3.3).
    scope: Level | None = None


def _split_values(raw: str) -> list[str]:
    """UID lists may be separated by ',' (PS3.18 8.3.4.1) or '\\' (the DICOM form OHIF sends)."""
    return [v for v in re.split(r"[,\\]", raw) if v != ""]


def _check_date(value: str, name: str) -> str:
    """A DA value, YYYYMMDD, that is a real calendar date (PS3.5 6.2)."""
    if not _DATE_RE.match(value):
        raise InvalidRequest(f"{name}: {value!r} is not a date of the form YYYYMMDD")
    try:
        datetime.date(int(value[0:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        raise InvalidRequest(f"{name}: {value!r} is not a valid date") from None
    return value


def _check_time(value: str, name: str) -> str:
    """A TM value, HH[MM[SS[.F{1,6}]]], normalized to HHMMSS.FFFFFF (PS3.5 6.2).

    The normalized form is how the index stores times, so that string order is time
    order and a reduced-precision value means the same as its zero-padded form
    (PS3.4 C.2.2.2.1.3 note 1: TM "2230" matches "223000").
    """
    match = _TIME_RE.match(value.replace(":", ""))
    bad = match is None
    if match is not None:
        hours, minutes, seconds = match.group(1), match.group(3), match.group(5)
        bad = (
            int(hours) > 23
            or (minutes is not None and int(minutes) > 59)
            # 60 is allowed for a leap second (PS3.5 6.2 TM).
            or (seconds is not None and int(seconds) > 60)
        )
    if bad:
        raise InvalidRequest(f"{name}: {value!r} is not a time of the form HHMMSS.FFFFFF")
    normalized = normalize_time(value)
    assert normalized is not None
    return normalized


def _range(tag: int, raw: str, vr: str) -> Condition:
    """Range matching of DA and TM (PS3.4 C.2.2.2.5.1, C.2.2.2.5.2): 'a-b', '-b', 'a-'.

    Bounds are inclusive; a reversed range is an error (the standard defines the form
    only "where <date1> is less or equal to <date2>", and TM ranges crossing midnight
    are not supported).
    """
    name = keyword_of(tag)
    if raw.count("-") != 1:
        raise InvalidRequest(f"{name}: {raw!r} is not a range of the form a-b, -b or a-")
    low, _, high = raw.partition("-")
    low, high = low.strip(), high.strip()
    if not low and not high:
        raise InvalidRequest(f"{name}: a range needs at least one bound")
    check = _check_date if vr == "DA" else _check_time
    low_n = check(low, name) if low else ""
    high_n = check(high, name) if high else ""
    if low_n and high_n and low_n > high_n:
        raise InvalidRequest(f"{name}: range start {low!r} is after its end {high!r}")
    return Condition(tag, Kind.RANGE, (low_n, high_n))


def _has_wildcard(raw: str) -> bool:
    return "*" in raw or "?" in raw


def parse_condition(tag: int, raw: str, fuzzy: bool) -> Condition | None:
    """Turn one attribute=value pair into a Condition; None means universal matching.

    PS3.4 C.2.2.2: a zero-length value, or '*' alone (C.2.2.2.4 note 1), is universal.
    """
    if raw == "" or raw == "*":
        return None
    vr = vr_of(tag)
    name = keyword_of(tag)
    if vr == "UI":
        # List of UID matching (C.2.2.2.2); UIDs have no wildcards, so each is checked.
        uids = [check_uid(v.strip(), name) for v in _split_values(raw)]
        if not uids:
            return None
        return Condition(tag, Kind.LIST if len(uids) > 1 else Kind.SINGLE, tuple(uids))
    if vr in ("DA", "TM"):
        if "-" in raw:
            return _range(tag, raw, vr)
        check = _check_date if vr == "DA" else _check_time
        return Condition(tag, Kind.SINGLE, (check(raw.strip(), name),))
    if vr == "IS":
        text = raw.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,12}", text):
            raise InvalidRequest(f"{name}: {raw!r} is not an integer string (IS)")
        number = int(text)
        if not _IS_MIN <= number <= _IS_MAX:
            raise InvalidRequest(f"{name}: {raw!r} is outside the range of IS")
        return Condition(tag, Kind.SINGLE, (str(number),))
    if vr == "PN":
        # Names always match case- and accent-insensitively (C.2.2.2.1.1); with
        # fuzzymatching a plain value matches any name one of whose words starts
        # with each query word.
        if _has_wildcard(raw):
            return Condition(tag, Kind.WILDCARD, (raw,))
        if fuzzy:
            words = normalize_name(raw).split()
            return Condition(tag, Kind.FUZZY, tuple(words)) if words else None
        if not normalize_name(raw):
            return None  # only separators: no name to match
        return Condition(tag, Kind.SINGLE, (raw,))
    if tag in (MODALITIES_IN_STUDY, 0x00080060) and ("\\" in raw or "," in raw):
        # Several values for a multi-valued key: any may match (C.2.2.3).
        values = tuple(v.strip() for v in _split_values(raw) if v.strip())
        if any(_has_wildcard(v) for v in values):
            raise InvalidRequest(f"{name}: wildcards are not allowed in a list of values")
        return Condition(tag, Kind.LIST, values) if values else None
    if _has_wildcard(raw):
        return Condition(tag, Kind.WILDCARD, (raw,))
    return Condition(tag, Kind.SINGLE, (raw,))


def parse_bool(name: str, raw: str) -> bool:
    """PS3.18 Table 8.3.4-1: fuzzymatching is 'true' or 'false'."""
    lowered = raw.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise InvalidRequest(f"{name} must be true or false, not {raw!r}")


def _parse_count(name: str, raw: str) -> int:
    """limit and offset are unsigned integers (PS3.18 8.3.4.4)."""
    if not _COUNT_RE.match(raw):
        raise InvalidRequest(f"{name} must be a non-negative integer, not {raw!r}")
    return int(raw)


def parse_limit(raw: str, max_limit: int | None, warnings: list[str]) -> int:
    """``limit``, cut to ``max_limit`` with the warning the response carries."""
    limit = _parse_count("limit", raw)
    if max_limit is not None and limit > max_limit:
        warnings.append(
            f"The limit {limit} exceeds the maximum of {max_limit}; "
            f"at most {max_limit} results are returned"
        )
        return max_limit
    return limit


def parse_offset(raw: str) -> int:
    return min(_parse_count("offset", raw), _MAX_OFFSET)


def parse_includefield(raw: str) -> tuple[bool, list[int]]:
    """PS3.18 8.3.4.3: a comma-separated list, repeatable, or 'all'; (all, top tags)."""
    everything, tags = False, []
    for item in _split_values(raw):
        item = item.strip()
        if item == "all":
            everything = True
        elif item:
            tags.append(parse_attribute_path(item)[0])
    return everything, tags


def _scope_level(scope: Sequence[Condition]) -> Level | None:
    tags = {c.tag for c in scope}
    if SERIES_INSTANCE_UID in tags:
        return Level.SERIES
    if STUDY_INSTANCE_UID in tags:
        return Level.STUDY
    return None


def _attribute_level(tag: int) -> Level | None:
    """The level of an attribute when it is known for sure, else None."""
    if tag in MATCHABLE:
        return MATCHABLE[tag]
    if tag in COMPUTED_LEVEL:
        return COMPUTED_LEVEL[tag]
    if tag in SERIES_TAGS:
        return Level.SERIES
    return None


def parse_query(
    level: Level,
    params: Sequence[tuple[str, str]],
    *,
    scope: Iterable[Condition] = (),
    default_limit: int = 100,
    max_limit: int = 1000,
) -> QueryRequest:
    """Parse QIDO-RS query parameters (PS3.18 8.3.4) for a search at ``level``.

    Raises InvalidRequest (400) for unknown attribute names, malformed values, matching
    an attribute of a lower level than the resource's (PS3.18 10.6.1.2.1), and bad
    paging parameters. Attributes that exist but are not indexed are ignored with a
    warning, as PS3.18 8.3 allows for unsupported parameters; they are still returned
    when present (PS3.4 C.2.2.1.3, existence without matching).
    """
    scope = list(scope)
    query = QueryRequest(level=level, limit=default_limit, scope=_scope_level(scope))
    for name, raw in params:
        if "\x00" in name or "\x00" in raw:
            # PS3.18 Table 8.3.1-1: no NUL characters in query values.
            raise InvalidRequest("query parameters must not contain NUL characters")
    fuzzy_values = [v for n, v in params if n.lower() == "fuzzymatching"]
    if fuzzy_values:
        query.fuzzy = parse_bool("fuzzymatching", fuzzy_values[-1])
    # The path's UIDs restrict the search; a matching key for the same attribute is
    # applied as well (both must match).
    query.conditions.extend(scope)
    seen: set[int] = set()
    for name, raw in params:
        lowered = name.lower()
        if lowered == "limit":
            query.limit = parse_limit(raw, max_limit, query.warnings)
            continue
        if lowered == "offset":
            query.offset = parse_offset(raw)
            continue
        if lowered == "fuzzymatching" or name in TRANSACTION_PARAMS:
            continue
        if lowered == "includefield":
            everything, fields = parse_includefield(raw)
            query.include_all |= everything
            query.includefields.update(fields)
            continue
        if "." in name:
            # Sequence matching (C.2.2.2.6) is not indexed: ignore it, return the sequence.
            top = parse_attribute_path(name)[0]
            query.includefields.add(top)
            query.warnings.append(f"The {name} query parameter is not supported; it was ignored")
            continue
        tag = parse_attribute(name)
        attr_level = _attribute_level(tag)
        if attr_level is not None and attr_level > level:
            raise InvalidRequest(
                f"{keyword_of(tag)} ({tag_hex(tag)}) is a {attr_level.name.lower()}-level "
                f"attribute and cannot be matched in a {level.name.lower()} search"
            )
        query.includefields.add(tag)
        if tag not in MATCHABLE:
            query.warnings.append(
                f"The {keyword_of(tag)} query parameter is not supported; it was ignored"
            )
            continue
        if tag in seen:
            raise InvalidRequest(f"{keyword_of(tag)} is given more than once")
        seen.add(tag)
        condition = parse_condition(tag, raw, query.fuzzy)
        if condition is not None:
            query.conditions.append(condition)
    query.conditions = combine_date_time(query.conditions)
    return query


def _range_form(cond: Condition) -> tuple[bool, bool]:
    return bool(cond.values[0]), bool(cond.values[1])


def combine_date_time(conditions: list[Condition]) -> list[Condition]:
    """Combined date-time matching (PS3.4 C.2.2.2.5.4; PS3.18 8.3.4.1.1 makes it
    mandatory for QIDO-RS): a DA and a TM range "both of which specify the same form of
    Range Matching" are matched as one DT range, e.g. StudyDate=20060705-20060707 with
    StudyTime=1000-1800 is July 5 10:00 to July 7 18:00. Other pairings (a single date
    with a time range, or ranges of different forms) are matched separately.
    """
    by_tag = {c.tag: c for c in conditions}
    for date_tag, time_tag in _DATE_TIME_PAIRS:
        date, time = by_tag.get(date_tag), by_tag.get(time_tag)
        if date is None or time is None:
            continue
        if date.kind is not Kind.RANGE or time.kind is not Kind.RANGE:
            continue
        if _range_form(date) != _range_form(time):
            continue
        d_low, d_high = date.values
        t_low, t_high = time.values
        combined = Condition(
            date_tag, Kind.DATETIME_RANGE, (d_low, t_low, d_high, t_high), time_tag
        )
        conditions = [c for c in conditions if c.tag not in (date_tag, time_tag)] + [combined]
    return conditions
