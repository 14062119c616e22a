"""The two narrow storage interfaces the services depend on.

Services import only this module; bootstrap picks the concrete stores. Like
httpx's transport, each interface is small enough to have an in-memory double.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from dicomweb_server.dicom.ingest import InstanceRecord
from dicomweb_server.dicom.matching import QueryRequest
from dicomweb_server.dicom.workitem import Workitem
from dicomweb_server.errors import Conflict, OutOfResources, is_no_space


class BlobStore(Protocol):
    """Where the Part 10 bytes live. Keys are produced by the services, never by users."""

    def spool_dir(self) -> Path:
        """A directory for incoming temporary files, on the same filesystem as the blobs."""
        ...

    def put_file(self, key: str, source: Path) -> None:
        """Move ``source`` into the store under ``key``, durably (fsync before returning)."""
        ...

    def put_files(
        self,
        items: Sequence[tuple[str, Path]],
        synced: Sequence[Future[None] | None] | None = None,
    ) -> list[Exception | None]:
        """``put_file`` for each (key, source), durably, sharing the directory syncs; one
        outcome each: None, or the error that item met (``OutOfResources`` when full).
        A source with a ``synced`` future (from ``sync_soon``) is not synced again: the
        future's outcome is its fsync's."""
        ...

    def place_files(
        self,
        items: Sequence[tuple[str, Path]],
        synced: Sequence[Future[None] | None] | None = None,
    ) -> Placement:
        """``put_files`` in two steps: the files are in place when this returns, the
        directory syncs that make the renames durable run on; ``Placement.wait`` gives
        the outcomes once they are done. Lets the caller prepare its index transaction
        meanwhile (committing it only after ``wait``)."""
        ...

    def sync_mark(self) -> int:
        """Taken before a spool file is written, for ``sync_soon``: a sync shared with
        other files fails if an error that may have been this file's was seen since."""
        ...

    def sync_soon(self, fh: BinaryIO, mark: int | None = None) -> Future[None]:
        """Start making a completely written spool file durable, then close it; the
        future gives the sync's outcome. ``mark`` is ``sync_mark()`` from before the
        file was written (without it the file is synced on its own)."""
        ...

    def open(self, key: str) -> BinaryIO:
        """Open a blob for reading; raises StorageUnavailable when it is missing or unreadable."""
        ...

    def read_now(self, key: str, offset: int, length: int) -> bytearray | None:
        """``length`` bytes at ``offset`` when they can be had without waiting for a
        device (already in memory); None otherwise, or when the blob is missing. For
        callers on an event loop, which must not block on a disk."""
        ...

    def read_now_into(self, key: str, offset: int, into: bytearray | memoryview) -> bool:
        """``read_now`` into a caller's buffer (``len(into)`` bytes), so a response can
        be assembled around the bytes without copying them again; False as None above
        (the buffer's content is then undefined)."""
        ...

    def open_cached(self, key: str, offset: int, length: int) -> int | None:
        """An open file descriptor of the blob (the caller closes it) when its bytes
        ``[offset, offset + length)`` are all in memory, for sendfile(2) from an event
        loop; None otherwise, or when the store cannot tell or has no such files."""
        ...

    def delete(self, key: str) -> None:
        """Remove a blob; a missing one is not an error."""
        ...

    def walk(self) -> Iterator[BlobInfo]:
        """Every stored blob, for consistency checks."""
        ...

    def exists(self, key: str) -> bool: ...


class Placement:
    """Blobs renamed into place whose directory syncs may still be running."""

    def __init__(
        self, problems: list[Exception | None], syncs: Sequence[tuple[Future[None], list[int]]]
    ) -> None:
        self._problems = problems
        self._syncs = syncs

    def now(self) -> list[Exception | None]:
        """Each item's problem known so far (file sync, reserve, rename); None: the file
        was renamed into place (nothing is left at its source path)."""
        return list(self._problems)

    def wait(self) -> list[Exception | None]:
        """Each item's outcome once every directory sync is done (idempotent)."""
        for future, indices in self._syncs:
            try:
                future.result()
            except Exception as exc:
                if isinstance(exc, OSError) and is_no_space(exc):
                    exc = OutOfResources("no space left to make a stored object durable")
                for i in indices:
                    self._problems[i] = self._problems[i] or exc
        return list(self._problems)


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    modified: float


@dataclass(frozen=True)
class BlobReference:
    """Which instance an index row says lives in a blob."""

    pk: int
    blob_key: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    blob_key: str
    blob_size: int
    content_hash: str
    number_of_frames: int | None = None


@dataclass(frozen=True)
class NewInstance:
    """An instance whose blob is durably stored, to be added to the index."""

    record: InstanceRecord
    blob_key: str
    blob_size: int
    content_hash: str


@dataclass(frozen=True)
class Version:
    """A study's content at a moment: changes whenever an instance is added or removed."""

    updated_at: float
    count: int


@dataclass
class SearchResult:
    rows: list[dict[str, object]]
    more: bool


class IndexStore(Protocol):
    def find_instance(self, sop_instance_uid: str) -> StoredInstance | None: ...

    def find_instances(self, sop_instance_uids: Iterable[str]) -> dict[str, StoredInstance]:
        """The indexed ones among the given UIDs, by UID."""
        ...

    def add_instance(
        self, record: InstanceRecord, blob_key: str, blob_size: int, content_hash: str
    ) -> None:
        """Insert the instance (and its patient/study/series if new) in one transaction.

        Raises Conflict if the SOP Instance UID is already indexed.
        """
        ...

    def add_instances(
        self, items: Sequence[NewInstance], before_commit: Callable[[], None] | None = None
    ) -> list[Conflict | None]:
        """Insert several instances in one transaction; a Conflict in the slot of each one
        that could not go in (already indexed, series of another study), None for the rest.
        ``before_commit`` runs inside the transaction just before it commits; if it
        raises, nothing is committed and the exception propagates.
        """
        ...

    def replace_instance(
        self, record: InstanceRecord, blob_key: str, blob_size: int, content_hash: str
    ) -> str:
        """Point an existing instance at new content; returns the blob key it had."""
        ...

    def instances(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[StoredInstance]:
        """Instances under a study/series/instance, in series and instance-number order."""
        ...

    def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[bytes]:
        """The stored DICOM JSON of each instance, in the same order as ``instances``."""
        ...

    def bulk_location(
        self, sop_instance_uid: str
    ) -> tuple[StoredInstance, dict[str, list[int]]] | None: ...

    def frame_table(self, sop_instance_uid: str) -> tuple[StoredInstance, bytes | None] | None:
        """The instance and its encoded frame table (dicom/frames.py), None if not yet
        computed; None for an unknown instance."""
        ...

    def set_frame_table(self, sop_instance_uid: str, blob_key: str, table: bytes) -> None:
        """Store a lazily computed frame table for the instance still at ``blob_key``."""
        ...

    def version(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> Version | None:
        """None when nothing is stored under the given UIDs."""
        ...

    def search(self, query: QueryRequest) -> SearchResult: ...

    def count(self, query: QueryRequest) -> int:
        """How many entities match, ignoring limit and offset."""
        ...

    def delete(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[str]:
        """Remove index rows; returns the blob keys that are no longer referenced."""
        ...

    def count_instances(self) -> int: ...

    def blob_references(self, after_pk: int, limit: int) -> list[BlobReference]:
        """Instance rows in primary-key order after ``after_pk`` (a page of the whole index)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class WorkitemFilter:
    """What the index narrows workitems by (exact values; DT bounds normalized as
    ``dicom.workitem.normalize_dt`` does). None means any."""

    states: Collection[str] | None = None
    accession_number: str | None = None
    study_uid: str | None = None
    patient_id: str | None = None
    station_ae: str | None = None
    modality: str | None = None
    start_from: str | None = None
    start_to: str | None = None
    limit: int | None = None
    # Any of these values (IN lists), e.g. the accession numbers of a batch of images.
    accession_numbers: Collection[str] | None = None
    study_uids: Collection[str] | None = None
    # False: the workitems without their recorded outputs (cheaper when only the
    # order's keys and state are wanted, e.g. to link arriving images).
    outputs: bool = True


class WorkitemStore(Protocol):
    """UPS workitems in the index (PS3.4 Annex CC)."""

    def add_workitem(self, item: Workitem) -> None:
        """Insert a new workitem; Conflict if its UID is already there."""
        ...

    def get_workitem(self, uid: str) -> Workitem | None: ...

    def modify_workitem(
        self, uid: str, change: Callable[[Workitem], Workitem | None]
    ) -> tuple[Workitem, Workitem]:
        """Apply ``change`` to the current workitem in one write transaction, the row
        locked against concurrent changes; store what it returns (None: no change).

        Returns (before, after). NotFound for an unknown UID; an error raised by
        ``change`` rolls everything back.
        """
        ...

    def find_workitems(self, where: WorkitemFilter) -> list[Workitem]:
        """Matching workitems by Scheduled Procedure Step Start DateTime, then UID."""
        ...

    def add_workitem_outputs(self, uid: str, refs: Sequence[tuple[str, str, str, str]]) -> int:
        """Record (study, series, SOP class, SOP instance) UIDs as the workitem's outputs,
        those not recorded yet, in one transaction; how many were new. Every workitem
        read shows them in its Output Information Sequence. NotFound: no such workitem."""
        ...


# --- ups-events ---
@dataclass(frozen=True)
class GlobalSubscription:
    """An AE's global ("global") or filtered global ("filtered") UPS subscription."""

    ae_title: str
    kind: str
    deletion_lock: bool
    # Filtered: the matching keys as (name, value) pairs, as in a search URL.
    filter: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class EventRow:
    id: int
    ae_title: str
    workitem_uid: str
    message: bytes


@dataclass(frozen=True)
class NewEvent:
    ae_title: str
    workitem_uid: str
    message: bytes


class SubscriptionStore(Protocol):
    """UPS subscriptions (PS3.4 CC.2.3) and the event reports waiting to be delivered.

    Every method that adds events runs in one transaction, and event ids are committed
    in increasing order, so ``events_after`` never skips one committed later.
    """

    def subscribe(
        self,
        ae_title: str,
        workitem_uid: str,
        deletion_lock: bool,
        initial: Callable[[], NewEvent | None],
    ) -> None:
        """Subscribe the AE to one workitem and queue ``initial()``, its state report,
        read inside the transaction that orders events (so it cannot be staler than an
        event queued after it)."""
        ...

    def unsubscribe(self, ae_title: str, workitem_uid: str) -> bool:
        """False when the AE was not subscribed to it."""
        ...

    def subscribe_globally(
        self,
        subscription: GlobalSubscription,
        workitems: Callable[[], Mapping[str, NewEvent | None]],
    ) -> list[str]:
        """Record the global subscription and subscribe the AE to each workitem of
        ``workitems()`` (UID -> the report to send, or None) it is not subscribed to, in
        the same transaction. Returns the workitems newly subscribed."""
        ...

    def unsubscribe_globally(self, ae_title: str, kind: str) -> bool:
        """Remove every global and workitem subscription of the AE; False when the AE had
        no global subscription of ``kind``."""
        ...

    def suspend(self, ae_title: str, kind: str) -> bool:
        """Remove the global subscription of ``kind`` only; False when there was none."""
        ...

    def global_subscriptions(self) -> list[GlobalSubscription]: ...

    def subscribers(self, workitem_uid: str) -> dict[str, bool]:
        """AE title -> deletion lock, for the AEs subscribed to the workitem."""
        ...

    def publish(
        self,
        workitem_uid: str,
        joining: Sequence[tuple[str, bool]],
        message: bytes,
        initial: Callable[[], bytes] | None,
    ) -> list[str]:
        """Subscribe each (AE, deletion lock) of ``joining`` that has no subscription state
        for the workitem yet, then queue ``message`` for every subscriber (preceded by
        ``initial()``, when given, for those just subscribed). Returns the recipients."""
        ...

    def last_event_id(self) -> int: ...

    def events_after(
        self, event_id: int, ae_titles: Collection[str], limit: int
    ) -> tuple[list[EventRow], int]:
        """Events after ``event_id`` for the given AEs, in order, and the id to continue
        from (past events of other AEs too)."""
        ...

    def prune_events(self, older_than: float) -> int: ...


class MppsStore(Protocol):
    """MPPS instances (schema v7): each step's record (JSON) with a version that every
    write increments, so a read-modify-write never overwrites another's change."""

    def get_step(self, uid: str) -> tuple[bytes, int] | None: ...

    def add_step(self, uid: str, status: str, record: bytes) -> bool:
        """False when a step with this UID exists."""
        ...

    def replace_step(self, uid: str, status: str, record: bytes, version: int) -> bool:
        """False when the step is no longer at ``version``."""
        ...
