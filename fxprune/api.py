"""The one-call verbs: prune, apply_plan, apply_masks / remove_masks (the stages one by one: `fxprune.stages`)."""
from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from fxprune.analysis.analyse import GraphAnalysis
from fxprune.analysis.blocks import remove_blocks
from fxprune.analysis.keep import Keep, Survivors
from fxprune.cost.latency_table import LatencyModel
from fxprune.cost.model import CostModel, count_params
from fxprune.deploy.align import measure_alignment
from fxprune.deploy.target import Target, as_target
from fxprune.errors import PlanMismatchError
from fxprune.methods import get_method
from fxprune.methods.config import MethodConfig
from fxprune.methods.registry import ScoreInput, method_config, method_of_config
from fxprune.methods.result import SearchResult, as_search_result
from fxprune.rewrite.masks import insert_masks, strip_masks
from fxprune.rewrite.rewriter import rewrite
from fxprune.selection.select import Budget, fits_at_minimum, repair, select
from fxprune.stages import make_plan, prepare
from fxprune.tracing.meta import total_flops
from fxprune.tracing.tracer import as_input_tuple, propagate_shapes
from fxprune.train.prune_steps import (accuracy, check_data_options, step_budgets, teacher_of, train_masked,
                                       train_slim, training_device)
from fxprune.types import PruneResult, PruningPlan, Report


@dataclass
class PruneOptions:
    """Everything `prune` takes besides the model, the method, the budget, the data and the fine-tune: how the
    model is traced, how the budget is spread, where it runs. Each field can also be passed to `prune` as a
    keyword of the same name (`prune(..., round_to=8)`).

    `target`: where a latency budget or `round_to="auto"` is measured (a `fxprune.Target` or a device string;
    default CUDA when available, else the CPU). `round_to`: kept counts are multiples of it ("auto": the
    channel multiple measured to run well on `target`, `fxprune.deploy.measure_alignment`). `ignore`: module
    names (their output channels are kept) or group ids. `scope`: "global" ranks channels across all groups,
    "local" removes the same fraction from every group (default: the method's own). `steps`: prune in that
    many rounds, budgets following `step_schedule` ("linear" or "geometric"), the masked model fine-tuned
    between rounds. `device`: where training and evaluation run (default CUDA when available). `inplace`:
    slice the caller's modules instead of a copy. `strict=False` freezes channels reaching ops without a rule
    instead of raising. `leaf_modules` are traced as opaque leaves (their channels kept); `example_kwargs` are
    the forward's keyword inputs.
    """

    target: Target | str | None = None
    round_to: int | str = 1
    ignore: Iterable = ()
    scope: str | None = None
    steps: int = 1
    step_schedule: str = "linear"
    device: Any = None
    inplace: bool = False
    strict: bool = True
    leaf_modules: Sequence[type] = ()
    example_kwargs: dict | None = None


PRUNE_OPTIONS = frozenset(f.name for f in fields(PruneOptions))


def prune(model: nn.Module, example_inputs: Any, *, method: str | MethodConfig = "l1", ratio: float | None = None,
          flops: float | None = None, params: float | None = None, latency: float | None = None,
          data: Iterable | None = None, eval_data: Iterable | None = None, finetune: Any = None,
          options: PruneOptions | None = None, **keywords: Any) -> PruneResult:
    """Prune `model` to a budget and return the slim GraphModule, the plan and a report.

    Exactly one budget: `ratio` (fraction of every group's channels removed), `flops`, `params` or `latency`
    (fraction of the dense model's FLOPs / params / latency kept). A latency budget is measured on
    `options.target` at the example input's shape, through a per-layer latency table
    (`fxprune.cost.LatencyModel`). `options` (a `PruneOptions`) says how to trace, spread the budget and
    where to run; its fields may also be given as keywords. `method` is a method's name (`fxprune methods`)
    with its options as the remaining keywords (a misspelled one is an error that lists the valid ones), or
    the method's config object (`method=TasConfig(tas_epochs=2)`, `fxprune.methods.config`).

    With data: `data` (an iterable of (inputs, targets) batches) feeds methods that need it (taylor,
    slimming) and the fine-tune; `finetune=Finetune(epochs=..., kd=...)` fine-tunes the slim model (with
    knowledge distillation from the dense model when kd=True); `eval_data` measures accuracy before pruning,
    right after it and after every fine-tune epoch (`result.report.accuracy`, `result.history`).

    >>> import torch, torchvision, fxprune
    >>> x = torch.randn(1, 3, 64, 64)
    >>> res = fxprune.prune(torchvision.models.resnet18(weights=None).eval(), x, flops=0.5)
    >>> res.report.flops_ratio <= 0.5 and res.model(x).shape == (1, 1000)
    True
    """
    opts, method_options = _split_keywords(options, keywords)
    method, method_options = _method_and_options(method, method_options)
    budget = Budget.from_options(ratio, flops, params, latency)
    backend = get_method(method)
    config = method_config(method, method_options)  # a misspelled option fails here, before any work
    deployment = _deployment_target(opts.target, budget, opts.round_to, opts.device)
    budgets = step_budgets(budget, opts.steps, opts.step_schedule)
    check_data_options(data, finetune, opts.steps, backend.needs_data, method)
    inputs = as_input_tuple(example_inputs, allow_empty=bool(opts.example_kwargs))
    ga = prepare(model, inputs, strict=opts.strict, leaf_modules=opts.leaf_modules,
                 example_kwargs=opts.example_kwargs, copy_model=not opts.inplace)
    gm = ga.gm
    cost = CostModel.build(gm, ga)
    if budget.kind == "latency":
        cost.latency_model = LatencyModel.build(gm, ga, inputs, deployment)
    ignored = _ignored_groups(gm, ga, opts.ignore)
    round_to = _resolve_round_to(opts.round_to, deployment, ga, cost, budget, ignored)
    dense_flops, dense_params = total_flops(gm), count_params(gm)
    if data is not None or eval_data is not None:
        gm.to(training_device(opts.device))
    teacher = teacher_of(model, finetune)
    acc = {"dense": accuracy(gm, eval_data)}
    inp = ScoreInput(gm, ga, inputs, dict(method_options), data, round_to=round_to, config=config)
    found, history, search_s = _decide_steps(backend, inp, budgets, cost, ignored, opts.scope,
                                             lambda k: train_masked(gm, ga, k, finetune, data, eval_data, teacher))
    keep = found.keep
    plan = make_plan(ga, keep, method=method, options=inp.options, budget=budget, round_to=round_to,
                     strict=opts.strict, scope=opts.scope or backend.scope, steps=opts.steps)
    plan.skipped_blocks = [list(b) for b in found.skipped_blocks]
    plan.search = found.record()
    rewrite(gm, ga, keep)
    remove_blocks(gm, plan.skipped_blocks)
    propagate_shapes(gm, _to_device_of(gm, inputs), opts.example_kwargs or {})
    acc["pruned"] = accuracy(gm, eval_data)
    if finetune is not None:
        history.append(train_slim(gm, finetune, data, eval_data, teacher))
        acc["finetuned"] = accuracy(gm, eval_data)
    report = _report(ga, plan, dense_flops, dense_params, gm)
    report.accuracy = {k: v for k, v in acc.items() if v is not None}
    report.search = _search_cost(search_s, gm)
    _record_achieved(plan, report, cost, ga, keep, deployment)
    return PruneResult(gm, plan, report, history)


def _split_keywords(options: PruneOptions | None, keywords: dict[str, Any]) -> tuple[PruneOptions, dict[str, Any]]:
    """(prune's own options, the method's options) from `options=` and the keywords; a keyword given both
    ways is refused."""
    own = {k: v for k, v in keywords.items() if k in PRUNE_OPTIONS}
    if options is not None and own:
        raise TypeError(f"prune: {', '.join(sorted(own))} given both as keyword and in options=; pass each once.")
    if options is not None and not isinstance(options, PruneOptions):
        raise TypeError(f"options must be a fxprune.PruneOptions, got {type(options).__name__}.")
    return options or PruneOptions(**own), {k: v for k, v in keywords.items() if k not in PRUNE_OPTIONS}


def _method_and_options(method: str | MethodConfig, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(method name, its options as keywords) from a name + keywords, or from a config object (whose options
    that differ from the defaults are what the plan records)."""
    if isinstance(method, str):
        return method, options
    if not isinstance(method, MethodConfig):
        raise TypeError(f"method must be a method name or a method's config object (fxprune.methods.config), got "
                        f"{type(method).__name__}.")
    if options:
        raise TypeError(f"prune: options {', '.join(sorted(options))} given as keywords besides the config object "
                        f"{type(method).__name__}; set them on the config instead.")
    return method_of_config(method), method.changed_options()


def _decide_steps(backend, inp: ScoreInput, budgets: list[Budget], cost: CostModel, ignored: set[int],
                  scope: str | None, train_between) -> tuple[SearchResult, list, float]:
    """The method's preparation and every prune step's decision, with `train_between(keep)` (the masked
    fine-tune) between steps; (the last step's decision, training histories, search seconds)."""
    keep, history = Keep(), []
    t0 = time.perf_counter()
    if backend.prepare is not None:
        backend.prepare(inp)
    search_s = time.perf_counter() - t0
    for step, step_budget in enumerate(budgets):
        inp.keep, inp.step = keep, step
        t0 = time.perf_counter()
        found = decide(backend, inp, inp.ga, step_budget, cost, inp.round_to, ignored, scope,
                       keep.removed(inp.ga))
        keep = found.keep
        search_s += time.perf_counter() - t0
        if step < len(budgets) - 1:
            history.append(train_between(keep))
    return found, history, search_s


def _record_achieved(plan: PruningPlan, report: Report, cost: CostModel, ga: GraphAnalysis,
                     keep: Keep, deployment: Target | None) -> None:
    plan.achieved = {"flops": report.flops_ratio, "params": report.params_ratio}
    if cost.latency_model is not None:
        plan.achieved["latency_predicted"] = cost.latency(Survivors(ga, keep)) / cost.latency(None)
    if deployment is not None:
        plan.budget["target"] = deployment.key() or deployment.device


def _search_cost(seconds: float, gm: fx.GraphModule) -> dict[str, Any]:
    """The decision's wall time (method preparation + every step's scoring / search; fine-tuning between
    rounds excluded) and, on a GPU, the GPU-minutes it held one device for."""
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    gpu = round(seconds / 60, 4) if device.type == "cuda" else None
    return {"seconds": round(seconds, 3), "device": str(device), "gpu_minutes": gpu}


def _deployment_target(target: Target | str | None, budget: Budget, round_to: int | str,
                       device: Any) -> Target | None:
    """The Target latency budgets and round_to="auto" measure on (None when neither is asked for)."""
    if round_to != "auto" and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a positive int or 'auto' (the channel multiple measured to run well "
                         f"on the target device), got {round_to!r}.")
    if budget.kind != "latency" and round_to != "auto":
        if target is not None:
            raise ValueError("target= is only used by a latency budget (latency=0.5) or round_to='auto'; pass "
                             "one of them, or drop target=.")
        return None
    return as_target(target, str(training_device(device)) if device is not None else
                     ("cuda" if torch.cuda.is_available() else "cpu"))


def _resolve_round_to(round_to: int | str, target: Target | None, ga: GraphAnalysis, cost: CostModel,
                      budget: Budget, ignored: set[int]) -> int:
    """An int round_to as given; "auto": the alignment measured on `target`, halved while even the smallest
    model it allows (every group at one multiple) would not meet the budget."""
    if round_to != "auto":
        return int(round_to)
    m = measure_alignment(target)
    while m > 1 and budget.kind != "ratio" and not fits_at_minimum(ga, cost, budget, m, ignored):
        m //= 2
    return m


def apply_plan(model: nn.Module, example_inputs: Any, plan: PruningPlan, *, leaf_modules: Sequence[type] = (),
               example_kwargs: dict | None = None, inplace: bool = False) -> fx.GraphModule:
    """Rebuild the slim model of `plan` on a freshly constructed `model` (same architecture)."""
    ga = prepare(model, example_inputs, strict=plan.strict, leaf_modules=leaf_modules, example_kwargs=example_kwargs,
                 copy_model=not inplace)
    rewrite(ga.gm, ga, _check_plan(ga, plan))
    return remove_blocks(ga.gm, plan.skipped_blocks)


def apply_masks(model: nn.Module, example_inputs: Any, plan: PruningPlan, *, soft: bool = False,
                leaf_modules: Sequence[type] = (), example_kwargs: dict | None = None) -> fx.GraphModule:
    """The same architecture with the plan's masks written into the graph (no channel removed; residual
    blocks a depth search removed are removed here too, as in the slim model)."""
    ga = prepare(model, example_inputs, strict=plan.strict, leaf_modules=leaf_modules, example_kwargs=example_kwargs)
    insert_masks(ga.gm, ga, _check_plan(ga, plan), soft=soft)
    return remove_blocks(ga.gm, plan.skipped_blocks)


def remove_masks(masked: fx.GraphModule) -> fx.GraphModule:
    """A copy of `masked` with every mask node taken out again (the original computation)."""
    return strip_masks(copy.deepcopy(masked))


def _check_plan(ga: GraphAnalysis, plan: PruningPlan) -> Keep:
    if plan.graph_signature != ga.signature or len(plan.groups) != len(ga.groups):
        raise PlanMismatchError(
            f"this plan was made for a different graph (plan signature {plan.graph_signature}, "
            f"{len(plan.groups)} groups; this model: {ga.signature}, {len(ga.groups)} groups). Build the same "
            f"architecture with the same input shape (and leaf_modules) the plan was made with, or prune this "
            f"model anew with fxprune.prune.")
    for d in plan.groups:
        g = ga.groups[d.id]
        if d.size != g.size or any(not 0 <= i < g.size for i in d.keep) or not d.keep:
            raise PlanMismatchError(f"plan group {d.id} has size {d.size} and keeps {len(d.keep)} channels, but "
                                    f"this model's group {d.id} has {g.size} channels; the plan does not fit.")
        dropped = sorted(set(g.frozen) - set(d.keep))
        if dropped:
            raise PlanMismatchError(
                f"plan group {d.id} removes channels {dropped[:5]} that must be kept "
                f"({g.frozen[dropped[0]]}); the plan was edited or made for another graph.")
    return {d.id: list(d.keep) for d in plan.groups if len(d.keep) < d.size}


def decide(backend, inp: ScoreInput, ga: GraphAnalysis, budget: Budget, cost: CostModel, round_to: int,
           ignored: set[int], scope: str | None, removed: dict[int, set[int]]) -> SearchResult:
    """One prune step's decision: the backend's own search (its kept channels repaired), or its scores
    through `select`."""
    if backend.search is not None:
        found = as_search_result(backend.search(inp, budget, cost, ignored))
        found.keep = Keep(repair(ga, found.keep, {}))
        return found
    return SearchResult(select(ga, backend.score(inp), budget, cost, round_to, ignored, scope or backend.scope,
                               removed))


def _to_device_of(gm: fx.GraphModule, inputs: tuple) -> tuple:
    """The example inputs on the device the (possibly fine-tuned) module lives on."""
    device = next((p.device for p in gm.parameters()), None)
    return tuple(t.to(device) if isinstance(t, torch.Tensor) and device is not None else t for t in inputs)


def _ignored_groups(gm: fx.GraphModule, ga: GraphAnalysis, ignore: Iterable) -> set[int]:
    names = {n for n, m in gm.named_modules()}
    out: set[int] = set()
    prefixes = []
    for item in ignore:
        if isinstance(item, int):
            out.add(item)
        elif isinstance(item, str):
            if item not in names:
                raise ValueError(f"ignore: no module named '{item}' in the model; names look like "
                                 f"{', '.join(sorted(names - {''})[:5])}, ...")
            prefixes.append(item + ".")
        else:
            raise TypeError(f"ignore takes module names (str) or group ids (int), got {type(item).__name__}.")
    for g in ga.groups:
        if prefixes and any(m.kind == "param" and m.role == "producer" and m.name.startswith(tuple(prefixes))
                            for m in g.members):
            out.add(g.id)
    return out


def _report(ga: GraphAnalysis, plan: PruningPlan, dense_flops: int, dense_params: int,
            slim: fx.GraphModule) -> Report:
    widths = [(d.id, d.size, len(d.keep), ga.groups[d.id].origin) for d in plan.groups]
    frozen = [(g.id, next(iter(g.frozen.values()))) for g in ga.groups if g.frozen and len(g.frozen) == g.size]
    return Report(dense_flops, total_flops(slim), dense_params, count_params(slim), widths, frozen)


__all__ = ["PruneOptions", "apply_masks", "apply_plan", "prune", "remove_masks"]
