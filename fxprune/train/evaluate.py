"""Evaluation: mean loss and top-1 accuracy of a model over a data set.

>>> import torch
>>> class Fixed(torch.nn.Module):          # predicts class 0 for every input
...     def forward(self, x): return torch.tensor([[1.0, 0.0]]).expand(len(x), 2)
>>> data = [(torch.zeros(3, 1), torch.tensor([0, 1, 0])), (torch.zeros(1, 1), torch.tensor([1]))]
>>> loss, acc = evaluate(Fixed(), data)
>>> acc
50.0
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.nn as nn

from fxprune.train.losses import LossFn, correct_count, cross_entropy, logits_of
from fxprune.train.runtime import autocast, resolve_device, split_batch, to_device


def _model_device(model: nn.Module) -> torch.device:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def eval_sums(model: nn.Module, data: Iterable, device: torch.device, *, amp: str | None = None,
              max_batches: int | None = None, loss_fn: LossFn | None = None,
              channels_last: bool = False) -> torch.Tensor:
    """[loss sum, correct count, sample count] over `data` as a float64 tensor on `device`, in eval mode
    (the model's training flag is restored afterwards)."""
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches={max_batches!r} must be None (all batches) or an integer >= 1.")
    loss_fn = loss_fn or cross_entropy()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in itertools.islice(data, max_batches):
                x, y = split_batch(batch, "evaluation data")
                x, y = to_device(x, device, channels_last), to_device(y, device)
                with autocast(device, amp):
                    logits = logits_of(model(x))
                n = len(y)
                sums[0] += loss_fn(logits, y).double() * n
                sums[1] += correct_count(logits, y)
                sums[2] += n
    finally:
        model.train(was_training)
    return sums


def evaluate(model: nn.Module, data: Iterable, *, device: str | torch.device | None = None,
             amp: str | None = None, max_batches: int | None = None,
             loss_fn: LossFn | None = None) -> tuple[float, float]:
    """(mean loss, accuracy in %) of `model` over the (x, y) batches of `data`.

    `device` defaults to where the model's parameters are; batches are moved there. `amp` ('bf16',
    'fp16' or None) autocasts on CUDA only. The loss is cross entropy unless `loss_fn(logits, y)` is
    given. The model's train/eval mode is left as it was.
    """
    dev = _model_device(model) if device is None else resolve_device(device)
    loss_sum, correct, count = eval_sums(model, data, dev, amp=amp, max_batches=max_batches,
                                         loss_fn=loss_fn).tolist()
    if count == 0:
        raise ValueError("evaluate: the data yielded no batches. Pass data with at least one (x, y) batch.")
    return loss_sum / count, 100.0 * correct / count
