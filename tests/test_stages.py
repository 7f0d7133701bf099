"""The staged public API (fxprune.stages) against the one-call `prune`, and prune's own signature:
PruneOptions, a method given as its config object."""
from __future__ import annotations

import pytest
import torch
import torchvision

import fxprune
from fxprune.methods import MagnitudeConfig, RandomConfig

from helpers import assert_unchanged, state_snapshot

X = torch.randn(1, 3, 32, 32)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def test_stages_by_hand_equal_prune():
    model = _model()
    snap = state_snapshot(model)
    ga = fxprune.prepare(model, X)
    keep = fxprune.select(ga, fxprune.score(ga, "l1"), flops=0.5, round_to=4)
    res = fxprune.prune(model, X, method="l1", flops=0.5, round_to=4)
    assert [d.keep for d in fxprune.make_plan(ga, keep).groups] == [d.keep for d in res.plan.groups]
    assert fxprune.cost_model(ga).flops_ratio(keep) == pytest.approx(res.report.flops_ratio, abs=1e-9)
    slim, masked = fxprune.shrink(ga, keep), fxprune.mask(ga, keep)
    with torch.no_grad():
        assert torch.allclose(slim(X), res.model(X), atol=1e-5) and torch.allclose(slim(X), masked(X), atol=1e-4)
    again = fxprune.shrink(ga, keep)  # ga is not consumed: each stage works on a copy
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in slim.parameters())
    assert sum(p.numel() for p in ga.gm.parameters()) == sum(p.numel() for p in model.parameters())
    assert_unchanged(model, snap, X)


def test_analyse_is_the_list_of_groups_and_a_stage_input():
    model = _model()
    snap = state_snapshot(model)
    ga = fxprune.analyse(model, X)  # shares the caller's parameters
    assert len(ga) == len(ga.groups) and ga[0] is ga.groups[0] and [g.id for g in ga] == list(range(len(ga)))
    keep = fxprune.select(ga, fxprune.score(ga, "l2"), ratio=0.5)
    fxprune.shrink(ga, keep)
    fxprune.mask(ga, keep)
    assert_unchanged(model, snap, X)


def test_a_keep_that_does_not_fit_the_graph_is_refused():
    ga = fxprune.prepare(_model(), X)
    with pytest.raises(fxprune.PlanMismatchError, match="group 999"):
        fxprune.shrink(ga, {999: [0]})
    with pytest.raises(fxprune.PlanMismatchError, match=r"keep\[0\]"):
        fxprune.mask(ga, {0: [ga.groups[0].size]})
    with pytest.raises(ValueError, match="searches"):
        fxprune.score(ga, "tas")


def test_prune_options_as_one_object_or_as_keywords():
    a = fxprune.prune(_model(), X, flops=0.5, options=fxprune.PruneOptions(round_to=8, scope="local"))
    b = fxprune.prune(_model(), X, flops=0.5, round_to=8, scope="local")
    assert [d.keep for d in a.plan.groups] == [d.keep for d in b.plan.groups]
    assert a.plan.round_to == 8 and a.plan.scope == "local"
    with pytest.raises(TypeError, match="round_to"):
        fxprune.prune(_model(), X, flops=0.5, round_to=8, options=fxprune.PruneOptions())


def test_a_method_given_as_its_config_object():
    a = fxprune.prune(_model(), X, method=RandomConfig(seed=3), flops=0.5)
    b = fxprune.prune(_model(), X, method="random", seed=3, flops=0.5)
    assert [d.keep for d in a.plan.groups] == [d.keep for d in b.plan.groups]
    assert (a.plan.method, a.plan.method_options) == ("random", {"seed": 3}) == (b.plan.method, b.plan.method_options)
    with pytest.raises(ValueError, match="l1, l2"):
        fxprune.prune(_model(), X, method=MagnitudeConfig(), flops=0.5)
    with pytest.raises(TypeError, match="seed"):
        fxprune.prune(_model(), X, method=RandomConfig(), seed=1, flops=0.5)
