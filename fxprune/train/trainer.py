"""`Trainer`: the training loop shared by fine-tuning and learned pruning methods.

>>> import torch
>>> from fxprune.train import TrainConfig
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(64, 4, generator=g); y = (x[:, 0] > 0).long()
>>> data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
>>> net = torch.nn.Linear(4, 2)
>>> cfg = TrainConfig(epochs=3, lr=0.5, schedule="constant", progress=False)
>>> h = Trainer(net, cfg, data, eval_data=data).fit()
>>> h.records[-1].train_loss < h.records[0].train_loss, h.last_acc() > 90
(True, True)
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from fxprune.train import distributed as D
from fxprune.train.checkpoint import rng_state, save_atomic
from fxprune.train.config import Finetune, TrainConfig
from fxprune.train.evaluate import eval_sums
from fxprune.train.history import EpochRecord, TrainHistory
from fxprune.train.loop import Run, train_epoch
from fxprune.train.losses import LossFn, cross_entropy
from fxprune.train.optim import make_optimizer, make_scheduler
from fxprune.train.resume import resume_state
from fxprune.train.runtime import reinitialise, resolve_device, seed_everything, sized_len


class Trainer:
    """Train `model` on `train_data` following `config`, evaluating on `eval_data` when given.

    `train_data`/`eval_data`: any iterable of (x, y) batches (a DataLoader, fxprune's TensorLoader, a
    list); ``set_epoch(epoch)`` is called when the loader (or its sampler) has it. With `teacher`, the
    loss mixes cross entropy with Hinton distillation (``kd_alpha``, ``kd_temperature``); the teacher
    runs in eval mode without gradients and is put back as it was afterwards. ``extra_loss(model)`` is
    added to every step's loss; ``after_step(model, step)`` runs after every optimizer step (`step`
    counts from 0 over the whole run). ``loss_fn(logits, target)`` replaces the cross entropy.

    Under torch.distributed (torchrun) the model is wrapped in DistributedDataParallel, the data is
    sharded (``shard(rank, world_size)``, or a DistributedSampler), the metrics are global and rank 0
    writes the checkpoints. BatchNorm statistics stay per-rank as in plain DDP (rank 0's are broadcast
    before evaluation); convert with nn.SyncBatchNorm yourself for global statistics. Evaluation data
    with ``shard`` (or a DistributedSampler, which pads to equal shards) is split across ranks and the
    counts are summed; other evaluation data is evaluated whole on every rank. Outside torchrun (e.g.
    mp.spawn), pass `device` explicitly.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_data: Iterable,
                 eval_data: Iterable | None = None, *, teacher: nn.Module | None = None,
                 device: str | torch.device | None = None,
                 extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
                 after_step: Callable[[nn.Module, int], None] | None = None,
                 loss_fn: LossFn | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Trainer: model must be a torch.nn.Module, got {type(model).__name__}.")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer: config must be a TrainConfig (or Finetune), got {type(config).__name__}.")
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise TypeError(f"Trainer: teacher must be a torch.nn.Module or None, got {type(teacher).__name__}.")
        if isinstance(config, Finetune) and config.kd and teacher is None:
            raise ValueError("Finetune(kd=True) distils from the dense model, but no teacher was given. "
                             "Pass teacher=<the unpruned model> to the Trainer, or set kd=False.")
        for name, fn in (("extra_loss", extra_loss), ("after_step", after_step), ("loss_fn", loss_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"Trainer: {name} must be callable or None, got {type(fn).__name__}.")
        self.model, self.config = model, config
        self.train_data, self.eval_data, self.teacher = train_data, eval_data, teacher
        self.device = device
        self.extra_loss, self.after_step = extra_loss, after_step
        self.loss_fn = loss_fn or cross_entropy(config.label_smoothing)
        self.eval_loss_fn = loss_fn or cross_entropy()  # evaluation reports plain cross entropy

    def fit(self) -> TrainHistory:
        """Train for ``config.epochs`` epochs (resuming from ``checkpoint_dir/last.pt`` when allowed)."""
        cfg, model = self.config, self.model
        info = D.current()
        device = resolve_device(self.device, info.local_rank)
        seed_everything(cfg.seed)
        if getattr(cfg, "from_scratch", False):
            reinitialise(model)
        model.to(device)
        if cfg.channels_last and device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        train = self.train_data
        if D.active():
            train = D.shard(train, info.rank, info.world_size, "train_data")
        steps = self._steps_per_epoch(train)
        total = steps * cfg.epochs if steps is not None else None
        run = Run(cfg, model, model, device, make_optimizer(model.parameters(), cfg), None,
                  torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp == "fp16"),
                  self.loss_fn, None, self.extra_loss, self.after_step, steps, info.is_main, info.world_size)
        run.scheduler = make_scheduler(run.optimizer, cfg, total)
        start, history = resume_state(run, self._ckpt("last.pt"), total)
        was_training = model.training
        try:
            with self._teacher_on(device) as teacher:
                run.teacher = teacher
                run.net = self._wrap(model, device)
                self._epochs(run, train, start, history, total)
        finally:
            run.net = None
            model.train(was_training)
        if cfg.progress and info.is_main:
            print(history.summary_table())
        return history

    def _epochs(self, run: Run, train: Iterable, start: int, history: TrainHistory, total: int | None) -> None:
        cfg = self.config
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            sums, lr, train_s = train_epoch(run, train, epoch)
            loss_sum, correct, count = D.all_reduce_sum(sums).tolist()
            if count == 0:
                raise ValueError(f"train_data yielded no batches in epoch {epoch + 1}. Pass a non-empty loader.")
            if loss_sum != loss_sum or abs(loss_sum) == float("inf"):
                kept = self._ckpt("last.pt")
                raise FloatingPointError(
                    f"training diverged in epoch {epoch + 1}: the loss is {loss_sum / count}. Lower lr, set "
                    f"grad_clip, or use amp=None." + (f" {str(kept)!r} keeps the last good epoch." if kept else ""))
            ev = self._evaluate(run, epoch)
            rec = EpochRecord(epoch, lr, loss_sum / count, 100.0 * correct / count,
                              None if ev is None else ev[0], None if ev is None else ev[1],
                              time.perf_counter() - t0, count / max(train_s, 1e-9))
            best = history.best_acc()
            history.records.append(rec)
            self._checkpoint(run, epoch, history, total, best)
            if cfg.progress and run.is_main:  # one line per epoch (the bar itself is transient)
                tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {rec.train_loss:.4f} acc {rec.train_acc:.2f}"
                           + ("" if ev is None else f" eval_loss {ev[0]:.4f} eval_acc {ev[1]:.2f}")
                           + f" lr {lr:.3g} {rec.images_per_s:.0f} img/s {rec.seconds:.1f}s", file=sys.stdout)

    def _steps_per_epoch(self, train: object) -> int | None:
        n, cap = sized_len(train), self.config.max_steps
        if n == 0:
            raise ValueError("train_data has no batches (len() == 0). Pass a non-empty loader.")
        if n is None:
            return cap
        return n if cap is None else min(n, cap)

    def _evaluate(self, run: Run, epoch: int) -> tuple[float, float] | None:
        cfg = self.config
        if self.eval_data is None or ((epoch + 1) % cfg.eval_every and epoch + 1 != cfg.epochs):
            return None
        D.broadcast_buffers(run.model)
        data, reduce = self._eval_shard()
        cl = cfg.channels_last and run.device.type == "cuda"
        sums = eval_sums(run.model, data, run.device, amp=cfg.amp, loss_fn=self.eval_loss_fn, channels_last=cl)
        loss_sum, correct, count = (D.all_reduce_sum(sums) if reduce else sums).tolist()
        if count == 0:
            raise ValueError("eval_data yielded no batches. Pass a non-empty loader, or eval_data=None.")
        return loss_sum / count, 100.0 * correct / count

    def _eval_shard(self) -> tuple[Iterable, bool]:
        """(this rank's eval data, whether to sum the metrics over ranks). Data that cannot be sharded (or
        refuses to, e.g. a batch size that world_size does not divide) is evaluated whole on every rank."""
        if not (D.active() and D.can_shard(self.eval_data)):
            return self.eval_data, False
        info = D.current()
        try:
            return D.shard(self.eval_data, info.rank, info.world_size, "eval_data"), True
        except ValueError:
            return self.eval_data, False

    def _ckpt(self, name: str) -> Path | None:
        d = self.config.checkpoint_dir
        return None if d is None else Path(d) / name

    def _checkpoint(self, run: Run, epoch: int, history: TrainHistory, total: int | None,
                    best: float | None) -> None:
        path = self._ckpt("last.pt")
        if path is None:
            return
        if run.is_main:
            state = {"format": 1, "epoch": epoch, "step": run.step, "total_steps": total,
                     "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                     "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
                     "history": history.to_dict(), "rng": rng_state(run.device),
                     "config": self.config.to_dict()}
            save_atomic(state, path)
            acc = history.records[-1].eval_acc
            if acc is not None and (best is None or acc > best):
                save_atomic({"epoch": epoch, "eval_acc": acc, "model": state["model"]}, self._ckpt("best.pt"))
        D.barrier()

    def _wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not D.active():
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    @contextlib.contextmanager
    def _teacher_on(self, device: torch.device) -> Iterator[nn.Module | None]:
        """The teacher on `device` in eval mode; its device and mode are restored afterwards."""
        teacher = self.teacher
        if teacher is None:
            yield None
            return
        first = next(iter(teacher.parameters()), None)
        home, was_training = (first.device if first is not None else None), teacher.training
        teacher.to(device).eval()
        try:
            yield teacher
        finally:
            teacher.train(was_training)
            if home is not None:
                teacher.to(home)
