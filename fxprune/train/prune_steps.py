"""Pruning with data: iterative step budgets, fine-tuning between steps and after, accuracy history.

`fxprune.prune(..., data=, finetune=Finetune(...), steps=N)` runs N prune steps whose budgets follow a
schedule from dense to the target; between steps the model is fine-tuned *masked* (the graph keeps its
shape, the removed channels are zeroed at their consumers, so earlier decisions stay fixed and later steps
score the fine-tuned weights); after the last step the slim model is fine-tuned, with knowledge
distillation from the dense model when `Finetune(kd=True)`.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch.fx as fx
from torch import nn

from fxprune.analysis.keep import Keep
from fxprune.analysis.analyse import GraphAnalysis
from fxprune.rewrite.masks import insert_masks
from fxprune.selection.select import Budget

StepSchedule = Callable[[float, float], float]  # (final kept fraction, progress in (0, 1]) -> kept fraction

STEP_SCHEDULES: dict[str, StepSchedule] = {
    "linear": lambda final, t: 1.0 - (1.0 - final) * t,
    "geometric": lambda final, t: final ** t,
}


def step_budgets(budget: Budget, steps: int, schedule: str = "linear") -> list[Budget]:
    """The budget of each prune step, ending at `budget`.

    >>> [round(b.value, 3) for b in step_budgets(Budget("flops", 0.25), 2, "geometric")]
    [0.5, 0.25]
    >>> [round(b.value, 2) for b in step_budgets(Budget("ratio", 0.6), 3)]
    [0.2, 0.4, 0.6]
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int (the number of prune / fine-tune rounds), got {steps!r}.")
    if schedule not in STEP_SCHEDULES:
        raise ValueError(f"unknown step schedule {schedule!r}; choose one of {', '.join(STEP_SCHEDULES)}.")
    kept = 1.0 - budget.value if budget.kind == "ratio" else budget.value
    out = []
    for k in range(1, steps + 1):
        f = STEP_SCHEDULES[schedule](kept, k / steps)
        out.append(Budget(budget.kind, 1.0 - f if budget.kind == "ratio" else f))
    return out


def check_data_options(data: Iterable | None, finetune: Any, steps: int, needs_data: bool, method: str) -> None:
    if finetune is not None:
        from fxprune.train import TrainConfig

    if finetune is not None and not isinstance(finetune, TrainConfig):
        raise TypeError(f"finetune must be a fxprune.train.Finetune (or TrainConfig), got {type(finetune).__name__}.")
    if finetune is not None and data is None:
        raise ValueError("finetune= needs training data: pass data=<iterable of (inputs, targets) batches>, "
                         "e.g. fxprune.data.cifar10_loaders()[0].")
    if needs_data and data is None:
        raise ValueError(f"method '{method}' needs training data: pass data=<iterable of (inputs, targets) "
                         f"batches>, e.g. fxprune.data.cifar10_loaders()[0].")
    if steps > 1 and finetune is None:
        raise ValueError(f"steps={steps} prunes iteratively with fine-tuning between the steps: pass "
                         f"finetune=Finetune(epochs=...) and data=..., or use steps=1.")


def training_device(device: Any = None):
    """Where training and evaluation run: `device`, or CUDA when available (this process's GPU under
    torchrun: cuda:<LOCAL_RANK>), else the CPU."""
    from fxprune.train.distributed import current
    from fxprune.train.runtime import resolve_device

    return resolve_device(device, current().local_rank)


def teacher_of(model: nn.Module, finetune: Any) -> nn.Module | None:
    """A frozen copy of the dense model when the fine-tune distils from it."""
    if finetune is None or not getattr(finetune, "kd", False):
        return None
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def train_masked(gm: fx.GraphModule, ga: GraphAnalysis, keep: Keep, config: Any,
                 data: Iterable, eval_data: Iterable | None, teacher: nn.Module | None):
    """Fine-tune `gm` with `keep`'s masks in its graph; the trained weights are written back into `gm`."""
    from fxprune.train import Trainer

    masked = copy.deepcopy(gm)
    insert_masks(masked, ga, keep)
    history = Trainer(masked, config, data, eval_data, teacher=teacher).fit()
    state = {k: v for k, v in masked.state_dict().items() if k in gm.state_dict()}
    gm.load_state_dict(state)
    return history


def train_slim(slim: nn.Module, config: Any, data: Iterable, eval_data: Iterable | None,
               teacher: nn.Module | None):
    """Fine-tune the slim model (re-initialised first when `config.from_scratch`)."""
    from fxprune.train import Trainer, reinitialise

    if getattr(config, "from_scratch", False):
        reinitialise(slim)
    return Trainer(slim, config, data, eval_data, teacher=teacher).fit()


def accuracy(model: nn.Module, eval_data: Iterable | None) -> float | None:
    """Top-1 accuracy in % of `model` on `eval_data` (None without data); the model's mode is restored."""
    if eval_data is None:
        return None
    from fxprune.train import evaluate

    was_training = model.training
    try:
        return float(evaluate(model, eval_data)[1])
    finally:
        model.train(was_training)

