"""Training configuration: `TrainConfig` and its fine-tuning flavour `Finetune`.

Every field is checked when the config is made, so a typo fails at once with a message that names the
field, the value and what is allowed:

>>> TrainConfig(epochs=2, lr=0.05).schedule
'onecycle'
>>> TrainConfig(optimizer="adam")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: TrainConfig.optimizer='adam' is not a known optimizer. Valid names: 'adamw', 'sgd' (add one ...
>>> Finetune().lr, Finetune().schedule
(0.01, 'cosine')
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

from fxprune.train.optim import OPTIMIZERS, SCHEDULES

AMP_MODES = ("bf16", "fp16", None)


def _fail(cfg: object, name: str, why: str) -> None:
    value = getattr(cfg, name)
    raise ValueError(f"{type(cfg).__name__}.{name}={value!r} {why}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _check_range(cfg: object, name: str, lo: float, hi: float, *, lo_open: bool = False,
                 hi_open: bool = False) -> None:
    v = getattr(cfg, name)
    ok = _is_num(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        _fail(cfg, name, f"must be a number in {lb}{lo}, {hi}{rb}.")


def _check_bools(cfg: object, names: tuple[str, ...]) -> None:
    for name in names:
        if not isinstance(getattr(cfg, name), bool):
            _fail(cfg, name, "must be True or False.")


def _check_choice(cfg: object, name: str, valid: dict, what: str, registry: str) -> None:
    v = getattr(cfg, name)
    if v not in valid:
        names = ", ".join(repr(k) for k in sorted(valid))
        _fail(cfg, name, f"is not a known {what}. Valid names: {names} (add one to fxprune.train.{registry}).")


@dataclass
class TrainConfig:
    """How to train: optimizer, lr schedule, precision, distillation, checkpoints and progress.

    ``lr`` is the peak lr for ``onecycle`` and the initial lr for ``cosine`` and ``constant``;
    ``warmup`` is a fraction of all optimizer steps. ``amp`` and ``channels_last`` only act on CUDA.
    With a teacher, loss = (1 - kd_alpha) * CE + kd_alpha * T^2 * KL(teacher_T || student_T).
    """

    epochs: int = 1
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float = 0.15
    label_smoothing: float = 0.0
    amp: str | None = "bf16"
    channels_last: bool = True
    grad_clip: float | None = None
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9
    seed: int = 0
    checkpoint_dir: str | None = None
    resume: bool = True
    progress: bool = True
    eval_every: int = 1
    max_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "eval_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                _fail(self, name, "must be an integer >= 1.")
        if self.max_steps is not None and (not _is_int(self.max_steps) or self.max_steps < 1):
            _fail(self, "max_steps", "must be None (whole epochs) or an integer >= 1.")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            _fail(self, "seed", "must be an integer in [0, 2**32) (numpy's seed range).")
        _check_range(self, "lr", 0.0, math.inf, lo_open=True, hi_open=True)
        _check_range(self, "momentum", 0.0, 1.0, hi_open=True)
        _check_range(self, "weight_decay", 0.0, math.inf, hi_open=True)
        _check_range(self, "warmup", 0.0, 1.0, hi_open=True)
        _check_range(self, "label_smoothing", 0.0, 1.0, hi_open=True)
        _check_range(self, "kd_temperature", 0.0, math.inf, lo_open=True, hi_open=True)
        _check_range(self, "kd_alpha", 0.0, 1.0)
        if self.grad_clip is not None:
            _check_range(self, "grad_clip", 0.0, math.inf, lo_open=True, hi_open=True)
        _check_bools(self, ("nesterov", "channels_last", "resume", "progress"))
        _check_choice(self, "optimizer", OPTIMIZERS, "optimizer", "OPTIMIZERS")
        _check_choice(self, "schedule", SCHEDULES, "schedule", "SCHEDULES")
        if self.amp not in AMP_MODES:
            _fail(self, "amp", "must be 'bf16', 'fp16' or None (full precision).")
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0:
            _fail(self, "nesterov", "needs momentum > 0 (SGD's Nesterov update uses the momentum buffer). "
                  "Set momentum > 0 or nesterov=False.")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, os.PathLike)):
            _fail(self, "checkpoint_dir", "must be None or a directory path (str or os.PathLike).")

    def to_dict(self) -> dict:
        """The fields as a plain dict (paths as strings), e.g. to store next to results."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if d.get("checkpoint_dir") is not None:
            d["checkpoint_dir"] = os.fspath(d["checkpoint_dir"])
        return d


@dataclass
class Finetune(TrainConfig):
    """Fine-tuning after pruning: TrainConfig plus what only fine-tuning needs.

    Defaults suit recovering a pruned net that starts from good weights: SGD at lr 0.01 with a cosine
    anneal and a short warm-up (the usual recipe of pruning papers; onecycle's lr 0.1 peak would throw
    away much of what the pruned weights know). ``kd=True`` distils from the dense model, which the
    caller passes to `Trainer` as ``teacher``. ``from_scratch=True`` re-initialises every weight first
    (the "train the thin net from scratch" baseline: give it a from-scratch recipe, e.g. lr=0.1 and
    schedule='onecycle').
    """

    lr: float = 0.01
    schedule: str = "cosine"
    warmup: float = 0.05
    kd: bool = False
    from_scratch: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bools(self, ("kd", "from_scratch"))
