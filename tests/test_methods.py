"""Classic method backends (fpgm, taylor, slimming, uniform) against hand-computed references, selection
scopes, iterative pruning and the data / fine-tune path of fxprune.prune."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.stages import prepare
from fxprune.cost.model import CostModel
from fxprune.methods import get_method
from fxprune.methods.registry import ScoreInput
from fxprune.selection.select import Budget, select
from fxprune.train import Finetune

from helpers import assert_slim_equals_masked


class Chain(nn.Module):
    """conv(3->6) -> BN -> ReLU -> conv(6->8) -> BN -> ReLU -> GAP -> linear(8->5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class NoNorm(nn.Module):
    """A linear -> linear MLP: a group without any norm scale."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 10), nn.Linear(10, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _model(cls=Chain, seed=0):
    torch.manual_seed(seed)
    m = cls().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.2, 1.5)
            mod.running_mean.uniform_(-0.2, 0.2)
    return m


def _scores(model, x, method, data=None, **options):
    ga = prepare(model, x)
    gm = ga.gm
    inp = ScoreInput(gm, ga, (x,), options, data)
    backend = get_method(method)
    if backend.prepare:
        backend.prepare(inp)
    return gm, ga, backend.score(inp)


def _group_of(ga, producer: str):
    return next(g for g in ga.groups if any(m.name == producer and m.role == "producer" for m in g.members))


def _data(n=3, bs=8, shape=(3, 8, 8), classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, *shape, generator=gen), torch.randint(0, classes, (bs,), generator=gen))
            for _ in range(n)]


X = torch.randn(1, 3, 8, 8)


def _dist_sums(w: torch.Tensor) -> np.ndarray:
    flat = w.detach().double().reshape(len(w), -1)
    return np.array([sum(float((flat[i] - flat[j]).norm()) for j in range(len(flat))) for i in range(len(flat))])


def test_fpgm_is_the_sum_of_distance_sums_over_the_groups_weights():
    m = _model()
    _, ga, scores = _scores(m, X, "fpgm")
    g = _group_of(ga, "conv1.weight")
    # conv1's filters (out dim) and conv2's input slices (dim 1) carry the channels; 1-D params do not count
    expected = _dist_sums(m.conv1.weight) + _dist_sums(m.conv2.weight.transpose(0, 1))
    np.testing.assert_allclose(scores[g.id], expected, rtol=1e-9)


def test_fpgm_prunes_the_filter_at_the_geometric_median():
    m = NoNorm()
    with torch.no_grad():
        m.fc1.weight.zero_()
        m.fc1.weight[:, 0] = torch.arange(10, dtype=torch.float32) * 10  # filter 5 sits mid-way: the median
        m.fc1.weight[5, 0] = 45.0
        m.fc2.weight.fill_(0.0)
    _, ga, scores = _scores(m, torch.randn(1, 12), "fpgm")
    assert int(np.argmin(scores[_group_of(ga, "fc1.weight").id])) in (4, 5)


def test_taylor_equals_activation_times_gradient_at_the_consumer():
    m = _model()
    data = _data()
    _, ga, scores = _scores(m, X, "taylor", data=data, taylor_batches=2)
    ref = np.zeros(6)
    for x, y in data[:2]:
        act = {}
        h = m.conv2.register_forward_pre_hook(lambda mod, a: act.setdefault("a", a[0].retain_grad() or a[0]))
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        h.remove()
        a = act["a"]
        ref += (a * a.grad).sum((0, 2, 3)).abs().detach().double().numpy()
        m.zero_grad()
    np.testing.assert_allclose(scores[_group_of(ga, "conv1.weight").id], ref / 2, rtol=1e-4)


def test_taylor_without_data_says_what_to_pass():
    with pytest.raises(ValueError, match="needs training data"):
        fxprune.prune(_model(), X, method="taylor", flops=0.5)


def test_slimming_scores_are_bn_scales_and_l1_where_no_norm():
    m = _model()
    _, ga, scores = _scores(m, X, "slimming", sparsity_epochs=0)
    np.testing.assert_allclose(scores[_group_of(ga, "conv1.weight").id], m.bn1.weight.detach().abs().numpy(),
                               rtol=1e-6)
    mlp = NoNorm()
    _, ga2, s2 = _scores(mlp, torch.randn(1, 12), "slimming", sparsity_epochs=0)
    _, _, l1 = _scores(mlp, torch.randn(1, 12), "l1")
    gid = _group_of(ga2, "fc1.weight").id
    np.testing.assert_allclose(s2[gid], l1[gid])


def test_slimming_sparsity_phase_shrinks_the_scales():
    from fxprune.train import TrainConfig

    cfg = TrainConfig(epochs=1, lr=0.05, progress=False, schedule="constant")
    sums = {}
    for lam in (0.0, 0.5):
        gm, ga, _ = _scores(_model(), X, "slimming", data=_data(n=6), sparsity=lam, sparsity_epochs=3,
                            sparsity_train=cfg)
        sums[lam] = float(gm.bn1.weight.detach().abs().sum() + gm.bn2.weight.detach().abs().sum())
    assert sums[0.5] < 0.8 * sums[0.0], sums


def test_slimming_without_data_explains_the_options():
    with pytest.raises(ValueError, match="sparsity_epochs=0"):
        fxprune.prune(_model(), X, method="slimming", flops=0.5)


def _fractions(res) -> list[float]:
    frozen = {gid for gid, _ in res.report.frozen}
    return [kept / size for gid, size, kept, _ in res.report.widths if size >= 64 and gid not in frozen]


def test_uniform_keeps_the_same_fraction_in_every_group_within_the_budget():
    import torchvision

    m = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    res = fxprune.prune(m, x, method="uniform", flops=0.5)
    fractions = _fractions(res)
    assert res.report.flops_ratio <= 0.5 and max(fractions) - min(fractions) <= 0.02, fractions
    looser = fxprune.prune(m, x, method="uniform", flops=0.6)
    assert 0.5 < looser.report.flops_ratio <= 0.6
    assert all(keep == list(range(len(keep))) for keep in (d.keep for d in res.plan.groups))


@pytest.mark.parametrize("method", ["l1", "fpgm", "random"])
def test_local_scope_is_uniform_and_global_is_not(method):
    import torchvision

    m = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    local = fxprune.prune(m, x, method=method, flops=0.5, scope="local")
    fractions = _fractions(local)
    assert local.report.flops_ratio <= 0.5 and max(fractions) - min(fractions) <= 0.02
    assert local.plan.scope == "local"
    assert_slim_equals_masked(m, x, local)


def test_select_never_keeps_channels_removed_by_an_earlier_step():
    m = _model()
    ga = prepare(m, X)
    gm = ga.gm
    cost = CostModel.build(gm, ga)
    scores = {g.id: np.arange(g.size, dtype=float) for g in ga.groups}  # high index = important
    g = _group_of(ga, "conv1.weight")
    removed = {g.id: {4, 5}}  # the two best channels are already gone
    for scope in ("global", "local"):
        keep = select(ga, scores, Budget("flops", 0.6), cost, scope=scope, removed=removed)
        assert not {4, 5} & set(keep[g.id]), (scope, keep[g.id])
    keep = select(ga, scores, Budget("ratio", 0.2), cost, removed=removed)
    assert keep[g.id] == [0, 1, 2, 3]


def test_bad_scope_and_step_options_are_explained():
    with pytest.raises(ValueError, match="scope"):
        fxprune.prune(_model(), X, flops=0.5, scope="everywhere")
    with pytest.raises(ValueError, match="step schedule"):
        fxprune.prune(_model(), X, flops=0.5, steps=2, step_schedule="cubic")
    with pytest.raises(ValueError, match="finetune="):
        fxprune.prune(_model(), X, flops=0.5, steps=2)
    with pytest.raises(ValueError, match="needs training data"):
        fxprune.prune(_model(), X, flops=0.5, finetune=Finetune(epochs=1, progress=False))


def test_prune_with_finetune_kd_reports_accuracy_and_history():
    m = _model()
    before = copy.deepcopy(m.state_dict())
    data, test = _data(n=4), _data(n=2, seed=1)
    res = fxprune.prune(m, X, method="taylor", flops=0.5, data=data, eval_data=test, device="cpu",
                        finetune=Finetune(epochs=2, lr=0.01, progress=False, kd=True))
    assert set(res.report.accuracy) == {"dense", "pruned", "finetuned"}
    assert len(res.history) == 1 and len(res.history[0].records) == 2
    assert res.report.accuracy["finetuned"] == pytest.approx(res.history[0].records[-1].eval_acc)
    assert res.report.flops_ratio <= 0.5
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # the caller's model untouched
    assert "accuracy" in str(res.report)


def test_iterative_pruning_reaches_the_budget_and_keeps_earlier_decisions(monkeypatch):
    import fxprune.api as api

    seen = []
    real = api.select

    def spy(ga, scores, budget, cost, round_to, ignore, scope, removed):
        keep = real(ga, scores, budget, cost, round_to, ignore, scope, removed)
        seen.append((budget.value, keep))
        return keep

    monkeypatch.setattr(api, "select", spy)
    res = fxprune.prune(_model(), X, method="l1", flops=0.4, steps=3, data=_data(n=3), device="cpu",
                        finetune=Finetune(epochs=1, progress=False))
    assert [round(v, 2) for v, _ in seen] == [0.8, 0.6, 0.4]
    for (_, a), (_, b) in zip(seen, seen[1:]):
        assert all(set(b[g]) <= set(a[g]) for g in a)
    assert len(res.history) == 3 and res.report.flops_ratio <= 0.4
    assert res.plan.steps == 3


def test_from_scratch_finetune_reinitialises_the_slim_model():
    m = _model()
    with torch.no_grad():
        m.conv1.weight.fill_(0.01)
    res = fxprune.prune(m, X, method="uniform", flops=0.6, data=_data(n=1), device="cpu",
                        finetune=Finetune(epochs=1, lr=1e-6, progress=False, from_scratch=True))
    assert res.model.conv1.weight.std() > 0.01


def test_a_search_backend_decides_the_kept_channels_itself():
    from fxprune.methods.registry import METHODS, register_method

    calls = []

    def first_half(inp, budget, cost, ignored):
        calls.append(budget.value)
        return {g.id: list(range(max(1, g.size // 2))) for g in inp.ga.groups if g.prunable and not g.frozen}

    register_method("first-half", "keeps the first half of every group (test)", search=first_half)(
        lambda inp: {})
    try:
        m = _model()
        res = fxprune.prune(m, X, method="first-half", flops=0.5)
        assert calls == [0.5]
        widths = {origin: kept for _, _, kept, origin in res.report.widths}
        assert widths["conv1 output"] == 3 and widths["conv2 output"] == 4
        assert_slim_equals_masked(m, X, res)
    finally:
        METHODS.pop("first-half")


def test_method_configs_hold_the_old_defaults_and_the_typed_values_reach_the_methods():
    from fxprune.methods import method_config
    from fxprune.methods.dcp.method import DcpConfig
    from fxprune.methods.jst.method import JstConfig
    from fxprune.methods.jst.train import JSTConfig
    from fxprune.methods.metapruning.method import FRACTIONS, MetaPruningConfig
    from fxprune.methods.search.widths import DEFAULT_FRACTIONS
    from fxprune.methods.tas.method import TasConfig
    from fxprune.methods.tas.train import SearchConfig

    tas = TasConfig()
    assert (tas.tas_epochs, tas.tas_lr, tas.tas_tau, tas.tas_fractions, tas.tas_depth, tas.tas_inherit,
            tas.seed) == (1, 0.1, (5.0, 0.1), DEFAULT_FRACTIONS, True, False, 0)
    assert tas.search_config() == SearchConfig()  # the search loop's own defaults
    assert JstConfig().train_config() == JSTConfig()
    assert (JstConfig().jst_init, JstConfig().jst_calib_batches, JstConfig().jst_fill_budget) == ("model", 4, True)
    dcp = DcpConfig()
    assert (dcp.dcp_heads, dcp.dcp_head_epochs, dcp.dcp_lambda, dcp.dcp_batches, dcp.dcp_reconstruct,
            dcp.dcp_score, dcp.progress) == (3, 1, 1.0, 4, "layer", "mask", True)
    mp = MetaPruningConfig()
    assert (mp.metapruning_population, mp.metapruning_lr, mp.metapruning_window, mp.metapruning_init,
            mp.metapruning_fractions) == (50, 0.05, 0.1, "generated", FRACTIONS)
    assert method_config("slimming", {}).to_options() == {"sparsity": 1e-4, "sparsity_epochs": 10,
                                                          "sparsity_train": None, "seed": 0}
    assert method_config("taylor", {}).taylor_batches == 16 and method_config("fpgm", {}).fpgm_norm == 2
    assert method_config("random", {}).seed == 0 and method_config("l1", {}).options() == ["seed"]
    # option values are converted to the field's type (as the methods did by hand), None means the default
    cfg = method_config("tas", {"tas_epochs": 2.0, "tas_lr": 1, "tas_fractions": [0.5, 1], "tas_batches": None})
    assert (cfg.tas_epochs, cfg.tas_lr, cfg.tas_fractions, cfg.tas_batches) == (2, 1.0, (0.5, 1.0), None)
    assert method_config("jst", {"jst_lr": None}).jst_lr == JSTConfig().lr
    with pytest.raises(ValueError, match="dcp_score='grad'"):
        method_config("dcp", {"dcp_score": "grad"})
    from fxprune.methods.registry import METHODS, MethodBackend

    seen = []
    spy = MethodBackend("spy", None, "spy", config=TasConfig, search=lambda inp, *a: seen.append(inp.config) or {})
    with METHODS.override("spy", spy):  # prune builds the config and hands it over
        fxprune.prune(_model(), X, method="spy", flops=0.5, tas_epochs="3")
    assert isinstance(seen[0], TasConfig) and seen[0].tas_epochs == 3


def test_a_search_only_method_returns_a_search_result_that_lands_in_the_plan(tmp_path):
    from dataclasses import dataclass

    from fxprune.methods import MethodConfig, SearchResult, method_summaries, register_search
    from fxprune.methods.registry import METHODS, get_method
    from fxprune.registry import RegistryError

    @dataclass
    class HalfConfig(MethodConfig):
        half_fraction: float = 0.5

    @register_search("halves", "keeps a fraction of every group (test)", config=HalfConfig)
    def halves(inp, budget, cost, ignored):
        f = inp.config.half_fraction
        keep = {g.id: list(range(max(1, int(g.size * f)))) for g in inp.ga.groups
                if g.prunable and not g.frozen and g.id not in ignored}
        return SearchResult(keep, log={"fraction": f, "groups": sorted(keep)}, timings={"search": 0.25})

    try:
        assert "halves" in fxprune.list_methods() and get_method("halves").score is None
        assert method_summaries()["halves"] == "keeps a fraction of every group (test)"
        res = fxprune.prune(_model(), X, method="halves", flops=0.9, half_fraction=0.5)
        assert res.plan.search == {"fraction": 0.5, "groups": res.plan.search["groups"], "search_s": 0.25}
        assert res.plan.method_options == {"half_fraction": 0.5}  # what the user passed, not the results
        res.plan.save(tmp_path / "plan.json")
        assert fxprune.PruningPlan.load(tmp_path / "plan.json") == res.plan
        with pytest.raises(ValueError, match="did you mean 'half_fraction'"):
            fxprune.prune(_model(), X, method="halves", flops=0.9, half_fractoin=0.5)
        with pytest.raises(RegistryError, match="'halves' is already registered"):
            register_search("halves", "again (test)")(halves)
        with pytest.raises(ValueError, match="searches for its decision"):
            from fxprune.stages import prepare, score
            score(prepare(_model(), X), "halves")
    finally:
        METHODS.unregister("halves")
