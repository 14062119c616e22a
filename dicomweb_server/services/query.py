"""Search (QIDO-RS now, C-FIND later): run a parsed query and shape DICOM JSON results.

Return attributes follow PS3.18 Tables 10.6.3-3/-4/-5; matching keys and
includefield attributes are returned too (PS3.18 10.6.3.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from dicomweb_server.dicom.attributes import Level, level_of, tag_hex, vr_of
from dicomweb_server.dicom.matching import QueryRequest
from dicomweb_server.storage.interfaces import IndexStore


def _tags(*values: int) -> tuple[int, ...]:
    return values


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
# Returned even when absent (empty), so clients can rely on the key (PS3.18 10.6.3.3).
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


class QueryService:
    def __init__(self, index: IndexStore) -> None:
        self.index = index

    def search(self, query: QueryRequest, base_url: str) -> SearchOutcome:
        """Run ``query``; ``base_url`` is the public DICOMweb root used in RetrieveURLs."""
        result = self.index.search(query)
        remaining = 0
        if result.more:
            remaining = self.index.count(query) - query.offset - len(result.rows)
        shaped = [self._shape(query, row, base_url) for row in result.rows]
        return SearchOutcome(results=shaped, remaining=max(remaining, 0), warnings=query.warnings)

    @staticmethod
    def _wanted(query: QueryRequest) -> tuple[set[int], bool]:
        defaults = {
            Level.STUDY: STUDY_DEFAULT,
            Level.SERIES: SERIES_DEFAULT,
            Level.INSTANCE: INSTANCE_DEFAULT,
        }[query.level]
        wanted = set(defaults) | {t for t in query.includefields if level_of(t) <= query.level}
        return wanted, query.include_all

    def _shape(self, query: QueryRequest, row: dict[str, Any], base_url: str) -> dict[str, Any]:
        wanted, include_all = self._wanted(query)
        level = query.level
        source: dict[str, Any] = dict(orjson.loads(row["study_attrs"]))
        if level >= Level.SERIES:
            source.update(orjson.loads(row["series_attrs"]))
        if level == Level.INSTANCE:
            metadata = orjson.loads(row["metadata"])
            # Bulk data is never part of a search result.
            source.update({k: v for k, v in metadata.items() if "BulkDataURI" not in v})
        out: dict[str, Any] = {}
        if include_all:
            out.update(source)
        for tag in wanted:
            key = tag_hex(tag)
            if key in source:
                out[key] = source[key]
            elif tag in _ALWAYS and level_of(tag) <= level:
                out[key] = {"vr": vr_of(tag)}
        study_url = f"{base_url}/studies/{row['study_uid']}"
        computed: dict[int, list[Any]] = {0x00080056: ["ONLINE"]}
        if level == Level.STUDY:
            computed[0x00081190] = [study_url]
            computed[0x00080061] = row["modalities"]
            computed[0x00201206] = [row["num_series"]]
            computed[0x00201208] = [row["num_instances"]]
        elif level == Level.SERIES:
            computed[0x00081190] = [f"{study_url}/series/{row['series_uid']}"]
            computed[0x00201209] = [row["num_instances"]]
        else:
            computed[0x00081190] = [
                f"{study_url}/series/{row['series_uid']}/instances/{row['sop_uid']}"
            ]
        for tag, values in computed.items():
            if tag in wanted or include_all:
                out[tag_hex(tag)] = _element(tag, values)
        return dict(sorted(out.items()))
