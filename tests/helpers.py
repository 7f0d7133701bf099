"""Shared test helpers: numeric comparison of slim vs masked models, random plans, and the
"the caller's model is untouched" check.

Used by tests/test_rules.py, tests/test_errors.py and tests/test_properties.py.
"""
from __future__ import annotations

import dataclasses

import copy
import random
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

import fxprune
from fxprune.types import GroupDecision, PruneResult, PruningPlan

__all__ = [
    "assert_consistent_modules", "assert_slim_equals_masked", "assert_unchanged", "check_prune",
    "make_plan_with_random_keep", "outputs", "prunable_sizes", "rel_err", "run", "state_snapshot",
]

# Tiny models on a shared 2-core machine: intra-op threads only spin against each other (a 3x8x8 conv
# takes ~10 ms with 2 threads under load, ~20 us with one).
torch.set_num_threads(1)


# --- comparing outputs ------------------------------------------------------------------------------
def _tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor of a (nested) output, dataclass fields (e.g. Hugging Face ModelOutputs) included."""
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [t for f in dataclasses.fields(out) for t in _tensors(getattr(out, f.name))]
    leaves, _ = tree_flatten(out)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def run(model: nn.Module, x: Any) -> Any:
    """Forward `x` (a tensor or a tuple of tensors) without autograd."""
    with torch.no_grad():
        return model(*x) if isinstance(x, (tuple, list)) else model(x)


def outputs(model: nn.Module, x: Any) -> list[torch.Tensor]:
    """The flattened tensor outputs of `model(x)`."""
    return _tensors(run(model, x))


def rel_err(a: Any, b: Any) -> float:
    """||a - b|| / max(||b||, 1e-12) over all tensor leaves of two (nested) outputs of equal structure."""
    ta, tb = _tensors(a), _tensors(b)
    assert len(ta) == len(tb), f"outputs differ in structure: {len(ta)} vs {len(tb)} tensors"
    num = den = 0.0
    for x, y in zip(ta, tb):
        assert x.shape == y.shape, f"output shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}"
        num += float((x.double() - y.double()).pow(2).sum())
        den += float(y.double().pow(2).sum())
    return num ** 0.5 / max(den ** 0.5, 1e-12)


def _other_input(x: Any, seed: int = 1234) -> Any:
    gen = torch.Generator().manual_seed(seed)
    if isinstance(x, (tuple, list)):
        return type(x)(_other_input(t, seed + i) for i, t in enumerate(x))
    if x.is_floating_point():
        return torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x.clone()


def assert_slim_equals_masked(model: nn.Module, x: Any, plan_or_result: PruningPlan | PruneResult,
                              tol: float = 1e-5, **kwargs: Any) -> tuple[nn.Module, nn.Module]:
    """The slim model of a plan computes what the masked model computes (on `x` and on a second input).

    `plan_or_result` is a PruningPlan (the slim model is rebuilt with apply_plan) or a PruneResult (its
    `.model` is the slim model). Returns (slim, masked).
    """
    if isinstance(plan_or_result, PruneResult):
        slim, plan = plan_or_result.model, plan_or_result.plan
    else:
        plan = plan_or_result
        slim = fxprune.apply_plan(model, x, plan, **kwargs)
    masked = fxprune.apply_masks(model, x, plan, **kwargs)
    slim.eval()
    masked.eval()
    for inp in (x, _other_input(x)):
        ref = run(model, inp)
        got_s, got_m = run(slim, inp), run(masked, inp)
        shapes_ref = [tuple(t.shape) for t in _tensors(ref)]
        assert [tuple(t.shape) for t in _tensors(got_s)] == shapes_ref, "slim model changed the output shape"
        err = rel_err(got_s, got_m)
        assert err <= tol, f"slim != masked: relative error {err:.3e} > {tol:.1e}"
    return slim, masked


# --- plans ------------------------------------------------------------------------------------------
def make_plan_with_random_keep(model: nn.Module, x: Any, seed: int, ratio: float | None = None,
                               per_group: bool = False, **kwargs: Any) -> PruningPlan:
    """A plan that keeps a random non-empty subset of every prunable group's channels (frozen ones kept).

    Default: `fxprune.prune(method="random", ratio=r, seed=seed)`, with r drawn from `seed` when not given;
    prune() repairs decisions that would empty a tensor (grouped convs, heads x head dims).

    `per_group=True` instead draws an independent keep count per group directly on the template plan of
    `prune(ratio=0.0)`. No repair is applied, so use it only on models whose channels do not factorise.
    """
    rng = random.Random(seed)
    if not per_group:
        r = rng.uniform(0.2, 0.8) if ratio is None else ratio
        return fxprune.prune(model, x, method="random", ratio=r, seed=seed, **kwargs).plan
    template = fxprune.prune(model, x, ratio=0.0, **kwargs).plan
    groups = {g.id: g for g in fxprune.analyse(model, x, strict=template.strict,
                                               leaf_modules=kwargs.get("leaf_modules", ()))}
    decisions = []
    for d in template.groups:
        g = groups[d.id]
        if not g.prunable:
            decisions.append(GroupDecision(d.id, d.size, list(range(d.size))))
            continue
        frozen = set(g.frozen)
        free = [i for i in range(g.size) if i not in frozen]
        lo = 0 if frozen else 1
        n = rng.randint(lo, len(free))
        keep = sorted(frozen | set(rng.sample(free, n)))
        decisions.append(GroupDecision(d.id, d.size, keep))
    plan = copy.deepcopy(template)
    plan.groups = decisions
    plan.method = "random-keep"
    return plan


def prunable_sizes(groups: list[fxprune.ChannelGroup]) -> list[int]:
    """Sorted sizes of the groups that can lose channels."""
    return sorted(g.size for g in groups if g.prunable)


# --- module attribute consistency ---------------------------------------------------------------------
def assert_consistent_modules(gm: nn.Module) -> None:
    """Every module's size attributes agree with its (sliced) tensors."""
    from fxprune.nn import PrunedMultiheadAttention

    for name, m in gm.named_modules():
        where = f"{name} ({type(m).__name__})"
        if isinstance(m, nn.modules.conv._ConvNd):
            w = m.weight
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, where
            if m.transposed:
                assert m.in_channels == w.shape[0], where
                assert m.out_channels == w.shape[1] * m.groups, where
            else:
                assert m.out_channels == w.shape[0], where
                assert m.in_channels == w.shape[1] * m.groups, where
            if m.bias is not None:
                assert m.bias.numel() == m.out_channels, where
        elif isinstance(m, nn.Linear):
            assert (m.out_features, m.in_features) == tuple(m.weight.shape), where
            if m.bias is not None:
                assert m.bias.numel() == m.out_features, where
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            for t in (m.weight, m.bias, m.running_mean, m.running_var):
                if t is not None:
                    assert t.numel() == m.num_features, where
        elif isinstance(m, nn.LayerNorm):
            for t in (m.weight, m.bias):
                if t is not None:
                    assert tuple(t.shape) == tuple(m.normalized_shape), where
        elif isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0, where
            for t in (m.weight, m.bias):
                if t is not None:
                    assert t.numel() == m.num_channels, where
        elif isinstance(m, nn.PReLU):
            assert m.weight.numel() == m.num_parameters, where
        elif isinstance(m, PrunedMultiheadAttention):
            rows = m.num_heads * (2 * m.qk_head_dim + m.v_head_dim)
            assert tuple(m.in_proj_weight.shape) == (rows, m.embed_dim), where
            assert m.out_proj.in_features == m.num_heads * m.v_head_dim, where
        elif isinstance(m, nn.MultiheadAttention):
            assert tuple(m.in_proj_weight.shape) == (3 * m.embed_dim, m.embed_dim), where


def check_prune(model: nn.Module, x: Any, ratio: float = 0.5, seed: int = 0, tol: float = 1e-5,
                **kwargs: Any) -> tuple[PruneResult, PruneResult]:
    """prune(ratio) and a random-method prune: slim == masked, modules consistent, output unchanged in shape.

    Returns the two PruneResults (l1 at `ratio`, random at a seeded ratio).
    """
    res = fxprune.prune(model, x, ratio=ratio, **kwargs)
    assert_slim_equals_masked(model, x, res, tol=tol, **_plan_kwargs(kwargs))
    assert_consistent_modules(res.model)
    rnd = fxprune.prune(model, x, method="random", ratio=random.Random(seed).uniform(0.2, 0.8), seed=seed,
                        **kwargs)
    assert_slim_equals_masked(model, x, rnd, tol=tol, **_plan_kwargs(kwargs))
    assert_consistent_modules(rnd.model)
    # the plan rebuilt on the model reproduces prune's slim model
    again = fxprune.apply_plan(model, x, rnd.plan, **_plan_kwargs(kwargs)).eval()
    assert rel_err(run(again, x), run(rnd.model.eval(), x)) <= 1e-6
    return res, rnd


def _plan_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in ("leaf_modules", "example_kwargs")}


# --- the caller's model is untouched ------------------------------------------------------------------
def state_snapshot(model: nn.Module) -> dict[str, Any]:
    """What `assert_unchanged` compares: a deep copy of the model, its state tensors and its structure."""
    return {
        "copy": copy.deepcopy(model),
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "ids": {k: id(v) for k, v in list(model.named_parameters()) + list(model.named_buffers())},
        "repr": repr(model),
        "training": {n: m.training for n, m in model.named_modules()},
    }


def assert_unchanged(model: nn.Module, snapshot: dict[str, Any], x: Any) -> None:
    """`model` has the same tensors (values and objects), structure, modes and outputs as at the snapshot."""
    state = model.state_dict()
    assert set(state) == set(snapshot["state"]), "the model's state_dict keys changed"
    for k, v in snapshot["state"].items():
        assert state[k].shape == v.shape and torch.equal(state[k], v), f"state tensor '{k}' changed"
    ids = {k: id(v) for k, v in list(model.named_parameters()) + list(model.named_buffers())}
    assert ids == snapshot["ids"], "the model's parameter/buffer objects were replaced"
    assert repr(model) == snapshot["repr"], "the model's structure changed"
    assert {n: m.training for n, m in model.named_modules()} == snapshot["training"], "train/eval mode changed"
    ref = snapshot["copy"]
    a, b = outputs(model, x), outputs(ref, x)
    assert len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b)), "the model's output changed"


def check_zoo_model(model: nn.Module, x: torch.Tensor, onnx_path: Any = None) -> PruneResult:
    """Protocol B1 in miniature: prune(l1, ratio=0.5) -> the slim output keeps the dense shape and is
    finite, FLOPs <= 0.6 of dense, slim == masked, the caller untouched; ONNX parity when a path is given."""
    snap = state_snapshot(model)
    dense_out = outputs(model, x)[0]
    res = fxprune.prune(model, x, ratio=0.5)
    slim_out = outputs(res.model, x)[0]
    assert slim_out.shape == dense_out.shape and torch.isfinite(slim_out).all()
    assert res.report.flops_ratio <= 0.6
    assert fxprune.count_flops(res.model, x) <= 0.6 * fxprune.count_flops(model, x)
    assert_slim_equals_masked(model, x, res, tol=1e-4)
    assert_unchanged(model, snap, x)
    if onnx_path is not None:
        from fxprune.deploy.export import onnx_session_outputs

        path = fxprune.export(res.model, x, onnx_path, check=False)
        ort = onnx_session_outputs(path, x)
        assert rel_err([torch.from_numpy(o) for o in ort], [slim_out]) <= 1e-3
    return res


# ----------------------------------------------------------------------------- torchrun workers

def torchrun(worker: Any, out_dir: Any, timeout: int = 300) -> None:
    """Run `worker` (a script path) under torchrun with 2 CPU processes (gloo), passing `out_dir`; assert it
    succeeded (one retry when another process took the free port in between)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(root), os.environ.get("PYTHONPATH", "")])}
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), str(worker), str(out_dir)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if "address already in use" not in (proc.stdout + proc.stderr).lower():
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def load_module(path: Any, name: str) -> Any:
    """Import a test worker script as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- searching methods

def random_batches(n: int = 8, bs: int = 8, seed: int = 0, shape: tuple = (3, 32, 32), classes: int = 10) -> list:
    """`n` seeded (inputs, labels) batches of random CIFAR-shaped data."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, *shape, generator=gen), torch.randint(0, classes, (bs,), generator=gen))
            for _ in range(n)]


def seeded_resnet20() -> nn.Module:
    from fxprune.zoo import resnet20

    torch.manual_seed(0)
    return resnet20().eval()


def run_search(method: str, model: nn.Module, x: Any, data: Any, budget: Any, **options: Any) -> tuple:
    """A searching method's decision on `model`, as prune takes it: (gm, ga, cost model, keep, plan, the
    search's record: plan.search)."""
    from fxprune.stages import make_plan, prepare
    from fxprune.cost.model import CostModel
    from fxprune.methods import get_method
    from fxprune.methods.registry import ScoreInput
    from fxprune.selection.select import repair

    ga = prepare(model, x)
    gm = ga.gm
    cost = CostModel.build(gm, ga)
    inp = ScoreInput(gm, ga, (x,), dict(options), data)
    found = get_method(method).search(inp, budget, cost, set())
    keep = repair(ga, found.keep, {})
    plan = make_plan(ga, keep, method=method, options=inp.options, budget=budget, round_to=1, strict=True, scope="global", steps=1)
    plan.search = found.record()
    return gm, ga, cost, keep, plan, plan.search


def prune_twice_on_cifar_subset(make_model: Any, x: Any, method: str, train_limit: int, **options: Any) -> PruneResult:
    """Prune a fresh `make_model()` twice at flops=0.5 on the same CIFAR-10 subset; assert both runs keep the same
    channels and the plan's search record survives a JSON round trip; the first result."""
    from fxprune.data import cifar10_loaders

    runs = []
    for _ in range(2):
        train, _ = cifar10_loaders(batch_size=32, train_limit=train_limit, test_limit=10, seed=0)
        runs.append(fxprune.prune(make_model(), x, method=method, flops=0.5, data=train, device="cpu", **options))
    res = runs[0]
    assert [d.keep for d in res.plan.groups] == [d.keep for d in runs[1].plan.groups]
    assert fxprune.PruningPlan.from_json(res.plan.to_json()).search == res.plan.search
    return res
