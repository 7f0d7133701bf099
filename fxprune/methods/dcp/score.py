"""DCP's channel score as in the paper: the Frobenius norm of the gradient w.r.t. a channel's weights.

The paper ranks input channel k of a layer by ||dL/dW[:, k]||_F, measured with the weights of the channels
not selected yet set to zero and the input complete. In the masked network, a consumer module's input mask
switches the channel off instead; so for every consumer *module* of the group whose weight carries the
group's channels (a conv / linear input dimension, found through the analysis' parameter labels), the
input mask is switched on for the group's channels and the weights of the channels that are off are zeroed
for the measurement (the forward pass is the same), then restored. Consumers without such a weight (a
functional matmul, norms) keep their mask and do not contribute to the score. Gradients are summed over
the calibration batches before the norm is taken, as in the official code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from fxprune.analysis.analyse import GraphAnalysis
from fxprune.methods.search.dist import average_tensors, mean_over_ranks


@dataclass
class WeightSlot:
    param: nn.Parameter
    dim: int
    pos: np.ndarray  # positions along dim
    chan: np.ndarray  # the global channel each position carries


def weight_slots(pruned: fx.GraphModule, ga: GraphAnalysis, info, gid: int) -> tuple[list[str], list[WeightSlot]]:
    """(masks to switch on, weights to measure) of group `gid`; empty when it has no consumer module weight."""
    params = dict(pruned.named_parameters())
    consumer = {(m.name, m.dim) for m in ga.groups[gid].members if m.kind == "param" and m.role == "consumer"}
    masks, slots, seen = [], [], set()
    for name in info.group_masks.get(gid, []):
        found = [(q, d) for mod in info.modules.get(name, []) for q, d in sorted(consumer) if q == f"{mod}.weight"]
        if not found:
            continue
        masks.append(name)
        for q, d in found:
            if (q, d) in seen or q not in params or d not in ga.analysis.params.get(q, {}):
                continue
            seen.add((q, d))
            pos, chan = ga.channel_positions(ga.analysis.params[q][d])
            slots.append(WeightSlot(params[q], d, pos, chan))
    return masks, slots


def weight_gradient_scores(seg, masks: list[str], slots: list[WeightSlot], state: np.ndarray, off: int,
                           size: int, lam: float, write) -> tuple[np.ndarray, float]:
    """sqrt(sum of squared summed-over-batches weight gradients) per channel of the group; and the loss."""
    on = state.copy()
    on[off:off + size] = 1.0
    write(seg.info, masks, on)
    saved = [s.param.detach().clone() for s in slots]
    for s in slots:
        alive = np.ones(s.param.shape[s.dim])
        np.multiply.at(alive, s.pos, state[s.chan])
        dead = torch.as_tensor(np.nonzero(alive == 0)[0], device=s.param.device)
        with torch.no_grad():
            s.param.index_fill_(s.dim, dead, 0.0)
        s.param.requires_grad_(True)
    acc = [torch.zeros_like(s.param) for s in slots]
    loss_sum = 0.0
    try:
        for b in range(len(seg.calib)):
            loss = seg.loss(b, lam)
            grads = torch.autograd.grad(loss, [s.param for s in slots], allow_unused=True)
            loss_sum += float(loss.detach())
            for a, g in zip(acc, grads):
                if g is not None:
                    a += g.detach()
    finally:
        with torch.no_grad():
            for s, v in zip(slots, saved):
                s.param.copy_(v)
                s.param.requires_grad_(False)
        write(seg.info, masks, state)
    average_tensors(acc)  # a distributed search: the gradients of every rank's batches
    loss_sum = mean_over_ranks(loss_sum)
    total = np.zeros(size)
    for s, a in zip(slots, acc):
        other = [d for d in range(a.dim()) if d != s.dim]
        sq = (a.double().pow(2).sum(other) if other else a.double().pow(2)).cpu().numpy()
        inside = (s.chan >= off) & (s.chan < off + size)
        np.add.at(total, s.chan[inside] - off, sq[s.pos[inside]])
    return np.sqrt(total), loss_sum / len(seg.calib)
