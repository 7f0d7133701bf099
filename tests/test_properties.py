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

Properties: slim output shape == dense output shape; slim == masked model; slim modules are
self-consistent (conv in_channels == weight.shape[1] * groups, ...); plan JSON round trip; apply_plan on
a fresh copy rebuilds the same slim model; FLOPs budgets are met (or every group is at its minimum width);
ONNX export parity on a smaller sample.

Example counts scale with the hypothesis profile from tests/conftest.py ("ci" by default, "dev" for a
long sweep): in ci 200 (ratio) + 100 (flops) + 10 (onnx) = 310 random graphs.
"""
from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from hypothesis import event, given, note, settings
from hypothesis import strategies as st
from torch import nn

import fxprune
from fxprune import PruningPlan
from fxprune.export import onnx_session_outputs

N_CLASSES = 5
SPATIAL = 8
BATCH = 2
CMIN, CMAX = 4, 24  # channel counts that convolutions produce
BRANCH_CMAX = 12  # per branch of a cat/split, so the concatenation stays <= CMAX

_N = settings.default.max_examples  # the active profile's count (conftest.py loads the profile)
N_RATIO = _N
N_FLOPS = max(_N // 2, 10)
N_ONNX = max(_N // 20, 10)

# budgets on a 0.01 grid: spread evenly over the range (st.floats piles up near the ends, and a ratio
# below ~0.05 removes nothing from these small groups) and printed readably when shrunk
RATIOS = st.integers(0, 90).map(lambda p: p / 100)  # [0, 0.9]
FLOPS_BUDGETS = st.integers(21, 100).map(lambda p: p / 100)  # (0.2, 1.0]

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


def build(spec, weight_seed: int) -> tuple[nn.Module, torch.Tensor]:
    """The model of `spec` in eval mode with seeded weights and non-trivial BN statistics, and an input."""
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
    x = torch.randn(BATCH, spec[0], SPATIAL, SPATIAL)
    return model, x


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
    n = draw(st.integers(0, max_len))
    for _ in range(n):
        kinds = ["act", "bn", "conv"]
        if c * 2 <= cmax:
            kinds.append("dw")
        if any(c % g == 0 and c > g for g in (2, 3, 4)):  # TEMP
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
            g = draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0 and c > g]))  # TEMP
            op = ("shuffle", g, draw(st.sampled_from(["size", "static"])))
        elif kind == "se":
            op = ("se", draw(st.integers(2, 8)))
        elif kind == "pool":
            op = ("pool", draw(st.sampled_from(["max", "avg"])))
            s //= 2
        elif kind == "res":
            body, cb, _ = draw(ops_list(c, s, depth - 1, 2, cmax=CMAX))
            if cb != c or not body:
                body = body + [draw(conv_op(cb, out=c))]
            op = ("res", body)
        elif kind == "cat":
            branches = []
            for _ in range(2):
                allow_identity = c <= BRANCH_CMAX
                b, cb, _ = draw(ops_list(c, s, depth - 1, 2, cmax=BRANCH_CMAX))
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
                b, cb, _ = draw(ops_list(part, s, depth - 1, 2, cmax=BRANCH_CMAX))
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
    ops, c, s = draw(ops_list(stem[1], SPATIAL, depth=2, max_len=5, top=True))
    ops = [stem] + ops
    if c > CMAX + BRANCH_CMAX:  # keep the flattened head small
        ops.append(draw(conv_op(c, CMAX)))
    head = draw(st.sampled_from(["gap", "flat"]))
    return (cin, ops, head)


# ---------------------------------------------------------------------------------------------- checks


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-12))


def check_slim_modules(slim: nn.Module) -> None:
    """Every sliced module's attributes agree with its parameters' shapes."""
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


def check_result(model: nn.Module, x: torch.Tensor, res) -> torch.Tensor:
    """The properties every pruning result must have; returns the slim output."""
    with torch.no_grad():
        dense = model(x)
        slim_out = res.model(x)
    assert slim_out.shape == dense.shape == (BATCH, N_CLASSES)
    assert torch.isfinite(slim_out).all()

    check_slim_modules(res.model)

    # plan: JSON round trip, and it is exactly what gets re-applied below
    plan = res.plan
    again = PruningPlan.from_json(plan.to_json())
    assert again == plan
    assert again.to_json() == plan.to_json()

    # slim == masked (same architecture, the plan's masks in the graph)
    masked = fxprune.apply_masks(model, x, again)
    with torch.no_grad():
        masked_out = masked(x)
    err = rel_err(slim_out, masked_out)
    assert err <= SLIM_VS_MASKED_RTOL, f"slim vs masked: rel err {err:.3g}"

    # rebuilding from the plan on a fresh copy gives the same slim model
    rebuilt = fxprune.apply_plan(copy.deepcopy(model), x, again)
    check_slim_modules(rebuilt)
    with torch.no_grad():
        rebuilt_out = rebuilt(x)
    err = rel_err(rebuilt_out, slim_out)
    assert err <= REBUILD_RTOL, f"apply_plan vs prune: rel err {err:.3g}"

    # pruning never grows the model
    assert res.report.flops_after <= res.report.flops_before
    assert res.report.params_after <= res.report.params_before
    assert res.report.params_after == fxprune.count_params(res.model)
    return slim_out


# ------------------------------------------------------------------------------------------ properties


@settings(max_examples=N_RATIO)
@given(spec=specs(), weight_seed=st.integers(0, 2**16), seed=st.integers(0, 2**16),
       ratio=RATIOS)
def test_random_ratio_plans(spec, weight_seed, seed, ratio):
    model, x = build(spec, weight_seed)
    res = fxprune.prune(model, x, method="random", ratio=ratio, seed=seed)
    slim_out = check_result(model, x, res)
    if ratio == 0.0:  # nothing removed: the slim model is the dense model
        with torch.no_grad():
            assert rel_err(slim_out, model(x)) <= REBUILD_RTOL
    removed = sum(d.size - len(d.keep) for d in res.plan.groups)
    event("channels removed" if removed else "nothing removed")


def _minimum_widths(model: nn.Module, x: torch.Tensor, plan: PruningPlan) -> bool:
    """Whether every prunable group of `plan` keeps only its minimum: max(1, #frozen) channels."""
    groups = fxprune.analyse(model, x)
    return all(len(d.keep) == max(1, len(groups[d.id].frozen))
               for d in plan.groups if groups[d.id].prunable)


@settings(max_examples=N_FLOPS)
@given(spec=specs(), weight_seed=st.integers(0, 2**16), seed=st.integers(0, 2**16),
       budget=FLOPS_BUDGETS, method=st.sampled_from(["random", "l1"]))
def test_flops_budgets(spec, weight_seed, seed, budget, method):
    model, x = build(spec, weight_seed)
    res = fxprune.prune(model, x, method=method, flops=budget, seed=seed)
    check_result(model, x, res)
    # the report's FLOPs are the ones torch's flop counter sees on the two models
    assert res.report.flops_before == fxprune.count_flops(model, x)
    assert res.report.flops_after == fxprune.count_flops(res.model, x)
    ratio = res.report.flops_ratio
    note(f"flops ratio {ratio:.4f} for budget {budget:.4f}")
    if ratio <= budget + 1e-6:
        event("flops budget met")
    else:
        # the budget is unreachable: then every group must already be at its minimum width
        assert _minimum_widths(model, x, res.plan), (
            f"flops ratio {ratio:.4f} > budget {budget:.4f} while some group keeps more than its minimum")
        event("flops budget unreachable: minimum widths")


@settings(max_examples=N_ONNX)
@given(spec=specs(), weight_seed=st.integers(0, 2**16), seed=st.integers(0, 2**16),
       ratio=RATIOS)
def test_onnx_parity(spec, weight_seed, seed, ratio):
    model, x = build(spec, weight_seed)
    res = fxprune.prune(model, x, method="random", ratio=ratio, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        # check=True: fxprune's own parity check (raises ExportParityError); then a tighter one of ours
        path = fxprune.export(res.model, x, Path(tmp) / "slim.onnx")
        (onnx_out,) = onnx_session_outputs(path, x)
    with torch.no_grad():
        expected = res.model(x)
    err = rel_err(torch.from_numpy(onnx_out), expected)
    assert err <= 1e-4, f"onnxruntime vs torch: rel err {err:.3g}"
