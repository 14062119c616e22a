"""Frames (PS3.18 10.4.1.1.4): read only the asked frames' bytes, via the frame table.

The table is computed at store time (dicom/frames.py). Instances stored before schema
v3 get theirs computed once on first use and kept. Objects whose frames cannot be
located in the file (deflated, unrecognised fragment layout) are converted to Explicit
VR Little Endian in memory and served from that: correct, just not fast.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Generator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement

from dicomweb_server.dicom import codec
from dicomweb_server.dicom.frames import NO_FRAMES, NO_PIXELS, FrameTable, compute, unshift
from dicomweb_server.dicom.pixel_media import (
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    MEDIA_SYNTAXES,
    OCTET_STREAM,
    Wanted,
    media_type_of,
)
from dicomweb_server.dicom.transcode import to_explicit_little_endian
from dicomweb_server.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    UNCOMPRESSED,
)
from dicomweb_server.errors import InvalidRequest, NotAcceptable, NotFound, StorageUnavailable
from dicomweb_server.storage.interfaces import BlobStore, IndexStore, StoredInstance

log = logging.getLogger(__name__)
PIXEL_DATA = 0x7FE00010
MAX_FRAME_LIST = 10_000
# Frames up to this size may be answered from the event loop (``ready_frame``): a
# 512x512x16-bit slice is 0.5 MiB, a 2048x2048 radiograph 8 MiB.
READY_FRAME_LIMIT = 16 << 20


@dataclass(frozen=True)
class Located:
    instance: StoredInstance
    table: FrameTable
    # The object converted to Explicit VR Little Endian, when the stored file's frames
    # could not be located in place; None when frames are read from the stored file.
    converted: bytes | None = None


@dataclass(frozen=True)
class Output:
    """How frames of one instance are sent: media type, transfer syntax, and whether
    they are the stored bytes (``as_stored``), decoded, or re-encoded."""

    media_type: str
    transfer_syntax: str
    mode: str  # "stored" | "native" | "encode"
    multipart: bool = True

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


@dataclass(frozen=True)
class ReadyFrame:
    """A frame ``ready_frame`` found answerable at once: how it goes out, its size, and
    where its stored bytes are (one span, or an encapsulated frame's fragments)."""

    output: Output
    length: int
    blob_key: str
    spans: Sequence[tuple[int, int]]


def parse_frame_list(text: str) -> list[int]:
    """``1,3,7`` -> [1, 3, 7]. Frame numbers start at 1 (PS3.18 10.4.1.1.4: frames
    are identified by their number, PS3.3 C.7.6.6 counts from 1); anything else is a
    malformed request (400)."""
    pieces = [p.strip() for p in text.split(",")]
    if not pieces or len(pieces) > MAX_FRAME_LIST:
        raise InvalidRequest(f"a frame list has 1 to {MAX_FRAME_LIST} frame numbers")
    numbers: list[int] = []
    for piece in pieces:
        if not piece.isdigit() or int(piece) < 1:
            raise InvalidRequest(
                f"invalid frame number {piece[:20]!r} in {text[:80]!r}: frame numbers are "
                "positive integers separated by commas, the first frame is 1"
            )
        numbers.append(int(piece))
    return numbers


class PixelService:
    """Frames of stored instances.

    Located instances are remembered (a bounded LRU) so that a viewer's run of frame
    requests costs one index query, not one each. A remembered entry is only used while
    its blob still exists: blobs are immutable under their key (a new store of an
    instance gets a new key) and are removed when the instance is deleted or replaced,
    so a missing blob sends the request back to the index.
    """

    def __init__(self, index: IndexStore, blobs: BlobStore, cache_size: int = 4096) -> None:
        self.index = index
        self.blobs = blobs
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Located] = OrderedDict()
        self._lock = threading.Lock()
        # openjpeg logs every tile it encodes at INFO: noise in a server log.
        logging.getLogger("openjpeg").setLevel(logging.WARNING)

    def _cached(self, study: str, series: str, sop: str) -> Located | None:
        with self._lock:
            hit = self._cache.get(sop)
            if hit is not None:
                self._cache.move_to_end(sop)
        if hit is None or (hit.instance.study_uid, hit.instance.series_uid) != (study, series):
            return None
        return hit

    def remembered(self, study: str, series: str, sop: str) -> Located | None:
        hit = self._cached(study, series, sop)
        if hit is None:
            return None
        try:
            with self.blobs.open(hit.instance.blob_key):
                return hit
        except StorageUnavailable:
            with self._lock:
                self._cache.pop(sop, None)
            return None

    def remember(self, located: Located) -> Located:
        if located.converted is None and self.cache_size > 0:
            with self._lock:
                self._cache[located.instance.sop_instance_uid] = located
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return located

    # -- locating --------------------------------------------------------------------

    def lookup(self, study: str, series: str, sop: str) -> tuple[StoredInstance, bytes | None]:
        """The instance and its encoded frame table (None: not computed yet); 404 if the
        instance is not stored under this study and series."""
        found = self.index.frame_table(sop)
        if found is None or (found[0].study_uid, found[0].series_uid) != (study, series):
            raise NotFound(f"instance {sop} is not stored")
        return found

    def locate(self, study: str, series: str, sop: str) -> Located:
        hit = self.remembered(study, series, sop)
        if hit is not None:
            return hit
        return self.remember(self.located(*self.lookup(study, series, sop)))

    def located(self, instance: StoredInstance, encoded: bytes | None) -> Located:
        sop = instance.sop_instance_uid
        if encoded is None:
            encoded = self._compute(instance)
            self.index.set_frame_table(sop, instance.blob_key, encoded)
        if encoded == NO_PIXELS:
            raise NotFound(f"instance {sop} has no pixel data")
        table = FrameTable.decode(encoded)
        if table is not None:
            return Located(instance, table)
        return self._converted(instance)

    def _compute(self, instance: StoredInstance) -> bytes:
        """The frame table of an instance stored before schema v3 (once, then kept)."""
        if instance.transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            return NO_FRAMES
        with self.blobs.open(instance.blob_key) as fh:
            try:
                ds = pydicom.dcmread(fh, defer_size=1024, force=True)
                raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
                if not isinstance(raw, RawDataElement):
                    return NO_PIXELS
                length = -1 if raw.length == 0xFFFFFFFF else raw.length
                table = compute(fh, ds, instance.transfer_syntax, raw.value_tell, length)
            except Exception as exc:  # unreadable: served (or refused) by the slow path
                log.warning("instance %s: no frame table: %s", instance.sop_instance_uid, exc)
                return NO_FRAMES
        log.info("instance %s: frame table computed", instance.sop_instance_uid)
        return table.encode() if table is not None else NO_FRAMES

    def _converted(self, instance: StoredInstance) -> Located:
        with self.blobs.open(instance.blob_key) as fh:
            data = to_explicit_little_endian(fh)
        ds = pydicom.dcmread(io.BytesIO(data), defer_size=1024, force=True)
        raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
        if not isinstance(raw, RawDataElement):
            raise NotFound(f"instance {instance.sop_instance_uid} has no pixel data")
        table = compute(io.BytesIO(data), ds, EXPLICIT_VR_LITTLE_ENDIAN, raw.value_tell, raw.length)
        if table is None:
            raise NotFound(f"instance {instance.sop_instance_uid} has no frames")
        return Located(instance, table, data)

    def ready_frame(
        self, study: str, series: str, sop: str, number: int, wanted: Sequence[Wanted]
    ) -> ReadyFrame | None:
        """Frame ``number`` when it can be answered without waiting: the instance was
        located before (no index query) and the frame goes out as its stored bytes (no
        decoding, shifting or swapping). The caller reads them with ``read_ready``,
        which says whether they were in memory.

        None sends the request down the general path (``locate``, ``output``,
        ``frames`` in a worker thread), which also gives every error its answer.
        """
        hit = self._cached(study, series, sop)
        if hit is None:
            return None
        table = hit.table
        if not 1 <= number <= table.count:
            return None
        try:
            out = self.output(hit, wanted)
        except NotAcceptable:
            return None
        if out.mode == "encode" or (
            out.mode == "native" and table.transfer_syntax not in UNCOMPRESSED
        ):
            return None
        if table.native is not None:
            start, length, shift = table.native_span(number)
            if shift or table.pixel.bits_allocated == 1 or table.swap:
                return None
            spans: Sequence[tuple[int, int]] = [(start, length)]
        else:
            spans = table.fragments[number - 1]
        total = sum(length for _, length in spans)
        if total > READY_FRAME_LIMIT:
            return None  # copying it would hold up the event loop
        return ReadyFrame(out, total, hit.instance.blob_key, spans)

    def read_ready(self, ready: ReadyFrame, into: memoryview) -> bool:
        """A ready frame's bytes into ``into`` (``ready.length`` bytes) if they are all
        in memory (for the event loop, which must not wait on a disk); False (the buffer
        then undefined) sends the request down the general path."""
        at = 0
        for offset, length in ready.spans:
            if not self.blobs.read_now_into(ready.blob_key, offset, into[at : at + length]):
                return False
            at += length
        return True

    def open_ready(self, ready: ReadyFrame) -> tuple[int, int] | None:
        """An open file descriptor of the stored file and the offset of a ready frame's
        bytes (the caller closes it), when the frame is one span all in memory: for
        sending with sendfile(2) from the event loop. None: use ``read_ready``."""
        if len(ready.spans) != 1:
            return None
        offset, length = ready.spans[0]
        fd = self.blobs.open_cached(ready.blob_key, offset, length)
        return None if fd is None else (fd, offset)

    # -- choosing the output ---------------------------------------------------------

    def output(self, located: Located, wanted: Sequence[Wanted]) -> Output:
        """The first acceptable representation this instance's frames can be sent in
        (PS3.18 8.7.8); 406 naming what is available when there is none."""
        stored = located.table.transfer_syntax
        native = stored in UNCOMPRESSED
        stored_media = media_type_of(stored)
        reasons: list[str] = []  # why an asked encoding does not fit these pixels
        for w in wanted:
            if w.transfer_syntax == "*" and w.media_type in (OCTET_STREAM, "image/*"):
                if native:
                    return Output(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, "native", w.multipart)
                return Output(stored_media, stored, "stored", w.multipart)
            if w.media_type == OCTET_STREAM:
                if codec.can_decode(stored):
                    return Output(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, "native", w.multipart)
                continue
            syntaxes = MEDIA_SYNTAXES[w.media_type]
            if w.transfer_syntax in (None, "*") and stored in syntaxes:
                return Output(w.media_type, stored, "stored", w.multipart)
            if w.transfer_syntax == stored:
                return Output(w.media_type, stored, "stored", w.multipart)
            if w.transfer_syntax == JPEG_LOSSLESS and stored == JPEG_LOSSLESS_SV1:
                # An SV1 stream is a Process 14 stream (PS3.5 A.4.1): relabelled, not re-encoded.
                return Output(w.media_type, JPEG_LOSSLESS, "stored", w.multipart)
            target = w.transfer_syntax if w.transfer_syntax not in (None, "*") else syntaxes[0]
            assert target is not None
            if codec.can_encode(target) and codec.can_decode(stored):
                reason = codec.unsuitable(target, located.table.pixel)
                if reason is None:
                    return Output(w.media_type, target, "encode", w.multipart)
                reasons.append(f"{target}: {reason}")  # a later range may still fit
        offers = [f"{OCTET_STREAM} (uncompressed)"] if codec.can_decode(stored) else []
        if not native:
            offers.append(f"{stored_media}; transfer-syntax={stored} (as stored)")
        if codec.can_decode(stored):
            offers += [
                f"{media_type_of(ts)}; transfer-syntax={ts}"
                for ts in codec.encodable()
                if codec.unsuitable(ts, located.table.pixel) is None
            ]
        raise NotAcceptable(
            f"cannot provide the frames of instance {located.instance.sop_instance_uid} "
            f"(stored as {stored}) in any accepted media type"
            + "".join(f"; {r}" for r in reasons)
            + "; available: "
            + ", ".join(offers)
        )

    # -- reading ---------------------------------------------------------------------

    def check_numbers(self, located: Located, numbers: Sequence[int]) -> None:
        count = located.table.count
        beyond = [n for n in numbers if n > count]
        if beyond:
            raise NotFound(
                f"instance {located.instance.sop_instance_uid} has {count} frame(s); "
                f"frame {beyond[0]} does not exist"
            )

    def open_source(self, located: Located) -> AbstractContextManager[BinaryIO]:
        if located.converted is not None:
            return nullcontext(io.BytesIO(located.converted))
        return self.blobs.open(located.instance.blob_key)

    @staticmethod
    def stored_frame(fh: BinaryIO, table: FrameTable, number: int) -> bytes:
        """The frame's bytes as stored (native: little endian, starting at bit 0)."""
        if table.native is not None:
            start, length, shift = table.native_span(number)
            fh.seek(start)
            data = fh.read(length)
            if len(data) < length:
                raise StorageUnavailable(f"the stored file is shorter than frame {number} needs")
            if shift or table.pixel.bits_allocated == 1:
                data = unshift(data, shift, table.native[1])
            if table.swap:
                import numpy as np

                dtype = np.dtype(f">u{table.swap}")
                data = np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("<")).tobytes()
            return data
        pieces = []
        for offset, length in table.fragments[number - 1]:
            fh.seek(offset)
            pieces.append(fh.read(length))
            if len(pieces[-1]) < length:
                raise StorageUnavailable(f"the stored file is shorter than frame {number} needs")
        return b"".join(pieces)

    @staticmethod
    def convert(table: FrameTable, data: bytes, out: Output) -> bytes:
        if out.mode == "stored":
            return data
        if out.mode == "native":
            return codec.native_bytes(table, data)
        return codec.encode(table, data, out.transfer_syntax)

    def frames(
        self, located: Located, numbers: Sequence[int], out: Output
    ) -> Generator[bytes, None, None]:
        """Each asked frame in the chosen representation, reading only its bytes."""
        with self.open_source(located) as fh:
            for number in numbers:
                yield self.convert(located.table, self.stored_frame(fh, located.table, number), out)
