"""First-order Taylor importance of channels, measured with soft masks over calibration batches.

Molchanov et al., "Pruning Convolutional Neural Networks for Resource Efficient Inference", ICLR 2017
(and "Importance Estimation for Neural Network Pruning", CVPR 2019, for whole groups): removing a channel
changes the loss by about |sum over its activations of activation x gradient|. fxprune measures exactly
that sum for every channel of every group at once: a soft mask (all ones) multiplies each consumer's input,
and the gradient of the loss with respect to a mask entry is the sum of activation x gradient over the
positions it scales. A channel read by several consumers (a residual stream) sums over all of them before
the absolute value is taken; the absolute values are averaged over `taylor_batches` batches of `data`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fxprune.rewrite.masks import insert_masks
from fxprune.train.losses import logits_of
from fxprune.methods.calibration import batches, require_data
from fxprune.methods.config import SeedOption
from fxprune.methods.scorers.magnitude import split_by_group
from fxprune.methods.registry import ScoreInput, register_method

DEFAULT_BATCHES = 16


@dataclass
class TaylorConfig(SeedOption):
    taylor_batches: int = DEFAULT_BATCHES  # calibration batches of `data` the importances are averaged over


@register_method("taylor", "|sum of activation x gradient| per channel over calibration batches "
                           "(Molchanov et al., 2017/2019); needs data", needs_data=True, config=TaylorConfig)
def taylor(inp: ScoreInput) -> dict[int, np.ndarray]:
    data = require_data(inp, "taylor", "the gradients come from calibration batches")
    n_batches = inp.config.taylor_batches
    masked = copy.deepcopy(inp.gm)
    arrays: dict[str, np.ndarray] = {}
    insert_masks(masked, inp.ga, inp.keep, soft=True, arrays=arrays)
    masks = dict(masked.named_parameters())
    for name, p in masks.items():
        p.requires_grad_(name in arrays)
    masked.eval()
    device = next(iter(masks.values())).device
    names = list(arrays)
    total, seen = np.zeros(int(inp.ga.offsets[-1])), 0
    for x, y in batches(data, n_batches, device):
        loss = F.cross_entropy(logits_of(masked(x)).float(), y)
        grads = torch.autograd.grad(loss, [masks[n] for n in names])
        per_channel = np.zeros_like(total)
        for name, g in zip(names, grads):
            pos, chan = inp.ga.channel_positions(arrays[name])
            np.add.at(per_channel, chan, g.detach().double().cpu().numpy()[pos])
        total += np.abs(per_channel)
        seen += 1
    if not seen:
        raise ValueError("method 'taylor' got no batches from data: the data iterable is empty.")
    return split_by_group(inp, total / seen)
