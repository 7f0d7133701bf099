"""TensorLoader: a whole image data set held as one uint8 tensor on the device, batched, augmented on the
device (reflect pad + random crop + horizontal flip for the whole batch at once) and normalised; and
`cifar10_loaders`, the (train, test) pair for CIFAR-10.

Shuffle order and augmentation of epoch e come from numpy's generator seeded with (seed, e) and are drawn
per position of the epoch's global order, so they are the same on every device and every DDP rank.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fxprune.data.cifar10 import MEAN, STD, balanced_subset, load_cifar10

PAD = 4  # reflect padding of the random crop


class TensorLoader:
    """Batches `(x, y)` of uint8 NHWC `images` and int `labels`: x float32 NCHW normalised on `device`, y int64.

    `train=True` turns augmentation, shuffling and drop_last on (each can be set on its own). Epoch e's order
    and augmentation depend only on (seed, e); `set_epoch(e)` picks e, otherwise every pass advances it by
    one. `shard(rank, world_size)` is the view a DDP rank iterates.

    >>> imgs = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    >>> loader = TensorLoader(imgs, np.arange(6) % 3, 4, train=False, mean=(0, 0, 0), std=(1, 1, 1))
    >>> len(loader), loader.num_classes, [tuple(x.shape) for x, y in loader]
    (2, 10, [(4, 3, 2, 2), (2, 3, 2, 2)])
    >>> x, y = next(iter(loader))
    >>> x[0, :, 0, 0] * 255, y
    (tensor([0., 1., 2.]), tensor([0, 1, 2, 0]))
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, batch_size: int,
                 *, train: bool, device: str | torch.device = "cpu", augment: bool | None = None,
                 shuffle: bool | None = None, drop_last: bool | None = None, seed: int = 0,
                 mean: Sequence[float] = MEAN, std: Sequence[float] = STD, channels_last: bool = False,
                 num_classes: int | None = None) -> None:
        self.device = torch.device(device)
        self.images = _as_images(images).to(self.device)
        self.labels = _as_labels(labels, len(self.images)).to(self.device)
        self.global_batch_size = _positive("batch_size", batch_size)
        self.augment = train if augment is None else augment
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        self.seed = _non_negative("seed", seed)
        self.mean, self.std = _stats(mean, std, self.images.shape[-1], self.device)
        self.channels_last = channels_last
        self.num_classes = _num_classes(self.labels, num_classes)
        self.epoch = 0
        self.rank, self.world_size = 0, 1
        if self.augment and min(self.images.shape[1:3]) <= PAD:
            raise ValueError(f"augmentation pads by {PAD} pixels (reflect), so images must be larger than "
                             f"{PAD}x{PAD}; got {tuple(self.images.shape[1:3])}. Pass augment=False.")

    @property
    def dataset_size(self) -> int:
        """Images in the whole data set (all ranks together)."""
        return len(self.images)

    @property
    def batch_size(self) -> int:
        """Images this loader yields per full batch (the global batch size divided by world_size)."""
        return self.global_batch_size // self.world_size

    def __len__(self) -> int:
        n, b = self.dataset_size, self.global_batch_size
        return n // b if self.drop_last else -(-n // b)

    def __repr__(self) -> str:
        return (f"TensorLoader(n={self.dataset_size}, batch_size={self.batch_size}, augment={self.augment}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, device={self.device}, "
                f"rank={self.rank}/{self.world_size})")

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass uses (its shuffle order and augmentation)."""
        self.epoch = _non_negative("epoch", epoch)

    def shard(self, rank: int, world_size: int) -> TensorLoader:
        """The view of DDP rank `rank`: its contiguous slice of every global batch (same global order on all
        ranks, so the ranks' slices of a step together are the single-process batch)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"shard rank must be in [0, world_size={world_size}), got {rank}")
        if self.world_size != 1 or self.global_batch_size % world_size:
            raise ValueError(f"cannot shard a loader of batch_size {self.global_batch_size} (world_size "
                             f"{self.world_size}) over {world_size} ranks: shard an unsharded loader whose "
                             "batch_size is a multiple of world_size")
        view = copy.copy(self)
        view.rank, view.world_size = rank, world_size
        return view

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._batches(*self._epoch_plan(epoch))

    def _epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The epoch's global order and, per position in it, crop offsets (dy, dx) and flip flags."""
        n = self.dataset_size
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        offsets = flips = None
        if self.augment:
            offsets = torch.from_numpy(rng.integers(0, 2 * PAD + 1, size=(n, 2))).to(self.device)
            flips = torch.from_numpy(rng.random(n) < 0.5).to(self.device)
        return torch.from_numpy(order).to(self.device), offsets, flips

    def _batches(self, order: torch.Tensor, offsets: torch.Tensor | None,
                 flips: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(len(self)):
            start = b * self.global_batch_size
            lo, hi = _rank_slice(min(self.global_batch_size, self.dataset_size - start), self.rank,
                                 self.world_size)
            pos = slice(start + lo, start + hi)
            idx = order[pos]
            x = self.images[idx]
            if offsets is not None and flips is not None:
                x = crop_flip(x, offsets[pos], flips[pos])
            yield self._normalise(x), self.labels[idx]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float().div_(255).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Per-image random crop of the reflect-padded NHWC batch `x` and horizontal flip, in one gather.

    Output image b is the HxW window at row/col offset `offsets[b]` (in [0, 2 pad]) of x[b] reflect-padded
    by `pad`, mirrored left-right where `flips[b]`.

    >>> x = torch.arange(5).expand(5, 5).reshape(1, 5, 5, 1)  # every row is 0 1 2 3 4
    >>> crop_flip(x, torch.tensor([[0, 0]]), torch.tensor([False]), pad=2)[0, 0, :, 0].tolist()
    [2, 1, 0, 1, 2]
    >>> crop_flip(x, torch.tensor([[0, 3]]), torch.tensor([True]), pad=2)[0, 0, :, 0].tolist()
    [3, 4, 3, 2, 1]
    """
    n, h, w, _ = x.shape
    rows = _reflect(torch.arange(h, device=x.device) + offsets[:, :1] - pad, h)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flips[:, None], w - 1 - cols, cols)
    cols = _reflect(cols + offsets[:, 1:] - pad, w)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return x[batch, rows[:, :, None], cols[:, None, :]]


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Index into a length-n axis with reflect padding (edge not repeated), for -n < i < 2n - 1."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def _rank_slice(m: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank's contiguous [lo, hi) of a batch of m (the first m % world_size ranks get one more)."""
    per, extra = divmod(m, world_size)
    lo = rank * per + min(rank, extra)
    return lo, lo + per + (rank < extra)


# --- argument checks ------------------------------------------------------------------------------------
def _as_images(images: Any) -> torch.Tensor:
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.dim() != 4 or len(t) == 0:
        raise ValueError(f"images must be a non-empty uint8 array of shape (N, H, W, C); got dtype {t.dtype} "
                         f"and shape {tuple(t.shape)} (convert float images with (x * 255).round().byte())")
    return t


def _as_labels(labels: Any, n: int) -> torch.Tensor:
    t = torch.as_tensor(labels)
    if t.dim() != 1 or len(t) != n or t.is_floating_point() or t.is_complex() or (n and int(t.min()) < 0):
        raise ValueError(f"labels must be {n} non-negative integers (one per image), got dtype {t.dtype} "
                         f"and shape {tuple(t.shape)}")
    return t.long()


def _stats(mean: Sequence[float], std: Sequence[float], channels: int,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    if m.numel() != channels or s.numel() != channels or bool((s <= 0).any()):
        raise ValueError(f"mean and std need one value per image channel ({channels}) and std > 0; got "
                         f"mean={tuple(mean)}, std={tuple(std)}")
    return m, s


def _num_classes(labels: torch.Tensor, num_classes: int | None) -> int:
    seen = int(labels.max()) + 1
    if num_classes is None:
        return max(10, seen)
    if num_classes < seen:
        raise ValueError(f"num_classes={num_classes} but the labels go up to {seen - 1}")
    return num_classes


def _positive(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative(name: str, value: int) -> int:
    if int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


# --- CIFAR-10 ---------------------------------------------------------------------------------------------
def cifar10_loaders(path: str | Path | None = None, *, batch_size: int = 128, eval_batch_size: int | None = None,
                    device: str | torch.device = "cpu", train_limit: int | None = None, test_limit: int | None = None,
                    seed: int = 0, channels_last: bool = False,
                    cache_dir: str | Path | None = None) -> tuple[TensorLoader, TensorLoader]:
    """(train, test) TensorLoaders on `device`: train shuffles, augments and drops the last partial batch.

    `train_limit` / `test_limit` keep a class-balanced subset (the first images of every class);
    `eval_batch_size` defaults to `batch_size`.

    >>> import tempfile
    >>> train, test = cifar10_loaders(batch_size=50, train_limit=100, test_limit=30,
    ...                               cache_dir=tempfile.mkdtemp())
    >>> len(train), train.dataset_size, test.dataset_size, train.num_classes
    (2, 100, 30, 10)
    """
    loaders = []
    for split, limit, train, bs in (("train", train_limit, True, batch_size),
                                    ("test", test_limit, False, eval_batch_size or batch_size)):
        x, y = load_cifar10(path, split, cache_dir=cache_dir)
        keep = balanced_subset(y, limit)
        loaders.append(TensorLoader(x[keep], y[keep], bs, train=train, device=device, seed=seed,
                                    channels_last=channels_last))
    return loaders[0], loaders[1]
