"""The uniform-width baseline: every group keeps the same fraction of its channels.

Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019: a uniformly thinner network trained
from scratch is a strong baseline that a pruning method has to beat. With a FLOPs or params budget the
common fraction is bisected until the model fits. Which channels are kept does not matter for training
from scratch (`Finetune(from_scratch=True)`); the lowest channel indices are kept, so the plan is the
same for every run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fxprune.methods.config import SeedOption
from fxprune.methods.registry import ScoreInput, register_method


@dataclass
class UniformConfig(SeedOption):
    """uniform takes no options."""


@register_method("uniform", "every group keeps the same fraction (Liu et al., ICLR 2019): the thin-net baseline",
                 scope="local", config=UniformConfig)
def uniform(inp: ScoreInput) -> dict[int, np.ndarray]:
    return {g.id: np.arange(g.size, 0, -1, dtype=np.float64) for g in inp.ga.groups}
