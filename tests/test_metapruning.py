"""MetaPruning: the evolutionary search, the generated PruningNet, and the method end to end on CPU (a ResNet-20
on the vendored CIFAR-10 subset, a MobileNetV3-small on random data), checked against the cost model, the
masked model and the PruningNet's own scores."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

import fxprune
from fxprune.stages import prepare
from fxprune.methods.search.evolution import EvolutionConfig, evolve
from fxprune.analysis.keep import Survivors
from fxprune.selection.select import Budget
from fxprune.zoo import resnet20

from helpers import (assert_slim_equals_masked, prune_twice_on_cifar_subset, random_batches, rel_err, run_search,
                     seeded_resnet20)

SMALL = dict(metapruning_population=6, metapruning_parents=2, metapruning_mutations=3, metapruning_crossovers=3,
             metapruning_iterations=2, metapruning_calib_batches=2, metapruning_val_batches=2, progress=False)
X = torch.randn(1, 3, 32, 32)


def _data(n=6, bs=8, seed=0):
    return random_batches(n, bs, seed)


def _resnet():
    return seeded_resnet20()


def _search(model, x, data, budget, **options):
    return run_search("metapruning", model, x, data, budget, **{**SMALL, **options})


def test_evolution_evaluates_only_candidates_inside_the_window_and_is_seeded():
    seen = []

    def value(c):
        return -abs(sum(c) - 10) + 0.01 * c[0]

    def fitness(c):
        seen.append(c)
        return value(c)

    def fits(c):
        return 6 <= sum(c) <= 14

    cfg = EvolutionConfig(population=10, parents=3, mutations=5, crossovers=5, iterations=4, seed=3, progress=False)
    best, score, log = evolve([6, 6, 6], fits, fitness, cfg)
    assert all(fits(c) for c in seen) and len(seen) == len(set(seen))  # each candidate scored once
    assert score == max(value(c) for c in seen) and best in seen
    assert [r["best"] for r in log] == sorted(r["best"] for r in log)  # parents survive: never worse
    assert evolve([6, 6, 6], fits, fitness, cfg)[0] == best
    with pytest.raises(ValueError, match="no candidate inside the budget window"):
        evolve([2, 2], lambda c: False, fitness, EvolutionConfig(population=2, parents=1, max_tries=5))


def test_evolution_resumes_from_its_checkpoint_with_the_same_draws(tmp_path):
    from fxprune.methods.search.checkpoint import SearchCheckpoint

    def fitness(c):
        return -abs(sum(c) - 10) + 0.01 * c[0] - 0.001 * c[1]

    def fits(c):
        return 6 <= sum(c) <= 14

    cfg = EvolutionConfig(population=10, parents=3, mutations=5, crossovers=5, iterations=5, seed=3, progress=False)
    whole = evolve([6, 6, 6], fits, fitness, cfg)
    ckpt, calls = SearchCheckpoint(tmp_path / "ea.pt", "metapruning", {"test": 1}), []

    def interrupted(c):
        calls.append(c)
        if len(calls) == 25:  # during the third iteration
            raise _Interrupt
        return fitness(c)

    with pytest.raises(_Interrupt):
        evolve([6, 6, 6], fits, interrupted, cfg, ckpt)
    scored = {tuple(c) for c, _ in ckpt.load()["scores"]}
    again = []
    resumed = evolve([6, 6, 6], fits, lambda c: again.append(c) or fitness(c), cfg, ckpt)
    assert resumed == whole
    assert len(scored) >= 10 and again and not scored & set(again)  # the saved iterations are not re-scored


def test_resnet20_meets_the_window_and_the_slim_model_scores_what_the_pruningnet_scored():
    data = _data()
    gm, ga, cost, keep, plan, opts = _search(_resnet(), X, data, Budget("flops", 0.5))
    ratio = cost.flops(Survivors(ga, keep)) / cost.flops(None)
    assert 0.45 - 1e-6 <= ratio <= 0.5 + 1e-6 and ratio == pytest.approx(opts["cost_ratio"], abs=1e-4)
    assert len(opts["searched_fractions"]) == len(opts["searched_fractions"]) > 10
    assert len(opts["log"]) == 2 and opts["search_s"] > 0
    slim, _ = assert_slim_equals_masked(gm.eval(), X, plan)
    correct, loss, n = 0, 0.0, 0
    with torch.no_grad():  # the held-out batches are those after the 2 calibration batches
        for x, y in data[2:4]:
            logits = slim(x)
            correct, n = correct + int((logits.argmax(1) == y).sum()), n + len(y)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
    assert correct / n - 1e-6 * loss / n == pytest.approx(opts["best_accuracy"], abs=1e-4)


def test_prune_with_metapruning_on_the_cifar_subset_is_deterministic_and_replays():
    res = prune_twice_on_cifar_subset(_resnet, X, "metapruning", 192, **SMALL)
    assert res.report.flops_ratio <= 0.5
    kept = [d.keep for d in res.plan.groups if len(d.keep) < d.size]
    assert kept and all(k == list(range(len(k))) for k in kept)  # MetaPruning keeps each layer's first channels


def test_mobilenet_v3_small_random_data_meets_the_budget_and_slim_equals_masked():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    gm, ga, cost, keep, plan, _ = _search(model, x, _data(n=5), Budget("params", 0.6))
    assert cost.params(Survivors(ga, keep)) <= 0.6 * cost.params(None) + 1e-6
    assert_slim_equals_masked(gm.eval(), x, plan, tol=1e-4)


def test_scratch_init_re_initialises_and_the_generated_init_does_not_keep_the_dense_weights():
    data = _data()
    dense = _resnet()
    scratch = fxprune.prune(dense, X, method="metapruning", flops=0.5, data=data, device="cpu",
                            metapruning_init="scratch", **SMALL)
    generated = fxprune.prune(dense, X, method="metapruning", flops=0.5, data=data, device="cpu", **SMALL)
    assert [d.keep for d in scratch.plan.groups] == [d.keep for d in generated.plan.groups]
    w_s, w_g = scratch.model.conv1.weight, generated.model.conv1.weight
    w_d = dense.conv1.weight[:w_s.shape[0]]
    assert not torch.allclose(w_s, w_g) and not torch.allclose(w_g, w_d)


class _Interrupt(Exception):
    pass


def test_pruningnet_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import fxprune.methods.metapruning.method as mp

    data, ckpt = _data(), tmp_path / "mp.pt"
    whole = _search(_resnet(), X, data, Budget("flops", 0.5), metapruning_epochs=2)[3]
    real, calls = mp.evolve, []

    def stop(*args, **kwargs):  # interrupted after the PruningNet training, before the search ends
        calls.append(1)
        raise _Interrupt

    monkeypatch.setattr(mp, "evolve", stop)
    with pytest.raises(_Interrupt):
        _search(_resnet(), X, data, Budget("flops", 0.5), metapruning_epochs=2, metapruning_checkpoint=str(ckpt))
    monkeypatch.setattr(mp, "evolve", real)
    torch.manual_seed(7)
    resumed = _search(resnet20().eval(), X, data, Budget("flops", 0.5), metapruning_epochs=2,
                      metapruning_checkpoint=str(ckpt))
    assert resumed[3] == whole
    again = _search(resnet20().eval(), X, data, Budget("flops", 0.5), metapruning_epochs=2,  # all of it saved
                    metapruning_checkpoint=str(ckpt))
    assert again[3] == whole and again[5]["cost_ratio"] == resumed[5]["cost_ratio"]


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 0.5}, "not ratio="),
    ({"flops": 0.5, "metapruning_init": "pretrained"}, "metapruning_init="),
    ({"flops": 0.5, "metapruning_window": 1.5}, "metapruning_window="),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fxprune.prune(_resnet(), X, method="metapruning", data=_data(n=2), device="cpu", **{**SMALL, **kwargs})
    with pytest.raises(ValueError, match="needs training data"):
        fxprune.prune(_resnet(), X, method="metapruning", flops=0.5)


def test_pruningnet_parts_move_with_the_network():
    """Generators, per-width norms and the width state are built on the CPU; for a model on CUDA they must be
    registered parts of the network, so that `.to()` moves them (a dtype change stands in for the device)."""
    from fxprune.methods.metapruning.pruningnet import PruningNet
    from fxprune.methods.search.widths import WidthSpace
    from fxprune.selection.select import channel_groups
    import numpy as np

    ga = prepare(_resnet(), X)

    gm = ga.gm
    gids = channel_groups(ga, set())
    space = WidthSpace.build(ga, gids, {g.id: -np.arange(g.size, dtype=float) for g in ga.groups}, (0.5, 1.0))
    pnet = PruningNet(gm, ga, space)
    pnet.net.to(torch.float64)
    assert pnet.generated and pnet.norms
    floats = [t for t in (*pnet.net.parameters(), *pnet.net.buffers()) if t.is_floating_point()]
    assert {t.dtype for t in floats} == {torch.float64}
    assert pnet.state.ratios.dtype == torch.float64 and pnet.generated_weights()


def _pruningnet(model, affine=True):
    from fxprune.methods.metapruning.pruningnet import PruningNet
    from fxprune.methods.search.widths import WidthSpace
    from fxprune.selection.select import channel_groups
    import numpy as np

    ga = prepare(model, X)

    gm = ga.gm
    scores = {g.id: -np.arange(g.size, dtype=float) for g in ga.groups}
    pnet = PruningNet(gm, ga, WidthSpace.build(ga, channel_groups(ga, set()), scores, (0.5, 1.0)), affine)
    pnet.set(tuple(len(pnet.space.fractions) - 1 for _ in pnet.space.gids))  # full width
    pnet.net.train()
    return pnet


def _with_random_affine_norms(model):
    gen = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.normal_(0.0, 0.3, generator=gen)
    return model


def test_full_width_pruningnet_computes_the_model_when_its_affine_norms_are_kept():
    x = torch.randn(8, 3, 32, 32)
    model = _with_random_affine_norms(_resnet()).train()
    with torch.no_grad():
        dense = model(x)  # train mode: batch statistics, as the PruningNet's norms in training
        kept, dropped = (_pruningnet(copy.deepcopy(model), affine).net(x) for affine in (True, False))
    assert rel_err(kept, dense) < 1e-2  # the generators start at the weights (up to their small FC term)
    assert rel_err(dropped, dense) > 0.1  # the official non-affine norms forget the model's (gamma, beta)


def test_an_sgd_step_moves_a_generated_weight_about_as_far_as_the_plain_weight():
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    model = _resnet().train()
    pnet = _pruningnet(copy.deepcopy(model))
    before = pnet.generated_weights()
    opt = torch.optim.SGD([p for p in pnet.net.parameters() if p.requires_grad], lr=0.01)
    F.cross_entropy(pnet.net(x), y).backward()
    opt.step()
    F.cross_entropy(model(x), y).backward()
    for name, w in pnet.generated_weights().items():
        plain_step = 0.01 * model.get_submodule(name).weight.grad.norm()
        assert 1.0 <= float((w - before[name]).norm() / plain_step) < 2.0, name
