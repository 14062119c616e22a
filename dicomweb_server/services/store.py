"""The one ingest path: STOW-RS, import (and later C-STORE) all store through here.

Order of work (durable before visible): analyse the spooled file, write the blob
(fsync, rename, fsync dir), then commit the index row; on any failure remove what
was written. Per-instance outcomes are returned as data, never raised.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID

from dicomweb_server.config import Settings
from dicomweb_server.dicom import status
from dicomweb_server.dicom.ingest import DicomRejected, InstanceRecord, analyse
from dicomweb_server.errors import Conflict, OutOfResources, is_no_space
from dicomweb_server.storage.interfaces import BlobStore, IndexStore

log = logging.getLogger(__name__)


@dataclass
class StoreOutcome:
    """What happened to one instance; maps onto a STOW-RS response item (PS3.18 10.5.3)."""

    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    stored: bool = False
    duplicate: bool = False
    failure_reason: int | None = None
    warning_reason: int | None = None
    message: str = ""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _blob_key(rec: InstanceRecord) -> str:
    # UIDs were validated (digits and dots only), so they are safe path components.
    spread = hashlib.sha1(rec.study_uid.encode()).hexdigest()[:2]
    token = secrets.token_hex(4)
    return f"{spread}/{rec.study_uid}/{rec.series_uid}/{rec.sop_instance_uid}-{token}.dcm"


class StoreService:
    def __init__(self, index: IndexStore, blobs: BlobStore, settings: Settings) -> None:
        self.index = index
        self.blobs = blobs
        self.settings = settings

    def new_spool_file(self) -> tuple[Path, BinaryIO]:
        """A temp file on the blob filesystem, so that storing it is a rename."""
        fd, name = tempfile.mkstemp(prefix="part-", suffix=".tmp", dir=self.blobs.spool_dir())
        return Path(name), os.fdopen(fd, "wb")

    def store_copy(self, source: Path) -> StoreOutcome:
        """Store a file that must stay where it is (bulk import)."""
        spooled, fh = self.new_spool_file()
        try:
            with fh, open(source, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)
        except OSError as exc:
            spooled.unlink(missing_ok=True)
            if is_no_space(exc):
                return StoreOutcome(
                    failure_reason=status.OUT_OF_RESOURCES, message="no space left on the archive"
                )
            raise
        return self.store_spooled(spooled)

    def store_spooled(self, path: Path, expected_study_uid: str | None = None) -> StoreOutcome:
        """Store a spooled temp file; the file is consumed (moved or deleted) in every case.

        Never raises for one instance's trouble: an unexpected error becomes that
        instance's Processing failure (0110) or Out of Resources (A700) outcome, so the
        other parts of a STOW-RS request still get theirs (PS3.18 10.5.3, Annex I).
        """
        try:
            return self._store(path, expected_study_uid)
        except OutOfResources as exc:
            return StoreOutcome(failure_reason=status.OUT_OF_RESOURCES, message=exc.message)
        except Exception as exc:
            log.exception("storing %s failed", path.name)
            if is_no_space(exc):
                return StoreOutcome(
                    failure_reason=status.OUT_OF_RESOURCES, message="no space left on the archive"
                )
            return StoreOutcome(
                failure_reason=status.PROCESSING_FAILURE,
                message=f"processing failure: {type(exc).__name__}",
            )
        finally:
            path.unlink(missing_ok=True)

    def _analyse(self, path: Path) -> InstanceRecord:
        with open(path, "rb") as fh:
            rec = analyse(fh, bulk_threshold=self.settings.bulk_data_threshold)
            fh.seek(128)
            has_preamble = fh.read(4) == b"DICM"
        if has_preamble:
            return rec
        if rec.has_file_meta:
            self._add_preamble(path)
        else:
            self._add_file_meta(path, rec)
        with open(path, "rb") as fh:
            return analyse(fh, bulk_threshold=self.settings.bulk_data_threshold)

    @staticmethod
    def _add_preamble(path: Path) -> None:
        """Meta header without preamble (as some clients write): prefix the 128 bytes + DICM."""
        tmp = path.with_suffix(".part10")
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(bytes(128) + b"DICM")
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, path)

    @staticmethod
    def _add_file_meta(path: Path, rec: InstanceRecord) -> None:
        """A bare dataset is stored as a Part 10 file (PS3.10 7.1) so that retrieval is uniform."""
        ds = pydicom.dcmread(path, force=True)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(rec.sop_class_uid)
        meta.MediaStorageSOPInstanceUID = UID(rec.sop_instance_uid)
        meta.TransferSyntaxUID = UID(rec.transfer_syntax)
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        tmp = path.with_suffix(".meta")
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)

    def _store(self, path: Path, expected_study_uid: str | None) -> StoreOutcome:
        outcome = StoreOutcome()
        try:
            rec = self._analyse(path)
        except DicomRejected as exc:
            return StoreOutcome(
                sop_class_uid=exc.sop_class_uid,
                sop_instance_uid=exc.sop_instance_uid,
                failure_reason=exc.reason,
                message=exc.message,
            )
        outcome.sop_class_uid = rec.sop_class_uid
        outcome.sop_instance_uid = rec.sop_instance_uid
        outcome.study_uid = rec.study_uid
        outcome.series_uid = rec.series_uid
        if expected_study_uid is not None and rec.study_uid != expected_study_uid:
            outcome.failure_reason = status.STUDY_UID_MISMATCH
            outcome.message = (
                f"Study Instance UID {rec.study_uid} differs from {expected_study_uid} in the URL"
            )
            return outcome
        content_hash = _sha256(path)
        size = path.stat().st_size
        replace = False
        existing = self.index.find_instance(rec.sop_instance_uid)
        if existing is not None:
            replace = self._resolve_duplicate(existing.content_hash, content_hash, outcome)
            if not replace:
                return outcome
        key = _blob_key(rec)
        try:
            self.blobs.put_file(key, path)
        except OutOfResources as exc:
            outcome.failure_reason = status.OUT_OF_RESOURCES
            outcome.message = exc.message
            return outcome
        try:
            try:
                if replace:
                    self.blobs.delete(self.index.replace_instance(rec, key, size, content_hash))
                else:
                    self.index.add_instance(rec, key, size, content_hash)
            except Conflict as exc:
                existing = self.index.find_instance(rec.sop_instance_uid)
                if existing is None:  # not a duplicate: e.g. a series UID reused across studies
                    raise
                # Lost a race with a concurrent store of the same instance.
                if not self._resolve_duplicate(existing.content_hash, content_hash, outcome):
                    self.blobs.delete(key)
                    return outcome
                del exc
                self.blobs.delete(self.index.replace_instance(rec, key, size, content_hash))
        except Conflict as exc:
            self.blobs.delete(key)
            outcome.failure_reason = status.PROCESSING_FAILURE
            outcome.message = exc.message
            return outcome
        except OutOfResources as exc:
            # The index's disk is full: an expected condition, not a bug (no traceback).
            self.blobs.delete(key)
            log.warning("index full while storing %s: %s", rec.sop_instance_uid, exc.message)
            outcome.failure_reason = status.OUT_OF_RESOURCES
            outcome.message = exc.message
            return outcome
        except Exception as exc:
            self.blobs.delete(key)
            log.exception("index update failed for %s", rec.sop_instance_uid)
            no_space = is_no_space(exc)
            outcome.failure_reason = (
                status.OUT_OF_RESOURCES if no_space else status.PROCESSING_FAILURE
            )
            outcome.message = f"index update failed: {type(exc).__name__}"
            return outcome
        outcome.stored = True
        return outcome

    def _resolve_duplicate(self, stored_hash: str, new_hash: str, outcome: StoreOutcome) -> bool:
        """Apply the duplicate policy; True means the new content must replace the old."""
        outcome.duplicate = True
        if stored_hash == new_hash:
            outcome.stored = True  # the same bytes again: idempotent success
            return False
        policy = self.settings.duplicate_policy
        if policy == "reject":
            outcome.failure_reason = status.DUPLICATE_SOP_INSTANCE
            outcome.message = "an instance with this SOP Instance UID and other content exists"
            return False
        if policy == "keep-first":
            outcome.stored = True
            outcome.warning_reason = status.DUPLICATE_KEPT_WARNING
            outcome.message = "an instance with this SOP Instance UID exists; the first was kept"
            return False
        outcome.warning_reason = status.DUPLICATE_REPLACED_WARNING
        outcome.message = "an instance with this SOP Instance UID existed and was replaced"
        return True
