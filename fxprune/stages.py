"""The pipeline's stages as public functions, for when `fxprune.prune` does too much or too little.

`prepare` traces and analyses a model and returns the `GraphAnalysis` every later stage accepts; `score`
runs a method's scorer; `select` turns scores and a budget into a `Keep`; `cost_model` prices a Keep;
`mask` and `shrink` apply it (masked copy / slim copy, the caller's model and the analysis untouched);
`make_plan` stores it as a `PruningPlan`.

>>> import torch, torchvision, fxprune
>>> x = torch.randn(1, 3, 64, 64)
>>> ga = fxprune.prepare(torchvision.models.resnet18(weights=None).eval(), x)
>>> scores = fxprune.score(ga, "l1")                        # {group id: score per channel}
>>> keep = fxprune.select(ga, scores, flops=0.5)            # a Keep: {group id: kept channels}
>>> cost = fxprune.cost_model(ga)
>>> round(cost.flops_ratio(keep), 2) <= 0.5
True
>>> slim, masked = fxprune.shrink(ga, keep), fxprune.mask(ga, keep)
>>> torch.allclose(slim(x), masked(x), atol=1e-4)
True
>>> plan = fxprune.make_plan(ga, keep, method="l1")
>>> len(plan.groups) == len(ga)
True
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch.fx as fx
from torch import nn

from fxprune.analysis import run_analysis
from fxprune.analysis.analyse import GraphAnalysis
from fxprune.analysis.keep import Keep
from fxprune.analysis.registry import has_exact_rule
from fxprune.cost.model import CostModel
from fxprune.errors import PlanMismatchError
from fxprune.methods.registry import ScoreInput, get_method
from fxprune.rewrite.masks import insert_masks
from fxprune.rewrite.rewriter import rewrite
from fxprune.selection.select import SCOPES, Budget, select as select_keep
from fxprune.tracing import tracer
from fxprune.types import GroupDecision, PruningPlan

__version__ = "0.1.0"


def trace(model: nn.Module, example_inputs: Any, *, leaf_modules: Sequence[type] = (),
          example_kwargs: dict[str, Any] | None = None, copy_model: bool = True) -> fx.GraphModule:
    """Trace `model` into a GraphModule annotated with shapes and FLOPs (`fxprune.tracing.tracer.trace`,
    told which ops the analysis has rules for).

    >>> import torch, torchvision, fxprune
    >>> gm = fxprune.trace(torchvision.models.resnet18(weights=None), torch.randn(1, 3, 64, 64))
    >>> gm.graph.find_nodes(op="placeholder")[0].meta["fxprune_shape"]
    (1, 3, 64, 64)
    """
    return tracer.trace(model, example_inputs, leaf_modules=leaf_modules, example_kwargs=example_kwargs,
                        copy_model=copy_model, has_rule=has_exact_rule)


def prepare(model: nn.Module, example_inputs: Any, *, strict: bool = True, leaf_modules: Sequence[type] = (),
            example_kwargs: dict | None = None, copy_model: bool = True) -> GraphAnalysis:
    """Trace and analyse `model`: the `GraphAnalysis` that `score`, `select`, `cost_model`, `mask`, `shrink`
    and `make_plan` accept (`ga.gm` is the traced copy; `copy_model=False` shares the caller's parameters)."""
    inputs = tracer.as_input_tuple(example_inputs, allow_empty=bool(example_kwargs))
    gm = trace(model, inputs, leaf_modules=leaf_modules, example_kwargs=example_kwargs, copy_model=copy_model)
    ga = run_analysis(gm, strict=strict, opaque=tuple(leaf_modules))
    ga.example_inputs, ga.example_kwargs = inputs, dict(example_kwargs or {})
    return ga


def analyse(model: nn.Module, example_inputs: Any, *, strict: bool = True, leaf_modules: Sequence[type] = (),
            example_kwargs: dict | None = None) -> GraphAnalysis:
    """Trace `model` and return its analysis, which reads as the list of its channel groups (channels that
    must be pruned together) and is accepted by every later stage. Cheaper than `prepare`: the traced
    graph shares the caller's parameters (`mask` and `shrink` work on copies, so the model stays untouched).

    >>> import torch, torchvision, fxprune
    >>> groups = fxprune.analyse(torchvision.models.resnet18(weights=None), torch.randn(1, 3, 64, 64))
    >>> [g.size for g in groups][:3]
    [64, 64, 64]
    """
    return prepare(model, example_inputs, strict=strict, leaf_modules=leaf_modules, example_kwargs=example_kwargs,
                   copy_model=False)


def score(ga: GraphAnalysis, method: str = "l1", *, data: Iterable | None = None,
          **options: Any) -> dict[int, np.ndarray]:
    """A scoring method's per-channel scores (higher = keep) for every group of `ga`. Searching methods
    (tas, dcp, jst, metapruning) decide the kept channels themselves: use `fxprune.prune` for them."""
    backend = get_method(method)
    if backend.score is None or backend.search is not None:
        raise ValueError(f"method {method!r} searches for its decision instead of scoring channels; run it "
                         f"through fxprune.prune(model, x, method={method!r}, ...).")
    inp = ScoreInput(ga.gm, ga, ga.example_inputs, dict(options), data)
    if backend.prepare is not None:
        backend.prepare(inp)
    return backend.score(inp)


def cost_model(ga: GraphAnalysis) -> CostModel:
    """The FLOPs / params model of `ga`: `cost.flops(keep)`, `cost.params(keep)` and their ratios."""
    return CostModel.build(ga.gm, ga)


def select(ga: GraphAnalysis, scores: dict[int, np.ndarray], *, ratio: float | None = None,
           flops: float | None = None, params: float | None = None, round_to: int = 1,
           ignore: Iterable[int] = (), scope: str = "global", cost: CostModel | None = None) -> Keep:
    """The channels to keep under one budget (`ratio`: fraction of every group's channels removed; `flops` /
    `params`: fraction of the dense model's kept), frozen channels always kept; see `fxprune.selection`."""
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is not one of {SCOPES}.")
    budget = Budget.from_options(ratio, flops, params)
    return select_keep(ga, scores, budget, cost or cost_model(ga), round_to, set(ignore), scope)


def mask(ga: GraphAnalysis, keep: dict[int, list[int]], *, soft: bool = False) -> fx.GraphModule:
    """A copy of `ga.gm` with `keep` written in as masks (no channel removed): the slim model's reference."""
    gm = copy.deepcopy(ga.gm)
    insert_masks(gm, ga, _checked(ga, keep), soft=soft)
    return gm


def shrink(ga: GraphAnalysis, keep: dict[int, list[int]]) -> fx.GraphModule:
    """A slim copy of `ga.gm` with only the kept channels (parameters sliced, attributes and constants fixed)."""
    return rewrite(copy.deepcopy(ga.gm), ga, _checked(ga, keep))


def make_plan(ga: GraphAnalysis, keep: dict[int, list[int]], *, method: str = "", options: dict | None = None,
              budget: Budget | None = None, round_to: int = 1, strict: bool = True, scope: str = "global",
              steps: int = 1) -> PruningPlan:
    """`keep` as a `PruningPlan` for `ga`'s graph (JSON; re-applied with `fxprune.apply_plan`)."""
    decisions = [GroupDecision(g.id, g.size, list(keep.get(g.id, range(g.size)))) for g in ga.groups]
    opts = {k: v for k, v in (options or {}).items() if isinstance(v, (int, float, str, bool, list, type(None)))}
    spent = {"kind": budget.kind, "value": budget.value} if budget is not None else {}
    return PruningPlan(decisions, ga.signature, method, opts, spent, round_to, strict, scope, steps,
                       library_version=__version__)


def _checked(ga: GraphAnalysis, keep: dict[int, list[int]]) -> Keep:
    """`keep` as a Keep, refused when it names a group `ga` does not have or a channel outside one."""
    keep = Keep.of(keep)
    for gid, kept in keep.items():
        if not 0 <= gid < len(ga.groups):
            raise PlanMismatchError(f"keep names group {gid}, but this graph has groups 0..{len(ga.groups) - 1}.")
        size = ga.groups[gid].size
        if not kept or any(not 0 <= i < size for i in kept):
            raise PlanMismatchError(f"keep[{gid}] must list between 1 and {size} channel indices in [0, {size}), "
                                    f"got {kept[:8]}{'...' if len(kept) > 8 else ''}.")
    return keep
