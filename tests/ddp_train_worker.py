"""Worker for tests/test_train.py's DDP test: ``torchrun --nproc_per_node=2 ddp_train_worker.py OUT_DIR``.

Each rank trains the same small conv net (no BatchNorm) on synthetic data with fxprune.train.Trainer
under DistributedDataParallel (gloo, CPU) and writes its final parameters and history to OUT_DIR/rank<R>.pt.
The test imports `build` and `ShardLoader` from here to make the single-process reference run.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn

GLOBAL_BATCH = 16


class ShardLoader:
    """(x, y) batches of a fixed global size, reshuffled per epoch; `shard` gives one rank's rows of each."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool,
                 rank: int = 0, world_size: int = 1) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world_size: int) -> ShardLoader:
        return ShardLoader(self.x, self.y, self.batch_size, self.shuffle, rank, world_size)

    def __iter__(self):
        n = len(self.x)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(1000 + self.epoch))
                 if self.shuffle else torch.arange(n))
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size][self.rank::self.world_size]
            yield self.x[idx], self.y[idx]


def build() -> tuple[nn.Module, ShardLoader, ShardLoader]:
    """The model (seeded init) and the train/eval loaders, identical in every process."""
    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, 4, (96 + 41,), generator=g)
    x = torch.randn(96 + 41, 3, 8, 8, generator=g) + torch.randn(4, 3, 1, 1, generator=g)[y]  # class means
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    train = ShardLoader(x[:96], y[:96], GLOBAL_BATCH, shuffle=True)
    evalset = ShardLoader(x[96:], y[96:], GLOBAL_BATCH, shuffle=False)  # 41 rows: an uneven last batch
    return model, train, evalset


def config(checkpoint_dir: str | None):
    from fxprune.train import TrainConfig
    return TrainConfig(epochs=2, lr=0.5, schedule="onecycle", progress=False, seed=5,
                       checkpoint_dir=checkpoint_dir, grad_clip=5.0)


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    from fxprune.train import Trainer, init_from_env
    from fxprune.train.distributed import shutdown
    info = init_from_env()
    model, train, evalset = build()
    history = Trainer(model, config(str(Path(out_dir) / "ckpt")), train, evalset, device="cpu").fit()
    torch.save({"world_size": info.world_size, "state": model.state_dict(), "history": history.to_dict()},
               Path(out_dir) / f"rank{info.rank}.pt")
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
