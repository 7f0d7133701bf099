"""Budgets -> keep decisions: a uniform ratio per group, or a FLOPs/params budget (global or local).

Scores are per channel (higher = more important). Frozen channels are always kept, every group keeps at
least one channel, kept counts are rounded up to a multiple of `round_to` where the group allows it.
Global selection normalises each group's scores by the group's mean, then finds (by bisection) the
highest score threshold whose model fits the budget. Local selection removes the same fraction from
every group and bisects that fraction until the model fits. In iterative pruning, channels an earlier
step removed (`removed`) are never kept again.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from fxprune.analysis.analyse import GraphAnalysis
from fxprune.cost.model import CostModel
from fxprune.analysis.keep import Keep, Survivors


@dataclass(frozen=True)
class Budget:
    kind: str  # "ratio" | "flops" | "params" | "latency"
    value: float

    @classmethod
    def from_options(cls, ratio: float | None, flops: float | None, params: float | None,
                     latency: float | None = None) -> Budget:
        given = {k: v for k, v in (("ratio", ratio), ("flops", flops), ("params", params), ("latency", latency))
                 if v is not None}
        if len(given) != 1:
            raise ValueError(
                f"exactly one budget is required (ratio=, flops=, params= or latency=), got "
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


SCOPES = ("global", "local")
Removed = dict[int, set[int]]  # group id -> channels removed by earlier steps of iterative pruning


def _keep_count(n_keep: int, size: int, n_frozen: int, round_to: int, n_removed: int = 0) -> int:
    n_keep = max(n_keep, n_frozen, 1)
    if round_to > 1 and size >= round_to:
        n_keep = min(size, -(-n_keep // round_to) * round_to)
    return max(1, min(n_keep, size - n_removed))


def _top(scores: np.ndarray, frozen: set[int], n_keep: int, removed: set[int] = frozenset()) -> list[int]:
    """The n_keep best channels, frozen ones first, removed ones last (stable: ties keep the lower index)."""
    not_frozen = np.ones(len(scores), dtype=bool)
    not_frozen[list(frozen)] = False
    gone = np.zeros(len(scores), dtype=bool)
    gone[list(removed)] = True
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64), not_frozen, gone))
    return sorted(order[:n_keep].tolist())


def _keep_n(ga: GraphAnalysis, gid: int, scores: np.ndarray, n: int, round_to: int, removed: Removed) -> list[int]:
    """Group `gid` keeps its best `n` channels (after frozen / round_to / removed adjustments)."""
    g, gone = ga.groups[gid], removed.get(gid, set())
    return _top(scores, set(g.frozen), _keep_count(n, g.size, len(g.frozen), round_to, len(gone)), gone)


def prunable_groups(ga: GraphAnalysis, ignore: set[int]) -> list[int]:
    """Ids of the groups a decision may shrink: not wholly frozen, not ignored."""
    return [g.id for g in ga.groups if g.prunable and g.id not in ignore]


def channel_groups(ga: GraphAnalysis, ignore: set[int]) -> list[int]:
    """The prunable groups of channels (not of conv groups / heads): what width searches search over."""
    return [gid for gid in prunable_groups(ga, ignore) if ga.groups[gid].kind != "blocks"]


def select_ratio(ga: GraphAnalysis, scores: dict[int, np.ndarray], ratio: float, round_to: int,
                 ignore: set[int], removed: Removed) -> Keep:
    """Every channel group loses the fraction `ratio`. Block groups (conv groups, norm groups, heads) are
    kept: a channel inside a block already loses `ratio` through its within-block group, and pruning both
    factors would remove the fraction ratio twice."""
    sizes = {gid: ga.groups[gid].size for gid in channel_groups(ga, ignore)}
    return {gid: _keep_n(ga, gid, scores[gid], size - int(np.floor(ratio * size + 0.5)), round_to, removed)
            for gid, size in sizes.items()}


def select_local(ga: GraphAnalysis, scores: dict[int, np.ndarray], cost: CostModel, kind: str, value: float,
                 round_to: int, ignore: set[int], removed: Removed) -> Keep:
    """The largest common kept fraction (the same for every group) whose model fits `value` x dense cost."""
    measure = cost.measure(kind)
    limit = value * measure(None) + 1e-6

    def keep_at(fraction: float) -> Keep:
        ratio = 1.0 - fraction
        return repair(ga, select_ratio(ga, scores, ratio, round_to, ignore, removed), scores)

    if measure(Survivors(ga, keep_at(1.0))) <= limit:
        return keep_at(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if measure(Survivors(ga, keep_at(mid))) <= limit else (lo, mid)
    return keep_at(lo)


def _normalised(scores: np.ndarray, gone: set[int]) -> np.ndarray:
    """Scores divided by the mean |score| of the live channels; removed channels get -inf."""
    live = np.ones(len(scores), dtype=bool)
    live[list(gone)] = False
    out = np.asarray(scores, dtype=np.float64) / (np.abs(scores[live]).mean() + 1e-12 if live.any() else 1.0)
    out[~live] = -np.inf
    return out


def select_global(ga: GraphAnalysis, scores: dict[int, np.ndarray], cost: CostModel, kind: str, value: float,
                  round_to: int, ignore: set[int], removed: Removed) -> Keep:
    """Highest common threshold on group-normalised scores whose model fits `value` x dense cost."""
    gids = prunable_groups(ga, ignore)
    norm = {gid: _normalised(scores[gid], removed.get(gid, set())) for gid in gids}
    measure = cost.measure(kind)
    dense = measure(None)
    finite = [v[np.isfinite(v)] for v in norm.values()]
    thresholds = np.unique(np.concatenate(finite)) if gids else np.zeros(1)

    def keep_at(t: float) -> Keep:
        out = {gid: _keep_n(ga, gid, norm[gid], int((norm[gid] >= t).sum()), round_to, removed) for gid in gids}
        return repair(ga, out, scores)  # measure what will really be kept

    def fits(i: int) -> bool:
        return measure(Survivors(ga, keep_at(thresholds[i]))) <= value * dense + 1e-6

    lo, hi = 0, len(thresholds)  # find the smallest threshold index that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return keep_at(thresholds[min(lo, len(thresholds) - 1)] if lo < len(thresholds) else np.inf)


def fits_at_minimum(ga: GraphAnalysis, cost: CostModel, budget: Budget, round_to: int, ignore: set[int]) -> bool:
    """Whether the smallest decision `round_to` allows (every prunable group at its minimum) meets `budget`."""
    zeros = {gid: np.zeros(ga.groups[gid].size) for gid in prunable_groups(ga, ignore)}
    smallest = repair(ga, {gid: _keep_n(ga, gid, z, 1, round_to, {}) for gid, z in zeros.items()}, zeros)
    measure = cost.measure(budget.kind)
    return measure(Survivors(ga, smallest)) <= budget.value * measure(None) + 1e-6


def repair(ga: GraphAnalysis, keep: Keep, scores: dict[int, np.ndarray]) -> Keep:
    """Give back channels where a decision would leave some tensor with no channel at all.

    Groups are chosen independently, but a position made of several factors (a conv-group x channel, a
    head x head-dim) dies when any factor dies, so a tensor can lose every position. For each such tensor,
    the factors of its best surviving candidate are restored.
    """
    arrays = _distinct_arrays(ga)
    for _ in range(16):
        ctx = Survivors(ga, keep)
        empty = [arr for arr in arrays if len(arr) and ctx.alive_count(arr) == 0]
        if not empty:
            return keep
        for arr in empty:
            pos, chan = ga.channel_positions(arr[:1])
            for c in chan.tolist():
                gid = ga.group_of(c)
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
           ignore: set[int] | None = None, scope: str = "global", removed: Removed | None = None
           ) -> Keep:
    """Keep decisions {group id: kept channel indices} for `budget` (see the module docstring)."""
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is not one of {SCOPES}: 'global' ranks channels across all groups, "
                         f"'local' removes the same fraction from every group.")
    ignore, removed = ignore or set(), removed or {}
    if budget.kind == "ratio":
        keep = select_ratio(ga, scores, budget.value, round_to, ignore, removed)
    else:
        chooser = select_global if scope == "global" else select_local
        keep = chooser(ga, scores, cost, budget.kind, budget.value, round_to, ignore, removed)
    keep = Keep(repair(ga, keep, scores))
    if budget.kind != "ratio":
        _warn_if_over(ga, keep, budget, cost, round_to)
    return keep


def _warn_if_over(ga: GraphAnalysis, keep: Keep, budget: Budget, cost: CostModel,
                  round_to: int) -> None:
    measure = cost.measure(budget.kind)
    achieved = measure(Survivors(ga, keep)) / max(measure(None), 1e-12)
    if achieved > budget.value + 1e-6:
        warnings.warn(f"the {budget.kind} budget {budget.value} cannot be met: the smallest model the constraints "
                      f"allow keeps {achieved:.3f} of the dense {budget.kind} (round_to={round_to}, frozen and "
                      f"ignored channels, at least one channel per group). Lower round_to, ignore fewer layers, or "
                      f"raise the budget.", stacklevel=3)
