"""Search (QIDO-RS now, C-FIND later): run a parsed query and shape DICOM JSON results.

Return attributes follow PS3.18 10.6.3.3 and Tables 10.6.3-3/-4/-5:

- each level returns its table's attributes, plus every matching key and every
  includefield attribute of that level or above; ``includefield=all`` returns every
  stored attribute of the level and above;
- attributes of lower levels are never returned (a study result holds no series or
  instance attributes, a series result no instance attributes);
- the All Series resource adds the Study table; All Instances adds the Study and Series
  tables; a Study's Instances adds the Series table (10.6.3.3.2, 10.6.3.3.3);
- computed attributes: ModalitiesInStudy, NumberOfStudyRelatedSeries/-Instances,
  NumberOfSeriesRelatedInstances, InstanceAvailability, and a RetrieveURL naming the
  result's own resource (Study, Series or Instance Retrieve, PS3.18 10.4.1);
- bulk data is never part of a search result: attributes carrying a BulkDataURI are
  left out, at every nesting depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from dicomweb_server.dicom.attributes import Level, level_of, tag_hex, vr_of
from dicomweb_server.dicom.matching import (
    COMPUTED_LEVEL,
    INSTANCE_AVAILABILITY,
    MODALITIES_IN_STUDY,
    NUMBER_OF_SERIES_RELATED_INSTANCES,
    NUMBER_OF_STUDY_RELATED_INSTANCES,
    NUMBER_OF_STUDY_RELATED_SERIES,
    RETRIEVE_URL,
    QueryRequest,
)
from dicomweb_server.storage.interfaces import IndexStore


def _tags(*values: int) -> tuple[int, ...]:
    return values


# PS3.18 Table 10.6.3-3 (Study), plus SpecificCharacterSet and StudyDescription.
STUDY_DEFAULT = _tags(
    0x00080005,
    0x00080020,
    0x00080030,
    0x00080050,
    0x00080056,
    0x00080061,
    0x00080090,
    0x00080201,
    0x00081030,
    0x00081190,
    0x00100010,
    0x00100020,
    0x00100030,
    0x00100040,
    0x0020000D,
    0x00200010,
    0x00201206,
    0x00201208,
)
# PS3.18 Table 10.6.3-4 (Series), plus SpecificCharacterSet and StudyInstanceUID.
SERIES_DEFAULT = _tags(
    0x00080005,
    0x00080056,
    0x00080060,
    0x00080201,
    0x0008103E,
    0x00081190,
    0x0020000D,
    0x0020000E,
    0x00200011,
    0x00201209,
    0x00400244,
    0x00400245,
    0x00400275,
)
# PS3.18 Table 10.6.3-5 (Instance), plus SpecificCharacterSet and the parents' UIDs.
INSTANCE_DEFAULT = _tags(
    0x00080005,
    0x00080016,
    0x00080018,
    0x00080056,
    0x00080201,
    0x00081190,
    0x0020000D,
    0x0020000E,
    0x00200013,
    0x00280008,
    0x00280010,
    0x00280011,
    0x00280100,
)
# Required (not "if present") return attributes: sent empty when the entity has no value,
# so clients can rely on the key (PS3.18 Tables 10.6.3-3/-4/-5, R rows; PS3.18 F.2.5).
_ALWAYS = frozenset(
    {
        0x00080020,
        0x00080030,
        0x00080050,
        0x00080090,
        0x00100010,
        0x00100020,
        0x00100030,
        0x00100040,
        0x00200010,
        0x00080060,
        0x00200011,
        0x00080016,
        0x00200013,
    }
)


@dataclass
class SearchOutcome:
    results: list[dict[str, Any]]
    remaining: int = 0
    warnings: list[str] = field(default_factory=list)


def _element(tag: int, values: list[Any]) -> dict[str, Any]:
    return {"vr": vr_of(tag), "Value": values} if values else {"vr": vr_of(tag)}


def _level(tag: int) -> Level:
    return COMPUTED_LEVEL.get(tag, level_of(tag))


def _without_bulk(element: dict[str, Any]) -> dict[str, Any] | None:
    """The element with every BulkDataURI left out (None if it is bulk data itself)."""
    if "BulkDataURI" in element:
        return None
    if element.get("vr") != "SQ" or not element.get("Value"):
        return element
    items = [
        {k: e for k, v in item.items() if (e := _without_bulk(v)) is not None}
        for item in element["Value"]
    ]
    return {**element, "Value": items}


def _source(level: Level, row: dict[str, Any]) -> dict[str, Any]:
    """The stored attributes of the result's entity and its parents."""
    source: dict[str, Any] = dict(orjson.loads(row["study_attrs"]))
    if level >= Level.SERIES:
        source.update(orjson.loads(row["series_attrs"]))
    if level == Level.INSTANCE:
        source.update(orjson.loads(row["metadata"]))
    out: dict[str, Any] = {}
    for key, value in source.items():
        kept = _without_bulk(value)
        if kept is not None:
            out[key] = kept
    return out


class QueryService:
    def __init__(self, index: IndexStore) -> None:
        self.index = index

    def search(self, query: QueryRequest, base_url: str) -> SearchOutcome:
        """Run ``query``; ``base_url`` is the public DICOMweb root used in RetrieveURLs.

        ``remaining`` is how many more matches follow this page (PS3.18 8.3.4.4.1):
        max(0, matches - offset - returned).
        """
        result = self.index.search(query)
        remaining = 0
        if result.more:
            remaining = self.index.count(query) - query.offset - len(result.rows)
        wanted = self.wanted(query)
        shaped = [self._shape(query, wanted, row, base_url) for row in result.rows]
        return SearchOutcome(results=shaped, remaining=max(remaining, 0), warnings=query.warnings)

    @staticmethod
    def wanted(query: QueryRequest) -> set[int]:
        """The return attributes for the query's level and resource (PS3.18 10.6.3.3)."""
        level, scope = query.level, query.scope
        wanted: set[int] = set()
        if level == Level.STUDY or (scope is None and level >= Level.SERIES):
            wanted.update(STUDY_DEFAULT)
        if level == Level.SERIES or (level == Level.INSTANCE and scope != Level.SERIES):
            wanted.update(SERIES_DEFAULT)
        if level == Level.INSTANCE:
            wanted.update(INSTANCE_DEFAULT)
        wanted.update(t for t in query.includefields if _level(t) <= level)
        return wanted

    def _shape(
        self, query: QueryRequest, wanted: set[int], row: dict[str, Any], base_url: str
    ) -> dict[str, Any]:
        level = query.level
        source = _source(level, row)
        out: dict[str, Any] = {}
        if query.include_all:
            out.update(source)
        for tag in wanted:
            key = tag_hex(tag)
            if key in source:
                out[key] = source[key]
            elif tag in _ALWAYS and level_of(tag) <= level:
                out[key] = {"vr": vr_of(tag)}
        study_url = f"{base_url}/studies/{row['study_uid']}"
        computed: dict[int, list[Any]] = {INSTANCE_AVAILABILITY: ["ONLINE"]}
        if "modalities" in row:
            computed[MODALITIES_IN_STUDY] = list(row["modalities"])
            computed[NUMBER_OF_STUDY_RELATED_SERIES] = [row["study_num_series"]]
            computed[NUMBER_OF_STUDY_RELATED_INSTANCES] = [row["study_num_instances"]]
        if "series_num_instances" in row:
            computed[NUMBER_OF_SERIES_RELATED_INSTANCES] = [row["series_num_instances"]]
        if level == Level.STUDY:
            computed[RETRIEVE_URL] = [study_url]
        elif level == Level.SERIES:
            computed[RETRIEVE_URL] = [f"{study_url}/series/{row['series_uid']}"]
        else:
            computed[RETRIEVE_URL] = [
                f"{study_url}/series/{row['series_uid']}/instances/{row['sop_uid']}"
            ]
        for tag, values in computed.items():
            if (tag in wanted or query.include_all) and _level(tag) <= level:
                out[tag_hex(tag)] = _element(tag, values)
        return dict(sorted(out.items()))
