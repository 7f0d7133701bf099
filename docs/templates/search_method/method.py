"""Random search over per-group widths: each candidate keeps its groups' highest-L1 channels; the fitting
candidate that keeps the most L1 mass wins."""
from __future__ import annotations

import time

import numpy as np

from fxprune.analysis.keep import Keep
from fxprune.methods.calibration import require_cost_budget
from fxprune.methods.registry import register_search
from fxprune.methods.result import SearchResult
from fxprune.methods.scorers.magnitude import magnitude_scores
from fxprune.selection.select import channel_groups

from .config import RandomSearchConfig

NAME = "random_search"


@register_search(NAME, "random search over group widths, best L1 mass within the budget (template)",
                 config=RandomSearchConfig)
def search(inp, budget, cost, ignored) -> SearchResult:
    require_cost_budget(inp, budget, NAME)  # flops= / params= / latency=, one step
    start = time.perf_counter()
    cfg, rng = inp.config, np.random.default_rng(inp.config.seed)
    scores = magnitude_scores(inp, 1)
    gids = channel_groups(inp.ga, ignored)
    best, best_mass, tried = None, -1.0, []
    for _ in range(cfg.rs_samples):
        fractions = rng.uniform(cfg.rs_min_fraction, 1.0, len(gids))
        keep = Keep({gid: _best(inp, gid, scores[gid], f) for gid, f in zip(gids, fractions)})
        kept = cost.ratio(keep, budget.kind)
        mass = sum(float(scores[gid][keep[gid]].sum()) for gid in gids)
        tried.append([round(kept, 4), round(mass, 4)])
        if kept <= budget.value and mass > best_mass:
            best, best_mass = keep, mass
    if best is None:  # no candidate fit: every group at its smallest width (fxprune warns if still over)
        best = Keep({gid: _best(inp, gid, scores[gid], cfg.rs_min_fraction) for gid in gids})
    return SearchResult(best, log={"rs_candidates": tried}, timings={"search": time.perf_counter() - start})


def _best(inp, gid: int, group_scores: np.ndarray, fraction: float) -> list[int]:
    """The round(fraction x size) best channels of group `gid`: frozen ones first, at least one, rounded up
    to a multiple of `round_to` where the group is that large."""
    group = inp.ga.groups[gid]
    n = max(1, len(group.frozen), int(round(fraction * group.size)))
    if inp.round_to > 1 and group.size >= inp.round_to:
        n = min(group.size, -(-n // inp.round_to) * inp.round_to)
    frozen_first = np.lexsort((-np.asarray(group_scores, dtype=float), [c not in group.frozen for c in range(group.size)]))
    return sorted(frozen_first[:n].tolist())
