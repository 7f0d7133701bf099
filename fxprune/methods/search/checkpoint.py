"""Resumable searches: one checkpoint file per search, written atomically at each step boundary.

A learned method's search (TAS's epochs, DCP's groups) saves what it needs to continue -- tensors, optimiser
states, random generator states, its log -- under a `fingerprint` of the search's setup (the model's graph
signature, the searched groups, the options that shape the search). Given the same checkpoint path again,
the search continues after the last completed step and ends exactly where an uninterrupted search would; a
checkpoint of another setup is refused with a clear error instead of being resumed by mistake. Files are
loaded with ``weights_only=True``: nothing is unpickled.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fxprune.train.checkpoint import load_checkpoint, save_atomic
from fxprune.train.distributed import active as dist_active, barrier

__all__ = ["SearchCheckpoint"]


class SearchCheckpoint:
    """Save / resume one search's state at `path` (None: the search is not checkpointed)."""

    def __init__(self, path: str | os.PathLike | None, method: str, fingerprint: dict[str, Any]) -> None:
        self.path = Path(path) if path is not None else None
        self.method, self.fingerprint = method, fingerprint

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none (or no path)."""
        if self.path is None or not self.path.exists():
            return None
        saved = load_checkpoint(self.path)
        if saved.get("fingerprint") != self.fingerprint:
            diff = sorted(k for k in set(self.fingerprint) | set(saved.get("fingerprint", {}))
                          if saved.get("fingerprint", {}).get(k) != self.fingerprint.get(k))
            raise ValueError(f"the {self.method} checkpoint {os.fspath(self.path)!r} belongs to another search "
                             f"(differs in: {', '.join(diff) or 'format'}). Delete it to start afresh, or pass "
                             f"another {self.method}_checkpoint path.")
        return saved["state"]

    def save(self, state: dict[str, Any]) -> None:
        """Written by rank 0 of a distributed search (every rank holds the same state); all ranks wait for it."""
        if self.path is not None:
            if not dist_active() or torch.distributed.get_rank() == 0:
                save_atomic({"fingerprint": self.fingerprint, "state": state}, self.path)
            barrier()

