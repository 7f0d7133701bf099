"""What a searching method returns: the kept channels, the blocks it removed, its log and its timings.

`fxprune.prune` repairs `keep` and checks the budget, removes `skipped_blocks`, and stores `record()` (the
log and the timings, JSON-able) as the plan's `search` field, which the report draws from.

>>> r = SearchResult({0: [0, 2]}, log={"searched_fractions": [[0, 0.5]]}, timings={"search": 1.23456})
>>> r.record()
{'searched_fractions': [[0, 0.5]], 'search_s': 1.235}
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fxprune.analysis.keep import Keep


@dataclass
class SearchResult:
    """A search's decision and what it recorded.

    `keep`: {group id: kept channel indices} (groups left out keep everything); `skipped_blocks`: residual
    blocks removed whole, as [add node, shortcut node] (a depth search); `log`: JSON-able records by name
    (searched widths, curves, chosen points); `timings`: seconds by phase name, recorded as "<name>_s".
    """

    keep: Keep
    skipped_blocks: list[list[str]] = field(default_factory=list)
    log: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The log and the timings (rounded to ms) as one JSON-able dict: what `PruningPlan.search` holds."""
        out = dict(self.log)
        for name, seconds in self.timings.items():
            key = f"{name}_s"
            if key in out:
                raise ValueError(f"SearchResult: timing {name!r} and log entry {key!r} share the key {key!r}.")
            out[key] = round(float(seconds), 3)
        for key, value in out.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                raise TypeError(f"SearchResult.log[{key!r}] is not JSON-serialisable ({type(value).__name__}); "
                                f"record plain numbers, strings and lists.") from None
        return out


def as_search_result(found: SearchResult | Mapping) -> SearchResult:
    """A searcher's return value as a SearchResult (a plain {group id: kept channels} dict is accepted)."""
    if isinstance(found, SearchResult):
        return found
    if isinstance(found, Mapping):
        return SearchResult(found if isinstance(found, Keep) else Keep(found))
    raise TypeError(f"a search backend must return a SearchResult (or a {{group id: kept channels}} dict), got "
                    f"{type(found).__name__}.")
