"""Where each frame of an instance's Pixel Data lies in its stored file.

Computed once at store time (or lazily, once, for instances stored before schema v3)
and kept in the index, so that a frame request reads only that frame's bytes:

- native pixel data (PS3.5 8.1.1): frame ``n`` starts ``n * Rows * Columns *
  SamplesPerPixel * BitsAllocated`` bits into the value; with BitsAllocated = 1 a frame
  need not start on a byte boundary, so positions are kept in bits;
- encapsulated pixel data (PS3.5 A.4): the fragments after the Basic Offset Table,
  grouped into frames by the Extended Offset Table (7FE0,0001), else the Basic Offset
  Table, else one fragment per frame when the counts agree, else by the codestream
  start markers; video transfer syntaxes keep the whole stream as one unit.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson
from pydicom.dataset import Dataset

from dicomweb_server.dicom.uids import EXPLICIT_VR_BIG_ENDIAN, UNCOMPRESSED

_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_END = b"\xfe\xff\xdd\xe0"
# Codestream starts: JPEG / JPEG-LS SOI, JPEG 2000 SOC+SIZ, JP2 signature box.
_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")
# MPEG-2, MPEG-4 AVC/H.264, HEVC/H.265 (PS3.5 A.4.5-A.4.7, 8.2.5-8.2.8): one stream.
VIDEO_SYNTAXES = frozenset(
    {f"1.2.840.10008.1.2.4.{n}" for n in (100, 101, 102, 103, 104, 105, 106, 107, 108)}
)
# An upper bound on fragments scanned, so a hostile file cannot make ingest loop long.
_MAX_FRAGMENTS = 1_000_000


@dataclass(frozen=True)
class PixelInfo:
    """The Image Pixel module attributes needed to decode one frame (PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    planar_configuration: int
    frames: int

    @property
    def frame_bits(self) -> int:
        return self.rows * self.columns * self.samples * self.bits_allocated

    def decode_options(self) -> dict[str, Any]:
        """Keyword arguments for pydicom's decoders and encoders, for one frame."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric,
            "planar_configuration": self.planar_configuration,
            "number_of_frames": 1,
            "pixel_keyword": "PixelData",
        }


@dataclass(frozen=True)
class FrameTable:
    transfer_syntax: str
    pixel: PixelInfo
    # Native: (file offset of the Pixel Data value, bits per frame); else None.
    native: tuple[int, int] | None = None
    # Encapsulated: per frame, its fragments' (file offset, length).
    fragments: tuple[tuple[tuple[int, int], ...], ...] = ()
    # Byte width to swap to little endian (Explicit VR Big Endian, OW), else 0.
    swap: int = 0

    @property
    def count(self) -> int:
        return self.pixel.frames if self.native else len(self.fragments)

    @property
    def encapsulated(self) -> bool:
        return self.native is None

    def native_span(self, number: int) -> tuple[int, int, int]:
        """Frame ``number`` (1-based) of native data: (byte offset, byte length, bit shift)."""
        assert self.native is not None
        offset, bits = self.native
        first_bit = (number - 1) * bits
        start = offset + first_bit // 8
        shift = first_bit % 8
        return start, (shift + bits + 7) // 8, shift

    def encode(self) -> bytes:
        p = self.pixel
        out: dict[str, Any] = {
            "ts": self.transfer_syntax,
            "px": [
                p.rows, p.columns, p.samples, p.bits_allocated, p.bits_stored,
                p.pixel_representation, p.photometric, p.planar_configuration, p.frames,
            ],
        }  # fmt: skip
        if self.native:
            out["n"] = list(self.native)
        else:
            out["f"] = [[v for frag in frame for v in frag] for frame in self.fragments]
        if self.swap:
            out["s"] = self.swap
        return orjson.dumps(out)

    @classmethod
    def decode(cls, data: bytes) -> FrameTable | None:
        """The stored table; None when the stored value says "no frames" (``{}``)."""
        raw = orjson.loads(data)
        if "px" not in raw:
            return None
        px = raw["px"]
        pixel = PixelInfo(*px)
        native = tuple(raw["n"]) if "n" in raw else None
        fragments = tuple(
            tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
            for flat in raw.get("f", ())
        )
        return cls(raw["ts"], pixel, native, fragments, raw.get("s", 0))


# The attributes read: a pydicom Dataset, or keyword -> value as pydicom decodes them.
PixelSource = Dataset | Mapping[str, Any]

# Stored instead of a table: frames exist but cannot be read in place (deflated,
# unrecognised fragments), or the object has no Pixel Data at all.
NO_FRAMES = b"{}"
NO_PIXELS = b'{"none":1}'


def _int(ds: PixelSource, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return default


def pixel_info(ds: PixelSource) -> PixelInfo | None:
    """The decoding attributes of ``ds``; None when it has no usable image description."""
    rows, columns = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    bits = _int(ds, "BitsAllocated", 0)
    if rows <= 0 or columns <= 0 or bits <= 0:
        return None
    try:
        photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip()
    except Exception:
        photometric = "MONOCHROME2"
    return PixelInfo(
        rows=rows,
        columns=columns,
        samples=max(1, _int(ds, "SamplesPerPixel", 1)),
        bits_allocated=bits,
        bits_stored=_int(ds, "BitsStored", bits),
        pixel_representation=_int(ds, "PixelRepresentation", 0),
        photometric=photometric,
        planar_configuration=_int(ds, "PlanarConfiguration", 0),
        frames=max(1, _int(ds, "NumberOfFrames", 1)),
    )


def _fragments(fp: BinaryIO, offset: int, size: int) -> tuple[bytes, list[tuple[int, int]]]:
    """(Basic Offset Table bytes, [(value offset, length)] of each fragment) (PS3.5 A.4)."""
    fp.seek(offset)
    header = fp.read(8)
    if len(header) < 8 or header[:4] != _ITEM:
        raise ValueError("encapsulated Pixel Data does not start with an Item")
    (bot_length,) = struct.unpack("<I", header[4:])
    bot = fp.read(bot_length)
    position = offset + 8 + bot_length
    found: list[tuple[int, int]] = []
    while len(found) < _MAX_FRAGMENTS:
        fp.seek(position)
        header = fp.read(8)
        if len(header) < 8 or header[:4] == _SEQ_END:
            break
        if header[:4] != _ITEM:
            raise ValueError(f"unexpected tag in encapsulated Pixel Data at offset {position}")
        (length,) = struct.unpack("<I", header[4:])
        if position + 8 + length > size:
            raise ValueError("a Pixel Data fragment runs past the end of the file")
        found.append((position + 8, length))
        position += 8 + length
    return bot, found


def _group(
    fp: BinaryIO, ds: PixelSource, ts: str, bot: bytes, frags: list[tuple[int, int]], frames: int
) -> list[list[tuple[int, int]]] | None:
    if not frags:
        return None
    if ts in VIDEO_SYNTAXES or frames == 1:
        return [frags]
    if len(frags) == frames:
        return [[f] for f in frags]  # one fragment per frame (also what an EOT implies)
    first = frags[0][0] - 8  # offsets are from the first fragment's Item tag
    if bot and len(bot) % 4 == 0:
        starts = list(struct.unpack(f"<{len(bot) // 4}I", bot))
    elif "ExtendedOffsetTable" in ds:
        value: Any = ds.get("ExtendedOffsetTable")
        starts = list(struct.unpack(f"<{len(value) // 8}Q", value))
    else:
        starts = []
    if len(starts) == frames:
        grouped: list[list[tuple[int, int]]] = [[] for _ in starts]
        index = -1
        for frag in frags:
            rel = frag[0] - 8 - first
            while index + 1 < len(starts) and starts[index + 1] <= rel:
                index += 1
            if index < 0:
                return None
            grouped[index].append(frag)
        return grouped if all(grouped) else None
    # No usable table: a frame starts with its codestream's start marker.
    grouped = []
    for frag in frags:
        fp.seek(frag[0])
        head = fp.read(12)
        if any(head.startswith(s) for s in _STARTS) or not grouped:
            grouped.append([frag])
        else:
            grouped[-1].append(frag)
    return grouped if len(grouped) == frames else None


def compute(
    fp: BinaryIO, ds: PixelSource, transfer_syntax: str, pixel_offset: int, pixel_length: int
) -> FrameTable | None:
    """The frame table of one stored object, or None if its frames cannot be located.

    ``pixel_offset`` is the file offset of the Pixel Data value, ``pixel_length`` its
    length (-1 when undefined, i.e. encapsulated).
    """
    info = pixel_info(ds)
    if info is None:
        return None
    if transfer_syntax in UNCOMPRESSED and pixel_length >= 0:
        if pixel_length * 8 < info.frame_bits * info.frames:
            return None
        swap = 0
        if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN and info.bits_allocated > 8:
            swap = info.bits_allocated // 8
        return FrameTable(transfer_syntax, info, (pixel_offset, info.frame_bits), swap=swap)
    if pixel_length >= 0:
        return None
    fp.seek(0, 2)
    size = fp.tell()
    try:
        bot, frags = _fragments(fp, pixel_offset, size)
        grouped = _group(fp, ds, transfer_syntax, bot, frags, info.frames)
    except (ValueError, struct.error, OSError):
        return None
    if grouped is None:
        return None
    return FrameTable(transfer_syntax, info, None, tuple(tuple(g) for g in grouped))


def unshift(data: bytes, shift: int, bits: int) -> bytes:
    """A bit-packed (BitsAllocated = 1) frame moved to start at bit 0 (PS3.5 8.1.1:
    pixels are packed least significant bit first)."""
    import numpy as np

    unpacked = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    return bytes(np.packbits(unpacked[shift : shift + bits], bitorder="little").tobytes())
