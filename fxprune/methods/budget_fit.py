"""Scaling a searched architecture into its budget: the step TAS and JST share after their search.

A searching backend ends with a kept channel count per group. When that architecture costs more than the
budget, every count is multiplied by the largest common factor s in [0, 1] whose model fits (bisection with
the cost model); s = 0 leaves each group its minimum (its frozen channels, at least one).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

KeepCount = Callable[[int, int], list[int]]  # (group id, count) -> the group's kept channels


def shrink_to_fit(counts: dict[int, int], keep_count: KeepCount, measure: Callable[[dict], float],
                  target: float, steps: int = 30) -> dict[int, list[int]]:
    """{group id: kept channels} of `counts` scaled by the largest common factor that fits `target`.

    >>> keep_count = lambda gid, n: list(range(max(n, 1)))
    >>> shrink_to_fit({0: 8, 1: 4}, keep_count, lambda k: sum(len(v) for v in k.values()), 6.0)
    {0: [0, 1, 2, 3], 1: [0, 1]}
    """
    def keep_at(s: float) -> dict[int, list[int]]:
        return {gid: keep_count(gid, int(np.floor(s * n + 1e-9))) for gid, n in counts.items()}

    limit = target * (1 + 1e-9) + 1e-6
    if measure(keep_at(1.0)) <= limit:
        return keep_at(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if measure(keep_at(mid)) <= limit else (lo, mid)
    return keep_at(lo)
