"""CIFAR-10 from a JPEG tar archive: decode once with Pillow, cache both splits as one .npz.

The archive holds `train/<class>/<file>.jpg` and `test/<class>/<file>.jpg` (an optional leading folder is
allowed). `path=None` reads the vendored subset `cifar10-subset.tar.gz` next to this file (200 train and 100
test images per class, cut by scripts/make_cifar_subset.py); the full archive lives in
/work/shared/data/cifar10-jpeg.tar.gz on the project machines.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                            "truck")
MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
SPLITS: tuple[str, ...] = ("train", "test")
SUBSET = Path(__file__).with_name("cifar10-subset.tar.gz")
SHARED = "/work/shared/data/cifar10-jpeg.tar.gz"

_MEMBER = re.compile(r"^(?:.*/)?(train|test)/([^/]+)/[^/]+\.(?:jpe?g|png)$", re.IGNORECASE)


def load_cifar10(path: str | Path | None = None, split: str = "train", *,
                 cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 of one split, ordered by class then file name.

    `path=None` is the vendored subset. The archive is decoded once; both splits are cached in one .npz in
    `cache_dir` (default `$FXPRUNE_CACHE`, else `~/.cache/fxprune`), keyed by the archive's path, size and
    mtime, so later calls (and other processes) just load it.

    >>> import tempfile
    >>> x, y = load_cifar10(split="test", cache_dir=tempfile.mkdtemp())
    >>> x.shape, x.dtype, y.dtype, CLASSES[y[0]], CLASSES[y[-1]]
    ((1000, 32, 32, 3), dtype('uint8'), dtype('int64'), 'airplane', 'truck')
    """
    if split not in SPLITS:
        raise ValueError(f"unknown CIFAR-10 split {split!r}: use 'train' or 'test'")
    archive = _archive_path(path)
    cache = _cache_file(archive, cache_dir)
    arrays = _load_cache(cache, split)
    if arrays is None:
        arrays = _decode_archive(archive)
        _save_cache(cache, arrays)
    return arrays[f"{split}_x"], arrays[f"{split}_y"]


def balanced_subset(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Sorted indices of the first `limit // C` images of every class (the first `limit % C` classes get one
    more); all indices when `limit` is None or not below the data set size.

    >>> balanced_subset(np.array([0, 0, 0, 1, 1, 1]), 3).tolist()
    [0, 1, 3]
    """
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    if limit < 1:
        raise ValueError(f"a subset limit must be a positive number of images, got {limit}")
    classes = np.unique(labels)
    per, extra = divmod(limit, len(classes))
    picked = [np.flatnonzero(labels == c)[:per + (i < extra)] for i, c in enumerate(classes)]
    return np.sort(np.concatenate(picked))


# --- archive --------------------------------------------------------------------------------------------
def _archive_path(path: str | Path | None) -> Path:
    archive = SUBSET if path is None else Path(path).expanduser()
    if not archive.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 archive '{archive}' not found{' (it is a folder)' if archive.is_dir() else ''}: pass the "
            f".tar.gz file itself. The full archive lives in {SHARED} on the project machines (copy it into a "
            "git-ignored folder of the checkout to use it elsewhere); path=None uses the vendored subset "
            "(2,000 train / 1,000 test images).")
    return archive.resolve()


def _decode_archive(archive: Path) -> dict[str, np.ndarray]:
    """Decode every image of `archive` with Pillow: {"train_x", "train_y", "test_x", "test_y"}."""
    from PIL import Image

    found: dict[str, list[tuple[int, str, np.ndarray]]] = {s: [] for s in SPLITS}
    with _open_tar(archive) as tar:
        for member in tar:
            match = _MEMBER.match(member.name)
            if not (member.isfile() and match):
                continue
            split, cls = match.groups()
            if cls not in CLASSES:
                raise ValueError(f"CIFAR-10 archive '{archive}': unknown class folder '{cls}' in '{member.name}'"
                                 f"; expected one of {', '.join(CLASSES)}")
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                pixels = np.asarray(img.convert("RGB"))
            if pixels.shape != (32, 32, 3):
                raise ValueError(f"CIFAR-10 archive '{archive}': '{member.name}' is {pixels.shape[1]}x"
                                 f"{pixels.shape[0]}, expected 32x32 images")
            found[split].append((CLASSES.index(cls), member.name, pixels))
    return {k: v for split in SPLITS for k, v in _stack(archive, split, found[split]).items()}


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except tarfile.TarError as err:
        raise ValueError(f"CIFAR-10 archive '{archive}' is not a readable tar archive ({err}); expected a "
                         ".tar.gz with train/<class>/*.jpg and test/<class>/*.jpg") from None


def _stack(archive: Path, split: str, items: list[tuple[int, str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not items:
        raise ValueError(f"CIFAR-10 archive '{archive}' has no '{split}/<class>/*.jpg' images; expected the "
                         f"layout train/<class>/*.jpg and test/<class>/*.jpg with classes {', '.join(CLASSES)}")
    items.sort(key=lambda t: t[:2])
    return {f"{split}_x": np.stack([t[2] for t in items]),
            f"{split}_y": np.array([t[0] for t in items], dtype=np.int64)}


# --- cache ----------------------------------------------------------------------------------------------
def _cache_file(archive: Path, cache_dir: str | Path | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("FXPRUNE_CACHE") or Path.home() / ".cache" / "fxprune"
    stat = archive.stat()
    key = hashlib.sha256(f"{archive}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = archive.name.split(".")[0]
    return Path(cache_dir).expanduser() / f"{stem}-{key}.npz"


def _load_cache(cache: Path, split: str) -> dict[str, np.ndarray] | None:
    if not cache.is_file():
        return None
    try:
        with np.load(cache) as z:
            return {k: z[k] for k in (f"{split}_x", f"{split}_y")}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring unreadable CIFAR-10 cache '{cache}' ({err}); decoding the archive again",
                      stacklevel=3)
        return None


def _save_cache(cache: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (a temporary file renamed into place), so racing processes never see half a file."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.stem}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is as readable as a normal file
            os.replace(tmp, cache)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        warnings.warn(f"could not write the CIFAR-10 cache '{cache}' ({err}); set FXPRUNE_CACHE or pass "
                      "cache_dir= to a writable folder to avoid decoding the archive on every call", stacklevel=3)
