"""One epoch of training: forward (with optional distillation), backward, optimizer and lr steps."""
from __future__ import annotations

import itertools
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from fxprune.train.config import TrainConfig
from fxprune.train.losses import LossFn, correct_count, kd_loss, logits_of
from fxprune.train.runtime import autocast, set_epoch, split_batch, to_device

#: progress-bar numbers are refreshed (one device sync) every this many steps
BAR_EVERY = 10


@dataclass
class Run:
    """Everything one `Trainer.fit` call trains with (`net` is `model`, or its DDP wrapper)."""

    config: TrainConfig
    model: nn.Module
    net: nn.Module | None
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    loss_fn: LossFn
    teacher: nn.Module | None
    extra_loss: Callable[[nn.Module], torch.Tensor] | None
    after_step: Callable[[nn.Module, int], None] | None
    steps_per_epoch: int | None
    is_main: bool
    world_size: int = 1
    step: int = 0


def _loss(run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = run.config
    with autocast(run.device, cfg.amp):
        logits = logits_of(run.net(x))
        loss = run.loss_fn(logits, y)
        if run.teacher is not None:
            with torch.no_grad():
                t_logits = logits_of(run.teacher(x))
            kd = kd_loss(logits, t_logits.detach(), cfg.kd_temperature)
            loss = (1.0 - cfg.kd_alpha) * loss + cfg.kd_alpha * kd
    loss = loss.float()
    if run.extra_loss is not None:
        loss = loss + run.extra_loss(run.model)
    return loss, logits.detach()


def _schedule_step(run: Run) -> None:
    """Advance the lr schedule. With fp16 the scaler skips the first step when it overflows, which makes
    torch warn on the scheduler's first step; that warning is silenced there only (a catch_warnings
    on every step would reset python's once-per-location warning registry)."""
    if not (run.scaler.is_enabled() and getattr(run.scheduler, "_step_count", 0) <= 1):
        run.scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        run.scheduler.step()


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch (x, y); returns the detached loss and logits."""
    cfg, opt = run.config, run.optimizer
    loss, logits = _loss(run, x, y)
    opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if cfg.grad_clip is not None:
        run.scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.scaler.step(opt)
    run.scaler.update()
    _schedule_step(run)
    if run.after_step is not None:
        run.after_step(run.model, run.step)
    run.step += 1
    return loss.detach(), logits


def train_epoch(run: Run, data: Iterable, epoch: int) -> tuple[torch.Tensor, float, float]:
    """Train one epoch; returns ([loss sum, correct, samples] on this rank, the last lr, seconds)."""
    cfg = run.config
    run.model.train()
    set_epoch(data, epoch)
    cl = cfg.channels_last and run.device.type == "cuda"
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)
    show = cfg.progress and run.is_main
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=None if show else True, dynamic_ncols=True)
    lr, t0 = run.optimizer.param_groups[0]["lr"], time.perf_counter()
    with bar:
        for i, batch in enumerate(itertools.islice(data, cfg.max_steps)):
            x, y = split_batch(batch, "train_data")
            x, y = to_device(x, run.device, cl), to_device(y, run.device)
            lr = run.optimizer.param_groups[0]["lr"]
            loss, logits = train_step(run, x, y)
            n = len(y)
            sums[0] += loss.double() * n
            sums[1] += correct_count(logits, y)
            sums[2] += n
            bar.update()
            if not bar.disable and (i + 1) % BAR_EVERY == 0:
                loss_sum, correct, count = sums.tolist()
                bar.set_postfix({"loss": f"{loss_sum / count:.4f}", "acc": f"{100 * correct / count:.2f}",
                                 "img/s": f"{count * run.world_size / (time.perf_counter() - t0):.0f}",
                                 "lr": f"{lr:.3g}"})
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    return sums, lr, time.perf_counter() - t0
