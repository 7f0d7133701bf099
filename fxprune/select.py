"""Budgets -> keep decisions: a uniform ratio per group, or a global FLOPs/params budget.

Scores are per channel (higher = more important). Frozen channels are always kept, every group keeps at
least one channel, kept counts are rounded up to a multiple of `round_to` where the group allows it.
Global selection normalises each group's scores by the group's mean, then finds (by bisection) the
highest score threshold whose model fits the budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .analysis.analyse import GraphAnalysis
from .cost import CostModel
from .rewrite.context import RewriteContext


@dataclass(frozen=True)
class Budget:
    kind: str  # "ratio" | "flops" | "params"
    value: float

    @classmethod
    def from_options(cls, ratio: float | None, flops: float | None, params: float | None) -> Budget:
        given = {k: v for k, v in (("ratio", ratio), ("flops", flops), ("params", params)) if v is not None}
        if len(given) != 1:
            raise ValueError(
                f"exactly one budget is required (ratio=, flops= or params=), got "
                f"{', '.join(f'{k}={v}' for k, v in given.items()) or 'none'}. Example: flops=0.5 keeps at most "
                f"half of the dense model's FLOPs; ratio=0.3 removes 30% of every group's channels.")
        kind, value = next(iter(given.items()))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{kind} must be a number, got {type(value).__name__}.")
        if kind == "ratio" and not 0 <= value < 1:
            raise ValueError(f"ratio={value} is out of range: it is the fraction of channels removed from every "
                             f"group and must satisfy 0 <= ratio < 1.")
        if kind != "ratio" and not 0 < value <= 1:
            raise ValueError(f"{kind}={value} is out of range: it is the fraction of the dense model's {kind} to "
                             f"keep and must satisfy 0 < {kind} <= 1.")
        return cls(kind, float(value))


def _keep_count(n_keep: int, size: int, n_frozen: int, round_to: int) -> int:
    n_keep = max(n_keep, n_frozen, 1)
    if round_to > 1 and size >= round_to:
        n_keep = min(size, -(-n_keep // round_to) * round_to)
    return min(n_keep, size)


def _top(scores: np.ndarray, frozen: set[int], n_keep: int) -> list[int]:
    """The n_keep best channels, frozen ones first (stable: ties keep the lower index)."""
    not_frozen = np.ones(len(scores), dtype=bool)
    not_frozen[list(frozen)] = False
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64), not_frozen))
    return sorted(order[:n_keep].tolist())


def prunable_groups(ga: GraphAnalysis, ignore: set[int]) -> list[int]:
    return [g.id for g in ga.groups if g.prunable and g.id not in ignore]


def select_ratio(ga: GraphAnalysis, scores: dict[int, np.ndarray], ratio: float, round_to: int,
                 ignore: set[int]) -> dict[int, list[int]]:
    """Every channel group loses the fraction `ratio`. Block groups (conv groups, norm groups, heads) are
    kept: a channel inside a block already loses `ratio` through its within-block group, and pruning both
    factors would remove the fraction ratio twice."""
    keep = {}
    for gid in prunable_groups(ga, ignore):
        if ga.groups[gid].kind == "blocks":
            continue
        g = ga.groups[gid]
        n = _keep_count(g.size - int(np.floor(ratio * g.size + 0.5)), g.size, len(g.frozen), round_to)
        keep[gid] = _top(scores[gid], set(g.frozen), n)
    return keep


def select_global(ga: GraphAnalysis, scores: dict[int, np.ndarray], cost: CostModel, kind: str, value: float,
                  round_to: int, ignore: set[int]) -> dict[int, list[int]]:
    """Highest common threshold on group-normalised scores whose model fits `value` x dense cost."""
    gids = prunable_groups(ga, ignore)
    norm = {gid: scores[gid] / (np.abs(scores[gid]).mean() + 1e-12) for gid in gids}
    measure = cost.flops if kind == "flops" else cost.params
    dense = measure(None)
    thresholds = np.unique(np.concatenate([norm[g] for g in gids])) if gids else np.zeros(1)

    def keep_at(t: float) -> dict[int, list[int]]:
        out = {}
        for gid in gids:
            g = ga.groups[gid]
            n = _keep_count(int((norm[gid] >= t).sum()), g.size, len(g.frozen), round_to)
            out[gid] = _top(norm[gid], set(g.frozen), n)
        return repair(ga, out, scores)  # measure what will really be kept

    def fits(i: int) -> bool:
        return measure(RewriteContext(ga, keep_at(thresholds[i]))) <= value * dense + 1e-6

    lo, hi = 0, len(thresholds)  # find the smallest threshold index that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return keep_at(thresholds[min(lo, len(thresholds) - 1)] if lo < len(thresholds) else np.inf)


def repair(ga: GraphAnalysis, keep: dict[int, list[int]], scores: dict[int, np.ndarray]) -> dict[int, list[int]]:
    """Give back channels where a decision would leave some tensor with no channel at all.

    Groups are chosen independently, but a position made of several factors (a conv-group x channel, a
    head x head-dim) dies when any factor dies, so a tensor can lose every position. For each such tensor,
    the factors of its best surviving candidate are restored.
    """
    arrays = _distinct_arrays(ga)
    for _ in range(16):
        ctx = RewriteContext(ga, keep)
        empty = [arr for arr in arrays if len(arr) and ctx.alive_count(arr) == 0]
        if not empty:
            return keep
        for arr in empty:
            pos, chan = ga.channel_positions(arr[:1])
            for c in chan.tolist():
                gid = int(np.searchsorted(ga.offsets, c, side="right") - 1)
                i = c - int(ga.offsets[gid])
                if gid in keep and i not in keep[gid]:
                    keep[gid] = sorted(keep[gid] + [i])
    return keep


def _distinct_arrays(ga: GraphAnalysis) -> list[np.ndarray]:
    seen: set[int] = set()
    out = []
    values = list(ga.analysis.values.values())
    for v in values:
        for lab in v if isinstance(v, (list, tuple)) else [v]:
            for arr in getattr(lab, "dims", {}).values():
                if id(arr) not in seen:
                    seen.add(id(arr))
                    out.append(arr)
    return out


def select(ga: GraphAnalysis, scores: dict[int, np.ndarray], budget: Budget, cost: CostModel, round_to: int = 1,
           ignore: set[int] | None = None) -> dict[int, list[int]]:
    ignore = ignore or set()
    if budget.kind == "ratio":
        keep = select_ratio(ga, scores, budget.value, round_to, ignore)
    else:
        keep = select_global(ga, scores, cost, budget.kind, budget.value, round_to, ignore)
    return repair(ga, keep, scores)
