"""The one registry of method backends, keyed by name.

A backend turns an analysed graph into per-channel scores (higher = keep). Backends that need data say so
(`needs_data`); a backend may also `prepare` the model before scoring (network slimming's sparsity
training) and choose the default selection scope ("global": one threshold over all groups; "local": every
group keeps the same fraction). A `search` backend (learned methods that decide widths or channels
themselves) returns a `SearchResult` (the kept channels, its log and timings) instead of going through
`select`; it needs no scorer (`register_search`). Every backend has a config dataclass
(`fxprune.methods.config.MethodConfig`) whose fields are its options: `method_config` checks the options
given to `fxprune.prune` against it before any work is done.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch.fx as fx

from fxprune.analysis.keep import Keep
from fxprune.analysis.analyse import GraphAnalysis
from fxprune.errors import UnknownMethodError
from fxprune.methods.config import MethodConfig
from fxprune.methods.result import SearchResult
from fxprune.registry import Registry

if TYPE_CHECKING:
    from fxprune.cost.model import CostModel
    from fxprune.selection.select import Budget

SCOPES = ("global", "local")


@dataclass
class ScoreInput:
    """What a scoring backend gets: the traced module, its analysis, the example inputs and options.

    `config` is the method's config dataclass built from the options (read options from it: `inp.config.seed`);
    `options` is the raw dict the user passed, kept as it was given. `data` is the user's training data (an
    iterable of (inputs, targets) batches) or None; `keep` is the current decision in iterative pruning
    ({group id: kept channels}; empty before the first step); `step` counts the prune steps from 0.
    """

    gm: fx.GraphModule
    ga: GraphAnalysis
    example_inputs: tuple
    options: dict[str, Any]
    data: Iterable | None = None
    keep: Keep = field(default_factory=dict)
    step: int = 0
    round_to: int = 1  # kept counts are multiples of it (search backends honour it like `select` does)
    config: Any = None  # the method's MethodConfig (built from `options` when a backend is called without one)


Scorer = Callable[[ScoreInput], dict[int, np.ndarray]]
Preparer = Callable[[ScoreInput], None]


class Searcher(Protocol):
    """A searching backend decides the kept channels itself; fxprune still repairs the decision and checks the
    budget. (A plain {group id: kept channels} dict is accepted as a result with an empty log.)"""

    def __call__(self, inp: ScoreInput, budget: Budget, cost: CostModel, ignored: set[int], /) -> SearchResult:
        ...


@dataclass(frozen=True)
class MethodBackend:
    """A registered method: its scorer and / or searcher, its config class and how `prune` runs it."""

    name: str
    score: Scorer | None
    summary: str
    needs_data: bool = False
    scope: str = "global"
    prepare: Preparer | None = None
    search: Searcher | None = None
    config: type[MethodConfig] = MethodConfig


METHODS: Registry[str, MethodBackend] = Registry("methods")


def register_method(name: str, summary: str, *, needs_data: bool = False, scope: str = "global",
                    prepare: Preparer | None = None, search: Searcher | None = None,
                    config: type[MethodConfig] = MethodConfig, override: bool = False) -> Callable[[Scorer], Scorer]:
    """Register a scoring function under `name` (see docs/extending.md for a worked example).

    `config` is the method's options dataclass (a `MethodConfig` subclass; the default takes no options); the
    backend reads them as `inp.config.<field>`. With `search=` the method is registered at once (no scorer
    needed; decorating a scorer as well adds it). A name that is taken is refused unless `override=True`.

    >>> import numpy as np
    >>> from dataclasses import dataclass
    >>> from fxprune.methods.config import MethodConfig
    >>> @dataclass
    ... class FirstConfig(MethodConfig):
    ...     first_reverse: bool = False
    >>> @register_method("first", "keeps the lowest channel indices (example)", scope="local", config=FirstConfig)
    ... def first(inp):
    ...     sign = 1.0 if inp.config.first_reverse else -1.0
    ...     return {g.id: sign * np.arange(g.size, dtype=float) for g in inp.ga.groups}
    >>> get_method("first").scope, method_config("first", {"first_reverse": True})
    ('local', FirstConfig(first_reverse=True))
    >>> _ = METHODS.unregister("first")
    """
    if scope not in SCOPES:
        raise ValueError(f"register_method({name!r}): scope must be one of {SCOPES}, got {scope!r}.")
    if not (isinstance(config, type) and issubclass(config, MethodConfig)):
        raise TypeError(f"register_method({name!r}): config must be a MethodConfig dataclass, got {config!r}.")

    made: list[MethodBackend] = []

    def add(fn: Scorer | None) -> None:
        backend = MethodBackend(name, _configured(fn, name, config), summary, needs_data, scope,
                                _configured(prepare, name, config), _configured(search, name, config), config)
        if made and METHODS.get(name) is made[-1]:  # the search-only entry this call made: now with its scorer
            METHODS.unregister(name)
        METHODS.register(name, backend, override=override)
        made.append(backend)

    if search is not None:
        add(None)

    def deco(fn: Scorer) -> Scorer:
        add(fn)
        return fn
    return deco


def register_search(name: str, summary: str, *, needs_data: bool = False, config: type[MethodConfig] = MethodConfig,
                    override: bool = False) -> Callable[[Searcher], Searcher]:
    """Register a searching method (no scorer): the decorated function returns a `SearchResult`.

    >>> from fxprune.methods.result import SearchResult
    >>> @register_search("halves", "keeps the first half of every prunable group (example)")
    ... def halves(inp, budget, cost, ignored):
    ...     return SearchResult({g.id: list(range(g.size // 2)) for g in inp.ga.groups
    ...                          if g.prunable and not g.frozen and g.id not in ignored}, log={"note": "halves"})
    >>> get_method("halves").score is None, "halves" in list_methods()
    (True, True)
    >>> _ = METHODS.unregister("halves")
    """
    def deco(fn: Searcher) -> Searcher:
        register_method(name, summary, needs_data=needs_data, search=fn, config=config, override=override)
        return fn
    return deco


def _configured(fn: Callable | None, name: str, config: type[MethodConfig]) -> Callable | None:
    """`fn` called with `inp.config` set: an `inp` built without one (or with another method's) gets
    `config.from_options(inp.options)`."""
    if fn is None:
        return None

    @functools.wraps(fn)
    def call(inp: ScoreInput, *args: Any) -> Any:
        if not isinstance(inp.config, config):
            inp.config = config.from_options(inp.options, method=name)
        return fn(inp, *args)
    return call


def method_config(name: str, options: Mapping[str, Any] | None = None) -> MethodConfig:
    """The config of method `name` for the keyword options given to `fxprune.prune`; an unknown key is a
    `MethodOptionError` naming the closest valid one.

    >>> method_config("random", {"seed": 3})
    RandomConfig(seed=3)
    >>> method_config("random", {"sed": 3})
    Traceback (most recent call last):
    ...
    fxprune.errors.MethodOptionError: method 'random' has no option 'sed' (did you mean 'seed'?). Its options: seed.
    """
    return get_method(name).config.from_options(options, method=name)


def method_of_config(config: MethodConfig) -> str:
    """The name of the one registered method whose config class `config` is (an error when none or several
    are: pass `method=` the name and the options as keywords then)."""
    names = sorted(k for k, b in METHODS.items() if b.config is type(config))
    if len(names) != 1:
        which = f"methods {', '.join(names)} share it" if names else "no registered method uses it"
        raise ValueError(f"{type(config).__name__}: {which}; pass method=NAME and its options as keywords.")
    return names[0]


def get_method(name: str) -> MethodBackend:
    if name not in METHODS:
        raise UnknownMethodError(
            f"unknown pruning method '{name}'. Registered methods: {', '.join(METHODS.list())}. "
            f"Register new ones with fxprune.register_method(name, summary).")
    return METHODS[name]


def list_methods() -> list[str]:
    """Names of the registered method backends.

    >>> {"l1", "l2", "random", "fpgm", "taylor", "slimming", "uniform"} <= set(list_methods())
    True
    """
    return METHODS.list()


def method_summaries() -> dict[str, str]:
    return {k: METHODS[k].summary for k in METHODS.list()}
