"""The keep decision and what it means for the graph.

`Keep` is the hand-off between the stages: `fxprune.selection` and the searching methods produce one, the cost
model prices it, the mask stage and the rewriter apply it, a `PruningPlan` stores it. `Survivors` answers
"which positions of this label array survive" for one Keep: the question every later stage asks of the graph.

>>> keep = Keep({0: [0, 2]})
>>> keep.kept_of(0, 4), keep.kept_of(1, 3)
([0, 2], [0, 1, 2])
>>> keep.removed({0: 4})
{0: {1, 3}}
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch.fx as fx

from fxprune.analysis.analyse import GraphAnalysis
from fxprune.analysis.context import NodeFacts
from fxprune.analysis.labels import Labels


class Keep(dict[int, list[int]]):
    """{group id: kept channel indices, ascending}; a group that is absent keeps all of its channels.

    A plain dict underneath (JSON-friendly, cheap to copy), named so the stages can say what they hand over.
    """

    def kept_of(self, gid: int, size: int) -> list[int]:
        """The kept channels of group `gid` (all `size` of them when the decision leaves it alone)."""
        return list(self[gid]) if gid in self else list(range(size))

    def removed(self, sizes: Mapping[int, int] | GraphAnalysis) -> dict[int, set[int]]:
        """{group id: channels removed} for the groups this decision decides; `sizes` maps group id -> size
        (or is the GraphAnalysis)."""
        if isinstance(sizes, GraphAnalysis):
            sizes = {g.id: g.size for g in sizes.groups}
        return {gid: set(range(sizes[gid])) - set(kept) for gid, kept in self.items()}

    @classmethod
    def of(cls, decision: Mapping[int, Any] | None) -> Keep:
        """`decision` as a Keep (indices as sorted ints); a Keep is returned as it is."""
        if isinstance(decision, Keep):
            return decision
        return cls({int(g): sorted(int(i) for i in kept) for g, kept in (decision or {}).items()})


class Survivors:
    """Answers "which positions survive" for any label array, under one keep decision."""

    def __init__(self, ga: GraphAnalysis, keep: Mapping[int, list[int]]) -> None:
        self.ga = ga
        self.alive_roots = ga.alive_roots(keep)
        self.root = ga.analysis.gm

    def labels(self, arg: Any) -> Labels | None:
        return self.ga.analysis.labels(arg)

    def extra(self, node: fx.Node) -> NodeFacts:
        return self.ga.analysis.node_extra.get(node.name, {})

    def keep_mask(self, arr: np.ndarray) -> np.ndarray:
        return self.ga.keep_mask(arr, self.alive_roots)

    def keep_index(self, arr: np.ndarray) -> np.ndarray:
        return np.nonzero(self.keep_mask(arr))[0]

    def alive_count(self, arr: np.ndarray) -> int:
        return int(self.keep_mask(arr).sum())

    def alive_fraction(self, arr: np.ndarray) -> float:
        return float(self.keep_mask(arr).mean()) if len(arr) else 1.0
