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
after every iteration (in PATH.evolution), and resumes both. The options are the fields of
`MetaPruningConfig`; the search's record in the plan (`plan.search`): `searched_fractions`, `log`,
`train_loss`, `best_accuracy`, `cost_ratio` and `search_s`.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fxprune.analysis.keep import Survivors
from fxprune.selection.select import channel_groups, repair
from fxprune.train.runtime import reinitialise
from fxprune.train.losses import logits_of
from fxprune.methods.calibration import (batches, batches_after, batches_per_epoch, require_cost_budget, require_data,
                          score_batches)
from fxprune.methods.search.evolution import EvolutionConfig, evolve
from fxprune.methods.metapruning.pruningnet import PruningNet
from fxprune.errors import MethodOptionError
from fxprune.methods.config import SearchOptions
from fxprune.methods.registry import ScoreInput, register_search
from fxprune.methods.result import SearchResult
from fxprune.methods.search.dist import average_gradients, search_data
from fxprune.methods.search.checkpoint import SearchCheckpoint
from fxprune.methods.search.widths import WidthSpace

FRACTIONS = tuple(round(0.10 + 0.03 * i, 2) for i in range(31))  # 0.10 ... 1.00, the official choices
INITS = ("generated", "scratch")
GENERATOR_VERSION = 2  # in the checkpoint's fingerprint: 2 = the 1/sqrt(hidden)-scaled generators
TRAINING = ("metapruning_epochs", "metapruning_batches", "metapruning_lr", "metapruning_momentum",
            "metapruning_weight_decay", "metapruning_bn_affine")  # the options a PruningNet checkpoint depends on
SEARCH = ("metapruning_window", "metapruning_calib_batches", "metapruning_val_batches", "metapruning_population",
          "metapruning_parents", "metapruning_mutations", "metapruning_crossovers", "metapruning_mutate_p",
          "metapruning_iterations")  # the options the evolutionary search's checkpoint adds to TRAINING's


_EVOLUTION = EvolutionConfig()  # the evolutionary search's defaults, under metapruning_ names


@dataclass
class MetaPruningConfig(SearchOptions):
    """MetaPruning's options (docs/methods/metapruning.md), with `seed` and `progress`."""

    metapruning_epochs: int = 1
    metapruning_batches: int | None = None  # PruningNet batches per epoch (None: the whole data iterable)
    metapruning_lr: float = 0.05
    metapruning_momentum: float = 0.9
    metapruning_weight_decay: float = 4e-5
    metapruning_window: float = 0.1
    metapruning_calib_batches: int = 4
    metapruning_val_batches: int = 4
    metapruning_population: int = _EVOLUTION.population
    metapruning_parents: int = _EVOLUTION.parents
    metapruning_mutations: int = _EVOLUTION.mutations
    metapruning_crossovers: int = _EVOLUTION.crossovers
    metapruning_mutate_p: float = _EVOLUTION.mutate_p
    metapruning_iterations: int = _EVOLUTION.iterations
    metapruning_init: str = "generated"
    metapruning_bn_affine: bool = True
    metapruning_fractions: tuple[float, ...] = FRACTIONS  # candidate widths, fractions of each group's size
    metapruning_val_data: Iterable | None = None  # held-out batches scoring the candidates (else data's)
    metapruning_checkpoint: str | os.PathLike | None = None

    def validate(self) -> None:
        if self.metapruning_init not in INITS:
            raise MethodOptionError(f"metapruning_init={self.metapruning_init!r}: use 'generated' (start from the "
                                    f"PruningNet's weights) or 'scratch' (re-initialised, as the paper trains it).")
        if not 0 <= self.metapruning_window < 1:
            raise MethodOptionError(f"metapruning_window={self.metapruning_window}: the accepted cost window is "
                                    f"[(1 - window) x budget, budget], so 0 <= window < 1.")
        self.metapruning_fractions = tuple(float(f) for f in self.metapruning_fractions)


def _index_scores(inp: ScoreInput) -> dict[int, np.ndarray]:
    """MetaPruning keeps a layer's first channels: scores fall with the channel index."""
    return {g.id: -np.arange(g.size, dtype=np.float64) for g in inp.ga.groups}


def train_pruningnet(pnet: PruningNet, data, o: MetaPruningConfig, device: torch.device,
                     generator: torch.Generator, checkpoint: SearchCheckpoint) -> list[dict]:
    """Stochastic structure sampling: one random width choice per group per step, cross-entropy."""
    params = [p for p in pnet.net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=o.metapruning_lr, momentum=o.metapruning_momentum,
                          weight_decay=o.metapruning_weight_decay)
    per_epoch = batches_per_epoch(data, o.metapruning_batches, "metapruning", "metapruning_batches")
    epochs = o.metapruning_epochs
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
               leave=False, disable=not o.progress)
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


def metapruning_search(inp: ScoreInput, budget, cost, ignored: set[int]) -> SearchResult:
    t0 = time.perf_counter()
    data = search_data(require_data(inp, "metapruning", "the PruningNet is trained and candidates are scored on "
                                                        "batches"), "data")
    require_cost_budget(inp, budget, "metapruning")
    o: MetaPruningConfig = inp.config
    ga = inp.ga
    fractions = o.metapruning_fractions
    space = WidthSpace.build(ga, channel_groups(ga, ignored), _index_scores(inp), fractions, inp.round_to)
    measure = cost.measure(budget.kind)
    dense, target = measure(None), budget.value * measure(None)
    seed = o.seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        device = next((p.device for p in inp.gm.parameters()), torch.device("cpu"))
        pnet = PruningNet(inp.gm, ga, space, o.metapruning_bn_affine)
        pnet.net.to(device)  # the generators and per-width norms are made on the CPU
        generator = torch.Generator().manual_seed(seed)
        checkpoint = SearchCheckpoint(o.metapruning_checkpoint, "metapruning", {
            "graph": ga.signature, "groups": list(space.gids), "fractions": list(fractions), "seed": seed,
            "options": {k: getattr(o, k) for k in TRAINING}, "generator": GENERATOR_VERSION})
        train_log = train_pruningnet(pnet, data, o, device, generator, checkpoint)
        calib = list(batches(data, o.metapruning_calib_batches, device))
        val_source = search_data(o.metapruning_val_data, "metapruning_val_data")
        val = (list(batches(val_source, o.metapruning_val_batches, device)) if val_source is not None
               else batches_after(data, len(calib), o.metapruning_val_batches, device))
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
            return (1 - o.metapruning_window) * target <= cost_of_choice(choice) <= target + 1e-6

        def fitness(choice: tuple[int, ...]) -> float:
            pnet.set(choice)
            pnet.recalibrate(calib)
            pnet.net.eval()
            return score_batches(pnet.net, val)

        cfg = EvolutionConfig(o.metapruning_population, o.metapruning_parents, o.metapruning_mutations,
                              o.metapruning_crossovers, o.metapruning_mutate_p, o.metapruning_iterations, seed=seed,
                              progress=o.progress)
        best, score, evo_log = evolve([len(fractions)] * len(space.gids), fits, fitness, cfg,
                                      _evolution_checkpoint(o, checkpoint, budget, inp.round_to,
                                                            o.metapruning_checkpoint))
        _initialise(inp, pnet, best, calib, o.metapruning_init)
    log = {"searched_fractions": [[gid, fractions[k]] for gid, k in zip(space.gids, best)],
           "log": [[r["iteration"], round(r["best"], 4)] for r in evo_log],
           "train_loss": [round(r["loss"], 4) for r in train_log],
           "best_accuracy": round(float(score), 4),
           "cost_ratio": round(cost_of_choice(best) / dense, 4)}  # a finished search resumed from its
    # checkpoint measured no candidate in this process
    return SearchResult(space.keep_of(dict(zip(space.gids, best))), log=log,
                        timings={"search": time.perf_counter() - t0})


def _evolution_checkpoint(o: MetaPruningConfig, trained: SearchCheckpoint, budget, round_to: int,
                          path) -> SearchCheckpoint:
    """The evolutionary search's own file beside the PruningNet checkpoint (`<path>.evolution`): saved after
    every iteration, it is small where the PruningNet's generators are not."""
    search = {k: getattr(o, k) for k in SEARCH}
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


register_search("metapruning", "MetaPruning (Liu et al., ICCV 2019): PruningNet weight generators trained on "
                "random widths, then an evolutionary search of per-group widths in a cost window",
                needs_data=True, config=MetaPruningConfig)(metapruning_search)
