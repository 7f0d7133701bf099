"""TAS's width search space over fxprune's channel groups, and the differentiable expected cost.

Every searched group g has a categorical distribution over candidate widths w_k = max(1, round(f_k x size))
for the fractions f_k (`tas_fractions`). Its channels are ranked by importance (frozen channels first, then
by L1 score), and width w keeps the w best-ranked ones: channel-wise interpolation (CWI) in mask form. The
0/1 rows `widths[g][k]` (one per candidate, in channel order) turn a weighting of the candidates into a
gate vector (sampled architectures) or into each channel's keep probability (the expected cost).

`ExpectedCost` evaluates the cost model's terms (FLOPs or params: sum over terms of count x product of the
alive fraction of each label array) with per-channel keep probabilities instead of 0/1 decisions. A term's
arrays are treated as independent, which is exact for one-hot distributions (then it equals
`CostModel.flops` of that decision) and for arrays of distinct groups.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..analysis.analyse import GraphAnalysis
from .gates import flat_gates, position_index

DEFAULT_FRACTIONS = tuple(round(0.3 + 0.1 * i, 1) for i in range(8))  # 0.3 ... 1.0, as the official code


def _rounded(n: int, size: int, round_to: int) -> int:
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
            counts[gid] = [_rounded(max(1, len(g.frozen), int(round(f * g.size))), g.size, round_to)
                           for f in fractions]
            m = torch.zeros(len(fractions), g.size)
            for k, n in enumerate(counts[gid]):
                m[k, torch.as_tensor(order[:n])] = 1.0
            widths[gid] = m
        return cls(ga, gids, tuple(fractions), widths, counts, ranking, round_to)

    def keep_of(self, choice: dict[int, int]) -> dict[int, list[int]]:
        """{group id: kept channels} of a candidate index per group."""
        return {gid: sorted(self.ranking[gid][:self.counts[gid][k]]) for gid, k in choice.items()}

    def keep_count(self, gid: int, n: int) -> list[int]:
        """Group `gid` keeps its `n` best-ranked channels (at least its frozen ones, at least one)."""
        g = self.ga.groups[gid]
        return sorted(self.ranking[gid][:_rounded(max(1, len(g.frozen), n), g.size, self.round_to)])

    def gates(self, weights: torch.Tensor) -> dict[int, torch.Tensor]:
        """Gate vectors from a (groups, candidates) weighting: sum_k weight_k x mask of width k."""
        return {gid: weights[i] @ self.widths[gid].to(weights.device) for i, gid in enumerate(self.gids)}

    def flat(self, weights: torch.Tensor) -> torch.Tensor:
        return flat_gates(self.ga, self.gates(weights), weights)


def sample_two(logits: torch.Tensor, tau: float, num: int, generator: torch.Generator) -> torch.Tensor:
    """The official code's `select2withP` per row: Gumbel-perturbed logits / tau, `num` candidates drawn
    without replacement from their softmax, weighted by the softmax over the drawn ones; returns the dense
    (rows, candidates) weighting (zero outside the drawn candidates)."""
    num = min(num, logits.shape[1])
    u = torch.rand(logits.shape, generator=generator).to(logits.device)  # a CPU generator: same draws anywhere
    gumbels = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))
    new_logits = (logits.log_softmax(dim=1) + gumbels) / tau
    with torch.no_grad():
        probs = F.softmax(new_logits, dim=1).double().cpu() + 1e-7
        index = torch.multinomial(probs, num, replacement=False, generator=generator).to(logits.device)
    chosen = F.softmax(torch.gather(new_logits, 1, index), dim=1)
    return torch.zeros_like(logits).scatter(1, index, chosen)


class ExpectedCost(torch.nn.Module):
    """Differentiable cost (FLOPs or params) of per-channel keep probabilities, from a CostModel's terms."""

    def __init__(self, ga: GraphAnalysis, terms: list[tuple[int, list[np.ndarray]]],
                 term_blocks: list[int] | None = None) -> None:
        super().__init__()
        blocks = torch.as_tensor(term_blocks if term_blocks is not None else [-1] * len(terms), dtype=torch.long)
        self.register_buffer("blocks", blocks, persistent=False)  # the residual block holding a term, or -1
        arrays: dict[int, int] = {}
        index_of_arr: list[torch.Tensor] = []
        rows = []
        for _, arrs in terms:
            row = []
            for arr in arrs:
                if id(arr) not in arrays:
                    arrays[id(arr)] = len(index_of_arr)
                    index_of_arr.append(position_index(ga, arr) if len(arr) else None)
                row.append(arrays[id(arr)])
            rows.append(row)
        self.n_chan = int(ga.offsets[-1])
        self.positions = index_of_arr
        width = max([len(r) for r in rows] + [1])
        pad = len(index_of_arr)  # a constant 1 after the array fractions
        table = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            table[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        self.register_buffer("table", table, persistent=False)
        self.register_buffer("counts", torch.as_tensor([float(n) for n, _ in terms], dtype=torch.float64),
                             persistent=False)

    def forward(self, flat: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """`flat`: keep probability of every channel plus the trailing 1 (see `flat_gates`); `active`: the
        probability that each residual block of the depth search is present (terms outside blocks: 1)."""
        flat = flat.double()
        if any(idx is not None and idx.device != flat.device for idx in self.positions):
            self.positions = [None if idx is None else idx.to(flat.device) for idx in self.positions]
        fracs = [flat[idx].prod(1).mean() if idx is not None else flat.new_ones(()) for idx in self.positions]
        fracs.append(flat.new_ones(()))
        per_term = torch.stack(fracs)[self.table.to(flat.device)].prod(1)
        if active is not None and len(active):
            present = torch.cat([active.to(flat), flat.new_ones(1)])
            blocks = self.blocks.to(flat.device)
            per_term = per_term * present[torch.where(blocks < 0, len(active), blocks)]
        return (per_term * self.counts.to(flat.device)).sum()
