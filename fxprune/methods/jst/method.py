"""Joint Search-and-Training (Lu, Huang, Dong, Li, Shi, IJCAI 2020; "Beyond Network Pruning"): ThresNet.

No pre-trained model is needed: `jst_init="scratch"` re-initialises the model first (the paper's setting);
the default starts from the weights given.

1. Every searched channel group gets a learnable weight per channel (alpha; space.py). The network is
   trained coarsely with every channel scaled by n x softmax(alpha): cross-entropy + lambda x sum ||alpha||_2
   (`jst_coarse_epochs`; the paper: 100 on CIFAR).
2. Search-and-training (`jst_search_epochs`; train.py): ThresNet (thresnet.py) maps the alphas to one
   threshold per group; the sampler perturbs alpha, ranks the channels by softmax and keeps them until their
   cumulative probability reaches the threshold. A sub-network that costs more than the budget is scaled into
   it (every group's count by one common factor). Each sub-network's weights train `jst_train_batches`
   batches (M), its alphas `jst_val_batches` batches (N) of the validation split (`jst_val_data`, else the
   next batches of `data`), and its reward -(validation loss + `jst_gamma` x cost / dense cost) trains
   ThresNet by REINFORCE every `jst_samples` sub-networks (T).
3. The best sub-network: the `jst_candidates` best-rewarded sub-networks and ThresNet's noise-free one, each
   grown to use the budget (`jst_fill_budget`: every group's count by the largest common factor that fits,
   the channels added in alpha order; the reward's cost term leaves them under it), each with its BN
   statistics recomputed on `jst_calib_batches` training batches and scored by top-1 accuracy on
   `jst_eval_batches` held-out batches. Its channels are kept and the searched weights (with the recomputed
   statistics) are written into the model, so the slim model computes exactly the scored sub-network without
   the channel scales; fine-tune it to convergence with `finetune=`.
`jst_checkpoint=PATH` saves the search after every epoch and resumes it. The budget is FLOPs, params or
latency (the paper's reward uses params; ours uses the budget's cost). The options are the fields of
`JstConfig`; the search's record in the plan (`plan.search`): `searched_fractions`, `thresholds`, `log`,
`coarse_loss`, `best_accuracy`, `candidates_scored`, `cost_ratio` and `search_s`. See docs/methods/jst.md.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from fxprune.analysis.keep import Keep, Survivors
from fxprune.selection.select import channel_groups, repair
from fxprune.train.runtime import reinitialise
from fxprune.methods.search.budget_fit import scale_to_fit
from fxprune.methods.calibration import batches, batches_after, recalibrate_norms, require_cost_budget, require_data, score_batches
from fxprune.methods.search.gates import inherit_weights, install_gates
from fxprune.methods.jst.space import ChannelWeights
from fxprune.methods.jst.train import JSTConfig, JSTSearch
from fxprune.errors import MethodOptionError
from fxprune.methods.config import SearchOptions
from fxprune.methods.registry import ScoreInput, register_search
from fxprune.methods.result import SearchResult
from fxprune.methods.search.dist import broadcast_state, search_data
from fxprune.methods.search.checkpoint import SearchCheckpoint

INITS = ("model", "scratch")
_D = JSTConfig()


@dataclass
class JstConfig(SearchOptions):
    """JST's options (docs/methods/jst.md), with `seed` and `progress`. `jst_<name>` sets the training
    setting `<name>` of `JSTConfig` (fxprune.methods.jst.train)."""

    jst_coarse_epochs: int = _D.coarse_epochs
    jst_search_epochs: int = _D.search_epochs
    jst_batches: int | None = _D.batches  # per epoch (None: the whole data iterable)
    jst_lr: float = _D.lr
    jst_momentum: float = _D.momentum
    jst_weight_decay: float = _D.weight_decay
    jst_arch_lr: float = _D.arch_lr
    jst_penalty: float = _D.penalty
    jst_noise: float = _D.noise
    jst_train_batches: int = _D.train_batches
    jst_val_batches: int = _D.val_batches
    jst_samples: int = _D.samples
    jst_gamma: float = _D.gamma
    jst_thres_lr: float = _D.thres_lr
    jst_thres_std: float = _D.thres_std
    jst_thres_low: float = _D.thres_low
    jst_thres_hidden: int = _D.thres_hidden
    jst_candidates: int = _D.candidates
    jst_init: str = "model"
    jst_calib_batches: int = 4
    jst_eval_batches: int = 4
    jst_fill_budget: bool = True
    jst_val_data: Iterable | None = None  # the validation split (else the next batches of data)
    jst_checkpoint: str | os.PathLike | None = None

    def validate(self) -> None:
        for name in ("train_batches", "val_batches", "samples", "candidates"):
            if getattr(self, f"jst_{name}") < 1:
                raise MethodOptionError(f"jst_{name}={getattr(self, f'jst_{name}')}: it counts batches or "
                                        f"sub-networks, so it must be >= 1.")
        if self.jst_search_epochs < 1:
            raise MethodOptionError(f"jst_search_epochs={self.jst_search_epochs}: the search needs at least one "
                                    f"epoch to sample sub-networks (jst_coarse_epochs may be 0).")
        if self.jst_init not in INITS:
            raise MethodOptionError(f"jst_init={self.jst_init!r}: use 'model' (start from the given weights) or "
                                    f"'scratch' (re-initialised first, the paper's setting: no pre-trained model "
                                    f"needed).")

    def train_config(self) -> JSTConfig:
        """The two training stages' settings."""
        return JSTConfig(**{f.name: getattr(self, "jst_" + f.name) for f in dataclasses.fields(JSTConfig)
                            if f.name != "progress"}, progress=self.progress)


def jst_search(inp: ScoreInput, budget, cost, ignored: set[int]) -> SearchResult:
    t0 = time.perf_counter()
    data = search_data(require_data(inp, "jst", "the network, its channel weights and ThresNet are trained on "
                                                "batches"), "data")
    o: JstConfig = inp.config
    val_data = search_data(o.jst_val_data, "jst_val_data")
    require_cost_budget(inp, budget, "jst")
    cfg = o.train_config()
    ga = inp.ga
    gids = channel_groups(ga, ignored)
    cost_of = cost.measure(budget.kind)
    dense = cost_of(None)

    def measure(keep: Keep) -> float:
        return cost_of(Survivors(ga, repair(ga, keep, {})))

    seed = o.seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if o.jst_init == "scratch":
            reinitialise(inp.gm)
        gated, gates = install_gates(inp.gm, ga)
        device = next((p.device for p in gated.parameters()), torch.device("cpu"))
        space = ChannelWeights(ga, gids, inp.round_to).to(device)
        generator = torch.Generator().manual_seed(seed)
        checkpoint = SearchCheckpoint(o.jst_checkpoint, "jst", {
            "graph": ga.signature, "groups": list(gids), "config": _fingerprint_config(cfg), "seed": seed,
            "budget": [budget.kind, float(budget.value)], "round_to": inp.round_to, "init": o.jst_init})
        search = JSTSearch(gated, gates, space, cfg, data, val_data, measure, dense,
                           budget.value * dense, generator, checkpoint)
        search.run()
        best, score, scored = _choose(search, gated, gates, space, data, val_data, o, device)
        broadcast_state(gated)  # a distributed search: rank 0's weights and statistics everywhere
    inherit_weights(inp.gm, gated)
    return SearchResult(best, log=_log(search, best, score, scored, measure(best) / dense, ga),
                        timings={"search": time.perf_counter() - t0})


def _fingerprint_config(cfg: JSTConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("progress", "candidates")}


def _choose(search: JSTSearch, gated, gates, space: ChannelWeights, data, val_data, o: JstConfig, device):
    """Score the candidates with plain 0/1 gates (what the slim model computes) after recomputing the BN
    statistics on calibration batches; returns (best keep, its score, number scored). The gated copy is left
    with the best candidate's statistics."""
    calib = list(batches(data, o.jst_calib_batches, device))
    n_eval = o.jst_eval_batches
    held = (list(batches(val_data, n_eval, device)) if val_data is not None
            else batches_after(data, len(calib), n_eval, device))
    if not calib or not held:
        raise ValueError("method 'jst' got too few batches to choose its sub-network: it needs jst_calib_batches + "
                         "jst_eval_batches batches of data (or jst_val_data).")
    keeps = [{g: c for g, c in cand["keep"]} for cand in search.candidates] + [search.mean_subnetwork()]
    if o.jst_fill_budget:
        keeps = [_filled(search, space, k) for k in keeps]
    keeps = [k for i, k in enumerate(keeps) if k not in keeps[:i]]
    scores = []
    for keep in keeps:
        gates.set(space.flat(keep, scaled=False))
        recalibrate_norms(gated, calib)
        scores.append(score_batches(gated, held))
    best = max(range(len(keeps)), key=lambda i: scores[i])
    gates.set(space.flat(keeps[best], scaled=False))
    recalibrate_norms(gated, calib)
    gates.set(None)
    return keeps[best], scores[best], len(keeps)


def _filled(search: JSTSearch, space: ChannelWeights, keep: dict) -> dict:
    """`keep` grown by the largest common factor that fits the budget (channels added in alpha order)."""
    draw = space.ranked(keep)
    sizes = {g: space.ga.groups[g].size for g in keep}
    return scale_to_fit(draw.counts, sizes, draw.keep_count, search.measure, search.target)


def _log(search: JSTSearch, best: dict, score: float, scored: int, ratio: float, ga) -> dict:
    """The search's record: searched widths, ThresNet's thresholds, the curves and the chosen candidate."""
    with torch.no_grad():
        th = search.thresnet(search.space.features()).tolist()
    return {
        "searched_fractions": [[g, round(len(best[g]) / ga.groups[g].size, 4)] for g in sorted(best)],
        "thresholds": [[g, round(t, 4)] for g, t in zip(search.space.gids, th)],
        "log": [[r["epoch"], round(r["mean_reward"], 4)] for r in search.log if r["stage"] == "search"],
        "coarse_loss": [round(r["loss"], 4) for r in search.log if r["stage"] == "coarse"],
        "best_accuracy": round(float(score), 4),
        "candidates_scored": scored,
        "cost_ratio": round(ratio, 4),
    }


register_search("jst", "Joint Search-and-Training (Lu et al., IJCAI 2020): per-channel weights, a ThresNet "
                "policy for per-group thresholds trained by REINFORCE, sub-networks sampled and trained "
                "jointly; needs data, no pre-trained model", needs_data=True, config=JstConfig)(jst_search)
