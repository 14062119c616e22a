"""Rendered resources and thumbnails (PS3.18 10.4.1.1.3, 10.4.1.1.6, 8.3.5).

Images: one frame read through the frame table, decoded, put through the presentation
pipeline of dicom/render.py. Non-image objects are answered in their natural type:
Encapsulated PDF as application/pdf, video (MPEG-2/4, HEVC) as its stored stream.
Thumbnails are cached as files keyed by the resource's version, so any new or deleted
instance makes a new one. Each study's thumbnails live in one folder, removed with the
study (they are pictures of the patient: a deleted study must not linger in a cache).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pydicom
from pydicom.dataset import Dataset

from dicomweb_server.dicom import codec
from dicomweb_server.dicom.frames import VIDEO_SYNTAXES
from dicomweb_server.dicom.pixel_media import media_type_of
from dicomweb_server.dicom.render import (
    RenderParams,
    Viewport,
    encode_animation,
    frame_duration_ms,
    present,
    render,
)
from dicomweb_server.errors import NotAcceptable, NotFound
from dicomweb_server.services.pixels import Located, PixelService
from dicomweb_server.services.retrieve import RetrieveService
from dicomweb_server.storage.interfaces import StoredInstance

log = logging.getLogger(__name__)
# Presentation attributes read from the stored DICOM JSON (PS3.3 C.11.1, C.11.2).
_PRESENTATION = {
    "00280004": "PhotometricInterpretation",
    "00280100": "BitsAllocated",
    "00280101": "BitsStored",
    "00280103": "PixelRepresentation",
    "00281050": "WindowCenter",
    "00281051": "WindowWidth",
    "00281056": "VOILUTFunction",
    "00281052": "RescaleIntercept",
    "00281053": "RescaleSlope",
    "00281054": "RescaleType",
    "00181063": "FrameTime",
    "00180040": "CineRate",
}
# Modality LUT Sequence, VOI LUT Sequence: their LUT data may be bulk data.
_NEEDS_FILE = ("00283000", "00283010")
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
ENCAPSULATED_DOCUMENT = "00420011"
THUMBNAIL_SIZE = 128
# An animation is held in memory while encoded: 300 frames of 512x512 is ~80 MB.
MAX_ANIMATED_FRAMES = 300
_CHUNK = 1 << 20


@dataclass
class Rendered:
    """A rendered answer: in memory (images) or streamed (documents, video)."""

    media_type: str
    body: bytes | Iterator[bytes]
    length: int
    # Non-image objects may be embedded cross-origin by viewers (OHIF): CORP header.
    cross_origin: bool = False
    # Documents and video: (start, length) -> those bytes, for Range requests (a
    # browser's video element seeks with them, pdf.js loads large files with them).
    part: Callable[[int, int], Iterator[bytes]] | None = None


class RenderService:
    def __init__(self, retrieve: RetrieveService, pixels: PixelService, cache_dir: Path) -> None:
        self.retrieve = retrieve
        self.pixels = pixels
        self.cache_dir = cache_dir
        # Presentation attributes by blob key: a key's content never changes.
        self._headers: OrderedDict[str, Dataset] = OrderedDict()
        self._lock = threading.Lock()

    def _header(self, located: Located) -> Dataset:
        key = located.instance.blob_key
        with self._lock:
            ds = self._headers.get(key)
        if ds is None:
            ds = self._read_header(located)
            with self._lock:
                self._headers[key] = ds
                while len(self._headers) > 1024:
                    self._headers.popitem(last=False)
        return ds

    def _read_header(self, located: Located) -> Dataset:
        """The attributes the presentation pipeline needs, from the metadata kept at
        store time; the file's header is parsed only for LUT sequences and palettes."""
        i = located.instance
        rows = self.retrieve.metadata(i.study_uid, i.series_uid, i.sop_instance_uid)
        meta = orjson.loads(rows[0])
        photometric = (meta.get("00280004", {}).get("Value") or [""])[0]
        if not any(tag in meta for tag in _NEEDS_FILE) and photometric != "PALETTE COLOR":
            ds = Dataset()
            for tag, keyword in _PRESENTATION.items():
                values = meta.get(tag, {}).get("Value")
                if values:
                    setattr(ds, keyword, values if len(values) > 1 else values[0])
            return ds
        if located.converted is not None:
            return pydicom.dcmread(
                io.BytesIO(located.converted), stop_before_pixels=True, force=True
            )
        with self.pixels.blobs.open(located.instance.blob_key) as fh:
            return pydicom.dcmread(fh, stop_before_pixels=True, force=True)

    def image(self, located: Located, number: int, params: RenderParams) -> bytes:
        self.pixels.check_numbers(located, [number])
        table = located.table
        if not codec.can_decode(table.transfer_syntax):
            raise NotAcceptable(f"cannot decode pixel data stored as {table.transfer_syntax}")
        with self.pixels.open_source(located) as fh:
            data = self.pixels.stored_frame(fh, table, number)
        frame = codec.decode(table, data)
        ds = self._header(located)
        return render(frame, ds, codec.decoded_photometric(table.pixel), params)

    def animation(self, located: Located, params: RenderParams) -> bytes:
        """Every frame of a multi-frame instance as one animated GIF, frame by frame
        (each read alone through the frame table)."""
        table = located.table
        if table.count > MAX_ANIMATED_FRAMES:
            raise NotAcceptable(
                f"the instance has {table.count} frames; animated GIF is limited to "
                f"{MAX_ANIMATED_FRAMES}: ask for frames (.../frames/{{n}}/rendered) instead"
            )
        if not codec.can_decode(table.transfer_syntax):
            raise NotAcceptable(f"cannot decode pixel data stored as {table.transfer_syntax}")
        ds = self._header(located)
        photometric = codec.decoded_photometric(table.pixel)
        images = []
        with self.pixels.open_source(located) as fh:
            for number in range(1, table.count + 1):
                frame = codec.decode(table, self.pixels.stored_frame(fh, table, number))
                images.append(present(frame, ds, photometric, params))
        return encode_animation(images, frame_duration_ms(ds))

    def _document(self, instance: StoredInstance) -> Rendered:
        i = instance
        where = self.retrieve.bulkdata(
            i.study_uid, i.series_uid, i.sop_instance_uid, ENCAPSULATED_DOCUMENT
        )
        if isinstance(where, bytes):
            value = where
            return Rendered(
                "application/pdf", value, len(value), True, lambda s, n: iter([value[s : s + n]])
            )
        key, offset, length = where

        def part(start: int, count: int) -> Iterator[bytes]:
            return self.retrieve.read_range(key, offset + start, count)

        return Rendered("application/pdf", part(0, length), length, True, part)

    def _video(self, located: Located) -> Rendered:
        fragments = located.table.fragments[0]
        total = sum(length for _, length in fragments)

        def part(start: int, count: int) -> Iterator[bytes]:
            position = 0  # of the current fragment within the stream
            for offset, length in fragments:
                low, high = max(start, position), min(start + count, position + length)
                if low < high:
                    key = located.instance.blob_key
                    yield from self.retrieve.read_range(key, offset + low - position, high - low)
                position += length

        media = media_type_of(located.table.transfer_syntax)
        return Rendered(media, part(0, total), total, True, part)

    def instance(
        self, study: str, series: str, sop: str, frame: int | None, params: RenderParams
    ) -> Rendered:
        """One instance rendered: ``frame``, or all frames of a multi-frame image as an
        animated GIF when GIF is asked for (PS3.18 Table 8.7.4-1: the multi-frame
        rendered type), else its first frame; documents and video in their own type."""
        located = self.pixels.remembered(study, series, sop)
        if located is None:
            found, encoded = self.pixels.lookup(study, series, sop)
            if found.sop_class_uid == ENCAPSULATED_PDF and frame is None:
                return self._document(found)
            try:
                located = self.pixels.remember(self.pixels.located(found, encoded))
            except NotFound as exc:  # stored, but nothing to render
                raise NotAcceptable(f"{exc.message}: nothing to render") from exc
        if located.table.transfer_syntax in VIDEO_SYNTAXES and frame is None:
            return self._video(located)
        if not params.media_type:
            raise NotAcceptable("rendered images are available as image/jpeg, image/png, image/gif")
        if frame is None and located.table.count > 1 and params.media_type == "image/gif":
            data = self.animation(located, params)
        else:
            data = self.image(located, frame or 1, params)
        return Rendered(params.media_type, data, len(data))

    def images(
        self, study: str, series: str | None, params: RenderParams
    ) -> tuple[list[StoredInstance], Iterator[bytes]]:
        """Study or series rendered: the first frame of each image instance."""
        found = [
            i
            for i in self.retrieve.instances(study, series)
            if i.sop_class_uid != ENCAPSULATED_PDF and i.transfer_syntax not in VIDEO_SYNTAXES
        ]
        if not found:
            raise NotFound(f"no image instances under {'series ' + series if series else study}")

        def each() -> Iterator[bytes]:
            for i in found:
                try:
                    located = self.pixels.locate(i.study_uid, i.series_uid, i.sop_instance_uid)
                    yield self.image(located, 1, params)
                except (NotFound, NotAcceptable) as exc:
                    log.warning("instance %s not rendered: %s", i.sop_instance_uid, exc.message)

        return found, each()

    # -- thumbnails --------------------------------------------------------------------

    def thumbnail(
        self, study: str, series: str | None, sop: str | None, params: RenderParams
    ) -> bytes:
        """A small JPEG of a representative frame: the middle instance of the first
        series with images, its middle frame; cached until the resource changes."""
        version = self.retrieve.version(study, series, sop)
        viewport = params.viewport or Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
        params = RenderParams(params.media_type, params.quality, params.window, viewport)
        # One folder per resource inside its study's folder; file names start with its
        # version, so a new version replaces (removes) the thumbnails of older ones.
        folder = hashlib.sha256(repr((series, sop)).encode()).hexdigest()[:32]
        stamp = hashlib.sha256(repr((version.updated_at, version.count)).encode()).hexdigest()
        variant = hashlib.sha256(repr(params).encode()).hexdigest()[:16]
        where = self._study_folder(study) / folder
        path = where / f"{stamp[:16]}-{variant}.img"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = self._representative(study, series, sop, params)
        where.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        temp.write_bytes(data)
        os.replace(temp, path)  # readers see a whole file or none
        for old in where.glob("*.img"):
            if not old.name.startswith(stamp[:16]):
                old.unlink(missing_ok=True)
        return data

    def _study_folder(self, study: str) -> Path:
        name = hashlib.sha256(study.encode()).hexdigest()
        return self.cache_dir / name[:2] / name

    def forget(self, study: str) -> None:
        """Remove the study's cached thumbnails (after a delete of it or of a part)."""
        where = self._study_folder(study)
        # Renamed first: a thumbnail being written concurrently lands in the renamed
        # folder and goes with it, not in a half-removed one.
        doomed = where.with_name(f"{where.name}.{os.getpid()}.{threading.get_ident()}.gone")
        try:
            os.rename(where, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def _representative(
        self, study: str, series: str | None, sop: str | None, params: RenderParams
    ) -> bytes:
        candidates = [
            i
            for i in self.retrieve.instances(study, series, sop)
            if i.sop_class_uid != ENCAPSULATED_PDF and i.transfer_syntax not in VIDEO_SYNTAXES
        ]
        by_series: dict[str, list[StoredInstance]] = {}
        for i in candidates:
            by_series.setdefault(i.series_uid, []).append(i)
        for members in by_series.values():
            ordered = members[len(members) // 2 :] + members[: len(members) // 2]
            for i in ordered:
                try:
                    located = self.pixels.locate(i.study_uid, i.series_uid, i.sop_instance_uid)
                    middle = (located.table.count + 1) // 2
                    return self.image(located, middle, params)
                except (NotFound, NotAcceptable) as exc:
                    log.info("no thumbnail from %s: %s", i.sop_instance_uid, exc.message)
        raise NotFound("nothing to make a thumbnail of: no renderable image")
