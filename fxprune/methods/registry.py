"""The one registry of method backends, keyed by name.

A backend turns an analysed graph into per-channel scores (higher = keep). Backends that need data say so
(`needs_data`); a backend may also `prepare` the model before scoring (network slimming's sparsity
training) and choose the default selection scope ("global": one threshold over all groups; "local": every
group keeps the same fraction). A `search` backend (learned methods that decide widths or channels
themselves) returns the kept channels directly instead of going through `select`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.fx as fx

from fxprune.analysis.keep import Keep
from fxprune.analysis.analyse import GraphAnalysis
from fxprune.errors import UnknownMethodError

SCOPES = ("global", "local")


@dataclass
class ScoreInput:
    """What a scoring backend gets: the traced module, its analysis, the example inputs and options.

    `data` is the user's training data (an iterable of (inputs, targets) batches) or None; `keep` is the
    current decision in iterative pruning ({group id: kept channels}; empty before the first step);
    `step` counts the prune steps from 0.
    """

    gm: fx.GraphModule
    ga: GraphAnalysis
    example_inputs: tuple
    options: dict[str, Any]
    data: Iterable | None = None
    keep: Keep = field(default_factory=dict)
    step: int = 0
    round_to: int = 1  # kept counts are multiples of it (search backends honour it like `select` does)
    skipped_blocks: list[list[str]] = field(default_factory=list)  # a depth search's removed [add, shortcut]


Scorer = Callable[[ScoreInput], dict[int, np.ndarray]]
Preparer = Callable[[ScoreInput], None]
# A searching backend decides the kept channels itself: (input, budget, cost model, ignored group ids) ->
# {group id: kept channel indices}; fxprune still repairs the decision and checks the budget.
Searcher = Callable[[ScoreInput, Any, Any, set], Keep]


@dataclass(frozen=True)
class MethodBackend:
    name: str
    score: Scorer
    summary: str
    needs_data: bool = False
    scope: str = "global"
    prepare: Preparer | None = None
    search: Searcher | None = None


_METHODS: dict[str, MethodBackend] = {}


def register_method(name: str, summary: str, *, needs_data: bool = False, scope: str = "global",
                    prepare: Preparer | None = None, search: Searcher | None = None) -> Callable[[Scorer], Scorer]:
    """Register a scoring function under `name` (see docs/extending.md for a worked example).

    >>> import numpy as np
    >>> @register_method("first", "keeps the lowest channel indices (example)", scope="local")
    ... def first(inp):
    ...     return {g.id: -np.arange(g.size, dtype=float) for g in inp.ga.groups}
    >>> get_method("first").scope
    'local'
    >>> _ = _METHODS.pop("first")
    """
    if scope not in SCOPES:
        raise ValueError(f"register_method({name!r}): scope must be one of {SCOPES}, got {scope!r}.")

    def deco(fn: Scorer) -> Scorer:
        _METHODS[name] = MethodBackend(name, fn, summary, needs_data, scope, prepare, search)
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

    >>> {"l1", "l2", "random", "fpgm", "taylor", "slimming", "uniform"} <= set(list_methods())
    True
    """
    return sorted(_METHODS)


def method_summaries() -> dict[str, str]:
    return {k: v.summary for k, v in sorted(_METHODS.items())}
