"""Losses of the training loop: logits extraction, cross entropy and Hinton distillation.

>>> import torch
>>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
>>> kd_loss(logits, logits, temperature=4.0).item()
0.0
>>> correct_count(logits, torch.tensor([0, 0])).item()
1
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def logits_of(output: object) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, else the first tensor of a tuple/list/dict/dataclass."""
    if isinstance(output, torch.Tensor):
        return output
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        items = [getattr(output, f.name) for f in dataclasses.fields(output)]
    elif isinstance(output, dict):
        items = list(output.values())
    elif isinstance(output, (tuple, list)):
        items = list(output)
    else:
        items = []
    for item in items:
        if isinstance(item, torch.Tensor):
            return item
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}: expected a tensor, "
                    f"or a tuple/list/dict/dataclass whose first tensor is the logits. Pass loss_fn= "
                    f"to the Trainer, or wrap the model so that it returns the logits.")


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    """Mean cross entropy (in float32) with label smoothing; targets may be class indices or probabilities."""
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
    return loss


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch."""
    t = temperature
    s_log = F.log_softmax(student.float() / t, dim=-1)
    t_log = F.log_softmax(teacher.float() / t, dim=-1)
    return F.kl_div(s_log, t_log, log_target=True, reduction="batchmean") * (t * t)


def correct_count(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Number of rows whose argmax matches the target (class indices, or the argmax of soft targets)."""
    if target.dim() == logits.dim() and target.is_floating_point():
        target = target.argmax(-1)
    return (logits.argmax(-1) == target).sum()
