"""A metric's history cut down to what a chart can show: a 100,000-point loss curve drawn from
1,000 points that keep its shape (Steinarsson's min-max decimation: each bucket of steps keeps its
lowest and highest value, so a spike survives where a stride would drop it)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def downsample(points: Sequence[Any], max_points: int) -> list[Any]:
    """At most ``max_points`` of ``points`` (one metric's, ordered by step), in step order: the
    first and the last, and from each of ``(max_points - 2) // 2`` buckets of equal length two
    points: its lowest and highest finite values, or, where the bucket holds a non-finite value
    (``value`` None for NaN, or infinite), the first of those and its highest finite value.
    ``points`` is returned whole when it fits."""
    if len(points) <= max_points:
        return list(points)
    buckets = max((max_points - 2) // 2, 1)
    inner = points[1:-1]
    kept = [0, len(points) - 1]
    for b in range(buckets):
        start, stop = b * len(inner) // buckets, (b + 1) * len(inner) // buckets
        finite = [i for i in range(start, stop) if _finite(inner[i].value)]
        odd = next((i for i in range(start, stop) if not _finite(inner[i].value)), None)
        chosen = set()
        if finite:
            chosen.add(max(finite, key=lambda i: inner[i].value))
        chosen.add(odd if odd is not None else min(finite, key=lambda i: inner[i].value))
        kept += [i + 1 for i in chosen]
    return [points[i] for i in sorted(set(kept))]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
