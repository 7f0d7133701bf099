"""Latency tables, latency budgets and hardware-aware widths, on a fake device timer.

The fake timer charges every conv / linear layer its multiply-adds with the output channels rounded up to a
multiple of 8 (a tensor-core-like staircase), and a whole model the sum over its layers, so the latency
model's predictions can be checked exactly against the timer's own answer for the slim model.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fxprune
from fxprune.stages import prepare
from fxprune.deploy.align import measure_alignment
from fxprune.cost.latency_table import LatencyModel, grid_widths
from fxprune.deploy.target import Target
from fxprune.zoo import get_cifar_model

from helpers import assert_slim_equals_masked

X = torch.randn(2, 3, 32, 32)


def _layer_cost(m: nn.Module, spatial: int) -> float:
    if isinstance(m, nn.Conv2d):
        out = math.ceil(m.out_channels / 8) * 8
        return out * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1] * spatial * 1e-6
    if isinstance(m, nn.Linear):
        return math.ceil(m.out_features / 8) * 8 * m.in_features * 1e-6
    return 0.0


class FakeTimer:
    """Deterministic 'device': counts calls; spatial size read from the input."""

    cache_key = "fake-staircase-8"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module: nn.Module, inputs: tuple) -> float:
        self.calls += 1
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            x = inputs[0]
            return _layer_cost(module, x.shape[-1] * x.shape[-2] if x.dim() == 4 else 1)
        return _model_cost(module, inputs)


def _model_cost(model: nn.Module, inputs: tuple) -> float:
    """The fake time of a whole model: its layers' costs at the spatial sizes they really see."""
    sizes: dict[nn.Module, int] = {}

    def record(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        sizes[mod] = args[0].shape[-1] * args[0].shape[-2] if args[0].dim() == 4 else 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    return sum(_layer_cost(m, s) for m, s in sizes.items())


def _target(**kw) -> Target:
    return Target("cpu", timer=FakeTimer(), cache=False, **kw)


def test_grid_includes_dense_width_and_is_sorted():
    assert grid_widths(64, 6) == [11, 22, 32, 43, 54, 64]
    assert grid_widths(3, 6) == [1, 2, 3]


def test_latency_budget_predicts_what_the_timer_measures():
    model = get_cifar_model("resnet20").eval()
    target = _target(points=9)
    res = fxprune.prune(model, X, latency=0.5, target=target)
    dense, slim = _model_cost(model, (X,)), _model_cost(res.model, (X,))
    predicted = res.plan.achieved["latency_predicted"]
    assert predicted <= 0.5 + 1e-9
    assert slim / dense == pytest.approx(predicted, rel=0.08), "interpolated table vs the timer on the slim model"
    assert res.plan.budget["kind"] == "latency" and res.plan.budget["target"] == "timer-fake-staircase-8"
    assert res.model(X).shape == (2, 10)


def test_dense_prediction_equals_the_measured_model():
    model = get_cifar_model("resnet20").eval()
    ga = prepare(model, X)
    gm = ga.gm
    lm = LatencyModel.build(gm, ga, (X,), _target())
    assert lm.latency(None) == pytest.approx(_model_cost(model, (X,)), rel=1e-9)
    terms, fixed = lm.linear_terms()
    assert sum(ms for ms, _ in terms) + fixed == pytest.approx(lm.latency(None), rel=1e-9)


def test_layer_measurements_are_cached_per_target(tmp_path):
    model = get_cifar_model("resnet20").eval()
    ga = prepare(model, X)
    gm = ga.gm
    first = LatencyModel.build(gm, ga, (X,), Target("cpu", timer=FakeTimer(), cache=tmp_path))
    again = LatencyModel.build(gm, ga, (X,), Target("cpu", timer=FakeTimer(), cache=tmp_path))
    assert first.measurements > 0 and again.measurements == 0
    assert again.latency(None) == pytest.approx(first.latency(None))
    assert len(list(tmp_path.glob("layers-timer-fake-staircase-8.json"))) == 1


def test_round_to_auto_uses_the_measured_alignment():
    target = _target()
    assert measure_alignment(target) == 8
    model = get_cifar_model("resnet20").eval()
    res = fxprune.prune(model, X, flops=0.5, round_to="auto", target=target)
    assert_slim_equals_masked(model, X, res)  # hardware-aware widths are ordinary plans: slim == masked
    assert res.plan.round_to == 8
    assert all(kept % 8 == 0 or kept == size for _, size, kept, _ in res.report.widths)
    assert res.report.flops_ratio <= 0.5 + 1e-6


def test_alignment_is_one_when_time_is_proportional_to_work():
    proportional = Target("cpu", timer=lambda m, x: float(m.in_channels * m.out_channels), cache=False)
    assert measure_alignment(proportional) == 1


def test_latency_budget_with_local_scope_and_uniform_method():
    res = fxprune.prune(get_cifar_model("resnet20").eval(), X, method="uniform", latency=0.6, target=_target())
    assert res.plan.achieved["latency_predicted"] <= 0.6 + 1e-9
    assert res.plan.scope == "local"


def test_real_cpu_timer_builds_a_valid_plan():
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4)).eval()
    target = Target("cpu", threads=1, repeats=3, warmup=1, points=3, cache=False)
    res = fxprune.prune(model, torch.randn(1, 3, 64, 64), latency=0.8, target=target)
    assert 0 < res.plan.achieved["latency_predicted"] <= 0.8 + 1e-9


@pytest.mark.parametrize("kwargs, message", [
    ({"latency": 0.5, "target": 3}, "target must be a fxprune.Target"),
    ({"flops": 0.5, "target": "cpu"}, "target= is only used"),
    ({"flops": 0.5, "round_to": "fast"}, "round_to must be a positive int or 'auto'"),
    ({"flops": 0.5, "round_to": 0}, "round_to must be a positive int"),
    ({"latency": 1.5, "target": "cpu"}, "latency=1.5 is out of range"),
    ({"latency": 0.5, "flops": 0.5}, "exactly one budget"),
])
def test_bad_latency_options_are_named(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        fxprune.prune(get_cifar_model("resnet20").eval(), X, **kwargs)


def test_cuda_target_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error is for machines without it")
    with pytest.raises(ValueError, match="CUDA is not available"):
        Target("cuda")


def test_target_points_must_allow_interpolation():
    with pytest.raises(ValueError, match="at least 2 grid points"):
        Target("cpu", points=1)


def test_tas_searches_against_a_latency_budget():
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen)) for _ in range(2)]
    res = fxprune.prune(get_cifar_model("resnet20"), X[:1], method="tas", latency=0.6, target=_target(), data=data,
                        tas_epochs=1, tas_progress=False, device="cpu")
    assert res.plan.achieved["latency_predicted"] <= 0.6 + 1e-9
    assert res.plan.search["searched_fractions"]


def test_tas_honours_round_to():
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen))]
    res = fxprune.prune(get_cifar_model("resnet20"), X[:1], method="tas", flops=0.5, round_to=8, data=data,
                        tas_epochs=1, tas_progress=False, device="cpu")
    assert res.report.flops_ratio <= 0.5 + 1e-6
    assert all(kept % 8 == 0 or kept == size for _, size, kept, _ in res.report.widths)


def test_round_to_auto_halves_the_alignment_until_the_budget_can_be_met():
    def tiles_of_16(m: nn.Module, inputs: tuple) -> float:
        return m.in_channels * math.ceil(m.out_channels / 16) * 16.0 if isinstance(m, nn.Conv2d) else 1.0

    target = Target("cpu", timer=tiles_of_16, cache=False)
    assert measure_alignment(target) == 16
    res = fxprune.prune(get_cifar_model("resnet20").eval(), X, flops=0.26, round_to="auto", target=target)
    assert res.plan.round_to == 8 and res.report.flops_ratio <= 0.26 + 1e-6


def test_an_unreachable_budget_warns():
    with pytest.warns(UserWarning, match="budget 0.26 cannot be met.*round_to=16"):
        res = fxprune.prune(get_cifar_model("resnet20").eval(), X, flops=0.26, round_to=16)
    assert res.report.flops_ratio > 0.26
