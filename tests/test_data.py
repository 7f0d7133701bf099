"""fxprune.data on the vendored CIFAR-10 subset: decoding and labels, the .npz cache, normalisation, on-device
augmentation (checked against a brute-force window search), epoch determinism, DDP shards, clear errors."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fxprune.data import CLASSES, MEAN, STD, TensorLoader, cifar10_loaders, load_cifar10
from fxprune.data import cifar10 as cifar_module

SUBSET = Path(cifar_module.__file__).with_name("cifar10-subset.tar.gz")
PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # x * 255 gives the uint8 pixels back


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    cache = tmp_path_factory.mktemp("cache")
    return {split: load_cifar10(split=split, cache_dir=cache) for split in ("train", "test")}


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def pixels(x: torch.Tensor) -> np.ndarray:
    """Images of a PLAIN-normalised NCHW batch back as uint8 NHWC."""
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


# --- decoding and cache ---------------------------------------------------------------------------------
def test_subset_shapes_dtypes_and_balanced_labels(data) -> None:
    for split, per_class in (("train", 200), ("test", 100)):
        x, y = data[split]
        assert x.shape == (10 * per_class, 32, 32, 3) and x.dtype == np.uint8
        assert y.shape == (10 * per_class,) and y.dtype == np.int64
        assert np.bincount(y).tolist() == [per_class] * 10
        assert (np.diff(y) >= 0).all()  # ordered by class, then file name
        assert x.std() > 30  # real images, not a constant fill
    with tarfile.open(SUBSET) as tar:  # label ids follow CLASSES; the first image of a class is 0000.jpg
        raw = tar.extractfile("train/cat/0000.jpg").read()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")),
                          data["train"][0][CLASSES.index("cat") * 200])


def test_cache_hit_loads_the_npz_without_decoding(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FXPRUNE_CACHE", str(tmp_path))
    first = {s: load_cifar10(split=s) for s in ("train", "test")}
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".npz"), files  # one file for both splits, no temp leftovers

    def no_decode(_archive):
        raise AssertionError("decoded the archive again despite the cache")

    monkeypatch.setattr(cifar_module, "_decode_archive", no_decode)
    for split, (x, y) in first.items():
        x2, y2 = load_cifar10(split=split)
        assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_cache_key_follows_the_archive(tmp_path, monkeypatch) -> None:
    archive = tmp_path / "copy.tar.gz"
    archive.write_bytes(SUBSET.read_bytes())
    calls = []
    decode = cifar_module._decode_archive
    monkeypatch.setattr(cifar_module, "_decode_archive", lambda a: calls.append(a) or decode(a))
    load_cifar10(archive, "test", cache_dir=tmp_path / "c")
    load_cifar10(archive, "test", cache_dir=tmp_path / "c")
    assert len(calls) == 1
    os.utime(archive, ns=(0, 10**18))  # a changed mtime is a new archive
    load_cifar10(archive, "test", cache_dir=tmp_path / "c")
    assert len(calls) == 2 and len(os.listdir(tmp_path / "c")) == 2


# --- normalisation and augmentation ---------------------------------------------------------------------
def test_normalisation_matches_a_hand_computation(data) -> None:
    x, y = data["test"]
    xb, yb = next(iter(TensorLoader(x[:8], y[:8], 8, train=False)))
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    img = x[5].astype(np.float64) / 255  # (32, 32, 3)
    want = (img - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(xb[5].permute(1, 2, 0).numpy(), want, atol=1e-6)
    assert yb.tolist() == y[:8].tolist()


def test_without_augmentation_batches_are_the_images_in_order(data) -> None:
    x, y = data["test"]
    loader = TensorLoader(x, y, 64, train=False, **PLAIN)
    got = batches(loader)
    assert len(loader) == len(got) == 16 and len(got[-1][0]) == 1000 - 15 * 64
    assert np.array_equal(np.concatenate([pixels(b) for b, _ in got]), x)
    assert torch.equal(torch.cat([t for _, t in got]), torch.from_numpy(y))


def _window_exists(out: np.ndarray, img: np.ndarray) -> tuple[bool, bool]:
    """Is `out` a 32x32 window of img reflect-padded by 4, possibly mirrored? -> (found, trivially so)."""
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    for dy in range(9):
        for dx in range(9):
            win = padded[dy:dy + 32, dx:dx + 32]
            for flipped in (win, win[:, ::-1]):
                if np.array_equal(out, flipped):
                    return True, np.array_equal(out, img)
    return False, False


def test_augmentation_is_a_reflect_padded_crop_maybe_flipped(data) -> None:
    x, y = data["train"]
    x, y = x[::20], y[::20]  # 100 images, every class
    loader = TensorLoader(x, y, 50, train=True, shuffle=False, **PLAIN)
    out = np.concatenate([pixels(b) for b, _ in loader])
    results = [_window_exists(o, img) for o, img in zip(out, x)]
    assert all(found for found, _ in results), [i for i, (found, _) in enumerate(results) if not found]
    assert sum(trivial for _, trivial in results) < 20  # crops and flips actually happen


def test_epochs_differ_and_the_same_seed_and_epoch_reproduce(data) -> None:
    x, y = data["train"]
    loader = TensorLoader(x, y, 128, train=True)
    e0, e1 = batches(loader), batches(loader)  # each pass advances the epoch
    assert len(e0) == len(loader) == 2000 // 128
    assert not torch.equal(e0[0][0], e1[0][0]) and not torch.equal(e0[0][1], e1[0][1])
    assert not torch.equal(e0[0][1], torch.from_numpy(y[:128]))  # shuffled
    again = TensorLoader(x, y, 128, train=True)
    again.set_epoch(1)
    for (a, b), (c, d) in zip(batches(again), e1):
        assert torch.equal(a, c) and torch.equal(b, d)
    other = TensorLoader(x, y, 128, train=True, seed=1)
    assert not torch.equal(batches(other)[0][0], e0[0][0])


def test_channels_last_has_the_same_values(data) -> None:
    x, y = data["test"]
    a = next(iter(TensorLoader(x, y, 16, train=False)))[0]
    b = next(iter(TensorLoader(x, y, 16, train=False, channels_last=True)))[0]
    assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b)


# --- DDP shards -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("train,n,world", [(True, 2000, 4), (False, 999, 2)])
def test_shards_of_a_step_make_up_the_unsharded_batch(data, train: bool, n: int, world: int) -> None:
    x, y = data["train"]
    whole = TensorLoader(x[:n], y[:n], 64, train=train, seed=3)
    whole.set_epoch(2)
    shards = [whole.shard(r, world) for r in range(world)]
    ref = batches(whole)
    per_rank = [batches(s) for s in shards]
    assert all(len(s) == len(whole) == len(p) for s, p in zip(shards, per_rank))
    assert shards[0].batch_size == 64 // world and shards[0].dataset_size == n
    for step, (rx, ry) in enumerate(ref):
        assert torch.equal(torch.cat([p[step][0] for p in per_rank]), rx)
        assert torch.equal(torch.cat([p[step][1] for p in per_rank]), ry)


def test_shard_rejects_an_indivisible_batch(data) -> None:
    x, y = data["test"]
    with pytest.raises(ValueError, match="multiple of world_size"):
        TensorLoader(x, y, 64, train=True).shard(0, 3)
    with pytest.raises(ValueError, match="rank"):
        TensorLoader(x, y, 64, train=True).shard(2, 2)


# --- cifar10_loaders ------------------------------------------------------------------------------------
def test_loaders_take_a_class_balanced_limit(tmp_path) -> None:
    train, test = cifar10_loaders(batch_size=32, eval_batch_size=100, train_limit=105, cache_dir=tmp_path)
    counts = np.bincount(train.labels.numpy())
    assert counts.tolist() == [11] * 5 + [10] * 5
    assert (train.augment, train.shuffle, train.drop_last) == (True, True, True) and len(train) == 105 // 32
    assert (test.augment, test.shuffle, test.drop_last) == (False, False, False)
    assert test.dataset_size == 1000 and len(test) == 10 and test.num_classes == 10


# --- errors ---------------------------------------------------------------------------------------------
def test_missing_archive_says_where_the_data_lives(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"(?s)nope\.tar\.gz.*/work/shared/data.*path=None"):
        load_cifar10(tmp_path / "nope.tar.gz", cache_dir=tmp_path)


def test_bad_split_name() -> None:
    with pytest.raises(ValueError, match="'valid'.*'train' or 'test'"):
        load_cifar10(split="valid")


def test_archive_without_the_layout(tmp_path) -> None:
    bad = tmp_path / "flat.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("images/0000.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ValueError, match=r"no 'train/<class>/\*\.jpg' images"):
        load_cifar10(bad, cache_dir=tmp_path)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        load_cifar10(junk, cache_dir=tmp_path)
