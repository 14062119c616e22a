"""What encoding one frame costs on the frame path (issue #3).

`python -m benchmarks.jpeg_encode [--rounds 30]`

Times ``codec.encode`` (what a frame request with an encoding Accept runs: the stored
frame decoded, then encoded) for one 512x512 frame stored natively, per target
transfer syntax, and reports the median and best milliseconds and the size. Two
synthetic frames: a CT-like 16-bit signed slice (a water disc in air, 20 HU noise,
12 bits used) and an 8-bit gradient with mild noise. Every lossless result is decoded
and compared with the source, so a fast but wrong encoder cannot report.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from dicomweb_server.dicom import codec
from dicomweb_server.dicom.frames import FrameTable, PixelInfo
from dicomweb_server.dicom.pixel_media import JPEG_BASELINE, JPEG_LOSSLESS_SV1
from dicomweb_server.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN

SIZE = 512
TARGETS = {
    "JPEG Lossless SV1 (.70, ours)": JPEG_LOSSLESS_SV1,
    "JPEG Baseline (.50, Pillow)": JPEG_BASELINE,
    "JPEG-LS lossless (.80, pyjpegls)": "1.2.840.10008.1.2.4.80",
    "JPEG 2000 lossless (.90, openjpeg)": "1.2.840.10008.1.2.4.90",
    "RLE (.5, pylibjpeg-rle)": "1.2.840.10008.1.2.5",
}


def frames() -> dict[str, tuple[FrameTable, bytes, np.ndarray]]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    disc = ((x - SIZE // 2) ** 2 + (y - SIZE // 2) ** 2) < (SIZE * 2 // 5) ** 2
    ct = (disc * 1000 - 1000 + rng.normal(0, 20, (SIZE, SIZE))).astype(np.int16)
    grey = np.clip((x + y) / 4 + rng.normal(0, 3, (SIZE, SIZE)), 0, 255).astype(np.uint8)

    def table(bits: int, stored: int, signed: int) -> FrameTable:
        info = PixelInfo(SIZE, SIZE, 1, bits, stored, signed, "MONOCHROME2", 0, 1)
        return FrameTable(EXPLICIT_VR_LITTLE_ENDIAN, info, native=(0, SIZE * SIZE * bits))

    return {
        "CT 16-bit signed (12 used)": (table(16, 16, 1), ct.tobytes(), ct),
        "8-bit grey": (table(8, 8, 0), grey.tobytes(), grey),
    }


def measure(rounds: int) -> list[tuple[str, str, float, float, int]]:
    rows = []
    for frame_name, (table, data, source) in frames().items():
        for target_name, target in TARGETS.items():
            if not codec.can_encode(target) or codec.unsuitable(target, table.pixel):
                continue
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                encoded = codec.encode(table, data, target)
                times.append(time.perf_counter() - start)
            if target != JPEG_BASELINE:
                back = FrameTable(target, table.pixel, fragments=((),))
                assert np.array_equal(codec.decode(back, encoded), source), target_name
            rows.append(
                (
                    frame_name,
                    target_name,
                    statistics.median(times) * 1000,
                    min(times) * 1000,
                    len(encoded),
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| frame | encoding | median ms | best ms | bytes (of raw) |")
    print("|---|---|---|---|---|")
    for frame, target, median, best, size in measure(args.rounds):
        raw = SIZE * SIZE * (2 if frame.startswith("CT") else 1)
        print(f"| {frame} | {target} | {median:.1f} | {best:.1f} | {size:,} ({size / raw:.0%}) |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
