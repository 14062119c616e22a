"""Storage Commitment (PS3.4 Annex J): which requested instances we durably hold.

An instance is committed only when its index row exists (the row is committed after
the blob was fsynced and renamed, so an indexed instance is durable), its SOP class
matches the request, and its blob can be opened. Everything else is failed, with the
Failure Reason of PS3.4 J.3.2.1.1.1 (0112 no such object instance, 0119 class-instance
conflict, 0110 processing failure).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dicomweb_server.errors import StorageUnavailable
from dicomweb_server.storage.interfaces import BlobStore, IndexStore

PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119


@dataclass
class CommitmentResult:
    committed: list[tuple[str, str]] = field(default_factory=list)  # (class, instance)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # + failure reason


class CommitmentService:
    def __init__(self, index: IndexStore, blobs: BlobStore) -> None:
        self.index = index
        self.blobs = blobs

    def check(self, references: list[tuple[str, str]]) -> CommitmentResult:
        result = CommitmentResult()
        for sop_class, sop_instance in references:
            found = self.index.find_instance(sop_instance)
            if found is None:
                result.failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
                continue
            if found.sop_class_uid != sop_class:
                result.failed.append((sop_class, sop_instance, CLASS_INSTANCE_CONFLICT))
                continue
            try:
                with self.blobs.open(found.blob_key):
                    pass
            except StorageUnavailable:
                result.failed.append((sop_class, sop_instance, PROCESSING_FAILURE))
                continue
            result.committed.append((sop_class, sop_instance))
        return result
