"""Data for data-driven backends: the "needs data" error, the first calibration batches of `data`, batches
per epoch; and the budget checks every searching backend (TAS, MetaPruning) shares."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from fxprune.methods.registry import ScoreInput
from fxprune.methods.search.dist import average_norm_stats, sum_over_ranks


def require_data(inp: ScoreInput, method: str, why: str) -> Iterable:
    if inp.data is None:
        raise ValueError(f"method '{method}' needs training data ({why}): pass data=<iterable of (inputs, "
                         f"targets) batches>, e.g. fxprune.data.cifar10_loaders()[0].")
    return inp.data


def batches(data: Iterable, n: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first `n` (inputs, targets) batches of `data`, moved to `device`."""
    for x, y in islice(iter(data), n):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def batches_per_epoch(data: Iterable, limit: int | None, method: str, option: str) -> int:
    """len(data), at most `limit`; `limit` itself when `data` has no len() (else a clear error)."""
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        if limit is None:
            raise ValueError(f"method '{method}' needs the number of batches per epoch: the data iterable has no "
                             f"len(); pass {option}=<batches per epoch>.") from None
        return int(limit)
    return n if limit is None else min(n, int(limit))


def require_cost_budget(inp: ScoreInput, budget, method: str) -> None:
    """Searching backends need a FLOPs / params / latency budget and search once (no iterative steps)."""
    if budget.kind == "ratio":
        raise ValueError(f"method '{method}' searches widths against a FLOPs, params or latency budget: pass "
                         f"flops=, params= or latency= (a fraction of the dense model's cost), not ratio=.")
    if inp.step > 0:
        raise ValueError(f"method '{method}' searches once: use steps=1.")


def batches_after(data: Iterable, skip: int, n: int, device: torch.device) -> list:
    """Batches `skip` ... `skip + n` of one pass over `data` (held out from the first `skip` batches)."""
    return [(x.to(device), y.to(device)) for x, y in islice(iter(data), skip, skip + n)]


def recalibrate_norms(module: nn.Module, batches: list) -> None:
    """Every BatchNorm's running statistics recomputed (cumulative average) on `batches`, as a candidate
    architecture needs before it is scored; the module's train / eval mode is restored."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved, was = [m.momentum for m in norms], module.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    with torch.no_grad():
        for x, _ in batches:
            module(x)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    module.train(was)
    average_norm_stats(module)


def score_batches(net: nn.Module, batches: list) -> float:
    """Top-1 accuracy on `batches` in eval mode, minus 1e-6 x the mean cross-entropy (lower loss breaks ties)."""
    from fxprune.train.losses import logits_of

    was = net.training
    net.eval()
    correct, loss, n = 0, 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            logits = logits_of(net(x)).float()
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            n += len(y)
    net.train(was)
    correct, loss, n = sum_over_ranks([correct, loss, n])  # a distributed search: every rank's shard
    return correct / max(n, 1) - 1e-6 * loss / max(n, 1)
