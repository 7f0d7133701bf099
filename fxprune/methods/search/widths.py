"""Candidate widths per channel group: the width space TAS, MetaPruning and JST search.

Every searched group g has candidate widths w_k = max(1, round(f_k x size)) for the fractions f_k. Its
channels are ranked by importance (frozen channels first, then by score), and width w keeps the w best-ranked
ones. The 0/1 rows `widths[g][k]` (one per candidate, in channel order) turn a weighting of the candidates into
a gate vector (sampled architectures) or into each channel's keep probability (TAS's expected cost).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fxprune.analysis.keep import Keep
from fxprune.analysis.analyse import GraphAnalysis
from fxprune.methods.search.gates import flat_gates

DEFAULT_FRACTIONS = tuple(round(0.3 + 0.1 * i, 1) for i in range(8))  # 0.3 ... 1.0, as the official code


def rounded(n: int, size: int, round_to: int) -> int:
    """`n` rounded up to a multiple of `round_to` (when the group has that many channels), at most `size`."""
    if round_to > 1 and size >= round_to:
        n = -(-n // round_to) * round_to
    return min(size, n)


@dataclass
class WidthSpace:
    ga: GraphAnalysis
    gids: list[int]  # searched groups
    fractions: tuple[float, ...]
    widths: dict[int, torch.Tensor]  # group id -> (candidates, size) 0/1 masks
    counts: dict[int, list[int]]  # group id -> kept channel count of each candidate
    ranking: dict[int, list[int]]  # group id -> channels, best first
    round_to: int = 1  # kept counts are multiples of it where the group is that large

    @classmethod
    def build(cls, ga: GraphAnalysis, gids: list[int], scores: dict[int, np.ndarray],
              fractions: tuple[float, ...] = DEFAULT_FRACTIONS, round_to: int = 1) -> WidthSpace:
        """Candidate k of a group keeps round(fraction_k x size) channels, rounded up to a multiple of
        `round_to` (hardware-aware widths) where the group has at least that many."""
        widths, counts, ranking = {}, {}, {}
        for gid in gids:
            g = ga.groups[gid]
            not_frozen = np.ones(g.size, dtype=bool)
            not_frozen[list(g.frozen)] = False
            order = np.lexsort((np.arange(g.size), -np.asarray(scores[gid], dtype=np.float64), not_frozen))
            ranking[gid] = order.tolist()
            counts[gid] = [rounded(max(1, len(g.frozen), int(round(f * g.size))), g.size, round_to)
                           for f in fractions]
            m = torch.zeros(len(fractions), g.size)
            for k, n in enumerate(counts[gid]):
                m[k, torch.as_tensor(order[:n])] = 1.0
            widths[gid] = m
        return cls(ga, gids, tuple(fractions), widths, counts, ranking, round_to)

    def keep_of(self, choice: dict[int, int]) -> Keep:
        """{group id: kept channels} of a candidate index per group."""
        return {gid: sorted(self.ranking[gid][:self.counts[gid][k]]) for gid, k in choice.items()}

    def keep_count(self, gid: int, n: int) -> list[int]:
        """Group `gid` keeps its `n` best-ranked channels (at least its frozen ones, at least one)."""
        g = self.ga.groups[gid]
        return sorted(self.ranking[gid][:rounded(max(1, len(g.frozen), n), g.size, self.round_to)])

    def gates(self, weights: torch.Tensor) -> dict[int, torch.Tensor]:
        """Gate vectors from a (groups, candidates) weighting: sum_k weight_k x mask of width k."""
        return {gid: weights[i] @ self.widths[gid].to(weights.device) for i, gid in enumerate(self.gids)}

    def flat(self, weights: torch.Tensor) -> torch.Tensor:
        return flat_gates(self.ga, self.gates(weights), weights)
