"""Discrimination-aware Channel Pruning (DCP): auxiliary heads, then greedy channel selection per group.

Zhuang et al., "Discrimination-aware Channel Pruning for Deep Neural Networks", NeurIPS 2018 (see
docs/methods/dcp.md). Phase 1 fine-tunes the network together with auxiliary classifiers placed at evenly
spaced points of the graph (heads.py). Phase 2 goes point by point from input to output; every
prunable channel group whose last consumer lies in the current segment is selected greedily (select.py)
with the loss = the point's head CE + `dcp_lambda` x MSE(pruned vs dense outputs of the group's consumer
ops, the paper's reconstruction; or of the point itself with dcp_reconstruct="point").
The number of channels each group keeps comes from one common kept fraction bisected with the cost model
so that the whole decision meets the budget (the official code prunes every layer at the same rate).
`dcp_checkpoint=PATH` saves the search after the head training and after every group, and resumes a saved
one (fxprune.methods.search.checkpoint). The options are the fields of `DcpConfig`; the search's record in the
plan (`plan.search`): `points` (the auxiliary heads' graph nodes) and `search_s` (its wall time).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from fxprune.analysis.keep import Keep
from fxprune.rewrite.masks import insert_masks
from fxprune.selection.select import select
from fxprune.methods.dcp.heads import DEFAULT_HEADS, HeadedNet, head_points, make_heads, num_classes, train_with_heads
from fxprune.methods.dcp.select import Segment, greedy_group, mask_groups
from fxprune.methods.calibration import batches, require_data
from fxprune.errors import MethodOptionError
from fxprune.methods.config import SearchOptions
from fxprune.methods.registry import ScoreInput, register_search
from fxprune.methods.result import SearchResult
from fxprune.methods.search.dist import search_data
from fxprune.methods.search.checkpoint import SearchCheckpoint

if TYPE_CHECKING:
    from fxprune.train import TrainConfig


@dataclass
class DcpConfig(SearchOptions):
    """DCP's options (docs/methods/dcp.md), with `seed` and `progress`."""

    dcp_heads: int = DEFAULT_HEADS  # losses: auxiliary heads + the final classifier
    dcp_head_epochs: int = 1  # phase 1: epochs of training with the heads (0 skips it)
    dcp_lambda: float = 1.0  # weight of the reconstruction term in phase 2's loss
    dcp_batches: int = 4  # calibration batches the gradients are summed over
    dcp_steps: int = 1  # SGD steps on the consumer weights after every addition
    dcp_lr: float = 0.01  # phase 1 and the phase-2 SGD steps
    dcp_chunk: int = 1  # channels added per greedy step (1: the paper)
    dcp_adaptive: bool = False  # DCP-Adapt: stop a group when the loss stops improving ...
    dcp_epsilon: float = 1e-3  # ... by this relative amount
    dcp_head_norm: bool = True  # BN-ReLU before each head's pool (the official code)
    dcp_reconstruct: str = "layer"  # MSE at the group's consumers ('layer') or at the point ('point')
    dcp_score: str = "mask"  # gradient w.r.t. the input mask ('mask') or the consumer weights ('weight')
    dcp_train: TrainConfig | None = None  # the head fine-tune's TrainConfig (epochs: dcp_head_epochs)
    dcp_checkpoint: str | os.PathLike | None = None

    def validate(self) -> None:
        if self.dcp_reconstruct not in ("layer", "point"):
            raise MethodOptionError(f"dcp_reconstruct={self.dcp_reconstruct!r}: use 'layer' (MSE at the pruned "
                                    f"group's consumer outputs, the paper) or 'point' (MSE at the auxiliary point's "
                                    f"features).")
        if self.dcp_score not in ("mask", "weight"):
            raise MethodOptionError(f"dcp_score={self.dcp_score!r}: use 'mask' (gradient w.r.t. the channel's input "
                                    f"mask) or 'weight' (Frobenius norm of the gradient w.r.t. the channel's consumer "
                                    f"weights, the paper).")


FINGERPRINT = ("dcp_heads", "dcp_head_epochs", "dcp_lambda", "dcp_batches", "dcp_steps", "dcp_lr", "dcp_chunk",
               "dcp_adaptive", "dcp_epsilon", "dcp_head_norm", "dcp_reconstruct", "dcp_score", "seed")
# the options a checkpoint's search depends on


def target_counts(inp: ScoreInput, budget, cost, ignored: set[int], removed: dict[int, set[int]]) -> dict[int, int]:
    """How many channels every channel group keeps: one common fraction that meets the budget."""
    ga = inp.ga
    zeros = {g.id: np.zeros(g.size) for g in ga.groups}
    keep = select(ga, zeros, budget, cost, inp.round_to, ignored, "local", removed)
    return {gid: len(k) for gid, k in keep.items() if len(k) < ga.groups[gid].size}


def _train_config(o: DcpConfig):
    from fxprune.train import TrainConfig

    base = o.dcp_train or TrainConfig(lr=o.dcp_lr, schedule="cosine", warmup=0.0, progress=o.progress)
    return dataclasses.replace(base, epochs=max(1, o.dcp_head_epochs), seed=o.seed)


def dcp_search(inp: ScoreInput, budget, cost, ignored: set[int]) -> SearchResult:
    t0 = time.perf_counter()
    data = require_data(inp, "dcp", "its auxiliary heads are fine-tuned and its channel selection measures "
                                     "gradients on training batches")
    o: DcpConfig = inp.config
    torch.manual_seed(o.seed)
    gm, ga = inp.gm, inp.ga
    removed = Keep(inp.keep).removed(ga)  # iterative pruning: what earlier rounds removed stays removed
    counts = target_counts(inp, budget, cost, ignored, removed)
    points = head_points(gm, o.dcp_heads)
    heads = make_heads(gm, points, num_classes(gm, inp.example_inputs), o.dcp_head_norm)
    device = next(iter(gm.parameters())).device
    checkpoint = SearchCheckpoint(o.dcp_checkpoint, "dcp", {
        "graph": ga.signature, "counts": sorted(counts.items()), "points": list(points),
        "options": {k: getattr(o, k) for k in FINGERPRINT}, "removed": sorted(
            (g, sorted(c)) for g, c in removed.items())})
    saved = checkpoint.load()
    if saved is None:
        if o.dcp_head_epochs > 0:
            train_with_heads(HeadedNet(gm, points, heads), data, _train_config(o))
        calib = list(batches(search_data(data, "data"), o.dcp_batches, device))  # this rank's shard
        if not calib:
            raise ValueError("method 'dcp' got no batches from data: the data iterable is empty.")
        saved = {"gm": gm.state_dict(), "heads": heads.state_dict(), "calib": [(x.cpu(), y.cpu()) for x, y in calib]}
        checkpoint.save(saved)
    else:  # resumed: the head-trained weights and the very calibration batches of the interrupted search
        gm.load_state_dict(saved["gm"])
        heads.load_state_dict(saved["heads"])
        calib = [(x.to(device), y.to(device)) for x, y in saved["calib"]]
    # the pruned network: a copy with soft masks (all ones) at every consumer; the dense one stays as is
    pruned = copy.deepcopy(gm).eval()
    arrays: dict[str, np.ndarray] = {}
    insert_masks(pruned, ga, {}, soft=True, arrays=arrays)
    for p in pruned.parameters():
        p.requires_grad_(False)
    heads.eval()
    for p in heads.parameters():
        p.requires_grad_(False)
    gm.eval()
    state = np.ones(int(ga.offsets[-1]))  # 1 = channel kept, 0 = removed, over all groups' channels
    for gid, gone in removed.items():
        state[[int(ga.offsets[gid]) + c for c in gone]] = 0.0
    trained = heads if o.dcp_head_epochs > 0 else None  # untrained heads would add noise, not discrimination
    segments = Segment.build(pruned, gm, points, trained, calib, mask_groups(pruned, ga, arrays, counts))
    keep: Keep = {}
    if "keep" in saved:
        pruned.load_state_dict(saved["pruned"])
        state[:] = saved["state"].numpy()
        keep = {int(g): list(k) for g, k in saved["keep"]}
    total = sum(len(s.groups) for s in segments)
    bar = tqdm(total=total, initial=len(keep), desc="dcp: channel selection", disable=not o.progress,
               leave=False)
    for seg in segments:
        for gid in (g for g in seg.groups if g not in keep):
            keep[gid] = greedy_group(pruned, ga, state, seg, gid, counts[gid], o, removed.get(gid, set()))
            checkpoint.save({**saved, "pruned": pruned.state_dict(), "state": torch.as_tensor(state),
                             "keep": [[g, k] for g, k in keep.items()]})
            bar.update(1)
    bar.close()
    optimised = dict(pruned.named_parameters())  # the slim model starts from DCP's optimised weights
    with torch.no_grad():
        for name, p in gm.named_parameters():
            if name in optimised:
                p.copy_(optimised[name])
    return SearchResult(keep, log={"points": list(points)}, timings={"search": time.perf_counter() - t0})


register_search("dcp", "discrimination-aware channel pruning: auxiliary heads + greedy selection of each "
                       "group's channels by the gradient of head CE + feature MSE (Zhuang et al., NeurIPS "
                       "2018); needs data", needs_data=True, config=DcpConfig)(dcp_search)
