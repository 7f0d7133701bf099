"""Scaling a searched architecture into its budget: the step TAS and JST share after their search.

A searching backend ends with a kept channel count per group. When that architecture costs more than the
budget, every count is multiplied by the largest common factor s in [0, 1] whose model fits (bisection with
the cost model); s = 0 leaves each group its minimum (its frozen channels, at least one). `scale_to_fit` also
grows an architecture that leaves budget unused: the largest common factor s >= 1 that still fits (each group
capped at its size), so a budget of half the FLOPs gives close to half the FLOPs.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fxprune.analysis.keep import Keep

KeepCount = Callable[[int, int], list[int]]  # (group id, count) -> the group's kept channels
Measure = Callable[[dict], float]


def _keep_at(counts: dict[int, int], keep_count: KeepCount, s: float) -> Keep:
    return {gid: keep_count(gid, int(np.floor(s * n + 1e-9))) for gid, n in counts.items()}


def _largest_fitting(counts: dict[int, int], keep_count: KeepCount, fits: Callable[[dict], bool], lo: float,
                     hi: float, steps: int) -> Keep:
    """The architecture at the largest s in [lo, hi] that fits (`lo` is assumed to fit), by bisection."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(_keep_at(counts, keep_count, mid)) else (lo, mid)
    return _keep_at(counts, keep_count, lo)


def _fit(counts: dict[int, int], keep_count: KeepCount, measure: Measure, target: float, top: float,
         steps: int) -> Keep:
    """Scaled down into `target` when over it, else up by a factor of at most `top` while it still fits."""
    limit = target * (1 + 1e-9) + 1e-6
    fits = lambda keep: measure(keep) <= limit  # noqa: E731
    if not fits(_keep_at(counts, keep_count, 1.0)):
        return _largest_fitting(counts, keep_count, fits, 0.0, 1.0, steps)
    if top <= 1.0:
        return _keep_at(counts, keep_count, 1.0)
    return _largest_fitting(counts, keep_count, fits, 1.0, top, steps)


def shrink_to_fit(counts: dict[int, int], keep_count: KeepCount, measure: Measure,
                  target: float, steps: int = 30) -> Keep:
    """{group id: kept channels} of `counts` scaled by the largest common factor <= 1 that fits `target`.

    >>> keep_count = lambda gid, n: list(range(max(n, 1)))
    >>> shrink_to_fit({0: 8, 1: 4}, keep_count, lambda k: sum(len(v) for v in k.values()), 6.0)
    {0: [0, 1, 2, 3], 1: [0, 1]}
    """
    return _fit(counts, keep_count, measure, target, 1.0, steps)


def scale_to_fit(counts: dict[int, int], sizes: dict[int, int], keep_count: KeepCount, measure: Measure,
                 target: float, steps: int = 30) -> Keep:
    """Like `shrink_to_fit`, and an architecture under `target` is grown by the largest common factor that
    still fits (every group capped at its size in `sizes`); the counts' proportions are kept either way.

    >>> keep_count = lambda gid, n: list(range(min(max(n, 1), 8)))
    >>> keep = scale_to_fit({0: 2, 1: 1}, {0: 8, 1: 8}, keep_count, lambda k: sum(len(v) for v in k.values()), 9.0)
    >>> {g: len(v) for g, v in keep.items()}
    {0: 6, 1: 3}
    """
    top = max((sizes[g] / max(n, 1) for g, n in counts.items()), default=1.0)
    return _fit(counts, keep_count, measure, target, top, steps)
