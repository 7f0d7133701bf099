"""The one registry of method backends, keyed by name.

A backend turns an analysed graph into per-channel scores (higher = keep). Learned methods of later
issues register here too and may override `plan` to search widths themselves.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.fx as fx

from ..analysis.analyse import GraphAnalysis
from ..errors import UnknownMethodError


@dataclass
class ScoreInput:
    """What a scoring backend gets: the traced module, its analysis and the example inputs."""

    gm: fx.GraphModule
    ga: GraphAnalysis
    example_inputs: tuple
    options: dict[str, Any]


Scorer = Callable[[ScoreInput], dict[int, np.ndarray]]


@dataclass(frozen=True)
class MethodBackend:
    name: str
    score: Scorer
    summary: str


_METHODS: dict[str, MethodBackend] = {}


def register_method(name: str, summary: str) -> Callable[[Scorer], Scorer]:
    """Register a scoring function under `name` (see docs/ for a worked example)."""
    def deco(fn: Scorer) -> Scorer:
        _METHODS[name] = MethodBackend(name, fn, summary)
        return fn
    return deco


def get_method(name: str) -> MethodBackend:
    if name not in _METHODS:
        raise UnknownMethodError(
            f"unknown pruning method '{name}'. Registered methods: {', '.join(sorted(_METHODS))}. "
            f"Register new ones with fxprune.register_method(name, summary).")
    return _METHODS[name]


def list_methods() -> list[str]:
    """Names of the registered method backends.

    >>> {"l1", "l2", "random"} <= set(list_methods())
    True
    """
    return sorted(_METHODS)


def method_summaries() -> dict[str, str]:
    return {k: v.summary for k, v in sorted(_METHODS.items())}
