"""Process-tree RSS sampling from /proc, and facts about the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def descendants(pid: int) -> list[int]:
    """pid and all its descendants, via /proc/<pid>/task/<tid>/children."""
    seen: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                text = Path(f"/proc/{p}/task/{tid}/children").read_text()
            except OSError:
                continue
            stack.extend(int(c) for c in text.split())
    return seen


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


class RssSampler:
    """Samples the RSS sum of a process tree every `interval` seconds in a thread.

    `mark(label)` starts a new phase; peaks are kept per phase and overall.
    """

    def __init__(self, pid: int, interval: float = 0.05, rescan: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.rescan = rescan
        self.peak = 0
        self.phase = "start"
        self.phase_peaks: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def mark(self, label: str) -> None:
        self.phase = label

    def _run(self) -> None:
        pids = descendants(self.pid)
        next_scan = time.monotonic() + self.rescan
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            if now >= next_scan:
                pids = descendants(self.pid)
                next_scan = now + self.rescan
            rss = rss_bytes(pids)
            self.samples += 1
            self.peak = max(self.peak, rss)
            phase = self.phase
            self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0), rss)


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def _pkg_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, object]:
    cpu_model = None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kib = None
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round((mem_kib or 0) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "orthanc": _first_line(["/usr/sbin/Orthanc", "--version"]),
        "orthanc_dicomweb": _first_line(
            ["dpkg-query", "-W", "-f", "${Version}", "orthanc-dicomweb"]
        ),
        "nginx": _first_line(["nginx", "-v"]),
        "dicomweb_server": _pkg_version("dicomweb-server"),
        "pydicom": _pkg_version("pydicom"),
        "uvicorn": _pkg_version("uvicorn"),
    }
