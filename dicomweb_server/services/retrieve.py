"""Retrieve: instances, metadata and bulk data, read without re-parsing on hot paths."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pydicom

from dicomweb_server.dicom import codec
from dicomweb_server.dicom.frames import FrameTable
from dicomweb_server.dicom.jpeg_encode import TARGETS as JPEG_TARGETS
from dicomweb_server.dicom.transcode import (
    output_syntax,
    to_explicit_little_endian,
    to_transfer_syntax,
)
from dicomweb_server.dicom.uids import EXPLICIT_VR_BIG_ENDIAN
from dicomweb_server.errors import NotAcceptable, NotFound, StorageUnavailable
from dicomweb_server.storage.interfaces import BlobStore, IndexStore, StoredInstance, Version

log = logging.getLogger(__name__)
CHUNK = 1 << 20


@dataclass(frozen=True)
class Planned:
    instance: StoredInstance
    transfer_syntax: str

    @property
    def as_stored(self) -> bool:
        return self.transfer_syntax == self.instance.transfer_syntax


def _describe(study: str, series: str | None, sop: str | None) -> str:
    if sop:
        return f"instance {sop}"
    if series:
        return f"series {series}"
    return f"study {study}"


class RetrieveService:
    def __init__(self, index: IndexStore, blobs: BlobStore) -> None:
        self.index = index
        self.blobs = blobs

    def instances(
        self, study: str, series: str | None = None, sop: str | None = None
    ) -> list[StoredInstance]:
        found = self.index.instances(study, series, sop)
        if not found:
            raise NotFound(f"{_describe(study, series, sop)} is not stored")
        return found

    def plan(
        self, instances: list[StoredInstance], requested: str | Sequence[str]
    ) -> list[Planned]:
        """Decide each instance's output syntax up front, so a 406 comes before any byte.

        ``requested`` lists the acceptable syntaxes in preference order; each instance
        gets the first one it can be sent in (PS3.18 8.7.8.2, per part).
        """
        wanted = [requested] if isinstance(requested, str) else list(requested)
        return [
            Planned(i, output_syntax(i.transfer_syntax, self._fitting(i, wanted)))
            for i in instances
        ]

    def _fitting(self, instance: StoredInstance, wanted: list[str]) -> list[str]:
        """``wanted`` without the JPEG syntaxes this instance's pixels do not fit (e.g.
        Baseline for more than 8 bits): the next acceptable syntax is chosen instead
        (per part, PS3.18 8.7.8.2), or a 406 saying why when there is none. One index
        read, and only when a JPEG encoding is asked for an instance not stored so."""
        asked = [ts for ts in wanted if ts in JPEG_TARGETS and ts != instance.transfer_syntax]
        if not asked:
            return wanted
        found = self.index.frame_table(instance.sop_instance_uid)
        table = FrameTable.decode(found[1]) if found is not None and found[1] else None
        if table is None:  # no pixels, or not known before reading: tried as asked
            return wanted
        reasons = {ts: codec.unsuitable(ts, table.pixel) for ts in asked}
        rest = [ts for ts in wanted if reasons.get(ts) is None]
        if not rest:
            raise NotAcceptable(
                f"cannot provide instance {instance.sop_instance_uid} as "
                + "; ".join(f"{ts}: {reason}" for ts, reason in reasons.items())
            )
        return rest

    def readable(self, planned: list[Planned]) -> tuple[list[Planned], list[Planned]]:
        """Split into (readable, unreadable) so one damaged blob does not sink a study."""
        good, bad = [], []
        for item in planned:
            try:
                with self.blobs.open(item.instance.blob_key):
                    good.append(item)
            except StorageUnavailable as exc:
                log.error("instance %s unreadable: %s", item.instance.sop_instance_uid, exc)
                bad.append(item)
        return good, bad

    def chunks(self, item: Planned) -> Iterator[bytes]:
        """The instance's bytes in its planned syntax: streamed as stored, or transcoded."""
        with self.blobs.open(item.instance.blob_key) as fh:
            if item.as_stored:
                while chunk := fh.read(CHUNK):
                    yield chunk
            else:
                yield to_transfer_syntax(fh, item.transfer_syntax)

    def read_now(self, instance: StoredInstance, offset: int, length: int) -> bytearray | None:
        """``length`` bytes of the stored object at ``offset`` if they are in memory
        already (for the event loop, which must not wait on a disk); else None."""
        return self.blobs.read_now(instance.blob_key, offset, length)

    def read_bytes(self, instance: StoredInstance, offset: int, length: int) -> bytes:
        """``length`` bytes of the stored object at ``offset``, from the disk if need be
        (``read_range`` joined: one piece up to CHUNK, so usually no copy)."""
        return b"".join(self.read_range(instance.blob_key, offset, length))

    def converted(self, item: Planned) -> bytes:
        """The whole instance in its planned (not stored) syntax, in memory."""
        try:
            return b"".join(self.chunks(item))
        except NotAcceptable as exc:  # stored pixel data the decoders cannot read
            log.warning("instance %s: %s", item.instance.sop_instance_uid, exc.message)
            raise

    def metadata(
        self, study: str, series: str | None = None, sop: str | None = None
    ) -> list[bytes]:
        rows = self.index.metadata(study, series, sop)
        if not rows:
            raise NotFound(f"{_describe(study, series, sop)} is not stored")
        return rows

    def version(self, study: str, series: str | None = None, sop: str | None = None) -> Version:
        version = self.index.version(study, series, sop)
        if version is None:
            raise NotFound(f"{_describe(study, series, sop)} is not stored")
        return version

    def bulkdata(
        self, study: str, series: str, sop: str, path: str
    ) -> bytes | tuple[str, int, int]:
        """A bulk value: (blob key, offset, length) when it can be read in place, else bytes."""
        found = self.index.bulk_location(sop)
        if found is None or (found[0].study_uid, found[0].series_uid) != (study, series):
            raise NotFound(f"instance {sop} is not stored")
        instance, locations = found
        where = locations.get(path.upper())
        # Bulk data travels little endian (PS3.18 Table 8.7.3-4): the stored bytes can
        # be sent in place unless the object was stored big endian.
        in_place = instance.transfer_syntax != EXPLICIT_VR_BIG_ENDIAN
        if where is not None and where[1] >= 0 and "." not in path and in_place:
            return instance.blob_key, where[0], where[1]
        return self._parse_bulk(instance, path)

    def _parse_bulk(self, instance: StoredInstance, path: str) -> bytes:
        """Nested, encapsulated or big-endian values: parse the file (rare, never on a
        viewer's hot path)."""
        parts = path.split(".")
        if len(parts) % 2 == 0:
            raise NotFound(f"no bulk data at {path}")
        with self.blobs.open(instance.blob_key) as fh:
            if instance.transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
                ds = pydicom.dcmread(io.BytesIO(to_explicit_little_endian(fh)), force=True)
            else:
                ds = pydicom.dcmread(fh, force=True)
        try:
            node = ds
            for index in range(0, len(parts) - 1, 2):
                node = node[int(parts[index], 16)].value[int(parts[index + 1])]
            tag = int(parts[-1], 16)
            if tag == 0x7FE00010 and ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress(generate_instance_uid=False)
                node = ds
            value = node[tag].value
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise NotFound(f"no bulk data at {path}") from exc
        if not isinstance(value, bytes):
            raise NotFound(f"no bulk data at {path}")
        return value

    def read_range(self, key: str, offset: int, length: int) -> Iterator[bytes]:
        with self.blobs.open(key) as fh:
            fh.seek(offset, os.SEEK_SET)
            remaining = length
            while remaining > 0:
                chunk = fh.read(min(CHUNK, remaining))
                if not chunk:
                    raise StorageUnavailable(f"stored object {key} is shorter than indexed")
                remaining -= len(chunk)
                yield chunk
