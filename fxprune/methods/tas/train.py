"""TAS's search loop: alternating weight and architecture updates on a gated copy of the traced module.

Batches alternate: even batches update the weights (SGD with Nesterov momentum, cosine learning rate) on
the cross-entropy of a sampled architecture; odd batches update the width distributions (Adam) on the
cross-entropy of a freshly sampled architecture plus `flops_weight` x the cost loss of the expected cost
(`cost_loss`). The Gumbel temperature anneals from tau_max to tau_min over the search.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice

import torch
import torch.fx as fx
import torch.nn.functional as F
from tqdm.auto import tqdm

from fxprune.train.losses import logits_of
from fxprune.methods.calibration import batches_per_epoch
from fxprune.methods.search.gates import ChannelGates
from fxprune.methods.search.dist import average_gradients
from fxprune.methods.search.checkpoint import SearchCheckpoint
from fxprune.methods.tas.depth import DepthSearch
from fxprune.methods.tas.norms import WidthWeights
from fxprune.methods.search.widths import WidthSpace
from fxprune.methods.tas.space import ExpectedCost, sample_two


@dataclass
class SearchConfig:
    epochs: int = 1
    batches: int | None = None  # per epoch (None: the whole data iterable)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    arch_lr: float = 1e-3
    arch_weight_decay: float = 1e-3
    flops_weight: float = 2.0
    tolerance: float = 0.05
    tau_max: float = 5.0
    tau_min: float = 0.1
    tau_schedule: str = "cosine"
    samples: int = 2
    per_width_bn: bool = True  # one BatchNorm affine pair per candidate width (the official code)
    progress: bool = True


def tau_at(cfg: SearchConfig, progress: float) -> float:
    """Temperature at `progress` in [0, 1]: cosine (official code) or linear (paper) from tau_max to tau_min."""
    if cfg.tau_schedule == "cosine":
        return cfg.tau_min + (cfg.tau_max - cfg.tau_min) * (1 + math.cos(math.pi * progress)) / 2
    if cfg.tau_schedule == "linear":
        return cfg.tau_max - (cfg.tau_max - cfg.tau_min) * progress
    raise ValueError(f"tas_tau_schedule={cfg.tau_schedule!r}: use 'cosine' (official code) or 'linear' (paper).")


def cost_loss(expected: torch.Tensor, current: float, target: float, tolerance: float) -> torch.Tensor:
    """TAS's cost loss: -log E when the argmax architecture's cost `current` is below target x (1 - tolerance),
    +log E when it is above the target, else 0 (the official `get_flop_loss`)."""
    if current < target * (1 - tolerance):
        return -torch.log(expected)
    if current > target:
        return torch.log(expected)
    return expected.new_zeros(())


def one_hot_argmax(alpha: torch.Tensor) -> torch.Tensor:
    return F.one_hot(alpha.argmax(1), alpha.shape[1]).to(alpha.dtype)


def search(gated: fx.GraphModule, gates: ChannelGates, space: WidthSpace, expected: ExpectedCost,
           alpha: torch.nn.Parameter, data, target: float, fixed: float, cfg: SearchConfig,
           generator: torch.Generator, checkpoint: SearchCheckpoint | None = None,
           depth: DepthSearch | None = None, width_weights: WidthWeights | None = None) -> list[dict]:
    """Run the search in place (the weights of `gated`, `alpha`); returns a per-epoch log. With a
    `checkpoint`, the state is saved after every epoch and a saved search continues where it stopped."""
    device = alpha.device
    weights = [p for p in gated.parameters() if p.requires_grad]
    w_opt = torch.optim.SGD(weights, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                            nesterov=cfg.momentum > 0)
    arch = [alpha] + (depth.betas if depth is not None else [])
    a_opt = torch.optim.Adam(arch, lr=cfg.arch_lr, betas=(0.5, 0.999), weight_decay=cfg.arch_weight_decay)
    per_epoch = batches_per_epoch(data, cfg.batches, "tas", "tas_batches")
    total = max(cfg.epochs * per_epoch, 1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=max(total // 2, 1))
    parts = {"gated": gated, "w_opt": w_opt, "a_opt": a_opt, "sched": sched}
    log, step, start = _resume(checkpoint, parts, arch, generator)
    gated.train()
    bar = tqdm(total=total, initial=step, desc="tas search", leave=False, disable=not cfg.progress)
    for epoch in range(start, cfg.epochs):
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)  # the same batches whether or not the search was resumed
        sums = {"w_loss": 0.0, "a_loss": 0.0, "n_w": 0, "n_a": 0}
        for i, (x, y) in enumerate(islice(iter(data), per_epoch)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            tau = tau_at(cfg, step / max(total - 1, 1))
            if i % 2 == 0:
                _set(gates, width_weights, space, sample_two(alpha.detach(), tau, cfg.samples, generator))
                if depth is not None:
                    depth.sample(tau, cfg.samples, generator, grad=False)
                loss = F.cross_entropy(logits_of(gated(x)).float(), y)
                w_opt.zero_grad(set_to_none=True)
                loss.backward()
                average_gradients(weights)
                w_opt.step()
                sched.step()
                sums["w_loss"] += float(loss.detach())
                sums["n_w"] += 1
            else:
                _set(gates, width_weights, space, sample_two(alpha, tau, cfg.samples, generator))
                if depth is not None:
                    depth.sample(tau, cfg.samples, generator, grad=True)
                ce = F.cross_entropy(logits_of(gated(x)).float(), y)
                exp_cost = expected(space.flat(F.softmax(alpha, dim=1)), _active(depth, argmax=False)) + fixed
                with torch.no_grad():
                    current = _argmax_cost(expected, space, alpha, depth) + fixed
                loss = ce + cfg.flops_weight * cost_loss(exp_cost, current, target, cfg.tolerance)
                a_opt.zero_grad(set_to_none=True)
                w_opt.zero_grad(set_to_none=True)
                loss.backward()
                average_gradients(arch)
                a_opt.step()
                sums["a_loss"] += float(loss.detach())
                sums["n_a"] += 1
            step += 1
            bar.update(1)
            bar.set_postfix(tau=f"{tau:.2f}")
        with torch.no_grad():
            current = _argmax_cost(expected, space, alpha, depth) + fixed
        log.append({"epoch": epoch + 1, "weight_loss": sums["w_loss"] / max(sums["n_w"], 1),
                    "arch_loss": sums["a_loss"] / max(sums["n_a"], 1), "argmax_cost_ratio": current / target})
        if checkpoint is not None:
            checkpoint.save({**{k: v.state_dict() for k, v in parts.items()},
                             "arch": [a.detach().cpu() for a in arch],
                             "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                             "log": log, "step": step, "epoch": epoch + 1})
    bar.close()
    gates.set(None)
    if width_weights is not None:
        width_weights.set(one_hot_argmax(alpha.detach()))
    if depth is not None:
        depth.gates.set(None)
    return log


def _set(gates: ChannelGates, width_weights: WidthWeights | None, space: WidthSpace, w: torch.Tensor) -> None:
    """The sampled (groups, candidates) weighting drives the channel gates and the per-width norms."""
    gates.set(space.flat(w))
    if width_weights is not None:
        width_weights.set(w)


def _active(depth: DepthSearch | None, argmax: bool) -> torch.Tensor | None:
    if depth is None:
        return None
    return depth.argmax_active() if argmax else depth.expected_active()


def _argmax_cost(expected: ExpectedCost, space: WidthSpace, alpha: torch.Tensor, depth: DepthSearch | None) -> float:
    """The cost of the most probable architecture (widths and depths)."""
    return float(expected(space.flat(one_hot_argmax(alpha)), _active(depth, argmax=True)))


def _resume(checkpoint: SearchCheckpoint | None, parts: dict, arch: list[torch.nn.Parameter],
            generator: torch.Generator) -> tuple[list[dict], int, int]:
    """Load a saved search into `parts`, the architecture parameters and the generators; (log, step, first
    epoch to run)."""
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is None:
        return [], 0, 0
    for name, part in parts.items():
        part.load_state_dict(saved[name])
    with torch.no_grad():
        for a, v in zip(arch, saved["arch"]):
            a.copy_(v)
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    return list(saved["log"]), int(saved["step"]), int(saved["epoch"])
