"""TAS's width search over `fxprune.methods.search.widths.WidthSpace`, and the differentiable expected cost.

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

import numpy as np
import torch
import torch.nn.functional as F

from fxprune.analysis.analyse import GraphAnalysis
from fxprune.methods.search.gates import position_index


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
