"""JST's search space: a learnable weight per channel, the channel scales it gives, and the sampler.

Every searched channel group g has a learnable vector alpha_g (one weight per channel). The paper scales each
filter of a layer by softmax(alpha) over the layer's filters; fxprune gates the group's channels at every
consumer (fxprune.methods.search.gates) with `n x softmax(alpha)` over the n channels that are alive, so that a uniform
alpha is the identity whatever the width (the paper's filters feed a BN that removes the common factor; at
fxprune's gate sites, after the norm, the factor n keeps the activations' scale).

The sampler (the paper's Algorithm 1): perturb alpha_g with Gaussian noise, take the softmax, rank the channels
by it (frozen channels first: they are always kept) and keep channels in that order until their cumulative
probability reaches the group's threshold. Kept counts honour `round_to` like every other backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fxprune.analysis.keep import Keep
from fxprune.analysis.analyse import GraphAnalysis
from fxprune.methods.search.gates import flat_gates
from fxprune.methods.search.widths import rounded


@dataclass
class Draw:
    """One sampled sub-network: each group's channel ranking (best first) and its kept count."""

    order: dict[int, list[int]]
    counts: dict[int, int]
    space: ChannelWeights

    def keep_count(self, gid: int, n: int) -> list[int]:
        """Group `gid` keeps its `n` best-ranked channels (at least its frozen ones, at least one)."""
        return sorted(self.order[gid][:self.space.count(gid, n)])

    def keep(self) -> Keep:
        return {gid: self.keep_count(gid, n) for gid, n in self.counts.items()}


class ChannelWeights(nn.Module):
    """alpha for every channel of the searched groups, with the scales and the sampler built on it."""

    def __init__(self, ga: GraphAnalysis, gids: list[int], round_to: int = 1) -> None:
        super().__init__()
        self.ga, self.gids, self.round_to = ga, list(gids), int(round_to)
        self.alpha = nn.ParameterList([nn.Parameter(torch.zeros(ga.groups[g].size)) for g in self.gids])
        self.frozen = {g: sorted(ga.groups[g].frozen) for g in self.gids}

    def count(self, gid: int, n: int) -> int:
        g = self.ga.groups[gid]
        return rounded(max(1, len(g.frozen), int(n)), g.size, self.round_to)

    def scales(self, keep: Keep | None = None) -> dict[int, torch.Tensor]:
        """{group id: per-channel scale}: n x softmax(alpha) over the n kept channels, 0 elsewhere (`keep`
        None: every channel kept -- the coarse training)."""
        out = {}
        for gid, a in zip(self.gids, self.alpha):
            if keep is None:
                out[gid] = a.numel() * F.softmax(a, dim=0)
                continue
            alive = torch.zeros(a.numel(), dtype=torch.bool, device=a.device)
            alive[torch.as_tensor(keep[gid], device=a.device)] = True
            out[gid] = len(keep[gid]) * F.softmax(a.masked_fill(~alive, float("-inf")), dim=0)
        return out

    def flat(self, keep: Keep | None = None, scaled: bool = True) -> torch.Tensor:
        """The flat gate vector (fxprune.methods.search.gates) of `keep` with the channel scales (`scaled`) or as a
        plain 0/1 mask -- the latter computes what the slim model of `keep` computes."""
        like = self.alpha[0] if len(self.alpha) else None
        if scaled:
            return flat_gates(self.ga, self.scales(keep), like)
        masks = {}
        for gid in (keep or {}):
            m = torch.zeros(self.ga.groups[gid].size)
            m[torch.as_tensor(keep[gid], dtype=torch.long)] = 1.0
            masks[gid] = m
        return flat_gates(self.ga, masks, like)

    def penalty(self) -> torch.Tensor:
        """sum over groups of ||alpha_g||_2 (the coarse training's regulariser)."""
        return torch.stack([a.norm(2) for a in self.alpha]).sum() if len(self.alpha) else torch.zeros(())

    def features(self) -> list[torch.Tensor]:
        """ThresNet's inputs: each group's n x softmax(alpha), sorted descending (detached)."""
        return [(a.numel() * F.softmax(a.detach(), dim=0)).sort(descending=True).values for a in self.alpha]

    def ranked(self, keep: Keep) -> Draw:
        """`keep` as a draw: in each group its kept channels first, then the others, each part by alpha
        (descending) -- growing it adds the channels JST weighs most."""
        order = {}
        for gid, a in zip(self.gids, self.alpha):
            kept = set(keep[gid])
            score = a.detach().cpu().double().numpy()
            dropped = [c not in kept for c in range(len(score))]
            order[gid] = np.lexsort((np.arange(len(score)), -score, dropped)).tolist()
        return Draw(order, {gid: len(keep[gid]) for gid in self.gids}, self)

    def sample(self, thresholds: torch.Tensor, noise: float, generator: torch.Generator | None) -> Draw:
        """Algorithm 1 per group: alpha + noise, softmax, ranked; kept until the cumulative probability reaches
        the group's threshold (`noise` 0 or no generator: no perturbation)."""
        order, counts = {}, {}
        th = thresholds.detach().cpu().double().numpy()
        for i, (gid, a) in enumerate(zip(self.gids, self.alpha)):
            n = a.detach().cpu().double()
            if noise > 0 and generator is not None:
                n = n + noise * torch.randn(n.shape, generator=generator, dtype=torch.float64)
            p = F.softmax(n, dim=0).numpy()
            not_frozen = np.ones(len(p), dtype=bool)
            not_frozen[self.frozen[gid]] = False
            rank = np.lexsort((np.arange(len(p)), -p, not_frozen))
            cum = np.cumsum(p[rank])
            order[gid] = rank.tolist()
            counts[gid] = int(min(len(p), np.searchsorted(cum, th[i] - 1e-12) + 1))
        return Draw(order, counts, self)
