"""TAS's per-width BatchNorm (the official code's `ConvBNReLU.BNs`): one affine pair per candidate width.

The official search network gives each conv one BatchNorm per candidate width and mixes the two sampled
widths' normalised outputs with their Gumbel weights. BatchNorm normalises every channel on its own, so in
training mode the candidates differ only in their affine parameters: `MixedWidthNorm` normalises once and
applies `sum_k w_k gamma_k` and `sum_k w_k beta_k`, w being the group's current candidate weighting (the same
one the channel gates use; gradients reach the width logits through it as in the official code). Every
BatchNorm whose channels belong to a searched group is replaced in the gated copy; `collapse` writes the most
probable width's affine parameters (and the shared running statistics) back into the model's BatchNorms.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.analysis.analyse import GraphAnalysis


class WidthWeights(nn.Module):
    """The current (searched groups, candidates) weighting, shared by every MixedWidthNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: torch.Tensor | None = None

    def set(self, weights: torch.Tensor | None) -> None:
        self.weights = weights


class MixedWidthNorm(nn.Module):
    """A BatchNorm with one (gamma, beta) per candidate width of its channel group."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, holder: WidthWeights, row: int, choices: int) -> None:
        super().__init__()
        self.holder, self.row = [holder], row  # not a submodule: shared
        self.eps, self.momentum = bn.eps, bn.momentum
        self.weight = nn.Parameter(bn.weight.detach().clone().repeat(choices, 1))
        self.bias = nn.Parameter(bn.bias.detach().clone().repeat(choices, 1))
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.holder[0].weights
        k = self.weight.shape[0]
        mix = (w[self.row] if w is not None else torch.full((k,), 1.0 / k, device=x.device)).to(self.weight)
        factor = 0.0
        if self.training:
            self.num_batches_tracked += 1
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        y = F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training, factor, self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return y * (mix @ self.weight).view(shape) + (mix @ self.bias).view(shape)


def install_width_norms(gated: fx.GraphModule, ga: GraphAnalysis, gids: list[int], choices: int,
                        owner_of) -> tuple[WidthWeights, dict[str, MixedWidthNorm]]:
    """Replace every affine BatchNorm of a searched group in `gated`; `owner_of(module name)` gives the group
    id of its channels (or None)."""
    holder = WidthWeights()
    gated.add_module("fxprune_width_weights", holder)
    row_of = {g: i for i, g in enumerate(gids)}
    norms = {}
    for name, module in list(gated.named_modules()):
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not module.affine or \
                not module.track_running_stats:
            continue
        gid = owner_of(name)
        if gid not in row_of:
            continue
        norm = MixedWidthNorm(module, holder, row_of[gid], choices)
        parent, _, child = name.rpartition(".")
        setattr(gated.get_submodule(parent) if parent else gated, child, norm)
        norms[name] = norm
    return holder, norms


def collapse(norms: dict[str, MixedWidthNorm], choice: dict[int, int], gids: list[int], gm: nn.Module) -> None:
    """Write candidate `choice[gid]`'s affine parameters and the running statistics into `gm`'s BatchNorms."""
    with torch.no_grad():
        for name, norm in norms.items():
            bn = gm.get_submodule(name)
            k = choice[gids[norm.row]]
            bn.weight.copy_(norm.weight[k])
            bn.bias.copy_(norm.bias[k])
            bn.running_mean.copy_(norm.running_mean)
            bn.running_var.copy_(norm.running_var)
