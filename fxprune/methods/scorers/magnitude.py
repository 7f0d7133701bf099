"""Magnitude criteria (L1, L2), the random baseline, and the per-parameter traversal they share.

A channel's magnitude is accumulated over every parameter slice that carries it, in every member of its
group (producers, consumers, norm affine parameters), as in group-level magnitude pruning
(Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fxprune.methods.config import SeedOption
from fxprune.methods.registry import ScoreInput, register_method

SliceScore = Callable[[torch.Tensor], torch.Tensor]  # (positions, features) -> (positions,)


def param_channel_scores(inp: ScoreInput, slice_score: SliceScore, min_dim: int = 1,
                         only: set[str] | None = None) -> np.ndarray:
    """Sum `slice_score` of every labelled parameter's slices into a global per-channel array.

    Each parameter that carries channels along `dim` is viewed as (positions along dim, features); the
    per-position scores go to the channels that position is made of. Running statistics and parameters
    with fewer than `min_dim` dims are skipped; `only` restricts it to those parameter names.
    """
    ga = inp.ga
    total = np.zeros(int(ga.offsets[-1]))
    tensors = dict(inp.gm.named_parameters())
    tensors.update(dict(inp.gm.named_buffers()))
    for qualname, per_dim in ga.analysis.params.items():
        t = tensors.get(qualname)
        if only is not None and qualname not in only:
            continue
        if t is None or not t.is_floating_point() or "running_" in qualname or t.dim() < min_dim:
            continue
        for dim, arr in per_dim.items():
            if dim >= t.dim() or t.shape[dim] != len(arr):
                continue
            flat = t.detach().double().transpose(0, dim).reshape(len(arr), -1)
            per_pos = slice_score(flat).cpu().numpy()
            pos, chan = ga.channel_positions(arr)
            np.add.at(total, chan, per_pos[pos])
    return total


def split_by_group(inp: ScoreInput, total: np.ndarray) -> dict[int, np.ndarray]:
    """A global per-channel array cut into {group id: that group's scores}."""
    ga = inp.ga
    return {g.id: total[ga.offsets[g.id]:ga.offsets[g.id + 1]] for g in ga.groups}


@dataclass
class MagnitudeConfig(SeedOption):
    """l1 and l2 take no options."""


@dataclass
class RandomConfig(SeedOption):
    """random: `seed` (default 0; step k of iterative pruning draws with seed + k)."""


def magnitude_scores(inp: ScoreInput, p: int) -> dict[int, np.ndarray]:
    total = param_channel_scores(inp, lambda f: f.abs().sum(1) if p == 1 else f.pow(2).sum(1))
    return split_by_group(inp, np.sqrt(total) if p == 2 else total)


@register_method("l1", "L1 norm of each channel's weights across its group (Li et al., 2017)", config=MagnitudeConfig)
def l1(inp: ScoreInput) -> dict[int, np.ndarray]:
    return magnitude_scores(inp, 1)


@register_method("l2", "L2 norm of each channel's weights across its group", config=MagnitudeConfig)
def l2(inp: ScoreInput) -> dict[int, np.ndarray]:
    return magnitude_scores(inp, 2)


@register_method("random", "uniformly random channel scores (seed=0 by default): the sanity baseline",
                 config=RandomConfig)
def random_scores(inp: ScoreInput) -> dict[int, np.ndarray]:
    gen = torch.Generator().manual_seed(inp.config.seed + inp.step)
    return {g.id: torch.rand(g.size, generator=gen, dtype=torch.float64).numpy() for g in inp.ga.groups}
