"""TAS: Network Pruning via Transformable Architecture Search (Dong & Yang, NeurIPS 2019), width search.

Every prunable channel group (not "blocks" groups: conv groups / heads keep their count) gets a learnable
categorical distribution over candidate widths (`tas_fractions` of its size, default 0.3 ... 1.0). Channels
are ranked by L1 importance and width w keeps the w best (channel-wise interpolation in mask form). The
search trains a gated copy of the model (fxprune.methods.search.gates): each forward samples two widths per group
with Gumbel-softmax and gates the channels with their probability-weighted masks; weights and width logits
update alternately (train.py). The result is each group's most probable width; when that architecture
misses the FLOPs (or params) budget, every group's searched width is scaled by one common factor (found by
bisection with the cost model) until it fits. Where the graph has runs of identity-shortcut residual blocks
(fxprune.analysis.blocks), the depth of each run is searched too (depth.py; `tas_depth=False` turns it
off; FLOPs and params budgets only) and the plan removes the blocks beyond the most probable depth.
`tas_checkpoint=PATH` saves the search after every epoch and resumes a saved one
(fxprune.methods.search.checkpoint). The options are the fields of `TasConfig`; the search's record in the
plan (`plan.search`): `searched_fractions`, `searched_depths`, `log` and `search_s` (its wall time). See
docs/methods/tas.md.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import torch

from fxprune.analysis.keep import Keep, Survivors
from fxprune.selection.select import channel_groups, repair
from fxprune.methods.search.gates import group_of_array, inherit_weights, install_gates
from fxprune.methods.scorers.magnitude import magnitude_scores
from fxprune.errors import MethodOptionError
from fxprune.methods.config import SearchOptions
from fxprune.methods.registry import ScoreInput, register_search
from fxprune.methods.result import SearchResult
from fxprune.methods.search.dist import broadcast_state, search_data
from fxprune.methods.search.checkpoint import SearchCheckpoint
from fxprune.methods.tas.depth import DepthSearch, DepthSpace
from fxprune.methods.tas.norms import collapse, install_width_norms
from fxprune.methods.search.widths import DEFAULT_FRACTIONS, WidthSpace
from fxprune.methods.tas.space import ExpectedCost
from fxprune.methods.tas.train import SearchConfig, search
from fxprune.methods.search.budget_fit import shrink_to_fit
from fxprune.methods.calibration import require_cost_budget, require_data

_SEARCH = SearchConfig()  # the search loop's defaults: TasConfig's, under tas_ names


@dataclass
class TasConfig(SearchOptions):
    """TAS's options (docs/methods/tas.md); `seed` and `progress` as every search (`progress=False` or
    `tas_progress=False` hides the search's progress bar)."""

    tas_epochs: int = _SEARCH.epochs
    tas_batches: int | None = _SEARCH.batches  # weight + architecture batches per epoch (None: the whole data)
    tas_lr: float = _SEARCH.lr
    tas_momentum: float = _SEARCH.momentum
    tas_weight_decay: float = _SEARCH.weight_decay
    tas_arch_lr: float = _SEARCH.arch_lr
    tas_arch_weight_decay: float = _SEARCH.arch_weight_decay
    tas_flops_weight: float = _SEARCH.flops_weight
    tas_tolerance: float = _SEARCH.tolerance
    tas_tau: tuple[float, float] = (_SEARCH.tau_max, _SEARCH.tau_min)  # Gumbel temperature (max, min)
    tas_tau_schedule: str = _SEARCH.tau_schedule
    tas_samples: int = _SEARCH.samples
    tas_per_width_bn: bool = _SEARCH.per_width_bn
    tas_progress: bool = True
    tas_fractions: tuple[float, ...] = DEFAULT_FRACTIONS  # candidate widths, fractions of each group's size
    tas_depth: bool = True  # search the depth of runs of identity-shortcut residual blocks too
    tas_inherit: bool = False  # the search-trained weights into the model
    tas_checkpoint: str | os.PathLike | None = None

    def validate(self) -> None:
        try:
            self.tas_fractions = tuple(float(f) for f in self.tas_fractions)
            tau = tuple(float(t) for t in self.tas_tau)
        except (TypeError, ValueError):
            raise MethodOptionError(f"tas_fractions={self.tas_fractions!r}, tas_tau={self.tas_tau!r}: both are "
                                    f"sequences of numbers.") from None
        if not self.tas_fractions or any(not 0 < f <= 1 for f in self.tas_fractions):
            raise MethodOptionError(f"tas_fractions={self.tas_fractions}: candidate widths are fractions in (0, 1].")
        if len(tau) != 2:
            raise MethodOptionError(f"tas_tau={self.tas_tau!r}: the Gumbel temperature range is (max, min).")

    def search_config(self) -> SearchConfig:
        """The search loop's settings."""
        return SearchConfig(
            epochs=self.tas_epochs, batches=self.tas_batches, lr=self.tas_lr, momentum=self.tas_momentum,
            weight_decay=self.tas_weight_decay, arch_lr=self.tas_arch_lr,
            arch_weight_decay=self.tas_arch_weight_decay, flops_weight=self.tas_flops_weight,
            tolerance=self.tas_tolerance, tau_max=float(self.tas_tau[0]), tau_min=float(self.tas_tau[1]),
            tau_schedule=self.tas_tau_schedule, samples=self.tas_samples, per_width_bn=self.tas_per_width_bn,
            progress=self.tas_progress and self.progress)


def tas_search(inp: ScoreInput, budget, cost, ignored: set) -> SearchResult:
    data = search_data(require_data(inp, "tas", "the width distributions and the weights are trained on batches"),
                       "data")
    require_cost_budget(inp, budget, "tas")
    o: TasConfig = inp.config
    cfg = o.search_config()
    ga = inp.ga
    gids = channel_groups(ga, ignored)
    fractions = o.tas_fractions
    space = WidthSpace.build(ga, gids, magnitude_scores(inp, 1), fractions, inp.round_to)
    measure = cost.measure(budget.kind)
    target = budget.value * measure(None)
    seed = o.seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gated, gates = install_gates(inp.gm, ga)
        width_weights, norms = (install_width_norms(gated, ga, gids, len(fractions), lambda name: _owner(ga, name))
                                if cfg.per_width_bn else (None, {}))
        device = next((p.device for p in gated.parameters()), torch.device("cpu"))
        terms, fixed = cost.terms(budget.kind)
        generator = torch.Generator().manual_seed(seed)
        alpha = torch.nn.Parameter((0.01 * torch.randn(len(gids), len(fractions), generator=generator)).to(device))
        depth = _depth_search(inp, budget, gated, device, generator)
        blocks = depth.space.term_blocks(inp.gm, cost, budget.kind) if depth is not None else None
        expected = ExpectedCost(ga, terms, blocks).to(device)
        checkpoint = SearchCheckpoint(o.tas_checkpoint, "tas", _fingerprint(
            ga, gids, fractions, cfg, budget, seed, inp.round_to, depth.space.sizes if depth is not None else []))
        t0 = time.perf_counter()
        log = search(gated, gates, space, expected, alpha, data, target, fixed, cfg, generator, checkpoint, depth,
                     width_weights)
        broadcast_state(gated)  # a distributed search: rank 0's BatchNorm statistics everywhere
        seconds = time.perf_counter() - t0
    choice = {gid: int(k) for gid, k in zip(gids, alpha.detach().argmax(1).tolist())}
    if o.tas_inherit:
        _inherit(inp.gm, gated, norms, choice, gids)
    result = SearchResult({}, log={"searched_fractions": [[gid, fractions[k]] for gid, k in choice.items()],
                                   "log": [[r["epoch"], round(r["argmax_cost_ratio"], 4)] for r in log]},
                          timings={"search": seconds})
    if depth is not None:
        measure = _record_depths(inp, result, depth, cost, budget.kind)
    result.keep = fit_budget(space, choice, lambda keep: measure(Survivors(ga, repair(ga, keep, {}))), target)
    return result


def _owner(ga, module: str) -> int | None:
    """The channel group of a BatchNorm's channels."""
    dims = ga.analysis.params.get(f"{module}.weight") or {}
    return group_of_array(ga, dims.get(0))


def _inherit(gm, gated, norms: dict, choice: dict[int, int], gids: list[int]) -> None:
    """The search-trained weights into the model: every tensor of the same shape, and each per-width norm's
    most probable width."""
    inherit_weights(gm, gated)
    collapse(norms, choice, gids, gm)


def _depth_search(inp: ScoreInput, budget, gated, device: torch.device,
                  generator: torch.Generator) -> DepthSearch | None:
    """The depth side of the search, when asked for (tas_depth, default on), the budget is FLOPs or params and
    the graph has runs of at least two identity-shortcut residual blocks."""
    if not inp.config.tas_depth or budget.kind not in ("flops", "params"):
        return None
    space = DepthSpace.build(inp.gm)
    if not len(space):
        return None
    return DepthSearch(space, space.install(gated), device, generator)


def _record_depths(inp: ScoreInput, result: SearchResult, depth: DepthSearch, cost, kind: str):
    """Record the searched depths and the removed blocks in `result`; the cost measure of the graph without
    them."""
    depths = depth.depths()
    result.skipped_blocks = [list(b) for b in depth.space.skipped(depths)]
    result.log["searched_depths"] = [[run.blocks[0].add, d, len(run.blocks)]
                                     for run, d in zip(depth.space.runs, depths)]
    gone = {a for a, _ in result.skipped_blocks}
    blocks = [b for run in depth.space.runs for b in run.blocks if b.add in gone]
    nodes = {n for b in blocks for n in b.branch}
    index = {b.add: i for i, b in enumerate(b for run in depth.space.runs for b in run.blocks)}
    params = {name for name, i in zip(cost.param_names, depth.space.term_blocks(inp.gm, cost, "params"))
              if i >= 0 and any(index[b.add] == i for b in blocks)}
    return cost.without(nodes, params).measure(kind)


def _fingerprint(ga, gids: list[int], fractions: tuple, cfg: SearchConfig, budget, seed: int,
                 round_to: int, depth: list[int]) -> dict:
    """What a resumed TAS search must share with the one that wrote the checkpoint."""
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"}
    return {"graph": ga.signature, "groups": list(gids), "fractions": list(fractions), "config": config,
            "budget": [budget.kind, float(budget.value)], "seed": seed, "depth": depth,
            "round_to": round_to}


def fit_budget(space: WidthSpace, choice: dict[int, int], measure, target: float) -> Keep:
    """The searched architecture, or, when it costs more than `target`, every group's searched width times
    the largest common factor that fits (budget_fit.shrink_to_fit)."""
    return shrink_to_fit({gid: space.counts[gid][k] for gid, k in choice.items()}, space.keep_count, measure, target)


register_search("tas", "Transformable Architecture Search (Dong & Yang, NeurIPS 2019): learned per-group "
                       "width distributions, Gumbel-sampled, with an expected-FLOPs loss; needs data",
                needs_data=True, config=TasConfig)(tas_search)
