"""Network slimming: train with an L1 penalty on the norm layers' scales, then keep the large scales.

Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017. A sparsity
phase trains the model with `sparsity` x sum|gamma| added to the loss over the scale (`weight`) of every
BatchNorm / GroupNorm / LayerNorm / RMSNorm whose channels belong to a prunable group (the paper uses 1e-4
for VGG and 1e-5 for ResNet / DenseNet on CIFAR). A channel's score is the sum of |gamma| over the norm
scales that carry it (a residual stream: all the BNs feeding it).

Groups without a norm scale (a Linear feeding a Linear, a conv without BN): slimming has no signal for
them, so they are scored by the L1 norm of their weights, exactly as method "l1" does; global selection
compares group-normalised scores, so such groups still compete by relative importance. The sparsity
phase trains the traced copy in place: the slim model starts from the sparsity-trained weights.

Options: `sparsity` (default 1e-4), `sparsity_epochs` (default 10; 0 selects by the current scales of a
model you sparsity-trained yourself), `sparsity_train` (a TrainConfig for the phase; its `epochs` is
replaced by `sparsity_epochs`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch.fx as fx
from torch import nn

from fxprune.methods.scorers.magnitude import magnitude_scores, param_channel_scores, split_by_group
from fxprune.methods.registry import ScoreInput, register_method
from fxprune.methods.calibration import require_data
from fxprune.methods.config import SeedOption

if TYPE_CHECKING:
    from fxprune.train import TrainConfig

NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
DEFAULT_SPARSITY = 1e-4
DEFAULT_EPOCHS = 10


@dataclass
class SlimmingConfig(SeedOption):
    sparsity: float = DEFAULT_SPARSITY  # lambda of the L1 penalty on the norm scales
    sparsity_epochs: int = DEFAULT_EPOCHS  # 0: select by the current scales (no sparsity phase)
    sparsity_train: TrainConfig | None = None  # the phase's TrainConfig (its epochs: sparsity_epochs)


def norm_scales(gm: fx.GraphModule, labelled: set[str]) -> dict[str, nn.Parameter]:
    """{qualname: scale} of every affine norm layer whose scale carries channels of some group."""
    out = {}
    for name, mod in gm.named_modules():
        w = getattr(mod, "weight", None)
        qual = f"{name}.weight" if name else "weight"
        if isinstance(mod, NORM_TYPES) and isinstance(w, nn.Parameter) and qual in labelled:
            out[qual] = w
    return out


def sparsity_train(inp: ScoreInput) -> None:
    """The sparsity phase: train `inp.gm` in place with the L1 penalty on its norm scales."""
    from fxprune.train import Trainer, TrainConfig

    cfg = inp.config
    epochs = cfg.sparsity_epochs
    if epochs <= 0 or inp.step > 0:
        return
    data = require_data(inp, "slimming", "its sparsity phase trains with an L1 penalty on the norm scales; "
                                         "or pass sparsity_epochs=0 to select by the current scales")
    scales = list(norm_scales(inp.gm, set(inp.ga.analysis.params)).values())
    if not scales:
        return
    lam = cfg.sparsity
    base = cfg.sparsity_train or TrainConfig(progress=False)
    config = dataclasses.replace(base, epochs=epochs)
    Trainer(inp.gm, config, data, extra_loss=lambda _m: lam * sum(s.abs().sum() for s in scales)).fit()


def slimming(inp: ScoreInput) -> dict[int, np.ndarray]:
    scales = set(norm_scales(inp.gm, set(inp.ga.analysis.params)))
    by_group = split_by_group(inp, param_channel_scores(inp, lambda f: f.abs().sum(1), only=scales))
    fallback = [g.id for g in inp.ga.groups
                if not any(m.kind == "param" and m.name in scales for m in g.members)]
    if fallback:
        l1 = magnitude_scores(inp, 1)
        by_group.update({gid: l1[gid] for gid in fallback})
    return by_group


register_method("slimming", "|BN gamma| after a sparsity phase with an L1 penalty on norm scales "
                            "(Liu et al., ICCV 2017); needs data for the sparsity phase",
                prepare=sparsity_train, config=SlimmingConfig)(slimming)
