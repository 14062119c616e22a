"""Rendering one frame to a consumer image (PS3.18 8.3.5, 10.4.1.1.3): pure numpy + Pillow.

The grayscale pipeline of PS3.3 C.11: Modality LUT (Rescale Slope/Intercept or the
Modality LUT Sequence), then VOI (the ``window`` parameter, else the dataset's first
Window Center/Width, else a VOI LUT, else the frame's range), then MONOCHROME1 inversion.
Colour: RGB as is, YBR_* converted to RGB by the decoder, PALETTE COLOR through its
LUTs. Then the viewport (crop, flip, scale to fit) and the encoder.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut

from dicomweb_server.errors import InvalidRequest

RENDERED_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
_FUNCTIONS = ("linear", "linear_exact", "sigmoid")
MAX_VIEWPORT = 8192


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    width: int
    height: int
    # Source region (sx, sy, sw, sh); a negative sw/sh flips it (PS3.18 8.3.5.1.3).
    source: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class RenderParams:
    media_type: str = "image/jpeg"
    quality: int = 90
    window: Window | None = None
    viewport: Viewport | None = None


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest(f"{what}: {text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidRequest(f"{what}: {text[:40]!r} is not a finite number")
    return value


def parse_window(text: str) -> Window:
    """``center,width[,function]`` (PS3.18 8.3.5.1.4); function as in PS3.3 C.11.2.1.3."""
    pieces = [p.strip() for p in text.split(",")]
    if len(pieces) not in (2, 3):
        raise InvalidRequest(f"window={text[:80]!r}: expected center,width[,function]")
    center = _number(pieces[0], "window center")
    width = _number(pieces[1], "window width")
    function = pieces[2].lower() if len(pieces) == 3 else "linear"
    if function not in _FUNCTIONS:
        raise InvalidRequest(f"window function {pieces[2][:40]!r}: one of {', '.join(_FUNCTIONS)}")
    if width <= 0 or (function == "linear" and width < 1):
        raise InvalidRequest(f"window width {pieces[1]!r} must be positive (>= 1 for linear)")
    return Window(center, width, function)


def parse_viewport(text: str) -> Viewport:
    """``vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3); source values may be left empty."""
    pieces = [p.strip() for p in text.split(",")]
    if len(pieces) not in (2, 6):
        raise InvalidRequest(f"viewport={text[:80]!r}: expected vw,vh[,sx,sy,sw,sh]")
    try:
        vw, vh = int(pieces[0]), int(pieces[1])
        source = None
        if len(pieces) == 6:
            sx, sy, sw, sh = (int(p) if p else 0 for p in pieces[2:])
            source = (sx, sy, sw, sh)
    except ValueError:
        raise InvalidRequest(f"viewport={text[:80]!r}: values must be integers") from None
    if not (0 < vw <= MAX_VIEWPORT and 0 < vh <= MAX_VIEWPORT):
        raise InvalidRequest(f"viewport size must be between 1 and {MAX_VIEWPORT}")
    if source is not None and (source[0] < 0 or source[1] < 0):
        raise InvalidRequest("viewport sx and sy must not be negative")
    return Viewport(vw, vh, source)


def parse_quality(text: str) -> int:
    """``quality`` 1..100 (PS3.18 8.3.5.1.5)."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 100:
        raise InvalidRequest(f"quality={text[:40]!r}: an integer from 1 to 100")
    return int(text)


def _first(ds: Dataset, keyword: str) -> float | None:
    """The first value of a possibly multi-valued number (PS3.3 C.11.2.1.2: the first
    Window Center/Width pair is the default)."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        if not isinstance(value, (str, bytes, int, float)):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def apply_window(values: np.ndarray, window: Window, bits_out: int = 8) -> np.ndarray:
    """VOI windowing to 0..2^bits-1 (PS3.3 C.11.2.1.2.1, C.11.2.1.3.1, C.11.2.1.3.2)."""
    top = float(2**bits_out - 1)
    c, w = window.center, window.width
    x = values.astype(np.float64)
    if window.function == "linear_exact":
        out = ((x - c) / w + 0.5) * top
    elif window.function == "sigmoid":
        out = top / (1 + np.exp(-4 * (x - c) / w))
    else:
        out = ((x - (c - 0.5)) / (w - 1) + 0.5) * top
    return np.clip(np.round(out), 0, top).astype(np.uint8)


def _grey(frame: np.ndarray, ds: Dataset, photometric: str, window: Window | None) -> np.ndarray:
    """Grey levels of a monochrome frame. Integer frames go through a lookup table built
    over the frame's value range: the same pipeline, computed once per distinct value."""
    if frame.dtype.kind in "iu" and frame.itemsize <= 2 and frame.size > 4096:
        low, high = int(frame.min()), int(frame.max())
        domain = np.arange(low, high + 1, dtype=np.int32)
        table = _grey_values(domain.astype(frame.dtype), ds, photometric, window)
        return table[frame.astype(np.int32) - low]
    return _grey_values(frame, ds, photometric, window)


def _grey_values(
    frame: np.ndarray, ds: Dataset, photometric: str, window: Window | None
) -> np.ndarray:
    values = apply_modality_lut(frame, ds)
    chosen = window
    if chosen is None:
        center, width = _first(ds, "WindowCenter"), _first(ds, "WindowWidth")
        if center is not None and width is not None and width > 0:
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().lower()
            chosen = Window(
                center, max(width, 1.0), function if function in _FUNCTIONS else "linear"
            )
    if chosen is not None:
        out = apply_window(values, chosen)
    elif "VOILUTSequence" in ds:
        voi = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        low, high = float(voi.min()), float(voi.max())
        out = (
            np.zeros(voi.shape, np.uint8)
            if high <= low
            else (np.round((voi - low) / (high - low) * 255).astype(np.uint8))
        )
    else:
        low, high = float(np.min(values)), float(np.max(values))
        out = apply_window(values, Window((low + high) / 2, max(high - low, 1.0), "linear_exact"))
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def to_image(
    frame: np.ndarray, ds: Dataset, photometric: str, window: Window | None
) -> Image.Image:
    """One decoded frame as an 8-bit Pillow image (L or RGB)."""
    if photometric.startswith("MONOCHROME"):
        return Image.fromarray(_grey(frame, ds, photometric, window), mode="L")
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        bits = int(ds.get("RedPaletteColorLookupTableDescriptor", [0, 0, 8])[2] or 8)
        if bits > 8 or rgb.max() > 255:
            rgb = rgb / 257.0 if bits == 16 else rgb / float(2**bits - 1) * 255.0
        return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    rgb = frame
    if rgb.ndim != 3:
        raise InvalidRequest(f"cannot render photometric interpretation {photometric}")
    if rgb.dtype != np.uint8:
        bits = int(ds.get("BitsStored", 8) or 8)
        rgb = np.clip(rgb.astype(np.float64) / float(2**bits - 1) * 255.0, 0, 255)
    if window is not None:
        return Image.fromarray(apply_window(rgb, window), mode="RGB")
    return Image.fromarray(rgb.astype(np.uint8), mode="RGB")


def apply_viewport(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    """Crop to the source region (flipping for negative sw/sh), then scale to fit in
    vw x vh keeping the aspect ratio (PS3.18 8.3.5.1.3)."""
    if viewport is None:
        return image
    if viewport.source is not None:
        sx, sy, sw, sh = viewport.source
        # The region is sx, sy, |sw|, |sh|; a negative sw or sh flips it (8.3.5.1.3).
        width = abs(sw) or image.width - sx
        height = abs(sh) or image.height - sy
        box = (sx, sy, min(sx + width, image.width), min(sy + height, image.height))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise InvalidRequest("viewport source region lies outside the image")
        image = image.crop(box)
        if sw < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR) if size != image.size else image


def encode_image(image: Image.Image, media_type: str, quality: int = 90) -> bytes:
    out = io.BytesIO()
    kind = RENDERED_TYPES[media_type]
    options: dict[str, Any] = {"quality": quality} if kind == "JPEG" else {}
    image.save(out, format=kind, **options)
    return out.getvalue()


def present(frame: np.ndarray, ds: Dataset, photometric: str, params: RenderParams) -> Image.Image:
    """One decoded frame through the presentation pipeline and the viewport."""
    return apply_viewport(to_image(frame, ds, photometric, params.window), params.viewport)


def render(frame: np.ndarray, ds: Dataset, photometric: str, params: RenderParams) -> bytes:
    return encode_image(present(frame, ds, photometric, params), params.media_type, params.quality)


def frame_duration_ms(ds: Dataset) -> int:
    """How long each frame of an animation shows: Frame Time (0018,1063), else 1000 /
    Cine Rate (0018,0040), else 100 ms. GIF counts in 1/100 s and browsers show shorter
    delays than 20 ms as 100 ms, so the result is kept within 20 ms .. 10 s."""
    duration = _first(ds, "FrameTime")
    if not duration:
        rate = _first(ds, "CineRate")
        duration = 1000.0 / rate if rate else 100.0
    return int(min(max(duration, 20.0), 10000.0))


def encode_animation(images: list[Image.Image], duration_ms: int) -> bytes:
    """Frames as one looping animated GIF (the multi-frame rendered type, PS3.18
    Table 8.7.4-1)."""
    out = io.BytesIO()
    first, *rest = images
    first.save(out, format="GIF", save_all=True, append_images=rest, duration=duration_ms, loop=0)
    return out.getvalue()
