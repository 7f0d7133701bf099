"""Property-based tests of fxprune's graph surgery on random DAG architectures (hypothesis).

A strategy draws a small architecture *spec* -- plain tuples, so a shrunk failing example prints as a
spec that can be pasted back into ``SpecNet`` -- and ``SpecNet`` interprets it in ``forward`` with plain
Python control flow over the static spec (torch.fx traces straight through it).

Spec grammar (``c`` = current channel count):

* ``("conv", out, k, groups)``     Conv2d(c, out, k, padding=k // 2, groups=groups)
* ``("dw", k, mult)``              depthwise Conv2d(c, c * mult, k, groups=c)
* ``("bn",)``                      BatchNorm2d(c), eval mode, randomised running stats and affine
* ``("act", name)``                relu | gelu | hardswish
* ``("res", body)``                y = body(x); x = x + y   (body keeps channels and spatial size)
* ``("cat", a, b)``                torch.cat([a(x), b(x)], 1)   (an empty branch is the identity)
* ``("split", how, c1, a, b)``     x1, x2 = split/chunk of x into c1 and c - c1 channels; cat([a(x1), b(x2)])
* ``("shuffle", g, how)``          channel shuffle with g groups; how = "size" (shapes from x.size()) or
                                   "static" (the spec's channel count written into view/reshape)
* ``("se", mid)``                  x * sigmoid(conv1x1(relu(conv1x1(avgpool(x)))))
* ``("pool", "max" | "avg")``      2x2, stride 2

and a head: ``"gap"`` (global average pool + flatten + Linear) or ``"flat"`` (flatten of the feature map,
so one channel becomes H*W features, + Linear). A whole spec is ``(in_channels, ops, head)``.

Properties (every one asserted on every example):

* the slim model's output shape is the dense model's, its outputs are finite, and prune leaves the
  caller's model untouched;
* slim == masked (``apply_masks``: same architecture, the plan's masks in the graph) to a relative error
  of 1e-5 in float32, on the example input and on a second input; eval mode with randomised BatchNorm
  statistics and affine parameters, so BN is not the identity;
* every module of the slim model is self-consistent (conv in_channels == weight.shape[1] * groups, ...);
* the plan round-trips through JSON (to_json/from_json and save/load) unchanged;
* ``apply_plan`` on a fresh copy of the model rebuilds the slim model (outputs within 1e-6);
* the report's FLOPs/params are those torch's flop counter and ``count_params`` see on the two models;
* ratio=0 removes nothing and the slim model computes the dense model;
* FLOPs (and params) budgets: the achieved ratio is <= budget + 1e-6, or the plan is as small as the
  smallest plan prune can make (its result for a vanishing budget); ``hypothesis.event`` records which;
* ONNX export (``fxprune.export`` with its own parity check, then ours at 1e-4) on a smaller sample.

Example counts follow the hypothesis profile from tests/conftest.py ("ci" by default, "dev" for a long
sweep): in ci 400 (ratio plans) + 200 (FLOPs/params budgets) + 20 (ONNX) = 620 random graphs. At the
bottom, plain regression tests replay the shrunk counterexamples the properties have found.
"""
from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import currently_in_test_context, event, given, note, settings
from hypothesis import strategies as st
from torch import nn

import fxprune
from fxprune import PruningPlan
from fxprune.deploy.export import onnx_session_outputs

try:  # the shared checks of tests/helpers.py (importing it also sets torch to one intra-op thread)
    from helpers import assert_consistent_modules
except ImportError:  # pragma: no cover -- helpers.py is optional for this file
    assert_consistent_modules = None

N_CLASSES = 5
SPATIAL = 8
BATCH = 2
CMIN, CMAX = 4, 24  # channel counts that convolutions produce
BRANCH_CMAX = 12  # per branch of a cat/split, so the concatenation stays <= CMAX

_N = settings.default.max_examples  # the active profile's count (conftest.py loads the profile)
N_RATIO = _N
N_GLOBAL = max(_N // 2, 10)
N_ONNX = max(_N // 20, 10)

# Budgets on a 0.01 grid: spread over the whole range, and readable when shrunk. The tests draw them
# *before* the spec: values drawn after a big composite strategy come out at or near their minimum most
# of the time (measured: ~60% of ratios < 0.1 that way), and such plans remove nothing from small groups.
RATIOS = st.integers(0, 90).map(lambda p: p / 100)  # [0, 0.9]
FLOPS_BUDGETS = st.integers(21, 100).map(lambda p: p / 100)  # (0.2, 1.0], for flops= and params=

SLIM_VS_MASKED_RTOL = 1e-5
REBUILD_RTOL = 1e-6


# --------------------------------------------------------------------------------------------- the model


class SpecNet(nn.Module):
    """An nn.Module that interprets an architecture spec (see the module docstring) in `forward`."""

    def __init__(self, spec) -> None:
        super().__init__()
        cin, ops, head = spec
        self._count = 0
        self.prog, c, s = self._build(ops, cin, SPATIAL)
        self.head_kind = head
        self.fc = nn.Linear(c if head == "gap" else c * s * s, N_CLASSES)

    def _add(self, module: nn.Module) -> str:
        name = f"l{self._count}"
        self._count += 1
        self.add_module(name, module)
        return name

    def _build(self, ops, c: int, s: int):
        prog = []
        for op in ops:
            kind = op[0]
            if kind == "conv":
                _, out, k, g = op
                prog.append(("mod", self._add(nn.Conv2d(c, out, k, padding=k // 2, groups=g))))
                c = out
            elif kind == "dw":
                _, k, mult = op
                prog.append(("mod", self._add(nn.Conv2d(c, c * mult, k, padding=k // 2, groups=c))))
                c = c * mult
            elif kind == "bn":
                prog.append(("mod", self._add(nn.BatchNorm2d(c))))
            elif kind == "act":
                act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "hardswish": nn.Hardswish()}[op[1]]
                prog.append(("mod", self._add(act)))
            elif kind == "res":
                body, c2, s2 = self._build(op[1], c, s)
                assert (c2, s2) == (c, s), op
                prog.append(("res", body))
            elif kind == "cat":
                a, ca, _ = self._build(op[1], c, s)
                b, cb, _ = self._build(op[2], c, s)
                prog.append(("cat", a, b))
                c = ca + cb
            elif kind == "split":
                _, how, c1, a_ops, b_ops = op
                a, ca, _ = self._build(a_ops, c1, s)
                b, cb, _ = self._build(b_ops, c - c1, s)
                prog.append(("split", how, c1, c, a, b))
                c = ca + cb
            elif kind == "shuffle":
                _, g, how = op
                prog.append(("shuffle", g, how, c, s))
            elif kind == "se":
                n1 = self._add(nn.Conv2d(c, op[1], 1))
                n2 = self._add(nn.Conv2d(op[1], c, 1))
                prog.append(("se", n1, n2))
            elif kind == "pool":
                pool = nn.MaxPool2d(2) if op[1] == "max" else nn.AvgPool2d(2)
                prog.append(("mod", self._add(pool)))
                s = s // 2
            else:
                raise ValueError(f"unknown op {op!r}")
        return prog, c, s

    def _run(self, prog, x: torch.Tensor) -> torch.Tensor:
        for step in prog:
            kind = step[0]
            if kind == "mod":
                x = getattr(self, step[1])(x)
            elif kind == "res":
                x = x + self._run(step[1], x)
            elif kind == "cat":
                x = torch.cat([self._run(step[1], x), self._run(step[2], x)], 1)
            elif kind == "split":
                _, how, c1, c, a, b = step
                if how == "chunk":
                    x1, x2 = x.chunk(2, dim=1)
                elif how == "split":
                    x1, x2 = torch.split(x, c1, dim=1)
                else:  # "sizes"
                    x1, x2 = torch.split(x, [c1, c - c1], dim=1)
                x = torch.cat([self._run(a, x1), self._run(b, x2)], 1)
            elif kind == "shuffle":
                _, g, how, c, s = step
                if how == "size":
                    b, ch, h, w = x.size()
                    x = x.view(b, g, ch // g, h, w).transpose(1, 2).reshape(b, ch, h, w)
                else:
                    x = x.view(x.shape[0], g, c // g, s, s).transpose(1, 2).reshape(x.shape[0], c, s, s)
            elif kind == "se":
                w = F.adaptive_avg_pool2d(x, 1)
                w = getattr(self, step[2])(F.relu(getattr(self, step[1])(w)))
                x = x * torch.sigmoid(w)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._run(self.prog, x)
        if self.head_kind == "gap":
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        else:
            x = torch.flatten(x, 1)
        return self.fc(x)


def build(spec, weight_seed: int) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """The model of `spec` in eval mode with seeded weights and non-trivial BN statistics, and two inputs
    (the example input the model is traced with, and a second one)."""
    torch.manual_seed(weight_seed)
    model = SpecNet(spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
    model.eval()
    inputs = tuple(torch.randn(BATCH, spec[0], SPATIAL, SPATIAL) for _ in range(2))
    return model, inputs


# ------------------------------------------------------------------------------------------ strategies


def _divisors(c: int, choices=(1, 2, 3, 4)) -> list[int]:
    return [g for g in choices if c % g == 0]


@st.composite
def conv_op(draw, c: int, cmax: int = CMAX, out: int | None = None):
    """Conv2d from c channels: groups drawn first, then the output width as a multiple of it."""
    if out is None:
        g = draw(st.sampled_from(_divisors(c)))
        out = g * draw(st.integers(max(1, math.ceil(CMIN / g)), cmax // g))
    else:
        g = draw(st.sampled_from([d for d in _divisors(c) if out % d == 0]))
    k = draw(st.sampled_from([1, 3]))
    return ("conv", out, k, g)


@st.composite
def ops_list(draw, c: int, s: int, depth: int, max_len: int, cmax: int = CMAX, top: bool = False):
    """A list of ops starting at c channels and spatial size s; returns (ops, c, s)."""
    ops = []
    n = draw(st.integers(1 if top else 0, max_len))
    for _ in range(n):
        kinds = ["act", "bn", "conv"]
        if c * 2 <= cmax:
            kinds.append("dw")
        if any(c % g == 0 for g in (2, 3, 4)):
            kinds.append("shuffle")
        kinds.append("se")
        if depth > 0:
            kinds.append("res")
            if 2 <= c <= CMAX:
                kinds.append("split")
            kinds.append("cat")
        if top and s >= 4:
            kinds.append("pool")
        kind = draw(st.sampled_from(kinds))
        if kind == "conv":
            op = draw(conv_op(c, cmax))
            c = op[1]
        elif kind == "dw":
            op = ("dw", draw(st.sampled_from([3, 1])), 2 if c * 2 <= cmax and draw(st.booleans()) else 1)
            c = c * op[2]
        elif kind == "bn":
            op = ("bn",)
        elif kind == "act":
            op = ("act", draw(st.sampled_from(["relu", "gelu", "hardswish"])))
        elif kind == "shuffle":
            g = draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0]))
            op = ("shuffle", g, draw(st.sampled_from(["size", "static"])))
        elif kind == "se":
            op = ("se", draw(st.integers(2, 8)))
        elif kind == "pool":
            op = ("pool", draw(st.sampled_from(["max", "avg"])))
            s //= 2
        elif kind == "res":
            body, cb, _ = draw(ops_list(c, s, depth - 1, 3, cmax=CMAX))
            if cb != c or not body:
                body = body + [draw(conv_op(cb, out=c))]
            op = ("res", body)
        elif kind == "cat":
            branches = []
            for _ in range(2):
                allow_identity = c <= BRANCH_CMAX
                b, cb, _ = draw(ops_list(c, s, depth - 1, 3, cmax=BRANCH_CMAX))
                if not b and not allow_identity:
                    b = [draw(conv_op(c, BRANCH_CMAX))]
                    cb = b[0][1]
                elif cb > BRANCH_CMAX:
                    b = b + [draw(conv_op(cb, BRANCH_CMAX))]
                    cb = b[-1][1]
                branches.append((b, cb))
            op = ("cat", branches[0][0], branches[1][0])
            c = branches[0][1] + branches[1][1]
        else:  # split
            hows = ["sizes"] + (["split", "chunk"] if c % 2 == 0 else [])
            how = draw(st.sampled_from(hows))
            c1 = c // 2 if how != "sizes" else draw(st.integers(1, c - 1))
            branches = []
            for part in (c1, c - c1):
                b, cb, _ = draw(ops_list(part, s, depth - 1, 3, cmax=BRANCH_CMAX))
                branches.append((b, cb))
            op = ("split", how, c1, branches[0][0], branches[1][0])
            c = branches[0][1] + branches[1][1]
        ops.append(op)
    return ops, c, s


@st.composite
def specs(draw):
    """A whole architecture: (in_channels, ops, head)."""
    cin = draw(st.integers(1, 4))
    stem = draw(conv_op(cin))  # a stem conv, so that every graph has something to prune
    ops, c, s = draw(ops_list(stem[1], SPATIAL, depth=2, max_len=6, top=True))
    ops = [stem] + ops
    if c > CMAX + BRANCH_CMAX:  # keep the flattened head small
        ops.append(draw(conv_op(c, CMAX)))
    head = draw(st.sampled_from(["gap", "flat"]))
    return (cin, ops, head)


# ---------------------------------------------------------------------------------------------- checks


def _event(text: str) -> None:
    """hypothesis.event, also callable from the plain regression tests at the bottom."""
    if currently_in_test_context():
        event(text)


def _note(text: str) -> None:
    if currently_in_test_context():
        note(text)
    else:
        print(text)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-12))


def check_slim_modules(slim: nn.Module) -> None:
    """Every sliced module's attributes agree with its parameters' shapes."""
    if assert_consistent_modules is not None:
        assert_consistent_modules(slim)
    for name, m in slim.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.in_channels == m.weight.shape[1] * m.groups, (name, m, m.weight.shape)
            assert m.out_channels == m.weight.shape[0], (name, m, m.weight.shape)
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, (name, m)
            assert m.bias is None or m.bias.shape == (m.out_channels,), (name, m)
        elif isinstance(m, nn.BatchNorm2d):
            shapes = {t.shape for t in (m.weight, m.bias, m.running_mean, m.running_var)}
            assert shapes == {(m.num_features,)}, (name, m, shapes)
        elif isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features), (name, m, m.weight.shape)
            assert m.bias is None or m.bias.shape == (m.out_features,), (name, m)


def check_result(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], res, dense_before) -> None:
    """The properties every pruning result must have. `inputs` = (example input, a second input)."""
    x = inputs[0]
    with torch.no_grad():
        dense = [model(t) for t in inputs]
        slim = [res.model(t) for t in inputs]
    # prune works on a copy: the caller's model computes what it computed before
    assert all(torch.equal(a, b) for a, b in zip(dense, dense_before)), "prune changed the caller's model"
    for d, o in zip(dense, slim):
        assert o.shape == d.shape == (BATCH, N_CLASSES)
        assert torch.isfinite(o).all()

    check_slim_modules(res.model)

    # plan: JSON round trip (string and file); the round-tripped plan is what gets re-applied below
    plan = res.plan
    again = PruningPlan.from_json(plan.to_json())
    assert again == plan
    assert again.to_json() == plan.to_json()
    with tempfile.TemporaryDirectory() as tmp:
        plan.save(Path(tmp) / "plan.json")
        assert PruningPlan.load(Path(tmp) / "plan.json") == plan

    # slim == masked (same architecture, the plan's masks in the graph)
    masked = fxprune.apply_masks(model, x, again)
    with torch.no_grad():
        for t, o in zip(inputs, slim):
            err = rel_err(o, masked(t))
            assert err <= SLIM_VS_MASKED_RTOL, f"slim vs masked: rel err {err:.3g}"

    # rebuilding from the plan on a fresh copy gives the same slim model
    rebuilt = fxprune.apply_plan(copy.deepcopy(model), x, again)
    check_slim_modules(rebuilt)
    with torch.no_grad():
        for t, o in zip(inputs, slim):
            err = rel_err(rebuilt(t), o)
            assert err <= REBUILD_RTOL, f"apply_plan vs prune: rel err {err:.3g}"

    # the report: pruning never grows the model, and its counts are those of the slim module
    assert res.report.flops_after <= res.report.flops_before
    assert res.report.params_after <= res.report.params_before
    assert res.report.params_before == fxprune.count_params(model)
    assert res.report.params_after == fxprune.count_params(res.model)
    assert res.report.flops_before == fxprune.count_flops(model, x)
    assert res.report.flops_after == fxprune.count_flops(res.model, x)


def dense_outputs(model: nn.Module, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(t) for t in inputs]


# ------------------------------------------------------------------------------------------ properties


@settings(max_examples=N_RATIO)
@given(ratio=RATIOS, seed=st.integers(0, 2**16), weight_seed=st.integers(0, 2**16), spec=specs())
def test_random_ratio_plans(ratio, seed, weight_seed, spec):
    ratio_case(ratio, seed, weight_seed, spec)


def ratio_case(ratio: float, seed: int, weight_seed: int, spec) -> None:
    """prune(method="random", ratio=...) and every property of its result."""
    model, inputs = build(spec, weight_seed)
    before = dense_outputs(model, inputs)
    res = fxprune.prune(model, inputs[0], method="random", ratio=ratio, seed=seed)
    check_result(model, inputs, res, before)
    removed = sum(d.size - len(d.keep) for d in res.plan.groups)
    if ratio == 0.0:  # the identity plan: the slim model is the dense model
        assert removed == 0
        with torch.no_grad():
            assert rel_err(res.model(inputs[0]), before[0]) <= REBUILD_RTOL
    _event("channels removed" if removed else "nothing removed")


@settings(max_examples=3 * N_ONNX)  # about 40% of the random architectures have an identity residual block
@given(ratio=RATIOS, seed=st.integers(0, 2**16), weight_seed=st.integers(0, 2**16), spec=specs(),
       pick=st.integers(0, 2**16))
def test_removed_residual_blocks(ratio, seed, weight_seed, spec, pick):
    """A plan that also removes residual blocks (TAS's depth search): removing a block is zeroing its branch
    (checked on the dense graph, independently of remove_blocks), the slim model equals the masked model,
    and the slim model still trains (no in-place op writes into a shortcut autograd needs)."""
    import dataclasses
    import random

    from fxprune.analysis.blocks import remove_blocks, residual_blocks

    model, inputs = build(spec, weight_seed)
    x = inputs[0]
    gm = fxprune.trace(model, x)
    blocks = residual_blocks(gm)
    if not blocks:
        _event("no identity residual block")
        return
    rng = random.Random(pick)
    chosen = [b for b in blocks if rng.random() < 0.5] or [rng.choice(blocks)]
    skipped = [[b.add, b.shortcut] for b in chosen]
    _event(f"{len(skipped)} of {len(blocks)} blocks removed")

    zeroed = copy.deepcopy(gm)  # the oracle: each removed block's branch output multiplied by 0
    nodes = {n.name: n for n in zeroed.graph.nodes}
    for add_name, shortcut in skipped:
        add = nodes[add_name]
        branch = next(a for a in add.args if a.name != shortcut)
        with zeroed.graph.inserting_before(add):
            zero = zeroed.graph.call_function(torch.mul, (branch, 0.0))
        add.replace_input_with(branch, zero)
    zeroed.recompile()
    removed = remove_blocks(copy.deepcopy(gm), skipped)
    with torch.no_grad():
        for t in inputs:
            assert rel_err(removed(t), zeroed(t)) <= REBUILD_RTOL

    plan = dataclasses.replace(fxprune.prune(model, x, method="random", ratio=ratio, seed=seed).plan,
                               skipped_blocks=skipped)
    plan = PruningPlan.from_json(plan.to_json())
    slim, masked = fxprune.apply_plan(model, x, plan), fxprune.apply_masks(model, x, plan)
    with torch.no_grad():
        for t in inputs:
            assert rel_err(slim(t), masked(t)) <= SLIM_VS_MASKED_RTOL
    slim.train()(x).square().sum().backward()


def _at_strict_minimum(model: nn.Module, x: torch.Tensor, plan: PruningPlan) -> bool:
    """Whether every prunable group of `plan` keeps max(1, #frozen) channels."""
    groups = fxprune.analyse(model, x)
    return all(len(d.keep) == max(1, len(groups[d.id].frozen))
               for d in plan.groups if groups[d.id].prunable)


@settings(max_examples=N_GLOBAL)
@given(budget=FLOPS_BUDGETS, kind=st.sampled_from(["flops", "params"]),
       method=st.sampled_from(["random", "l1", "fpgm", "uniform"]), scope=st.sampled_from(["global", "local"]),
       seed=st.integers(0, 2**16), weight_seed=st.integers(0, 2**16), spec=specs())
def test_global_budgets(budget, kind, method, scope, seed, weight_seed, spec):
    budget_case(budget, kind, method, seed, weight_seed, spec, scope)


def budget_case(budget: float, kind: str, method: str, seed: int, weight_seed: int, spec,
                scope: str = "global") -> None:
    """FLOPs (and params) budgets: the result fits the budget, or it is the smallest plan there is.

    "Smallest plan" = the plan prune returns for a vanishing budget (1e-9): every group at its minimum
    width, max(1, #frozen) channels, plus whatever repair must give back so that no tensor is left
    without channels. The event says which of the two held, and whether the minimum was the strict one.
    """
    model, inputs = build(spec, weight_seed)
    x = inputs[0]
    before = dense_outputs(model, inputs)
    res = fxprune.prune(model, x, method=method, seed=seed, scope=scope, **{kind: budget})
    check_result(model, inputs, res, before)
    achieved = res.report.flops_ratio if kind == "flops" else res.report.params_ratio
    _note(f"{kind} ratio {achieved:.4f} for budget {budget:.4f}")
    if achieved <= budget + 1e-6:
        _event(f"{kind} budget met")
        return
    smallest = fxprune.prune(model, x, method=method, seed=seed, scope=scope, **{kind: 1e-9})
    least = smallest.report.flops_ratio if kind == "flops" else smallest.report.params_ratio
    _note(f"smallest plan: {kind} ratio {least:.4f}, widths {[len(d.keep) for d in smallest.plan.groups]}; "
          f"this plan: {[len(d.keep) for d in res.plan.groups]}")
    assert achieved <= least + 1e-9, (
        f"{kind} ratio {achieved:.4f} > budget {budget:.4f}, but a smaller plan exists ({kind} ratio {least:.4f})")
    strict = _at_strict_minimum(model, x, res.plan)
    _event(f"{kind} budget unreachable: plan at the minimum ({'strict' if strict else 'after repair'})")


@settings(max_examples=N_ONNX)
@given(ratio=RATIOS, seed=st.integers(0, 2**16), weight_seed=st.integers(0, 2**16), spec=specs())
def test_onnx_parity(ratio, seed, weight_seed, spec):
    model, (x, _) = build(spec, weight_seed)
    res = fxprune.prune(model, x, method="random", ratio=ratio, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        # check=True: fxprune's own parity check (raises ExportParityError); then a tighter one of ours
        path = fxprune.export(res.model, x, Path(tmp) / "slim.onnx")
        (onnx_out,) = onnx_session_outputs(path, x)
    with torch.no_grad():
        expected = res.model(x)
    err = rel_err(torch.from_numpy(onnx_out), expected)
    assert err <= 1e-4, f"onnxruntime vs torch: rel err {err:.3g}"


# ----------------------------------------------------------------------------------------- regressions
# Shrunk counterexamples the properties above have found, replayed on every run (the random search may
# not meet them again). Same checks as the properties; a failure here is a library bug, not a flaky test.

RATIO_REGRESSIONS = [
    # channel shuffle written as torchvision does (view(b, g, c // g, ...) with c from x.size()) on a
    # tensor with c == g: the rewriter set g to the new width but left `c // g` dividing by the old g
    # (found by these properties, fixed in the library since)
    pytest.param(0.5, 0, 0, (1, [("conv", 2, 1, 1), ("shuffle", 2, "size")], "gap"), id="shuffle-c-eq-g"),
    # one tensor concatenated twice (once through a split + grouped conv), then a grouped conv
    pytest.param(0.25, 1, 0, (1, [("conv", 4, 1, 1), ("cat", [("split", "split", 2, [], [("conv", 8, 1, 2)])], []),
                                  ("conv", 14, 1, 2)], "gap"), id="cat-reuse-grouped-conv"),
    # two grouped convs (groups 2 and 4) read one tensor; their outputs are concatenated, then a channel
    # shuffle with 2 groups: the rewritten view gets sizes that do not multiply to the kept channels
    pytest.param(0.25, 0, 0, (4, [("conv", 16, 1, 1), ("cat", [("conv", 6, 1, 2)], [("conv", 4, 1, 4)]),
                                  ("shuffle", 2, "size")], "gap"), id="cat-mixed-groups-shuffle"),
    # the same, with a grouped conv (groups 2) in place of the shuffle: conv weight / input width mismatch
    pytest.param(0.25, 0, 0, (4, [("conv", 16, 1, 1), ("cat", [("conv", 6, 1, 2)], [("conv", 4, 1, 4)]),
                                  ("conv", 10, 1, 2)], "gap"), id="cat-mixed-groups-grouped-conv"),
    # split 3 + 5; the 5 go through cat([depthwise x2 conv(5 -> 10), identity]); all 18 channels then into
    # a conv with groups=3: the slim conv gets groups=4 (more than the dense model had) and 3 out channels
    pytest.param(0.25, 0, 0, (1, [("conv", 8, 1, 1), ("split", "sizes", 3, [], [("act", "relu"),
                                                                             ("cat", [("dw", 3, 2)], [])]),
                                  ("act", "relu"), ("conv", 6, 1, 3)], "gap"), id="split-cat-dw-grouped-conv"),
    # cat([x, x]) into a grouped conv whose output is added back to x: the conv-group factor collapses
    # (it was frozen) but the channels-within-a-group factor stayed prunable, so the slim conv lost input
    # channels the cat still produced ("Given groups=8 ... weight of size [4, 1, 1, 1]")
    pytest.param(0.25, 0, 0, (1, [("conv", 4, 1, 1), ("res", [("cat", [], []), ("conv", 4, 1, 4)])], "gap"),
                 id="cat-self-grouped-conv-residual"),
]

BUDGET_REGRESSIONS = [
    # the budget search keeps channels of only one input of a cat; repair() then gives one channel back
    # to the other input after the search, and the plan ends up over budget (0.228 > 0.21) although
    # smaller plans fit (the minimum-width plan: 0.112)
    pytest.param(0.21, "flops", "random", 0, 0,
                 (1, [("conv", 13, 1, 1), ("cat", [("conv", 4, 1, 1)], [("conv", 4, 1, 1)]), ("dw", 3, 1)], "gap"),
                 id="repair-after-budget-cat"),
    # the same through a channel shuffle after the cat (repair revives a shuffle group): 0.220 > 0.21
    pytest.param(0.21, "flops", "random", 0, 0,
                 (2, [("conv", 13, 3, 1), ("cat", [("conv", 4, 1, 1)], [("conv", 6, 1, 1)]), ("act", "relu"),
                      ("shuffle", 2, "size")], "gap"),
                 id="repair-after-budget-shuffle"),
]


@pytest.mark.parametrize("ratio, seed, weight_seed, spec", RATIO_REGRESSIONS)
def test_ratio_regressions(ratio, seed, weight_seed, spec):
    ratio_case(ratio, seed, weight_seed, spec)


@pytest.mark.parametrize("budget, kind, method, seed, weight_seed, spec", BUDGET_REGRESSIONS)
def test_budget_regressions(budget, kind, method, seed, weight_seed, spec):
    budget_case(budget, kind, method, seed, weight_seed, spec)
