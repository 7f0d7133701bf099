"""FPGM: prune the filters nearest the geometric median of their layer.

He et al., "Filter Pruning via Geometric Median for Deep Convolutional Neural Networks Acceleration",
CVPR 2019. A filter close to the geometric median of its layer's filters can be represented by the others,
so it is redundant. As in the official code, the distance of a filter to the median is approximated by the
sum of its Euclidean distances to all other filters of the layer. Made generic over channel groups: every
weight (2-D or more) that carries a group's channels contributes the distance sums of its slices along the
channel dim (producer filters and consumer input slices alike), added up per channel; a channel with a
large total is far from the median and kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fxprune.methods.config import SeedOption
from fxprune.methods.scorers.magnitude import param_channel_scores, split_by_group
from fxprune.methods.registry import ScoreInput, register_method


def distance_sums(flat: torch.Tensor) -> torch.Tensor:
    """Sum of Euclidean distances from each row to every other row.

    >>> distance_sums(torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)).tolist()
    [4.0, 3.0, 5.0]
    """
    return torch.cdist(flat, flat).sum(1)


@dataclass
class FPGMConfig(SeedOption):
    fpgm_norm: float = 2.0  # the p of the distances between filters (2: Euclidean, as the paper)


@register_method("fpgm", "distance to the geometric median of the layer's filters (He et al., CVPR 2019)",
                 config=FPGMConfig)
def fpgm(inp: ScoreInput) -> dict[int, np.ndarray]:
    norm = inp.config.fpgm_norm
    fn = distance_sums if norm == 2 else (lambda f: torch.cdist(f, f, p=float(norm)).sum(1))
    return split_by_group(inp, param_channel_scores(inp, fn, min_dim=2))
