"""TAS: Network Pruning via Transformable Architecture Search (Dong & Yang, NeurIPS 2019), width search.

Every prunable channel group (not "blocks" groups: conv groups / heads keep their count) gets a learnable
categorical distribution over candidate widths (`tas_fractions` of its size, default 0.3 ... 1.0). Channels
are ranked by L1 importance and width w keeps the w best (channel-wise interpolation in mask form). The
search trains a gated copy of the model (fxprune.methods.search.gates): each forward samples two widths per group
with Gumbel-softmax and gates the channels with their probability-weighted masks; weights and width logits
update alternately (tas_train). The result is each group's most probable width; when that architecture
misses the FLOPs (or params) budget, every group's searched width is scaled by one common factor (found by
bisection with the cost model) until it fits. Where the graph has runs of identity-shortcut residual blocks
(fxprune.analysis.blocks), the depth of each run is searched too (tas_depth.py; `tas_depth=False` turns it
off; FLOPs and params budgets only) and the plan removes the blocks beyond the most probable depth. `tas_checkpoint=PATH` saves the search after every epoch and
resumes a saved one (fxprune.methods.search.checkpoint); `tas_search_s` in the plan's method options is the
search's wall time. See docs/methods/tas.md.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from fxprune.analysis.keep import Keep, Survivors
from fxprune.selection.select import _channel_groups, repair
from fxprune.methods.search.gates import group_of_array, inherit_weights, install_gates
from fxprune.methods.scorers.magnitude import magnitude_scores
from fxprune.methods.registry import ScoreInput, register_method
from fxprune.methods.search.dist import broadcast_state, search_data
from fxprune.methods.search.checkpoint import SearchCheckpoint
from fxprune.methods.tas.depth import DepthSearch, DepthSpace
from fxprune.methods.tas.norms import collapse, install_width_norms
from fxprune.methods.search.widths import DEFAULT_FRACTIONS, WidthSpace
from fxprune.methods.tas.space import ExpectedCost
from fxprune.methods.tas.train import SearchConfig, search
from fxprune.methods.search.budget_fit import shrink_to_fit
from fxprune.methods.calibration import require_cost_budget, require_data

RESULT_KEY = "tas_searched_fractions"  # [[group id, searched fraction], ...] recorded in plan.method_options


def search_config(options: dict) -> SearchConfig:
    o = options
    tau = o.get("tas_tau", (5.0, 0.1))
    return SearchConfig(
        epochs=int(o.get("tas_epochs", 1)), batches=o.get("tas_batches"), lr=float(o.get("tas_lr", 0.1)),
        momentum=float(o.get("tas_momentum", 0.9)), weight_decay=float(o.get("tas_weight_decay", 5e-4)),
        arch_lr=float(o.get("tas_arch_lr", 1e-3)), arch_weight_decay=float(o.get("tas_arch_weight_decay", 1e-3)),
        flops_weight=float(o.get("tas_flops_weight", 2.0)), tolerance=float(o.get("tas_tolerance", 0.05)),
        tau_max=float(tau[0]), tau_min=float(tau[1]), tau_schedule=str(o.get("tas_tau_schedule", "cosine")),
        samples=int(o.get("tas_samples", 2)), per_width_bn=bool(o.get("tas_per_width_bn", True)),
        progress=bool(o.get("tas_progress", True)))


def tas_search(inp: ScoreInput, budget, cost, ignored: set) -> Keep:
    data = search_data(require_data(inp, "tas", "the width distributions and the weights are trained on batches"),
                       "data")
    require_cost_budget(inp, budget, "tas")
    cfg = search_config(inp.options)
    ga = inp.ga
    gids = _channel_groups(ga, ignored)
    fractions = tuple(float(f) for f in inp.options.get("tas_fractions", DEFAULT_FRACTIONS))
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"tas_fractions={fractions}: candidate widths are fractions in (0, 1].")
    space = WidthSpace.build(ga, gids, magnitude_scores(inp, 1), fractions, inp.round_to)
    measure = cost.measure(budget.kind)
    target = budget.value * measure(None)
    seed = int(inp.options.get("seed", 0))
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
        checkpoint = SearchCheckpoint(inp.options.get("tas_checkpoint"), "tas", _fingerprint(
            ga, gids, fractions, cfg, budget, seed, inp.round_to, depth.space.sizes if depth is not None else []))
        t0 = time.perf_counter()
        log = search(gated, gates, space, expected, alpha, data, target, fixed, cfg, generator, checkpoint, depth,
                     width_weights)
        broadcast_state(gated)  # a distributed search: rank 0's BatchNorm statistics everywhere
        inp.options["tas_search_s"] = round(time.perf_counter() - t0, 3)
    choice = {gid: int(k) for gid, k in zip(gids, alpha.detach().argmax(1).tolist())}
    if inp.options.get("tas_inherit", False):
        _inherit(inp.gm, gated, norms, choice, gids)
    inp.options[RESULT_KEY] = [[gid, fractions[k]] for gid, k in choice.items()]
    inp.options["tas_log"] = [[r["epoch"], round(r["argmax_cost_ratio"], 4)] for r in log]
    if depth is not None:
        measure = _record_depths(inp, depth, cost, budget.kind)
    return fit_budget(space, choice, lambda keep: measure(Survivors(ga, repair(ga, keep, {}))), target)


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
    if not inp.options.get("tas_depth", True) or budget.kind not in ("flops", "params"):
        return None
    space = DepthSpace.build(inp.gm)
    if not len(space):
        return None
    return DepthSearch(space, space.install(gated), device, generator)


def _record_depths(inp: ScoreInput, depth: DepthSearch, cost, kind: str):
    """Write the searched depths and the removed blocks; the cost measure of the graph without them."""
    depths = depth.depths()
    inp.skipped_blocks = depth.space.skipped(depths)
    inp.options["tas_searched_depths"] = [[run.blocks[0].add, d, len(run.blocks)]
                                          for run, d in zip(depth.space.runs, depths)]
    gone = {a for a, _ in inp.skipped_blocks}
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


register_method("tas", "Transformable Architecture Search (Dong & Yang, NeurIPS 2019): learned per-group "
                       "width distributions, Gumbel-sampled, with an expected-FLOPs loss; needs data",
                needs_data=True, search=tas_search)(lambda inp: magnitude_scores(inp, 1))
