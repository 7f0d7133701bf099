"""DCP phase 2: the segments between auxiliary points and the greedy channel selection of one group.

The pruned network is a copy of the traced model with a soft mask at every consumer input
(`insert_masks(..., soft=True)`); a channel's state (1 kept, 0 removed) sets the mask entries that carry
it (the product over the channels a position is made of). The gradient of the segment loss with respect
to a mask entry at value 0 is sum(input channel x gradient at the consumer input): the first-order change
of the loss when the channel is added back with its current weights (see docs/methods/dcp.md on how this
relates to the paper's Frobenius norm of the weight gradient). It is accumulated over the calibration
batches (summed before the absolute value, as the official code sums gradients before the norm).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.analysis.analyse import GraphAnalysis
from fxprune.analysis.rules.masked import apply_mask
from fxprune.tracing.meta import shape_of
from fxprune.train.losses import logits_of
from fxprune.methods.dcp.heads import with_outputs
from fxprune.methods.dcp.score import weight_gradient_scores, weight_slots
from fxprune.methods.search.dist import average_gradients, sum_over_ranks, world_size


@dataclass
class MaskInfo:
    """Every soft mask: its parameter, (position, channel) pairs and the graph index of its consumer."""

    params: dict[str, nn.Parameter]
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]
    last_use: dict[int, int]  # group id -> graph index of its last consumer
    group_masks: dict[int, list[str]]
    consumers: dict[int, list[str]]  # group id -> the consumer ops (conv, linear, matmul) reading it
    modules: dict[str, list[str]]  # mask name -> qualnames of the modules reading the masked tensor


def mask_groups(pruned: fx.GraphModule, ga: GraphAnalysis, arrays: dict, counts: dict[int, int]) -> MaskInfo:
    index = {n: i for i, n in enumerate(pruned.graph.nodes)}
    where, ops, modules = {}, {}, {}
    for n in pruned.graph.nodes:
        if n.op == "get_attr" and n.target in arrays:
            where[n.target] = max(index[u] for u in n.users)
            readers = [c for u in n.users if u.target is apply_mask for c in u.users]
            ops[n.target] = [c.name for c in readers if _is_tensor(c)]
            modules[n.target] = [str(c.target) for c in readers if c.op == "call_module"]
    params = dict(pruned.named_parameters())
    pairs = {name: ga.channel_positions(arr) for name, arr in arrays.items()}
    last_use: dict[int, int] = {}
    group_masks: dict[int, list[str]] = {}
    consumers: dict[int, list[str]] = {}
    for name, (pos, chan) in pairs.items():
        gids = np.unique(ga.group_of(chan))
        for gid in gids.tolist():
            if gid in counts:
                last_use[gid] = max(last_use.get(gid, -1), where[name])
                group_masks.setdefault(gid, []).append(name)
                consumers.setdefault(gid, [])
                consumers[gid] += [c for c in ops[name] if c not in consumers[gid]]
    return MaskInfo({k: params[k] for k in arrays}, pairs, last_use, group_masks, consumers, modules)


def _is_tensor(n: fx.Node) -> bool:
    shape = shape_of(n)
    return isinstance(shape, (tuple, torch.Size)) and all(isinstance(d, int) for d in shape)


@dataclass
class Segment:
    """The networks up to one point (or the whole networks), the point's head, and the groups pruned there."""

    pruned: fx.GraphModule
    dense: fx.GraphModule
    end: str | None  # the point's node; None: the network's output (the final classifier's loss)
    head: nn.Module | None
    groups: list[int]
    info: MaskInfo
    calib: list

    @staticmethod
    def build(pruned: fx.GraphModule, dense: fx.GraphModule, points: list[str], heads: nn.ModuleList | None,
              calib: list, info: MaskInfo) -> list[Segment]:
        index = {n.name: i for i, n in enumerate(pruned.graph.nodes)}
        ends = [index[p] for p in points] + [len(index)]
        out, start = [], -1
        for s, end in enumerate(ends):
            final = s == len(points)
            gids = sorted((g for g, i in info.last_use.items() if start < i <= end), key=lambda g: info.last_use[g])
            head = None if final or heads is None else heads[s]
            out.append(Segment(pruned, dense, None if final else points[s], head, gids,
                               info, calib))
            start = end
        return out

    def loss_for(self, gid: int, reconstruct: str) -> GroupLoss:
        """The loss used to select group `gid`: the point's CE + MSE at the group's consumer outputs
        (reconstruct="layer", the paper) or at the point itself (reconstruct="point")."""
        names = self.info.consumers.get(gid, []) if reconstruct == "layer" else []
        net = with_outputs(self.pruned, names, self.end)
        ref = with_outputs(self.dense, names, self.end)
        with torch.no_grad():
            targets = [_split(ref(x), self.end) for x, _ in self.calib]
        return GroupLoss(net, self.head, self.end, targets, self.info, self.calib)


@dataclass
class GroupLoss:
    net: fx.GraphModule
    head: nn.Module | None
    end: str | None
    targets: list[tuple[torch.Tensor, list[torch.Tensor]]]
    info: MaskInfo
    calib: list

    def loss(self, b: int, lam: float) -> torch.Tensor:
        x, y = self.calib[b]
        f, feats = _split(self.net(x), self.end)
        f_ref, feats_ref = self.targets[b]
        pairs = list(zip(feats, feats_ref)) or [(f, f_ref)]
        mse = sum(F.mse_loss(a.float(), r.float()) for a, r in pairs) / len(pairs)
        if self.end is not None and self.head is None:  # untrained heads (dcp_head_epochs=0): no CE there
            return lam * mse
        logits = logits_of(f) if self.head is None else self.head(f)
        return F.cross_entropy(logits.float(), y) + lam * mse


def _split(out, end: str | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    first, feats = out
    return (first if end else logits_of(first)), list(feats)


def _write(info: MaskInfo, names: list[str], state: np.ndarray) -> None:
    for name in names:
        pos, chan = info.pairs[name]
        p = info.params[name]
        m = np.ones(p.shape[0])
        np.multiply.at(m, pos, state[chan])
        with torch.no_grad():
            p.copy_(torch.as_tensor(m, dtype=p.dtype, device=p.device))


def _consumer_params(pruned: fx.GraphModule, ga: GraphAnalysis, gid: int) -> list[nn.Parameter]:
    params = dict(pruned.named_parameters())
    names = {m.name for m in ga.groups[gid].members if m.kind == "param" and m.role == "consumer"}
    return [params[n] for n in sorted(names) if n in params]


def _gradients(seg: GroupLoss, names: list[str], off: int, size: int, lam: float) -> tuple[np.ndarray, float]:
    """Per-channel gradient of the segment loss w.r.t. the group's mask entries, summed over the batches."""
    info, masks = seg.info, [seg.info.params[n] for n in names]
    for m in masks:
        m.requires_grad_(True)
    total, loss_sum = np.zeros(size), 0.0
    for b in range(len(seg.calib)):
        loss = seg.loss(b, lam)
        grads = torch.autograd.grad(loss, masks, allow_unused=True)
        loss_sum += float(loss.detach())
        for name, g in zip(names, grads):
            if g is None:
                continue
            pos, chan = info.pairs[name]
            inside = (chan >= off) & (chan < off + size)
            np.add.at(total, chan[inside] - off, g.detach().double().cpu().numpy()[pos[inside]])
    for m in masks:
        m.requires_grad_(False)
    *total, loss_sum = sum_over_ranks([*total.tolist(), loss_sum])  # a distributed search: every rank's batches
    return np.asarray(total) / world_size(), loss_sum / len(seg.calib) / world_size()


def _optimise(seg: GroupLoss, params: list[nn.Parameter], opt: torch.optim.Optimizer | None, steps: int,
              lam: float, at: int) -> None:
    if opt is None or steps <= 0:
        return
    for p in params:
        p.requires_grad_(True)
    for s in range(steps):
        opt.zero_grad(set_to_none=True)
        seg.loss((at + s) % len(seg.calib), lam).backward()
        average_gradients(params)
        opt.step()
    for p in params:
        p.requires_grad_(False)
        p.grad = None


def greedy_group(pruned: fx.GraphModule, ga: GraphAnalysis, state: np.ndarray, segment: Segment, gid: int,
                 target: int, o: Any, banned: set[int] = frozenset()) -> list[int]:
    """Select `target` channels of group `gid`: start from its frozen channels, repeatedly add the channel(s)
    with the largest |accumulated gradient|, then take `dcp_steps` SGD steps on the group's consumer
    weights. With `dcp_adaptive`, stop early when the relative loss improvement falls below `dcp_epsilon`.
    `banned` channels (removed by an earlier round of iterative pruning) are never selected; `o` is the
    method's DcpConfig."""
    g, off = ga.groups[gid], int(ga.offsets[gid])
    names = segment.info.group_masks.get(gid, [])
    chosen = sorted(set(g.frozen))
    state[off:off + g.size] = 0.0
    state[[off + c for c in chosen]] = 1.0
    _write(segment.info, names, state)
    seg = segment.loss_for(gid, o.dcp_reconstruct)
    params = _consumer_params(pruned, ga, gid)
    opt = torch.optim.SGD(params, lr=o.dcp_lr, momentum=0.9) if params else None
    lam, prev, it = o.dcp_lambda, None, 0
    wmasks, slots = weight_slots(pruned, ga, segment.info, gid) if o.dcp_score == "weight" else ([], [])
    target = min(max(target, 1), g.size - len(set(banned) - set(chosen)))
    while len(chosen) < target:
        if slots:
            grad, loss = weight_gradient_scores(seg, wmasks, slots, state, off, g.size, lam, _write)
        else:
            grad, loss = _gradients(seg, names, off, g.size, lam)
        gain = None if prev is None else (prev - loss) / max(abs(prev), 1e-12)  # the last addition's
        if o.dcp_adaptive and gain is not None and gain < o.dcp_epsilon:
            break
        prev = loss
        score = np.abs(grad)
        score[chosen] = -np.inf
        score[sorted(banned)] = -np.inf
        order = np.lexsort((np.arange(g.size), -score))  # ties: the lower index first
        add = order[:min(o.dcp_chunk, target - len(chosen))].tolist()
        chosen = sorted(chosen + add)
        state[[off + c for c in add]] = 1.0
        _write(seg.info, names, state)
        _optimise(seg, params, opt, o.dcp_steps, lam, it)
        it += o.dcp_steps
    return chosen
