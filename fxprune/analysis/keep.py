"""What a rewrite step needs to know: which positions of a label array survive a keep decision."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx

from fxprune.analysis.analyse import GraphAnalysis
from fxprune.analysis.labels import Labels


class RewriteContext:
    """Answers "which positions survive" for any label array, under one keep decision."""

    def __init__(self, ga: GraphAnalysis, keep: dict[int, list[int]]) -> None:
        self.ga = ga
        self.alive_roots = ga.alive_roots(keep)
        self.root = ga.analysis.gm

    def labels(self, arg: Any) -> Labels | None:
        return self.ga.analysis.labels(arg)

    def extra(self, node: fx.Node) -> dict[str, Any]:
        return self.ga.analysis.node_extra.get(node.name, {})

    def keep_mask(self, arr: np.ndarray) -> np.ndarray:
        return self.ga.keep_mask(arr, self.alive_roots)

    def keep_index(self, arr: np.ndarray) -> np.ndarray:
        return np.nonzero(self.keep_mask(arr))[0]

    def alive_count(self, arr: np.ndarray) -> int:
        return int(self.keep_mask(arr).sum())

    def alive_fraction(self, arr: np.ndarray) -> float:
        return float(self.keep_mask(arr).mean()) if len(arr) else 1.0
