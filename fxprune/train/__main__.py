"""``python -m fxprune.train``: a smoke run of the training harness on synthetic data.

Trains a small conv net on random images whose class sets their mean colour, which checks a machine
(or a torchrun job) end to end in seconds::

    python -m fxprune.train --epochs 2
    torchrun --nproc_per_node=2 -m fxprune.train --epochs 2      # DistributedDataParallel

(pytest does not collect doctests from ``__main__`` modules: tests/test_train.py runs `main`.)
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Iterator

import torch
from torch import nn

from fxprune.train import TrainConfig, Trainer, init_from_env
from fxprune.train.distributed import shutdown


class SyntheticLoader:
    """(x, y) batches of a fixed global size, reshuffled per epoch; `shard` keeps one rank's rows."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, rank: int = 0, world_size: int = 1):
        self.x, self.y, self.batch_size, self.rank, self.world_size, self.epoch = x, y, batch_size, rank, world_size, 0

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world_size: int) -> SyntheticLoader:
        return SyntheticLoader(self.x, self.y, self.batch_size, rank, world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.epoch))
        for start in range(0, len(self.x), self.batch_size):
            idx = order[start:start + self.batch_size][self.rank::self.world_size]
            yield self.x[idx], self.y[idx]


def synthetic(samples: int, classes: int = 10, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (samples,), generator=g)
    return torch.randn(samples, 3, size, size, generator=g) + torch.randn(classes, 3, 1, 1, generator=g)[y], y


def small_net(classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fxprune.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--samples", type=int, default=2048, help="training images (eval uses a quarter as many)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch size")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--device", default=None, help="default: cuda:<local rank> when available, else cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    args = p.parse_args(argv)
    init_from_env()
    x, y = synthetic(args.samples + args.samples // 4)
    train = SyntheticLoader(x[:args.samples], y[:args.samples], args.batch_size)
    evalset = SyntheticLoader(x[args.samples:], y[args.samples:], args.batch_size)
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, progress=not args.quiet)
    try:
        Trainer(small_net(), cfg, train, evalset, device=args.device).fit()
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
