"""STOW-RS workloads: N concurrent keep-alive clients POSTing pre-built multipart bodies."""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field

import orjson

from .httpio import DICOM_MULTIPART, BaseUrl, Client, multipart_body
from .stats import MB, summary_ms

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"


@dataclass
class Batch:
    body: bytes
    count: int
    payload_bytes: int


def make_batches(items: list[bytes], batch_size: int) -> list[Batch]:
    out: list[Batch] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        out.append(Batch(multipart_body(chunk), len(chunk), sum(len(c) for c in chunk)))
    return out


@dataclass
class StowResult:
    clients: int
    seconds: float = 0.0
    instances: int = 0
    payload_bytes: int = 0
    requests: int = 0
    failed_instances: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    completed: set[int] = field(default_factory=set)  # indices of fully stored batches
    timed_out: bool = False

    def as_json(self) -> dict[str, object]:
        secs = self.seconds or float("nan")
        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 3),
            "instances": self.instances,
            "payload_mb": round(self.payload_bytes / MB, 2),
            "requests": self.requests,
            "instances_per_s": round(self.instances / secs, 1) if self.seconds else None,
            "mb_per_s": round(self.payload_bytes / MB / secs, 1) if self.seconds else None,
            "failed_instances": self.failed_instances,
            "request_latency": summary_ms(self.latencies),
            "errors": self.errors[:5],
            "error_count": len(self.errors),
            "timed_out": self.timed_out,
        }


def stored_count(body: bytes, expected: int) -> tuple[int, int]:
    """(stored, failed) instance counts from a STOW-RS JSON response."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return expected, 0
    if not isinstance(doc, dict):
        return expected, 0
    failed = len((doc.get(FAILED_SOP_SEQUENCE) or {}).get("Value") or [])
    stored = len((doc.get(REFERENCED_SOP_SEQUENCE) or {}).get("Value") or [])
    return stored, failed


def run_stow(
    base: BaseUrl,
    batches: list[Batch],
    indices: list[int],
    clients: int,
    seconds: float,
    path: str = "/studies",
    check_response: bool = True,
) -> StowResult:
    """POST batches[i] for i in indices with `clients` threads, until done or `seconds` pass."""
    result = StowResult(clients)
    lock = threading.Lock()
    queue = list(reversed(indices))
    headers = {"Content-Type": DICOM_MULTIPART, "Accept": "application/dicom+json"}
    deadline = time.monotonic() + seconds

    def worker() -> None:
        client = Client(base)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    if time.monotonic() >= deadline:
                        result.timed_out = True
                        return
                    idx = queue.pop()
                batch = batches[idx]
                try:
                    resp = client.request("POST", path, headers, batch.body)
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        result.errors.append(f"batch {idx}: {type(exc).__name__}: {exc}")
                    continue
                stored, failed = batch.count, 0
                if check_response and resp.status in (200, 202, 409):
                    stored, failed = stored_count(resp.body, batch.count)
                with lock:
                    result.requests += 1
                    result.latencies.append(resp.seconds)
                    if resp.status not in (200, 202) or failed or stored != batch.count:
                        snippet = resp.body[:300].decode("utf-8", "replace")
                        result.errors.append(
                            f"batch {idx}: HTTP {resp.status}, stored {stored}/{batch.count},"
                            f" failed {failed}: {snippet}"
                        )
                    result.failed_instances += failed
                    if resp.status in (200, 202) and not failed:
                        result.instances += batch.count
                        result.payload_bytes += batch.payload_bytes
                        result.completed.add(idx)
        finally:
            client.close()

    threads = [
        threading.Thread(target=worker, name=f"stow-{i}", daemon=True) for i in range(clients)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - t0
    return result
