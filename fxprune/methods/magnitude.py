"""Magnitude criteria (L1, L2) and the random baseline.

A channel's magnitude is accumulated over every parameter slice that carries it, in every member of its
group (producers, consumers, norm affine parameters), as in group-level magnitude pruning
(Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023).
"""
from __future__ import annotations

import numpy as np
import torch

from .registry import ScoreInput, register_method


def magnitude_scores(inp: ScoreInput, p: int) -> dict[int, np.ndarray]:
    ga = inp.ga
    total = np.zeros(int(ga.offsets[-1]))
    tensors = dict(inp.gm.named_parameters())
    tensors.update(dict(inp.gm.named_buffers()))
    for qualname, per_dim in ga.analysis.params.items():
        t = tensors.get(qualname)
        if t is None or not t.is_floating_point() or "running_" in qualname:
            continue
        for dim, arr in per_dim.items():
            if dim >= t.dim() or t.shape[dim] != len(arr):
                continue
            flat = t.detach().float().transpose(0, dim).reshape(len(arr), -1)
            norms = (flat.abs().sum(1) if p == 1 else flat.pow(2).sum(1)).numpy().astype(np.float64)
            pos, chan = ga.channel_positions(arr)
            np.add.at(total, chan, norms[pos])
    if p == 2:
        total = np.sqrt(total)
    return {g.id: total[ga.offsets[g.id]:ga.offsets[g.id + 1]] for g in ga.groups}


@register_method("l1", "L1 norm of each channel's weights across its group (Li et al., 2017)")
def l1(inp: ScoreInput) -> dict[int, np.ndarray]:
    return magnitude_scores(inp, 1)


@register_method("l2", "L2 norm of each channel's weights across its group")
def l2(inp: ScoreInput) -> dict[int, np.ndarray]:
    return magnitude_scores(inp, 2)


@register_method("random", "uniformly random channel scores (seed=0 by default): the sanity baseline")
def random_scores(inp: ScoreInput) -> dict[int, np.ndarray]:
    gen = torch.Generator().manual_seed(int(inp.options.get("seed", 0)))
    return {g.id: torch.rand(g.size, generator=gen, dtype=torch.float64).numpy() for g in inp.ga.groups}
