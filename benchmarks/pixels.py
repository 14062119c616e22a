"""Pixel workloads (issue #3): random single frames and rendered JPEGs, 1 and N clients.

``python -m benchmarks pixels [--quick] [--compare orthanc]`` stores the multiframe
instance and the CT series of the corpus in each target, then measures for a fixed
time each: frames/s of random frames of the multiframe instance, of frame 1 of random
CT slices (both ``application/octet-stream; transfer-syntax=*``), and rendered JPEG
images/s of random CT slices. Every answer is checked (status, one part, frame size;
JPEG magic). The multiframe frames are also asked by wrk when it is installed (a C
client, so the server's own rate shows; answers not checked). Three yardsticks of the
octet-stream path: raw reads of the same frames (pread of each frame's bytes from the
stored file, no HTTP) from the page cache, and from the device with O_DIRECT by as
many readers as clients (the raw disk read speed); and nginx serving each frame,
framed as the same one-part multipart body, as a static file to the same clients
(HTTP with no application at all).
"""

from __future__ import annotations

import mmap
import os
import random
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .corpus import Corpus, Record
from .httpio import ACCEPT_FRAMES, BaseUrl, Client, split_multipart
from .stats import summary_ms
from .stow import make_batches, run_stow
from .targets import StaticTarget, Target

_STATIC_BOUNDARY = "frame-boundary"
_BLOCK = 4096
_STATIC_TYPE = f'multipart/related; type="application/octet-stream"; boundary={_STATIC_BOUNDARY}'


def _frame_request(client: Client, path: str, size: int) -> str | None:
    resp = client.request("GET", path, {"Accept": ACCEPT_FRAMES})
    if resp.status != 200:
        return f"HTTP {resp.status}: {resp.body[:120]!r}"
    parts = split_multipart(resp.body, resp.headers.get("content-type", ""))
    if len(parts) != 1 or len(parts[0]) != size:
        return f"{len(parts)} parts of {[len(p) for p in parts][:2]} bytes, expected {size}"
    return None


def _static_request(client: Client, path: str, size: int) -> str | None:
    """nginx answers application/octet-stream: the body is split as the same multipart."""
    resp = client.request("GET", path, {"Accept": ACCEPT_FRAMES})
    if resp.status != 200:
        return f"HTTP {resp.status}: {resp.body[:120]!r}"
    parts = split_multipart(resp.body, _STATIC_TYPE)
    if len(parts) != 1 or len(parts[0]) != size:
        return f"{len(parts)} parts of {[len(p) for p in parts][:2]} bytes, expected {size}"
    return None


def _rendered_request(client: Client, path: str, _size: int) -> str | None:
    resp = client.request("GET", path, {"Accept": "image/jpeg"})
    if resp.status != 200:
        return f"HTTP {resp.status}: {resp.body[:120]!r}"
    return None if resp.body[:2] == b"\xff\xd8" else "not a JPEG"


def _load(base: BaseUrl, paths: list[bytes], seconds: float) -> int:
    result = run_stow(
        base, make_batches(paths, 10), list(range((len(paths) + 9) // 10)), 2, seconds
    )
    return len(result.completed)


def _run(
    base: BaseUrl, paths: list[str], size: int, clients: int, seconds: float, kind: str
) -> dict[str, Any]:
    """Requests of random ``paths`` from ``clients`` threads for ``seconds``."""
    check = {"frames": _frame_request, "static": _static_request}.get(kind, _rendered_request)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        client = Client(base)
        try:
            while time.monotonic() < deadline and len(errors) < 5:
                t0 = time.perf_counter()
                problem = check(client, rng.choice(paths), size)
                elapsed = time.perf_counter() - t0
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        latencies.append(elapsed)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "per_second": round(len(latencies) / wall, 1) if wall else None,
        **summary_ms(latencies),
        "errors": errors[:5],
    }


def wrk_frames(
    base: BaseUrl, paths: list[str], clients: int, seconds: float, work: Path
) -> dict[str, Any] | None:
    """Random ``paths`` asked by wrk (C, one thread, ``clients`` connections): what the
    server gives when the client costs next to nothing, as nginx's figure is read. The
    answers are not checked here (the Python client's runs check every one); non-2xx
    answers are counted. None when wrk is not installed."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    listing = work / f"wrk-paths-{os.getpid()}.txt"
    listing.write_text("".join(base.prefix + p + "\n" for p in paths))
    script = work / f"wrk-{os.getpid()}.lua"
    script.write_text(
        "local paths = {}\n"
        f'for line in io.lines("{listing}") do paths[#paths + 1] = line end\n'
        "math.randomseed(7)\n"
        "request = function()\n"
        "  return wrk.format('GET', paths[math.random(#paths)], "
        f"{{['Accept'] = '{ACCEPT_FRAMES}'}})\n"
        "end\n"
    )
    url = f"http://{base.host}:{base.port}"
    command = [wrk, "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency"]
    try:
        run = subprocess.run(
            [*command, "-s", str(script), url], capture_output=True, text=True,
            timeout=seconds + 60, check=False,
        )  # fmt: skip
    finally:
        listing.unlink(missing_ok=True)
        script.unlink(missing_ok=True)
    text = run.stdout
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    p50 = re.search(r"^\s+50%\s+([0-9.]+)(us|ms|s)\s*$", text, re.M)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "clients": clients,
        "per_second": float(rate.group(1)) if rate else None,
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else None,
        "errors": [f"{bad.group(1)} non-2xx answers"] if bad else ([] if rate else [text[-300:]]),
    }


def raw_disk_frames(
    record: Record, corpus: Corpus, seconds: float, direct: bool = False, threads: int = 1
) -> dict[str, Any]:
    """Random frames of the multiframe file read with pread: from the page cache (the
    octet-stream path's memory ceiling) or, ``direct``, from the device with O_DIRECT
    (the raw disk read speed), by ``threads`` readers at once."""
    path = corpus.path(record)
    size = record.rows * record.cols * record.bits // 8
    first = path.stat().st_size - size * record.frames
    counts = [0] * threads
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:  # a filesystem without O_DIRECT
        return {"error": str(exc)}
    t0 = time.perf_counter()

    def reader(index: int) -> None:
        rng = random.Random(3 + index)
        # O_DIRECT wants aligned offsets, lengths and memory: whole 4 KiB blocks into an
        # anonymous (page-aligned) mapping.
        buffer = mmap.mmap(-1, size + 2 * _BLOCK)
        while time.perf_counter() - t0 < seconds:
            start = first + rng.randrange(record.frames) * size
            lo = start - start % _BLOCK if direct else start
            span = -(-(start + size - lo) // _BLOCK) * _BLOCK if direct else size
            if os.preadv(fd, [memoryview(buffer)[:span]], lo) < start + size - lo:
                raise RuntimeError("short read")
            counts[index] += 1
        buffer.close()

    try:
        pool = [threading.Thread(target=reader, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        os.close(fd)
    count = sum(counts)
    return {"per_second": round(count / wall, 1), "mb_per_s": round(count * size / wall / 1e6, 1)}


def static_frames(
    record: Record, corpus: Corpus, work: Path, seconds: float, clients: tuple[int, ...]
) -> dict[str, Any]:
    """nginx serving each frame of the multiframe file, in the same multipart framing,
    to the same client: the HTTP ceiling of the octet-stream path."""
    size = record.rows * record.cols * record.bits // 8
    path = corpus.path(record)
    first = path.stat().st_size - size * record.frames
    root = work / "static-frames"
    (root / "frames").mkdir(parents=True, exist_ok=True)
    head = f"--{_STATIC_BOUNDARY}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
    tail = f"\r\n--{_STATIC_BOUNDARY}--\r\n".encode()
    with path.open("rb") as fh:
        for k in range(record.frames):
            fh.seek(first + k * size)
            (root / "frames" / str(k + 1)).write_bytes(head + fh.read(size) + tail)
    target = StaticTarget(work / "static-target", root)
    out: dict[str, Any] = {}
    try:
        target.start()
        base = BaseUrl.parse(target.base_url)
        paths = [f"/frames/{k}" for k in range(1, record.frames + 1)]
        for n in clients:
            if fast := wrk_frames(base, paths, n, seconds, work):
                out[f"mf_frames_wrk_{n}c"] = fast
            out[f"mf_frames_{n}c"] = _run(base, paths, size, n, seconds, "static")
    finally:
        target.stop()
        shutil.rmtree(root, ignore_errors=True)
    return out


def run_pixels(
    targets: list[Target],
    corpus: Corpus,
    seconds: float,
    clients: tuple[int, ...] = (1, 8),
    work: Path | None = None,
) -> dict[str, Any]:
    mf = corpus.group("mf")[0]
    ct = corpus.group("ct")
    raw = min(seconds, 5.0)
    out: dict[str, Any] = {
        "raw_disk_frames": raw_disk_frames(mf, corpus, raw),
        "device_frames": {
            f"{n}c": raw_disk_frames(mf, corpus, raw, direct=True, threads=n) for n in clients
        },
    }
    if work is not None:
        out["static"] = static_frames(mf, corpus, work, seconds, clients)
    for target in targets:
        result: dict[str, Any] = {}
        try:
            target.start()
            base = BaseUrl.parse(target.base_url)
            files = [corpus.path(r).read_bytes() for r in [mf, *ct]]
            result["stored_batches"] = _load(base, files, 600.0)
            mf_path = f"/studies/{mf.study}/series/{mf.series}/instances/{mf.sop}"
            mf_frames = [f"{mf_path}/frames/{k}" for k in range(1, mf.frames + 1)]
            ct_paths = [f"/studies/{r.study}/series/{r.series}/instances/{r.sop}" for r in ct]
            frame_size = mf.rows * mf.cols * mf.bits // 8
            ct_size = ct[0].rows * ct[0].cols * ct[0].bits // 8
            for n in clients:
                if work is not None and (fast := wrk_frames(base, mf_frames, n, seconds, work)):
                    result[f"mf_frames_wrk_{n}c"] = fast
                result[f"mf_frames_{n}c"] = _run(base, mf_frames, frame_size, n, seconds, "frames")
                result[f"ct_frames_{n}c"] = _run(
                    base, [p + "/frames/1" for p in ct_paths], ct_size, n, seconds, "frames"
                )
                result[f"ct_rendered_{n}c"] = _run(
                    base, [p + "/rendered" for p in ct_paths], 0, n, seconds, "rendered"
                )
        except Exception as exc:  # report and go on with the next target
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            target.stop()
        out[target.name] = result
    return out


def render_table(results: dict[str, Any], names: list[str]) -> str:
    keys = sorted({k for n in names for k in results.get(n, {}) if k.endswith("c")})
    lines = ["| workload | " + " | ".join(f"{n} /s (p50 ms)" for n in names) + " | ratio |"]
    lines.append("|---" * (len(names) + 2) + "|")
    for key in keys:
        cells, rates = [], []
        for n in names:
            r = results.get(n, {}).get(key, {})
            rate = r.get("per_second")
            rates.append(rate)
            p50 = r.get("p50_ms")
            errs = " (errors)" if r.get("errors") else ""
            cells.append(f"{rate} ({p50:.1f}){errs}" if rate and p50 else f"-{errs}")
        ratio = f"{rates[0] / rates[1]:.2f}x" if len(rates) > 1 and rates[0] and rates[1] else ""
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)
