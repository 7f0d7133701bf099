"""Method `dcp` (discrimination-aware channel pruning): head points from the graph, greedy selection on a
toy with useless channels, end to end on ResNet-20 (vendored CIFAR-10 subset) and MobileNetV3-small."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.stages import make_plan, prepare
from fxprune.cost.model import CostModel
from fxprune.methods import get_method
from fxprune.methods.dcp.heads import head_points, main_path
from fxprune.methods.registry import ScoreInput
from fxprune.analysis.keep import Survivors
from fxprune.selection.select import Budget, repair
from fxprune.tracing.meta import FLOPS as META_FLOPS
from fxprune.train import TrainConfig
from fxprune.zoo.cifar import resnet20

from helpers import assert_slim_equals_masked

TINY = dict(dcp_train=TrainConfig(max_steps=2, lr=0.01, schedule="constant", amp=None, progress=False),
            dcp_batches=1, progress=False)


def _data(n=2, bs=8, shape=(3, 32, 32), classes=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, *shape, generator=gen), torch.randint(0, classes, (bs,), generator=gen))
            for _ in range(n)]


def _search(model, x, data, budget: Budget, **options):
    """Run the dcp search on a traced copy; returns (trained traced model, plan, flops ratio, its record)."""
    ga = prepare(model, x)
    gm = ga.gm
    cost = CostModel.build(gm, ga)
    inp = ScoreInput(gm, ga, (x,), dict(options), data)
    found = get_method("dcp").search(inp, budget, cost, set())
    keep = repair(ga, found.keep, {})
    plan = make_plan(ga, keep, method="dcp", options=inp.options, budget=budget, round_to=1, strict=True, scope="local", steps=1)
    plan.search = found.record()
    return gm, ga, keep, plan, cost.flops(Survivors(ga, keep)) / cost.flops(None), plan.search


def test_head_points_are_block_outputs_in_different_stages_evenly_spaced_by_flops():
    x = torch.randn(1, 3, 32, 32)
    gm = prepare(resnet20().eval(), x).gm
    path = {n.name for n in main_path(gm)}
    assert not any("conv1" in n and n.startswith("layer") for n in path)  # inside a block: not on the path
    points = head_points(gm, 3)
    assert points == ["layer1_2_relu_1", "layer2_2_relu_1"]  # the last block output of stages 1 and 2
    cum, total, at = {}, sum(n.meta[META_FLOPS] for n in gm.graph.nodes), 0
    for n in gm.graph.nodes:
        at += n.meta[META_FLOPS]
        cum[n.name] = at / total
    assert all(abs(cum[p] - k / 3) < 0.05 for k, p in enumerate(points, 1))
    assert len(head_points(gm, 4)) == 3 and head_points(gm, 1) == []


class Toy(nn.Module):
    """conv(3->8) -> ReLU -> conv(8->8) -> ReLU -> GAP -> linear; conv2 ignores the odd channels of conv1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.conv2.weight[:, 1::2] = 0.0

    def forward(self, x):
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).mean((2, 3)))


@pytest.mark.parametrize("heads,reconstruct", [(1, "layer"), (2, "layer"), (2, "point")])
def test_greedy_selection_never_picks_channels_without_consumer_weights(heads, reconstruct):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    data = _data(n=2, shape=(3, 16, 16), classes=4)
    _, ga, keep, _, _, opts = _search(Toy().eval(), x, data, Budget("ratio", 0.5), dcp_heads=heads,
                                      dcp_reconstruct=reconstruct, dcp_head_epochs=0, dcp_batches=2, dcp_steps=2,
                                      progress=False)
    g1 = next(g for g in ga.groups if any(m.name == "conv1.weight" and m.role == "producer" for m in g.members))
    assert keep[g1.id] == [0, 2, 4, 6]
    assert len(opts["points"]) == heads - 1 and opts["search_s"] > 0


@pytest.mark.parametrize("score", ["mask", "weight"])
def test_resnet20_on_the_cifar_subset_meets_the_budget_and_slim_equals_masked(score):
    from fxprune.data import cifar10_loaders

    train, _ = cifar10_loaders(batch_size=16, train_limit=64, test_limit=10)
    x = torch.randn(2, 3, 32, 32)
    gm, _, keep, plan, ratio, opts = _search(resnet20().eval(), x, train, Budget("flops", 0.5),
                                             dcp_chunk=16, dcp_score=score, **TINY)
    assert ratio <= 0.5 + 1e-6 and keep
    assert opts["points"] == ["layer1_2_relu_1", "layer2_2_relu_1"]
    assert_slim_equals_masked(gm.eval(), x, plan)  # gm holds the head-trained, DCP-optimised weights


def test_prune_with_dcp_returns_a_slim_model_without_heads_and_is_deterministic():
    torch.manual_seed(0)
    m = resnet20().eval()
    x, data = torch.randn(1, 3, 32, 32), _data(n=2)
    before = copy.deepcopy(m.state_dict())
    res = [fxprune.prune(m, x, method="dcp", flops=0.6, data=data, device="cpu", dcp_chunk=16, seed=3, **TINY)
           for _ in range(2)]
    assert res[0].report.flops_ratio <= 0.6
    assert [d.keep for d in res[0].plan.groups] == [d.keep for d in res[1].plan.groups]
    assert all(torch.equal(a, b) for a, b in zip(res[0].model.state_dict().values(),
                                                  res[1].model.state_dict().values()))
    names = {n for n, _ in res[0].model.named_modules()} | {n for n, _ in res[0].model.named_parameters()}
    assert not any("head" in n or "fxprune_mask" in n for n in names)
    assert res[0].plan.search["points"] and res[0].plan.search["search_s"] > 0
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # the caller's model untouched
    assert res[0].model(x).shape == (1, 10)


def test_mobilenet_v3_small_random_data_meets_the_budget_and_slim_equals_masked():
    import torchvision  # a hard dependency: never skipped
    torch.manual_seed(0)
    m = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    gm, _, keep, plan, ratio, opts = _search(m, x, _data(n=1), Budget("flops", 0.6), dcp_chunk=256, **TINY)
    assert ratio <= 0.6 + 1e-6 and keep and len(opts["points"]) == 2
    assert_slim_equals_masked(gm.eval(), x, plan, tol=1e-4)


def test_dcp_adapt_keeps_at_most_the_fixed_rate_and_needs_data():
    torch.manual_seed(0)
    x, data = torch.randn(1, 3, 16, 16), _data(n=2, shape=(3, 16, 16), classes=4)
    fixed = _search(Toy().eval(), x, data, Budget("ratio", 0.25), dcp_head_epochs=0, progress=False)[2]
    adapt = _search(Toy().eval(), x, data, Budget("ratio", 0.25), dcp_head_epochs=0, progress=False,
                    dcp_adaptive=True, dcp_epsilon=0.5)[2]
    assert all(len(adapt[g]) <= len(k) for g, k in fixed.items()) and adapt != fixed
    with pytest.raises(ValueError, match="needs training data"):
        fxprune.prune(Toy().eval(), x, method="dcp", flops=0.5)


def test_iterative_dcp_never_brings_back_channels_an_earlier_round_removed(monkeypatch):
    import fxprune.api as api
    from fxprune.train import Finetune

    seen, real = [], api.decide

    def spy(*args, **kwargs):
        found = real(*args, **kwargs)
        seen.append(copy.deepcopy(found.keep))
        return found

    monkeypatch.setattr(api, "decide", spy)
    torch.manual_seed(0)
    x, data = torch.randn(1, 3, 16, 16), _data(n=2, shape=(3, 16, 16), classes=4)
    res = fxprune.prune(Toy().eval(), x, method="dcp", flops=0.4, steps=2, data=data, device="cpu",
                        finetune=Finetune(epochs=1, max_steps=1, amp=None, progress=False), dcp_head_epochs=0,
                        progress=False)
    assert len(seen) == 2 and res.report.flops_ratio <= 0.4
    assert all(set(seen[1][g]) <= set(k) for g, k in seen[0].items())


def test_layer_reconstruction_targets_are_the_groups_consumer_ops():
    from fxprune.rewrite.masks import insert_masks
    from fxprune.methods.dcp.select import mask_groups

    ga = prepare(resnet20().eval(), torch.randn(1, 3, 32, 32))
    gm = ga.gm
    arrays = {}
    insert_masks(gm, ga, {}, soft=True, arrays=arrays)
    inner = next(g for g in ga.groups if any(m.name == "layer1.0.conv1.weight" and m.role == "producer"
                                             for m in g.members))
    info = mask_groups(gm, ga, arrays, {g.id: 1 for g in ga.groups})
    assert info.consumers[inner.id] == ["layer1_0_conv2"]
    with pytest.raises(ValueError, match="dcp_reconstruct"):
        _search(Toy().eval(), torch.randn(1, 3, 16, 16), _data(n=1, shape=(3, 16, 16)), Budget("ratio", 0.5),
                dcp_reconstruct="everywhere", progress=False)


def test_weight_score_is_the_frobenius_norm_of_the_weight_gradient_with_unselected_weights_zeroed():
    torch.manual_seed(0)
    x, data = torch.randn(1, 3, 16, 16), _data(n=2, shape=(3, 16, 16), classes=4)
    model = Toy().eval()
    _, ga, keep, _, _, _ = _search(copy.deepcopy(model), x, data, Budget("ratio", 0.875), dcp_heads=1, dcp_head_epochs=0,
                                   dcp_batches=2, dcp_score="weight", progress=False)
    # by hand: every channel of conv1 is off, so conv2 sees its whole input with all of its weights zeroed
    w = torch.zeros_like(model.conv2.weight, requires_grad=True)
    grad = torch.zeros_like(w)
    for xb, yb in data:
        h = F.relu(model.conv1(xb))
        out = F.conv2d(h, w, model.conv2.bias, padding=1)
        logits = model.fc(F.relu(out).mean((2, 3)))
        loss = F.cross_entropy(logits, yb) + F.mse_loss(out, model.conv2(h).detach())
        grad += torch.autograd.grad(loss, w)[0]
    g1 = next(g for g in ga.groups if any(m.name == "conv1.weight" and m.role == "producer" for m in g.members))
    assert keep[g1.id] == [int(grad.pow(2).sum((0, 2, 3)).argmax())]
    with pytest.raises(ValueError, match="dcp_score"):
        _search(Toy().eval(), x, data, Budget("ratio", 0.5), dcp_score="norm", progress=False)


def test_masks_are_created_on_the_device_of_the_model():
    """DCP/TAS/Taylor insert masks into a model that may already live on CUDA; the meta device stands in."""
    from fxprune.rewrite.masks import insert_masks

    ga = prepare(resnet20(), torch.randn(1, 3, 32, 32))
    gm = ga.gm
    gm.to("meta")
    masks = insert_masks(gm, ga, {}, soft=True)
    assert masks and all(m.device.type == "meta" for m in masks.values())


class _Interrupt(Exception):
    pass


def test_an_interrupted_dcp_search_resumes_from_its_checkpoint_to_the_same_result(tmp_path, monkeypatch):
    import fxprune.methods.dcp.method as dcp_module

    x, data = torch.randn(1, 3, 32, 32), _data(n=2)
    opts = dict(dcp_chunk=8, seed=1, **TINY)

    def model():
        torch.manual_seed(0)
        return resnet20().eval()

    _, _, whole_keep, _, _, _ = _search(model(), x, data, Budget("flops", 0.6), **opts)
    ckpt = tmp_path / "dcp.pt"
    real, calls = dcp_module.greedy_group, []

    def cut_short(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise _Interrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(dcp_module, "greedy_group", cut_short)
    with pytest.raises(_Interrupt):
        _search(model(), x, data, Budget("flops", 0.6), dcp_checkpoint=str(ckpt), **opts)
    monkeypatch.setattr(dcp_module, "greedy_group", real)
    torch.manual_seed(123)  # other initial weights: the resumed search restores its own from the checkpoint
    _, _, keep, _, _, _ = _search(resnet20().eval(), x, data, Budget("flops", 0.6), dcp_checkpoint=str(ckpt),
                                  **opts)
    assert keep == whole_keep
    with pytest.raises(ValueError, match="belongs to another search"):
        _search(resnet20().eval(), x, data, Budget("flops", 0.5), dcp_checkpoint=str(ckpt), **opts)


def test_tiny_vit_random_data_meets_the_budget_and_slim_equals_masked():
    import torchvision  # a hard dependency: never skipped
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=2,
                                             hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    gm, _, keep, plan, ratio, opts = _search(m, x, _data(n=1), Budget("flops", 0.7), dcp_chunk=64, **TINY)
    assert ratio <= 0.7 + 1e-6 and keep and opts["points"]
    trained = copy.deepcopy(m)
    trained.load_state_dict(gm.state_dict())  # the head-trained, DCP-optimised weights, in the original model
    assert_slim_equals_masked(trained.eval(), x, plan, tol=1e-4)
