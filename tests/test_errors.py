"""Bad inputs get clear errors and leave the caller's model untouched; plans round-trip through JSON."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fxprune
from fxprune.errors import UnknownMethodError
from fxprune.types import PruningPlan

from helpers import assert_slim_equals_masked, assert_unchanged, outputs, run, state_snapshot


class Gate(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace through it."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


class Net(nn.Module):
    def __init__(self, gated: bool = False) -> None:
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.gate = Gate() if gated else nn.Identity()
        self.c2, self.ln = nn.Conv2d(8, 6, 3, padding=1), nn.GroupNorm(2, 6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        x = self.gate(x)
        return self.fc(F.relu(self.ln(self.c2(x))).mean((2, 3)))


def net(**kw) -> Net:
    m = Net(**kw)
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
    return m.eval()


X = torch.randn(1, 3, 8, 8)


# --- untraceable models ------------------------------------------------------------------------------
class RootGated(nn.Module):
    """Data-dependent control flow in the model's own forward: no submodule can stand in for it."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.c1(x)
        if y.sum() > 0:
            y = y * 2
        return self.c2(y)


def test_untraceable_root_forward_raises_trace_error_and_says_why():
    m = RootGated().eval()
    snap = state_snapshot(m)
    for call in (lambda: fxprune.prune(m, X, ratio=0.5), lambda: fxprune.analyse(m, X),
                 lambda: fxprune.trace(m, X)):
        with pytest.raises(fxprune.TraceError) as ei:
            call()
        msg = str(ei.value)
        assert "RootGated" in msg and "outside any submodule" in msg and "submodule" in msg
        assert isinstance(ei.value, fxprune.FxPruneError)
        assert_unchanged(m, snap, X)


def test_untraceable_submodule_becomes_an_automatic_opaque_leaf():
    """torch.fx fails inside Gate: fxprune retries with it as a leaf and keeps the channels around it."""
    m = net(gated=True)
    snap = state_snapshot(m)
    gm = fxprune.trace(m, X)
    assert set(gm.meta["fxprune_auto_leaves"]) == {"gate"}
    assert "TraceError" in gm.meta["fxprune_auto_leaves"]["gate"]
    res = fxprune.prune(m, X, ratio=0.5)
    assert res.model.c1.out_channels == 8 and res.model.c2.out_channels == 2
    reasons = [why for _, why in res.report.frozen]
    assert any("'gate'" in why and "automatic opaque leaf" in why for why in reasons), reasons
    assert_slim_equals_masked(m, X, res)
    assert_unchanged(m, snap, X)


def test_leaf_modules_makes_untraceable_model_prunable():
    """The TraceError's advice: `leaf_modules=(Gate,)` -- "its channels are then kept"."""
    m = net(gated=True)
    snap = state_snapshot(m)
    res = fxprune.prune(m, X, ratio=0.5, leaf_modules=(Gate,))
    groups = fxprune.analyse(m, X, leaf_modules=(Gate,))
    g8 = next(g for g in groups if g.size == 8)
    assert len(g8.frozen) == 8  # the channels entering the opaque leaf are kept
    # c2 feeds GroupNorm(2, 6): both norm groups stay, each keeps 1 of its 3 channels (3 * 0.5 rounds half up)
    assert res.model.c1.out_channels == 8 and res.model.c2.out_channels == 2
    assert_slim_equals_masked(m, X, res, leaf_modules=(Gate,))
    assert_unchanged(m, snap, X)


def test_leaf_modules_with_strict_false_freezes_the_leaf_channels():
    m = net(gated=True)
    snap = state_snapshot(m)
    res = fxprune.prune(m, X, ratio=0.5, leaf_modules=(Gate,), strict=False)
    assert res.model.c1.out_channels == 8 and res.model.c2.out_channels < 6
    assert any("Gate" in why for _, why in res.report.frozen)
    assert_slim_equals_masked(m, X, res, leaf_modules=(Gate,))
    slim = fxprune.apply_plan(m, X, res.plan, leaf_modules=(Gate,))
    assert torch.equal(run(slim, X), run(res.model, X))
    assert_unchanged(m, snap, X)


def test_analyse_does_not_touch_a_training_mode_model():
    """analyse traces without a copy; its shape pass must not run the caller's BatchNorm in training mode."""
    for gated in (False, True):
        m = net(gated=gated).train()
        snap = state_snapshot(m)
        fxprune.analyse(m, torch.randn(2, 3, 8, 8), strict=False, leaf_modules=(Gate,))
        assert_unchanged(m, snap, X)


# --- budgets, methods, inputs ------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [
    {"ratio": 1.0}, {"ratio": -0.1}, {"ratio": 1.5}, {"flops": 0}, {"flops": 1.5}, {"flops": -0.5},
    {"params": 0.0}, {"params": 2}, {}, {"ratio": 0.5, "flops": 0.5}, {"flops": 0.5, "params": 0.5},
    {"ratio": 0.2, "flops": 0.5, "params": 0.5},
])
def test_budget_out_of_range_is_value_error(budget):
    m = net()
    snap = state_snapshot(m)
    with pytest.raises(ValueError) as ei:
        fxprune.prune(m, X, **budget)
    msg = str(ei.value)
    assert any(k in msg for k in ("ratio", "flops", "params"))
    assert_unchanged(m, snap, X)


@pytest.mark.parametrize("kw", [{"ratio": "0.5"}, {"flops": True}, {"ratio": 0.5, "round_to": 0},
                                {"ratio": 0.5, "ignore": [3.5]}, {"ratio": 0.5, "ignore": ["nope"]}])
def test_bad_options(kw):
    m = net()
    snap = state_snapshot(m)
    with pytest.raises((TypeError, ValueError)):
        fxprune.prune(m, X, **kw)
    assert_unchanged(m, snap, X)


@pytest.mark.parametrize("method, options, valid", [
    ("tas", {"tas_epoch": 1}, "tas_epochs"), ("l1", {"sparsity": 1}, None), ("random", {"sed": 1}, "seed"),
    ("dcp", {"dcp_lamda": 0.5}, "dcp_lambda"), ("jst", {"jst_init": "scratch", "jst_serch_epochs": 2}, "jst_search_epochs")])
def test_a_misspelled_method_option_is_refused_before_any_work(method, options, valid):
    from fxprune.errors import MethodOptionError
    from fxprune.methods import get_method

    m = net()
    snap = state_snapshot(m)
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,)))]
    with pytest.raises(MethodOptionError) as ei:  # inplace=True: any work would slice the caller's modules
        fxprune.prune(m, X, method=method, flops=0.5, data=data, inplace=True, **options)
    msg, bad = str(ei.value), next(k for k in options if k not in get_method(method).config.options())
    assert f"method '{method}'" in msg and repr(bad) in msg
    assert (f"did you mean {valid!r}?" in msg) if valid else "did you mean" not in msg
    assert all(o in msg for o in get_method(method).config.options())  # the valid ones are listed
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, fxprune.FxPruneError)
    assert_unchanged(m, snap, X)
    assert (m.c1.out_channels, m.c2.in_channels, m.c2.out_channels) == (8, 8, 6)


def test_a_method_option_of_the_wrong_type_names_the_option():
    from fxprune.errors import MethodOptionError

    m = net()
    snap = state_snapshot(m)
    with pytest.raises(MethodOptionError, match=r"method 'taylor': option taylor_batches='many' must be an int"):
        fxprune.prune(m, X, method="taylor", flops=0.5, data=[], taylor_batches="many")
    assert_unchanged(m, snap, X)


def test_boundary_budgets_are_accepted():
    m = net()
    for kw in ({"ratio": 0.0}, {"flops": 1.0}, {"params": 1.0}):
        res = fxprune.prune(m, X, **kw)
        assert res.report.params_after == res.report.params_before
        assert torch.allclose(run(res.model, X), run(m, X), atol=1e-6)


def test_unknown_method_lists_registered_names():
    m = net()
    snap = state_snapshot(m)
    with pytest.raises(UnknownMethodError) as ei:
        fxprune.prune(m, X, method="no-such-method", ratio=0.5)
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, fxprune.FxPruneError)
    msg = str(ei.value)
    assert "no-such-method" in msg
    for name in fxprune.list_methods():
        assert name in msg
    assert {"l1", "l2", "random"} <= set(fxprune.list_methods())
    assert_unchanged(m, snap, X)


@pytest.mark.parametrize("bad", [[0.1, 0.2, 0.3], np.zeros((1, 3, 8, 8), dtype=np.float32), None, (), 3.0,
                                 "x", (X, [1.0])])
def test_non_tensor_inputs_are_type_errors(bad):
    m = net()
    snap = state_snapshot(m)
    plan = fxprune.prune(m, X, ratio=0.5).plan
    for call in (lambda: fxprune.prune(m, bad, ratio=0.5), lambda: fxprune.analyse(m, bad),
                 lambda: fxprune.apply_plan(m, bad, plan), lambda: fxprune.apply_masks(m, bad, plan),
                 lambda: fxprune.trace(m, bad)):
        with pytest.raises(TypeError) as ei:
            call()
        assert "torch.Tensor" in str(ei.value)
        assert_unchanged(m, snap, X)


def test_non_module_model_is_type_error():
    with pytest.raises(TypeError, match="nn.Module"):
        fxprune.prune(lambda x: x, X, ratio=0.5)


# --- plans for another model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnets():
    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    r34 = torchvision.models.resnet34(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    return r18, r34, x, fxprune.prune(r18, x, ratio=0.5)


def test_plan_for_another_architecture(resnets):
    r18, r34, x, res = resnets
    snap = state_snapshot(r34)
    for call in (lambda: fxprune.apply_plan(r34, x, res.plan), lambda: fxprune.apply_masks(r34, x, res.plan)):
        with pytest.raises(fxprune.PlanMismatchError) as ei:
            call()
        assert "plan" in str(ei.value) and "fxprune.prune" in str(ei.value)
        assert_unchanged(r34, snap, x)


def test_plan_for_another_input_size(resnets):
    r18, _, x, res = resnets
    snap = state_snapshot(r18)
    x2 = torch.randn(1, 3, 64, 64)
    for call in (lambda: fxprune.apply_plan(r18, x2, res.plan), lambda: fxprune.apply_masks(r18, x2, res.plan)):
        with pytest.raises(fxprune.PlanMismatchError):
            call()
    assert_unchanged(r18, snap, x)
    # the same architecture with other weights is fine
    other = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    slim = fxprune.apply_plan(other, x, res.plan)
    assert outputs(slim, x)[0].shape == (1, 10)


def test_plan_for_another_width():
    a, b = net(), Net()
    b.c2, b.ln, b.fc = nn.Conv2d(8, 10, 3, padding=1), nn.GroupNorm(2, 10), nn.Linear(10, 4)
    b.eval()
    plan = fxprune.prune(a, X, ratio=0.5).plan
    with pytest.raises(fxprune.PlanMismatchError):
        fxprune.apply_plan(b, X, plan)


def test_tampered_plans_are_rejected():
    m = net()
    snap = state_snapshot(m)
    plan = fxprune.prune(m, X, ratio=0.5).plan
    g = next(d for d in plan.groups if d.size == 8)
    bad_plans = []
    for change in ({"keep": []}, {"keep": [0, 8]}, {"keep": [-1, 2]}, {"size": 7}):
        p = copy.deepcopy(plan)
        for k, v in change.items():
            setattr(p.groups[g.id], k, v)
        bad_plans.append(p)
    p = copy.deepcopy(plan)
    p.groups = p.groups[:-1]
    bad_plans.append(p)
    p = copy.deepcopy(plan)
    p.graph_signature = "0" * 16
    bad_plans.append(p)
    for p in bad_plans:
        for call in (fxprune.apply_plan, fxprune.apply_masks):
            with pytest.raises(fxprune.PlanMismatchError):
                call(m, X, p)
    assert_unchanged(m, snap, X)


def test_plan_that_drops_frozen_channels_is_rejected():
    """A reviewed/edited plan must not remove channels the analysis keeps (here: the output channels)."""
    m = net()
    groups = fxprune.analyse(m, X)
    out = next(g for g in groups if len(g.frozen) == g.size and g.size == 4)
    plan = fxprune.prune(m, X, ratio=0.5).plan
    plan.groups[out.id].keep = [0, 1]
    with pytest.raises((fxprune.PlanMismatchError, ValueError)):
        slim = fxprune.apply_plan(m, X, plan)
        # if it is accepted, it must at least keep the output and agree with the masked model
        assert outputs(slim, X)[0].shape == (1, 4)
        assert_slim_equals_masked(m, X, plan)


# --- plan JSON round-trip ---------------------------------------------------------------------------
def test_plan_json_round_trip_and_reapply(tmp_path):
    m = net()
    res = fxprune.prune(m, X, flops=0.5, method="random", seed=3)
    path = tmp_path / "plan.json"
    res.plan.save(path)
    loaded = PruningPlan.load(path)
    assert loaded == res.plan
    assert PruningPlan.from_json(res.plan.to_json()) == res.plan
    assert loaded.method == "random" and loaded.method_options == {"seed": 3}
    assert loaded.budget == {"kind": "flops", "value": 0.5}
    assert loaded.achieved["flops"] <= 0.5 + 1e-9

    fresh = Net()
    fresh.load_state_dict(m.state_dict())
    fresh.eval()
    slim = fxprune.apply_plan(fresh, X, loaded).eval()
    x2 = torch.randn(2, 3, 8, 8)
    for inp in (X, x2):
        assert torch.equal(run(slim, inp), run(res.model.eval(), inp))
    assert {k: v.shape for k, v in slim.state_dict().items()} == {k: v.shape for k, v in res.model.state_dict().items()}


class PlainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn, self.c2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 1), \
            nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.bn(self.c1(x))))).mean((2, 3)))


def test_remove_masks_restores_the_original_computation():
    _check_remove_masks(PlainNet().eval())


def test_remove_masks_with_mask_aware_norms():
    """GroupNorm / LayerNorm are replaced by mask-aware functions in the masked model; remove_masks restores them."""
    _check_remove_masks(net())
    tokens = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 2)).eval()
    _check_remove_masks(tokens, torch.randn(2, 3, 4))


def _check_remove_masks(m: nn.Module, x: torch.Tensor = X) -> None:
    plan = fxprune.prune(m, x, ratio=0.5).plan
    masked = fxprune.apply_masks(m, x, plan)
    assert any(n.startswith("fxprune_mask_") for n, _ in masked.named_buffers())
    assert not torch.allclose(run(masked, x), run(m, x))
    plain = fxprune.remove_masks(masked)
    assert not any(n.startswith("fxprune_mask_") for n, _ in plain.named_buffers())
    for inp in (x, torch.randn(3, *x.shape[1:])):
        assert torch.allclose(run(plain, inp), run(m, inp), rtol=0, atol=1e-6)
    # the masked model itself is untouched by remove_masks
    assert any(n.startswith("fxprune_mask_") for n, _ in masked.named_buffers())
    soft = fxprune.apply_masks(m, x, plan, soft=True)
    assert any(n.startswith("fxprune_mask_") for n, _ in soft.named_parameters())
    assert torch.allclose(run(fxprune.remove_masks(soft), x), run(m, x), rtol=0, atol=1e-6)
