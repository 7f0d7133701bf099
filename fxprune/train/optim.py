"""Optimizer and learning-rate schedule registries.

Each registry maps a name to a small factory, so adding an optimizer or a schedule is one entry, not a
new branch. Schedules are per optimizer step: a function ``(step, total, warmup_steps) -> factor`` that
multiplies the configured ``lr``.

>>> import torch
>>> from fxprune.train import TrainConfig
>>> cfg = TrainConfig(lr=0.1, schedule="onecycle", warmup=0.25)
>>> opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
>>> sched = make_scheduler(opt, cfg, total_steps=8)
>>> lrs = []
>>> for _ in range(8):
...     lrs.append(opt.param_groups[0]["lr"]); opt.step(); sched.step()
>>> round(lrs[0], 4), round(max(lrs), 4), lrs.index(max(lrs)), lrs[-1] < 0.01
(0.004, 0.1, 2, True)
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fxprune.train.config import TrainConfig

ScheduleFn = Callable[[int, int, int], float]

#: onecycle starts at lr / ONECYCLE_DIV and ends at lr / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV), as OneCycleLR
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4


def _cos(start: float, end: float, frac: float) -> float:
    return end + (start - end) * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0))) / 2.0


def onecycle(step: int, total: int, warmup: int) -> float:
    """Linear warm-up from 1/25 to 1 over `warmup` steps, then cosine anneal to 1/(25 * 1e4)."""
    start, end = 1.0 / ONECYCLE_DIV, 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
    if step < warmup:
        return start + (1.0 - start) * step / warmup
    return _cos(1.0, end, (step - warmup) / max(total - 1 - warmup, 1))


def cosine(step: int, total: int, warmup: int) -> float:
    """Optional linear warm-up (from 1/(warmup+1)) to 1, then cosine anneal to 0 at the last step."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return _cos(1.0, 0.0, (step - warmup) / max(total - warmup, 1))


def constant(step: int, total: int, warmup: int) -> float:
    """The configured lr at every step (warm-up ignored)."""
    return 1.0


SCHEDULES: dict[str, ScheduleFn] = {"onecycle": onecycle, "cosine": cosine, "constant": constant}
#: schedules that need the total number of steps up front (a sized loader or max_steps)
NEEDS_TOTAL = frozenset({"onecycle", "cosine"})


def _sgd(params: Iterable, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def _adamw(params: Iterable, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


OPTIMIZERS: dict[str, Callable[[Iterable, TrainConfig], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adamw": _adamw,
}


def make_optimizer(params: Iterable, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` names, over `params` (weight decay applies to every parameter)."""
    return OPTIMIZERS[cfg.optimizer](params, cfg)


def _factor(step: int, *, name: str, total: int, warmup: int) -> float:
    return SCHEDULES[name](step, total, warmup)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   total_steps: int | None) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following `cfg.schedule` over `total_steps` optimizer steps."""
    if total_steps is None and cfg.schedule in NEEDS_TOTAL:
        raise ValueError(
            f"schedule '{cfg.schedule}' needs the number of steps up front, but the training data has no "
            f"len(). Pass a sized loader, set TrainConfig.max_steps, or use schedule='constant'.")
    total = max(int(total_steps or 1), 1)
    warmup = int(round(cfg.warmup * total)) if cfg.schedule != "constant" else 0
    fn = functools.partial(_factor, name=cfg.schedule, total=total, warmup=min(warmup, total - 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
