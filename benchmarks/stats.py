"""Small statistics helpers, time budgets and the metric record."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

Better = Literal["higher", "lower"]
MB = 1_000_000.0


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summary_ms(seconds: list[float]) -> dict[str, float | int | None]:
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "mean_ms": sum(ms) / len(ms) if ms else None,
        "max_ms": max(ms) if ms else None,
    }


@dataclass
class Budget:
    """A bounded loop: at most `max_iter` iterations and `seconds` of wall time."""

    seconds: float
    max_iter: int = 1_000_000
    started: float = field(default_factory=time.monotonic)
    done: int = 0

    def next(self) -> bool:
        if self.done >= self.max_iter or self.expired:
            return False
        self.done += 1
        return True

    @property
    def expired(self) -> bool:
        return time.monotonic() - self.started >= self.seconds

    @property
    def remaining(self) -> float:
        return max(0.0, self.seconds - (time.monotonic() - self.started))


@dataclass
class Metric:
    value: float | None
    unit: str
    better: Better
    detail: dict[str, object] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"value": self.value, "unit": self.unit, "better": self.better, **self.detail}
