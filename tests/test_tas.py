"""TAS (method="tas") and the shared channel gates: gates == masks, expected cost == cost model for one-hot
distributions, the cost-loss signs, and end-to-end searches (ResNet-20 on the CIFAR-10 subset, torchvision
MobileNetV3-small and a tiny ViT on random data) that meet the budget and whose slim model equals the
masked one, deterministically under a seed."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision

import fxprune
from fxprune.analysis.blocks import residual_blocks
from fxprune.stages import prepare
from fxprune.cost.model import CostModel
from fxprune.rewrite.masks import insert_masks
from fxprune.methods.search.gates import install_gates
from fxprune.methods.scorers.magnitude import magnitude_scores
from fxprune.methods.registry import ScoreInput
from fxprune.methods.tas.method import fit_budget
from fxprune.methods.search.widths import WidthSpace
from fxprune.methods.tas.space import ExpectedCost, sample_two
from fxprune.methods.tas.train import SearchConfig, cost_loss, tau_at
from fxprune.analysis.keep import Survivors
from fxprune.selection.select import channel_groups
from fxprune.zoo import resnet20

from helpers import assert_slim_equals_masked


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=10).eval()


def _mobilenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v3_small(num_classes=10).eval()


def _resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return resnet20().eval()


MODELS = {"resnet20": (_resnet, (1, 3, 32, 32)), "mobilenet_v3_small": (_mobilenet, (1, 3, 32, 32)),
          "vit": (_vit, (1, 3, 32, 32))}


def _random_data(shape, n=4, bs=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, *shape[1:], generator=gen), torch.randint(0, 10, (bs,), generator=gen))
            for _ in range(n)]


def _random_keep(ga, seed):
    rng = np.random.default_rng(seed)
    return {g.id: sorted(set(rng.choice(g.size, max(1, g.size // 2), replace=False).tolist()) | set(g.frozen))
            for g in ga.groups if g.prunable}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hard_gates_equal_the_masked_model(name):
    make, shape = MODELS[name]
    x = torch.randn(2, *shape[1:])
    ga = prepare(make(), x)
    gm = ga.gm
    for seed in (0, 1):
        keep = _random_keep(ga, seed)
        masked = copy.deepcopy(gm)
        insert_masks(masked, ga, keep)
        gated, gates = install_gates(gm, ga)
        gv = {}
        for gid, k in keep.items():
            gv[gid] = torch.zeros(ga.groups[gid].size)
            gv[gid][k] = 1.0
        gates.set(gv)
        with torch.no_grad():
            assert torch.equal(masked(x), gated(x))
            gates.set(None)
            assert torch.allclose(gated(x), gm(x), atol=1e-6)


def _space(name):
    make, shape = MODELS[name]
    x = torch.randn(*shape)
    ga = prepare(make(), x)
    gm = ga.gm
    gids = channel_groups(ga, set())
    inp = ScoreInput(gm, ga, (x,), {})
    return gm, ga, WidthSpace.build(ga, gids, magnitude_scores(inp, 1)), CostModel.build(gm, ga)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_expected_cost_of_a_one_hot_distribution_is_the_cost_model_of_that_decision(name):
    _, ga, space, cost = _space(name)
    flops, params = ExpectedCost(ga, cost.flop_terms), ExpectedCost(ga, cost.param_terms)
    rng = np.random.default_rng(0)
    for _ in range(3):
        choice = {gid: int(rng.integers(len(space.fractions))) for gid in space.gids}
        onehot = torch.zeros(len(space.gids), len(space.fractions))
        onehot[torch.arange(len(space.gids)), torch.as_tensor([choice[g] for g in space.gids])] = 1.0
        ctx = Survivors(ga, space.keep_of(choice))
        assert float(flops(space.flat(onehot))) == pytest.approx(cost.flops(ctx), rel=1e-9)
        assert float(params(space.flat(onehot))) + cost.fixed_params == pytest.approx(cost.params(ctx), rel=1e-9)
    # a mixture's expected cost lies between the extremes and is differentiable in the probabilities
    logits = torch.zeros(len(space.gids), len(space.fractions), requires_grad=True)
    e = flops(space.flat(torch.softmax(logits, 1)))
    e.backward()
    assert cost.flops(Survivors(ga, space.keep_of({g: 0 for g in space.gids}))) < e.item() < cost.flops(None)
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_cost_loss_signs_follow_the_argmax_architecture():
    e = torch.tensor(50.0, requires_grad=True)
    assert float(cost_loss(e, current=80.0, target=100.0, tolerance=0.05).detach()) == pytest.approx(-np.log(50.0))
    assert float(cost_loss(e, current=120.0, target=100.0, tolerance=0.05).detach()) == pytest.approx(np.log(50.0))
    assert float(cost_loss(e, current=97.0, target=100.0, tolerance=0.05).detach()) == 0.0  # inside the band
    cost_loss(e, current=120.0, target=100.0, tolerance=0.05).backward()
    assert float(e.grad) > 0  # too expensive: gradient descent lowers the expected cost


def test_tau_schedules_and_two_sample_weighting():
    cfg = SearchConfig(tau_max=5.0, tau_min=0.1)
    assert tau_at(cfg, 0.0) == pytest.approx(5.0) and tau_at(cfg, 1.0) == pytest.approx(0.1)
    lin = SearchConfig(tau_max=10.0, tau_min=0.1, tau_schedule="linear")
    assert tau_at(lin, 0.5) == pytest.approx(5.05)
    with pytest.raises(ValueError, match="cosine"):
        tau_at(SearchConfig(tau_schedule="step"), 0.5)
    w = sample_two(torch.zeros(5, 8), 1.0, 2, torch.Generator().manual_seed(0))
    assert ((w > 0).sum(1) == 2).all() and torch.allclose(w.sum(1), torch.ones(5))


def test_fit_budget_scales_an_over_budget_architecture_down():
    _, ga, space, cost = _space("resnet20")
    target = 0.3 * cost.flops(None)
    full = {gid: len(space.fractions) - 1 for gid in space.gids}
    keep = fit_budget(space, full, lambda k: cost.flops(Survivors(ga, k)), target)
    assert cost.flops(Survivors(ga, keep)) <= target
    assert cost.flops(Survivors(ga, keep)) > 0.25 * cost.flops(None)  # not shrunk further than needed
    keep = fit_budget(space, {gid: 0 for gid in space.gids}, lambda k: cost.flops(Survivors(ga, k)),
                      cost.flops(None))
    assert keep == space.keep_of({gid: 0 for gid in space.gids})  # within budget: the searched widths


def _tas(model, x, data, **kw):
    opts = dict(tas_epochs=1, tas_progress=False, device="cpu", seed=0)
    opts.update(kw)
    return fxprune.prune(model, x, method="tas", data=data, **opts)


def test_tas_on_resnet20_with_the_cifar10_subset_meets_the_budget_and_is_deterministic():
    from fxprune.data import cifar10_loaders

    x = torch.randn(1, 3, 32, 32)
    runs = []
    for _ in range(2):
        train, _ = cifar10_loaders(batch_size=32, train_limit=192, test_limit=10, seed=0)
        runs.append(_tas(_resnet(), x, train, flops=0.5))
    res = runs[0]
    assert res.report.flops_ratio <= 0.5
    assert [d.keep for d in res.plan.groups] == [d.keep for d in runs[1].plan.groups]
    searched = res.plan.search["searched_fractions"]
    assert len(searched) == len(channel_groups(prepare(_resnet(), x), set()))
    assert all(0.3 <= f <= 1.0 for _, f in searched)
    assert_slim_equals_masked(_resnet(), x, res)
    assert fxprune.PruningPlan.from_json(res.plan.to_json()).search == res.plan.search


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "vit"])
def test_tas_end_to_end_on_torchvision_models(name):
    make, shape = MODELS[name]
    x = torch.randn(*shape)
    res = _tas(make(), x, _random_data(shape), flops=0.6)
    ga = prepare(make(), x)
    gm = ga.gm
    cost = CostModel.build(gm, ga)
    keep = {d.id: d.keep for d in res.plan.groups}
    gone = {a for a, _ in res.plan.skipped_blocks}  # residual blocks the depth search removed
    removed = {n for b in residual_blocks(gm) if b.add in gone for n in b.branch}
    assert cost.without(removed, set()).flops(Survivors(ga, keep)) <= 0.6 * cost.flops(None)
    assert res.report.flops_ratio <= 0.6 + 1e-6  # counted on the slim model, attention included
    assert_slim_equals_masked(make(), x, res, tol=1e-4)
    other = _tas(make(), x, _random_data(shape), flops=0.6)
    assert [d.keep for d in res.plan.groups] == [d.keep for d in other.plan.groups]


def test_tas_params_budget_and_option_errors():
    x = torch.randn(1, 3, 32, 32)
    data = _random_data((1, 3, 32, 32), n=2)
    res = _tas(_resnet(), x, data, params=0.5, tas_fractions=[0.5, 1.0])
    assert res.report.params_ratio <= 0.5
    assert {f for _, f in res.plan.search["searched_fractions"]} <= {0.5, 1.0}
    with pytest.raises(ValueError, match="params= or latency="):
        _tas(_resnet(), x, data, ratio=0.5)
    with pytest.raises(ValueError, match="needs training data"):
        fxprune.prune(_resnet(), x, method="tas", flops=0.5)
    with pytest.raises(ValueError, match="tas_fractions"):
        _tas(_resnet(), x, data, flops=0.5, tas_fractions=[0.0, 1.0])


def test_tas_keeps_ignored_groups_and_frozen_channels():
    x = torch.randn(1, 3, 32, 32)
    ga = prepare(_resnet(), x)
    first = channel_groups(ga, set())[0]
    res = _tas(_resnet(), x, _random_data((1, 3, 32, 32), n=2), flops=0.5, ignore=[first])
    assert res.plan.groups[first].keep == list(range(ga.groups[first].size))
    assert first not in {gid for gid, _ in res.plan.search["searched_fractions"]}
    assert res.report.flops_ratio <= 0.5


def test_width_candidates_keep_frozen_channels_first_then_the_best_scores():
    from types import SimpleNamespace

    from fxprune.types import ChannelGroup

    ga = SimpleNamespace(groups=[ChannelGroup(0, 6, [], frozen={4: "reaches the output"})])
    space = WidthSpace.build(ga, [0], {0: np.array([0.1, 0.9, 0.5, 0.3, 0.0, 0.7])}, (0.3, 0.5, 1.0))
    assert space.counts[0] == [2, 3, 6]
    assert space.keep_of({0: 0}) == {0: [1, 4]} and space.keep_of({0: 1}) == {0: [1, 4, 5]}
    assert space.widths[0].tolist()[0] == [0, 1, 0, 0, 1, 0]
    assert space.keep_count(0, 0) == [4]  # at least the frozen channel


def test_tas_inherit_starts_the_slim_model_from_the_search_trained_weights():
    x = torch.randn(1, 3, 32, 32)
    data = _random_data((1, 3, 32, 32), n=2)
    plain, inherit = _tas(_resnet(), x, data, flops=0.5), _tas(_resnet(), x, data, flops=0.5, tas_inherit=True)
    assert [d.keep for d in plain.plan.groups] == [d.keep for d in inherit.plan.groups]
    w0, w1 = plain.model.state_dict(), inherit.model.state_dict()
    assert w0.keys() == w1.keys() and not all(torch.equal(w0[k], w1[k]) for k in w0)
    assert_slim_equals_masked(_resnet(), x, plain)


def test_per_width_norm_with_one_candidate_is_that_candidates_batchnorm():
    from fxprune.methods.tas.norms import MixedWidthNorm, WidthWeights

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(6)
    holder = WidthWeights()
    norm = MixedWidthNorm(bn, holder, row=1, choices=3)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(3, 6))
        norm.bias.copy_(torch.randn(3, 6))
    x = torch.randn(4, 6, 5, 5)
    for k in range(3):
        ref = copy.deepcopy(bn)
        with torch.no_grad():
            ref.weight.copy_(norm.weight[k])
            ref.bias.copy_(norm.bias[k])
            ref.running_mean.copy_(norm.running_mean)  # both update their statistics alike from here
            ref.running_var.copy_(norm.running_var)
        holder.set(torch.nn.functional.one_hot(torch.tensor([0, k]), 3).float())
        for mode in (True, False):
            ref.train(mode), norm.train(mode)
            torch.testing.assert_close(norm(x), ref(x))
    mix = torch.tensor([[1.0, 0, 0], [0.25, 0.75, 0]], requires_grad=True)
    holder.set(mix)
    norm.train()(x).sum().backward()
    assert mix.grad[1, :2].abs().sum() > 0 and mix.grad[0].abs().sum() == 0  # the width logits learn through it


def test_tas_trains_one_affine_pair_per_width_and_inherits_the_most_probable_one(monkeypatch):
    import fxprune.methods.tas.method as tas

    seen, real = {}, tas.install_width_norms
    monkeypatch.setattr(tas, "install_width_norms", lambda *a, **k: seen.setdefault("out", real(*a, **k)))
    x = torch.randn(1, 3, 32, 32)
    res = _tas(_resnet(), x, _random_data((1, 3, 32, 32), n=4), flops=0.5, tas_inherit=True)
    norms = seen["out"][1]
    bns = [n for n, m in _resnet().named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert sorted(norms) == sorted(bns)  # every BatchNorm of ResNet-20 carries a searched group
    rows = norms["bn1"].weight.detach()
    assert (rows - rows[0]).abs().max() > 1e-5  # the candidates' affine pairs were trained apart
    norm = norms["bn1"]
    gid, fraction = res.plan.search["searched_fractions"][norm.row]
    k = [round(0.3 + 0.1 * i, 1) for i in range(8)].index(fraction)
    keep = next(d.keep for d in res.plan.groups if d.id == gid)
    torch.testing.assert_close(res.model.bn1.weight, norm.weight[k][keep].detach())
    off = _tas(_resnet(), x, _random_data((1, 3, 32, 32), n=4), flops=0.5, tas_per_width_bn=False)
    assert off.plan.search.get("searched_fractions")


class _Interrupt(Exception):
    pass


class _StopAfter:
    """Batches that raise after `n` of them (an interrupted search), else yield `batches`."""

    def __init__(self, batches, n):
        self.batches, self.n = batches, n

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, b in enumerate(self.batches):
            if i == self.n:
                raise _Interrupt
            yield b


def test_an_interrupted_tas_search_resumes_from_its_checkpoint_to_the_same_plan(tmp_path):
    x = torch.randn(1, 3, 32, 32)
    data = _random_data((1, 3, 32, 32), n=4)
    whole = _tas(_resnet(), x, data, flops=0.5, tas_epochs=3)
    ckpt = tmp_path / "tas.pt"
    calls = iter([_StopAfter(data, 10**9), _StopAfter(data, 2)])  # epoch 1 completes, epoch 2 is cut short

    class Flaky:
        def __len__(self):
            return len(data)

        def __iter__(self):
            return iter(next(calls, data))

    with pytest.raises(_Interrupt):
        _tas(_resnet(), x, Flaky(), flops=0.5, tas_epochs=3, tas_checkpoint=str(ckpt))
    assert ckpt.exists()
    resumed = _tas(_resnet(), x, data, flops=0.5, tas_epochs=3, tas_checkpoint=str(ckpt))
    assert [d.keep for d in resumed.plan.groups] == [d.keep for d in whole.plan.groups]
    assert resumed.plan.search["log"] == whole.plan.search["log"]
    # the resumed search ran its last epochs: its time is recorded, and within the decision's wall time
    assert 0 < resumed.plan.search["search_s"] <= resumed.report.search["seconds"]
    assert 0 < whole.plan.search["search_s"] <= whole.report.search["seconds"]
    with pytest.raises(ValueError, match="belongs to another search.*differs in: budget"):
        _tas(_resnet(), x, data, flops=0.4, tas_epochs=3, tas_checkpoint=str(ckpt))


# ----------------------------------------------------------------------------- depth search


def test_runs_of_identity_blocks_are_found_from_the_graph():
    from fxprune.analysis.blocks import find_runs

    def runs(model, shape):
        return [len(r.blocks) for r in find_runs(fxprune.trace(model, torch.randn(*shape)))]

    assert runs(_resnet(), (1, 3, 32, 32)) == [3, 2, 2]  # option-B projections start stages 2 and 3
    assert runs(torchvision.models.mobilenet_v2(), (1, 3, 64, 64)) == [1, 2, 3, 2, 2]
    assert runs(_vit(), (1, 3, 32, 32)) == [4]  # attention and MLP halves of 2 encoder layers


@pytest.mark.parametrize("depths", [[1, 1, 1], [2, 1, 2], [3, 2, 2]])
def test_depth_mix_with_one_hot_weights_equals_the_model_without_the_skipped_blocks(depths):
    from fxprune.analysis.blocks import remove_blocks
    from fxprune.methods.tas.depth import DepthSpace

    x = torch.randn(2, 3, 32, 32)
    gm = prepare(_resnet(), x).gm
    space = DepthSpace.build(gm)
    gated = copy.deepcopy(gm)
    gates = space.install(gated)
    gates.set([torch.nn.functional.one_hot(torch.tensor(d - 1), n).float() for d, n in zip(depths, space.sizes)])
    shallow = remove_blocks(copy.deepcopy(gm), space.skipped(depths))
    assert torch.allclose(gated(x), shallow(x), atol=1e-5)
    gates.set(None)
    assert torch.allclose(gated(x), gm(x), atol=1e-6)


def test_expected_cost_of_one_hot_depths_is_the_cost_without_the_skipped_blocks():
    from fxprune.methods.tas.depth import DepthSpace

    x = torch.randn(1, 3, 32, 32)
    ga = prepare(_resnet(), x)
    gm = ga.gm
    cost = CostModel.build(gm, ga)
    space = DepthSpace.build(gm)
    depths = [2, 1, 2]
    onehots = [torch.nn.functional.one_hot(torch.tensor(d - 1), n).double() for d, n in zip(depths, space.sizes)]
    expected = ExpectedCost(ga, cost.flop_terms, space.term_blocks(gm, cost, "flops"))
    ones = torch.ones(int(ga.offsets[-1]) + 1, dtype=torch.float64)
    gone = {a for a, _ in space.skipped(depths)}
    nodes = {n for run in space.runs for b in run.blocks if b.add in gone for n in b.branch}
    assert float(expected(ones, space.active(onehots))) == pytest.approx(cost.without(nodes, set()).flops(None))
    assert float(expected(ones, space.active(onehots))) < cost.flops(None)


def test_tas_depth_search_removes_blocks_and_the_plan_replays():
    from fxprune.data import cifar10_loaders

    x = torch.randn(1, 3, 32, 32)
    train, _ = cifar10_loaders(batch_size=32, train_limit=128, test_limit=10, seed=0)
    res = _tas(_resnet(), x, train, flops=0.35, tas_epochs=2, tas_arch_lr=0.2)
    depths = res.plan.search["searched_depths"]
    assert [n for _, _, n in depths] == [3, 2, 2] and all(1 <= d <= n for _, d, n in depths)
    assert len(res.plan.skipped_blocks) == sum(n - d for _, d, n in depths) > 0
    assert res.report.flops_ratio <= 0.35
    assert_slim_equals_masked(_resnet(), x, res)
    plan = fxprune.PruningPlan.from_json(res.plan.to_json())
    assert plan.skipped_blocks == res.plan.skipped_blocks
    slim = fxprune.apply_plan(_resnet(), x, plan)
    assert torch.allclose(slim(x), res.model(x), atol=1e-6)
    widths_only = _tas(_resnet(), x, train, flops=0.35, tas_epochs=2, tas_arch_lr=0.2, tas_depth=False)
    assert widths_only.plan.skipped_blocks == [] and "searched_depths" not in widths_only.plan.search


def test_removing_blocks_keeps_the_slim_model_trainable_with_in_place_activations():
    """ReLU(inplace=True) after a removed block's add would write into the shortcut tensor autograd needs."""
    from fxprune.analysis.blocks import find_runs, remove_blocks

    x = torch.randn(2, 3, 32, 32)
    for model in (_resnet(), torchvision.models.resnet18(num_classes=10)):
        gm = fxprune.trace(model, x)
        skipped = [[b.add, b.shortcut] for run in find_runs(gm) for b in run.blocks[1:]]
        assert skipped
        reference = copy.deepcopy(gm).eval()
        slim = remove_blocks(gm, skipped).train()
        slim(x).square().sum().backward()  # raised "modified by an inplace operation" before
        assert all(p.grad is not None for p in slim.parameters() if p.requires_grad)
        assert not torch.allclose(slim.eval()(x), reference(x))  # something was removed
