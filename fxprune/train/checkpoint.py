"""Checkpoints that load with ``torch.load(..., weights_only=True)``: tensors, numbers, strings, lists, dicts.

RNG states are stored as tensors and lists so that a resumed run draws the same random numbers as an
uninterrupted one.

>>> import random, tempfile, os, torch
>>> state = rng_state(); a = (random.random(), torch.rand(1))
>>> set_rng_state(state); (random.random(), torch.rand(1)) == (a[0], a[1])
True
>>> d = tempfile.mkdtemp(); p = os.path.join(d, "last.pt")
>>> save_atomic({"epoch": 3, "rng": state}, p); load_checkpoint(p)["epoch"]
3
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def rng_state(device: torch.device | None = None) -> dict:
    """torch (CPU, and `device`'s when it is a CUDA device), numpy and python RNG states as plain tensors,
    lists and numbers. Only the training device's CUDA state is kept: asking every device would create a
    CUDA context on each GPU from each process."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    cuda = device is not None and device.type == "cuda"
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if cuda else None,
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore what `rng_state` returned (the CUDA state onto `device` when both are CUDA)."""
    torch.set_rng_state(state["torch"])
    if isinstance(state.get("cuda"), torch.Tensor) and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file next to `path`, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint on the CPU without unpickling arbitrary objects (``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated/foreign file: say which one and what to do
        raise RuntimeError(f"cannot load the checkpoint {os.fspath(path)!r} with weights_only=True ({e}). "
                           f"Delete it, set TrainConfig.resume=False, or use another checkpoint_dir.") from e
