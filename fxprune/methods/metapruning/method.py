"""MetaPruning (Liu et al., ICCV 2019): a PruningNet trained on random widths, then an evolutionary search.

1. `PruningNet` (pruningnet.py) is generated for the traced model: weight generators for every conv / linear
   touching a searched group, per-width BN statistics (the model's affine pair kept and shared by the widths;
   `metapruning_bn_affine=False`: non-affine, as the official code).
2. Stochastic structure sampling: every training step draws one width choice per group uniformly among
   `metapruning_fractions` (default 31 values, 0.10 ... 1.00, as the official code) and trains the
   PruningNet end to end with cross-entropy.
3. Evolutionary search (evolution.py; population 50, 10 parents, 25 mutations with p = 0.1 per gene, 25
   crossovers, 20 iterations by default) over candidates whose cost is inside the window
   [(1 - metapruning_window) x budget, budget] (FLOPs, params or latency); each candidate's BN statistics
   are recomputed on `metapruning_calib_batches` training batches, then it is scored by top-1 accuracy on
   `metapruning_val_batches` held-out batches (`metapruning_val_data`, else batches of `data` after the
   calibration ones).
4. The best candidate's widths become the plan (each group keeps its first channels, frozen ones always).
   `metapruning_init="generated"` (default) writes the generated weights and recalibrated statistics into
   the model, so the slim model starts from them; `"scratch"` re-initialises it (the paper trains the found
   architecture from scratch): pass `finetune=Finetune(...)` to train it.
`metapruning_checkpoint=PATH` saves the PruningNet training after every epoch and the evolutionary search
after every iteration (in PATH.evolution), and resumes both.
"""
from __future__ import annotations

import time
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fxprune.analysis.keep import Keep, Survivors
from fxprune.selection.select import _channel_groups, repair
from fxprune.train.runtime import reinitialise
from fxprune.train.losses import logits_of
from fxprune.methods.calibration import (batches, batches_after, batches_per_epoch, require_cost_budget, require_data,
                          score_batches)
from fxprune.methods.search.evolution import EvolutionConfig, evolve
from fxprune.methods.metapruning.pruningnet import PruningNet
from fxprune.methods.registry import ScoreInput, register_method
from fxprune.methods.search.dist import average_gradients, search_data
from fxprune.methods.search.checkpoint import SearchCheckpoint
from fxprune.methods.search.widths import WidthSpace

FRACTIONS = tuple(round(0.10 + 0.03 * i, 2) for i in range(31))  # 0.10 ... 1.00, the official choices
DEFAULTS = {"metapruning_epochs": 1, "metapruning_batches": None, "metapruning_lr": 0.05,
            "metapruning_momentum": 0.9, "metapruning_weight_decay": 4e-5, "metapruning_window": 0.1,
            "metapruning_calib_batches": 4, "metapruning_val_batches": 4, "metapruning_population": 50,
            "metapruning_parents": 10, "metapruning_mutations": 25, "metapruning_crossovers": 25,
            "metapruning_mutate_p": 0.1, "metapruning_iterations": 20, "metapruning_init": "generated",
            "metapruning_bn_affine": True,
            "seed": 0, "progress": True}
INITS = ("generated", "scratch")
GENERATOR_VERSION = 2  # in the checkpoint's fingerprint: 2 = the 1/sqrt(hidden)-scaled generators
TRAINING = ("metapruning_epochs", "metapruning_batches", "metapruning_lr", "metapruning_momentum",
            "metapruning_weight_decay", "metapruning_bn_affine")  # the options a PruningNet checkpoint depends on


def options_of(inp: ScoreInput) -> dict:
    o = {k: inp.options.get(k, v) for k, v in DEFAULTS.items()}
    if o["metapruning_init"] not in INITS:
        raise ValueError(f"metapruning_init={o['metapruning_init']!r}: use 'generated' (start from the "
                         f"PruningNet's weights) or 'scratch' (re-initialised, as the paper trains it).")
    if not 0 <= float(o["metapruning_window"]) < 1:
        raise ValueError(f"metapruning_window={o['metapruning_window']}: the accepted cost window is "
                         f"[(1 - window) x budget, budget], so 0 <= window < 1.")
    return o


def _index_scores(inp: ScoreInput) -> dict[int, np.ndarray]:
    """MetaPruning keeps a layer's first channels: scores fall with the channel index."""
    return {g.id: -np.arange(g.size, dtype=np.float64) for g in inp.ga.groups}


def train_pruningnet(pnet: PruningNet, data, o: dict, device: torch.device, generator: torch.Generator,
                     checkpoint: SearchCheckpoint) -> list[dict]:
    """Stochastic structure sampling: one random width choice per group per step, cross-entropy."""
    params = [p for p in pnet.net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=float(o["metapruning_lr"]), momentum=float(o["metapruning_momentum"]),
                          weight_decay=float(o["metapruning_weight_decay"]))
    per_epoch = batches_per_epoch(data, o["metapruning_batches"], "metapruning", "metapruning_batches")
    epochs = int(o["metapruning_epochs"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * per_epoch, 1))
    parts = {"net": pnet.net, "opt": opt, "sched": sched}
    saved = checkpoint.load()
    log, start = [], 0
    if saved is not None:
        for name, part in parts.items():
            part.load_state_dict(saved[name])
        generator.set_state(saved["generator"])
        log, start = list(saved["log"]), int(saved["epoch"])
    k = len(pnet.space.fractions)
    bar = tqdm(total=epochs * per_epoch, initial=start * per_epoch, desc="metapruning: PruningNet",
               leave=False, disable=not o["progress"])
    pnet.net.train()
    for epoch in range(start, epochs):
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)
        total = 0.0
        for x, y in islice(iter(data), per_epoch):
            choice = tuple(torch.randint(k, (len(pnet.space.gids),), generator=generator).tolist())
            pnet.set(choice)
            loss = F.cross_entropy(logits_of(pnet.net(x.to(device))).float(), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(params)
            opt.step()
            sched.step()
            total += float(loss.detach())
            bar.update(1)
        log.append({"epoch": epoch + 1, "loss": total / max(per_epoch, 1)})
        checkpoint.save({**{n: p.state_dict() for n, p in parts.items()}, "generator": generator.get_state(),
                         "log": log, "epoch": epoch + 1})
    bar.close()
    return log


def metapruning_search(inp: ScoreInput, budget, cost, ignored: set[int]) -> Keep:
    t0 = time.perf_counter()
    data = search_data(require_data(inp, "metapruning", "the PruningNet is trained and candidates are scored on "
                                                        "batches"), "data")
    require_cost_budget(inp, budget, "metapruning")
    o = options_of(inp)
    ga = inp.ga
    fractions = tuple(float(f) for f in inp.options.get("metapruning_fractions", FRACTIONS))
    space = WidthSpace.build(ga, _channel_groups(ga, ignored), _index_scores(inp), fractions, inp.round_to)
    measure = cost.measure(budget.kind)
    dense, target = measure(None), budget.value * measure(None)
    seed = int(o["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        device = next((p.device for p in inp.gm.parameters()), torch.device("cpu"))
        pnet = PruningNet(inp.gm, ga, space, bool(o["metapruning_bn_affine"]))
        pnet.net.to(device)  # the generators and per-width norms are made on the CPU
        generator = torch.Generator().manual_seed(seed)
        checkpoint = SearchCheckpoint(inp.options.get("metapruning_checkpoint"), "metapruning", {
            "graph": ga.signature, "groups": list(space.gids), "fractions": list(fractions), "seed": seed,
            "options": {k: o[k] for k in TRAINING}, "generator": GENERATOR_VERSION})
        train_log = train_pruningnet(pnet, data, o, device, generator, checkpoint)
        calib = list(batches(data, int(o["metapruning_calib_batches"]), device))
        val_source = search_data(inp.options.get("metapruning_val_data"), "metapruning_val_data")
        val = (list(batches(val_source, int(o["metapruning_val_batches"]), device)) if val_source is not None
               else batches_after(data, len(calib), int(o["metapruning_val_batches"]), device))
        if not calib or not val:
            raise ValueError("method 'metapruning' got too few batches: it needs metapruning_calib_batches + "
                             "metapruning_val_batches batches of data (or metapruning_val_data).")
        cost_of = {}

        def cost_of_choice(choice: tuple[int, ...]) -> float:
            if choice not in cost_of:
                keep = repair(ga, space.keep_of(dict(zip(space.gids, choice))), {})
                cost_of[choice] = measure(Survivors(ga, keep))
            return cost_of[choice]

        def fits(choice: tuple[int, ...]) -> bool:
            return (1 - float(o["metapruning_window"])) * target <= cost_of_choice(choice) <= target + 1e-6

        def fitness(choice: tuple[int, ...]) -> float:
            pnet.set(choice)
            pnet.recalibrate(calib)
            pnet.net.eval()
            return score_batches(pnet.net, val)

        cfg = EvolutionConfig(int(o["metapruning_population"]), int(o["metapruning_parents"]),
                              int(o["metapruning_mutations"]), int(o["metapruning_crossovers"]),
                              float(o["metapruning_mutate_p"]), int(o["metapruning_iterations"]), seed=seed,
                              progress=bool(o["progress"]))
        best, score, evo_log = evolve([len(fractions)] * len(space.gids), fits, fitness, cfg,
                                      _evolution_checkpoint(o, checkpoint, budget, inp.round_to,
                                                            inp.options.get("metapruning_checkpoint")))
        _initialise(inp, pnet, best, calib, o["metapruning_init"])
    inp.options["metapruning_searched_fractions"] = [[gid, fractions[k]] for gid, k in zip(space.gids, best)]
    inp.options["metapruning_log"] = [[r["iteration"], round(r["best"], 4)] for r in evo_log]
    inp.options["metapruning_train_loss"] = [round(r["loss"], 4) for r in train_log]
    inp.options["metapruning_best_accuracy"] = round(float(score), 4)
    inp.options["metapruning_cost_ratio"] = round(cost_of_choice(best) / dense, 4)  # a finished search
    # resumed from its checkpoint measured no candidate in this process
    inp.options["metapruning_search_s"] = round(time.perf_counter() - t0, 3)
    return space.keep_of(dict(zip(space.gids, best)))


def _evolution_checkpoint(o: dict, trained: SearchCheckpoint, budget, round_to: int, path) -> SearchCheckpoint:
    """The evolutionary search's own file beside the PruningNet checkpoint (`<path>.evolution`): saved after
    every iteration, it is small where the PruningNet's generators are not."""
    search = {k: v for k, v in o.items() if k.startswith("metapruning_") and k not in TRAINING + ("metapruning_init",)}
    return SearchCheckpoint(None if path is None else f"{path}.evolution", "metapruning", {
        **trained.fingerprint, "budget": [budget.kind, float(budget.value)], "round_to": round_to, "search": search})


def _initialise(inp: ScoreInput, pnet: PruningNet, best: tuple[int, ...], calib: list, how: str) -> None:
    """Write the generated weights and the recalibrated BN statistics of `best` into the model (the rewrite
    then keeps each group's first channels), or re-initialise it."""
    gm = inp.gm
    if how == "scratch":
        reinitialise(gm)
        return
    pnet.set(best)
    pnet.recalibrate(calib)
    weights = pnet.generated_weights()
    with torch.no_grad():
        for name, w in weights.items():
            gm.get_submodule(name).weight.copy_(w)
        for name, norm in pnet.norms.items():
            bn = gm.get_submodule(name)
            k = norm.state[0].choice_of(norm.gid)
            bn.running_mean.copy_(norm.running_mean[k])
            bn.running_var.copy_(norm.running_var[k])
            if bn.affine and norm.weight is None:  # non-affine norms: identity (an affine pair is copied below)
                bn.weight.fill_(1.0)
                bn.bias.zero_()
        trained = dict(pnet.net.named_parameters())
        for name, p in gm.named_parameters():  # the other weights the PruningNet trained (biases, classifier)
            if name in trained and trained[name].shape == p.shape:
                p.copy_(trained[name])


def _no_scores(inp: ScoreInput) -> dict[int, np.ndarray]:
    raise NotImplementedError("method 'metapruning' selects widths itself (its search hook); it has no scores.")


register_method("metapruning", "MetaPruning (Liu et al., ICCV 2019): PruningNet weight generators trained on "
                "random widths, then an evolutionary search of per-group widths in a cost window",
                needs_data=True, search=metapruning_search)(_no_scores)
