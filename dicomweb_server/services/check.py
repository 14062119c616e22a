"""Consistency of blobs and index: what a crash or a damaged disk can leave behind.

A crash between a blob's rename and its index commit leaves a complete blob that no
instance references (never acknowledged, so removing it loses nothing). A lost or
damaged disk can leave index rows whose blob is gone: those are only reported, with
their UIDs, so that an operator can send the instances again; deleting them is a
decision for a person.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from dicomweb_server.storage.interfaces import BlobInfo, BlobStore, IndexStore

# Reported individually up to this many; counted beyond.
_LISTED = 100
_PAGE = 1000


@dataclass
class CheckReport:
    blobs: int = 0
    instances: int = 0
    orphans: list[BlobInfo] = field(default_factory=list)
    orphan_count: int = 0
    orphan_bytes: int = 0
    # Unreferenced but younger than the minimum age: possibly a store in flight.
    recent_unreferenced: int = 0
    removed: int = 0
    missing: list[tuple[str, str, str]] = field(default_factory=list)  # study, series, sop
    missing_count: int = 0

    @property
    def clean(self) -> bool:
        return self.orphan_count == self.removed and not self.missing_count


def sop_uid_of(key: str) -> str | None:
    """The SOP Instance UID in a blob key written by the store service
    (``xx/<study>/<sop>-<token>.dcm``, or ``xx/<study>/<series>/...`` before), or None
    for any other name."""
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(".dcm") or "-" not in name:
        return None
    uid = name[: -len(".dcm")].rsplit("-", 1)[0]
    return uid if uid and all(c.isdigit() or c == "." for c in uid) else None


class CheckService:
    def __init__(self, index: IndexStore, blobs: BlobStore) -> None:
        self.index = index
        self.blobs = blobs

    def run(self, *, repair: bool = False, min_age: float = 3600.0) -> CheckReport:
        """Find unreferenced blobs (removed with ``repair`` when older than ``min_age``
        seconds, so that a store between its rename and its commit is never touched)
        and index rows whose blob is missing."""
        report = CheckReport()
        cutoff = time.time() - min_age
        batch: list[BlobInfo] = []
        for info in self.blobs.walk():
            report.blobs += 1
            batch.append(info)
            if len(batch) >= _PAGE:
                self._orphans(batch, report, repair, cutoff)
                batch = []
        self._orphans(batch, report, repair, cutoff)
        after = 0
        while page := self.index.blob_references(after, _PAGE):
            for ref in page:
                report.instances += 1
                if not self.blobs.exists(ref.blob_key):
                    report.missing_count += 1
                    if len(report.missing) < _LISTED:
                        report.missing.append((ref.study_uid, ref.series_uid, ref.sop_instance_uid))
            after = page[-1].pk
        return report

    def _orphans(
        self, batch: list[BlobInfo], report: CheckReport, repair: bool, cutoff: float
    ) -> None:
        by_uid = {info.key: sop_uid_of(info.key) for info in batch}
        stored = self.index.find_instances(uid for uid in by_uid.values() if uid)
        for info in batch:
            uid = by_uid[info.key]
            if uid is None:
                continue  # not named by us: never judged, never removed
            owner = stored.get(uid)
            if owner is not None and owner.blob_key == info.key:
                continue
            if info.modified > cutoff:
                report.recent_unreferenced += 1
                continue
            report.orphan_count += 1
            report.orphan_bytes += info.size
            if len(report.orphans) < _LISTED:
                report.orphans.append(info)
            if repair:
                self.blobs.delete(info.key)
                report.removed += 1
