"""WADO-RS workloads: whole-series retrieve, series metadata, frame retrieve, static baseline."""

from __future__ import annotations

import http.client
import random
from typing import Any

import orjson

from .httpio import ACCEPT_FRAMES, Client, Response, split_multipart
from .stats import MB, Budget, median, summary_ms


def _get(client: Client, path: str, accept: str | None, keep: bool = True) -> Response:
    return client.request("GET", path, {"Accept": accept} if accept else {}, keep_body=keep)


def verify_series_body(resp: Response, expected_sizes: list[int]) -> dict[str, Any]:
    """Part count, payload bytes and Part 10 preamble of a multipart series response."""
    ctype = resp.headers.get("content-type", "")
    try:
        parts = split_multipart(resp.body, ctype)
    except ValueError as exc:
        return {"ok": False, "error": str(exc), "content_type": ctype}
    payload = sum(len(p) for p in parts)
    dicm = sum(1 for p in parts if p[128:132] == b"DICM")
    ok = len(parts) == len(expected_sizes) and dicm == len(parts)
    return {
        "ok": ok,
        "content_type": ctype,
        "parts": len(parts),
        "expected_parts": len(expected_sizes),
        "part10_parts": dicm,
        "payload_bytes": payload,
        "expected_payload_bytes": sum(expected_sizes),
        "identical_sizes": sorted(len(p) for p in parts) == sorted(expected_sizes),
        "transfer_encoding": resp.headers.get("transfer-encoding"),
    }


def retrieve(
    client: Client, path: str, accept: str | None, expected_sizes: list[int], budget: Budget
) -> dict[str, Any]:
    """One verified (first) request, then timed repeats without keeping the body."""
    try:
        first = _get(client, path, accept)
    except (OSError, http.client.HTTPException) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if first.status != 200:
        return {"error": f"HTTP {first.status}: {first.body[:300]!r}"}
    check = (
        verify_series_body(first, expected_sizes)
        if accept
        else {"ok": first.nbytes > 0, "payload_bytes": first.nbytes}
    )
    runs: list[Response] = []
    while budget.next():
        resp = _get(client, path, accept, keep=False)
        if resp.status != 200:
            break
        runs.append(resp)
    rates = [r.nbytes / MB / r.seconds for r in runs if r.seconds > 0]
    return {
        "check": check,
        "response_bytes": first.nbytes,
        "first_seconds": round(first.seconds, 4),
        "first_mb_per_s": round(first.nbytes / MB / first.seconds, 1),
        "repeats": len(runs),
        "best_mb_per_s": round(max(rates), 1) if rates else None,
        "median_mb_per_s": round(m, 1) if (m := median(rates)) else None,
        "ttfb": summary_ms([r.ttfb for r in runs]),
        "seconds": summary_ms([r.seconds for r in runs]),
    }


def retrieve_files(
    client: Client, paths: list[str], repeats: int, seconds: float
) -> dict[str, Any]:
    """Sequential GETs of individual files over one keep-alive connection (static baseline)."""
    budget = Budget(seconds, repeats)
    totals: list[tuple[int, float]] = []
    while budget.next():
        nbytes, secs = 0, 0.0
        for p in paths:
            resp = _get(client, p, None, keep=False)
            if resp.status != 200:
                return {"error": f"{p}: HTTP {resp.status}"}
            nbytes += resp.nbytes
            secs += resp.seconds
        totals.append((nbytes, secs))
    rates = [n / MB / s for n, s in totals if s > 0]
    return {
        "files": len(paths),
        "response_bytes": totals[0][0] if totals else 0,
        "repeats": len(totals),
        "best_mb_per_s": round(max(rates), 1) if rates else None,
        "median_mb_per_s": round(m, 1) if (m := median(rates)) else None,
    }


def series_metadata(client: Client, study: str, series: str, expected: int) -> dict[str, Any]:
    """One GET .../metadata; latency, size and whether it lists every instance."""
    path = f"/studies/{study}/series/{series}/metadata"
    try:
        resp = _get(client, path, "application/dicom+json")
    except (OSError, http.client.HTTPException) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    count = None
    if resp.status == 200:
        try:
            doc = orjson.loads(resp.body)
            count = len(doc) if isinstance(doc, list) else None
        except orjson.JSONDecodeError:
            count = None
    return {
        "status": resp.status,
        "seconds": resp.seconds,
        "ttfb": resp.ttfb,
        "bytes": resp.nbytes,
        "instances": count,
        "ok": resp.status == 200 and count == expected,
        "error": None if resp.status == 200 else resp.body[:300].decode("utf-8", "replace"),
    }


def frames(
    client: Client,
    instance_path: str,
    n_frames: int,
    frame_bytes: int,
    budget: Budget,
    seed: int = 11,
) -> dict[str, Any]:
    """Single-frame retrieves of random frames of one multiframe instance."""
    rng = random.Random(seed)
    latencies: list[float] = []
    bad: list[str] = []
    while budget.next():
        k = rng.randint(1, n_frames)
        resp = _get(client, f"{instance_path}/frames/{k}", ACCEPT_FRAMES)
        if resp.status != 200:
            bad.append(f"frame {k}: HTTP {resp.status}: {resp.body[:200]!r}")
            if len(bad) >= 3:
                break
            continue
        parts = split_multipart(resp.body, resp.headers.get("content-type", ""))
        if len(parts) != 1 or len(parts[0]) != frame_bytes:
            bad.append(
                f"frame {k}: {len(parts)} parts, sizes {[len(p) for p in parts][:3]},"
                f" expected 1 x {frame_bytes}"
            )
        latencies.append(resp.seconds)
    return {**summary_ms(latencies), "errors": bad[:5], "error_count": len(bad)}
