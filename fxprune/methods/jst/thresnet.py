"""ThresNet: the policy network of Joint Search-and-Training that maps channel weights to per-group thresholds.

Input: one vector per searched group (its channels' n x softmax(alpha), sorted, so that the threshold depends
on the shape of the distribution and not on channel order). One input branch per distinct group size (an FC
layer to `hidden` = 128, ReLU, as in the paper); the branches' outputs of all groups are concatenated and a
shared FC layer gives one value per group, squashed into [low, high]: the mean of a Gaussian policy (fixed
standard deviation `std`) from which each sub-network's thresholds are drawn.

`Reinforce` trains it with the paper's policy gradient, grad J = 1/K sum_k R_k grad log pi(beta_k | alpha),
with a running-mean baseline subtracted from the reward (variance reduction; the paper's formula has none).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal


class ThresNet(nn.Module):
    """Per-group thresholds from per-group alpha features.

    >>> net = ThresNet([16, 16, 32], init=0.7)
    >>> [round(float(t), 3) for t in net([torch.ones(16), torch.ones(16), torch.ones(32)])]
    [0.7, 0.7, 0.7]
    """

    def __init__(self, sizes: list[int], init: float = 0.7, hidden: int = 128, low: float = 0.05,
                 high: float = 1.0, std: float = 0.05) -> None:
        super().__init__()
        if not 0 <= low < high <= 1:
            raise ValueError(f"ThresNet: thresholds are cumulative probabilities, so 0 <= low < high <= 1 "
                             f"(got low={low}, high={high}).")
        self.sizes, self.low, self.high, self.std = list(sizes), float(low), float(high), float(std)
        self.branches = nn.ModuleDict({str(s): nn.Linear(s, hidden) for s in sorted(set(self.sizes))})
        self.head = nn.Linear(hidden * len(self.sizes), len(self.sizes))
        self.set_mean(init)

    def set_mean(self, value: float) -> None:
        """Output `value` for every group whatever the input (head weights zeroed, bias at its logit)."""
        frac = min(max((float(value) - self.low) / (self.high - self.low), 1e-4), 1 - 1e-4)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.fill_(math.log(frac / (1 - frac)))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Mean threshold per group, in [low, high]."""
        h = [F.relu(self.branches[str(f.numel())](f.to(self.head.weight))) for f in features]
        return self.low + (self.high - self.low) * torch.sigmoid(self.head(torch.cat(h)))

    def act(self, features: list[torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(thresholds clamped to [low, high], log-probability of the draw under the policy)."""
        mean = self(features)
        eps = torch.randn(mean.shape, generator=generator).to(mean)
        raw = mean.detach() + self.std * eps
        return raw.clamp(self.low, self.high), Normal(mean, self.std).log_prob(raw).sum()


class Reinforce:
    """Policy-gradient updates of a ThresNet from (log-probability, reward) pairs."""

    def __init__(self, net: ThresNet, lr: float = 1e-3, decay: float = 0.9) -> None:
        self.net, self.decay = net, float(decay)
        self.opt = torch.optim.Adam(net.parameters(), lr=lr)
        self.baseline: float | None = None
        self.pending: list[tuple[torch.Tensor, float]] = []

    def record(self, log_prob: torch.Tensor, reward: float) -> None:
        self.pending.append((log_prob, float(reward)))

    def update(self) -> float | None:
        """One step on the recorded samples (then forgotten); returns the policy loss, None without samples."""
        if not self.pending:
            return None
        terms = []
        for log_prob, reward in self.pending:
            base = reward if self.baseline is None else self.baseline
            terms.append(-(reward - base) * log_prob)
            self.baseline = reward if self.baseline is None else self.decay * self.baseline + (1 - self.decay) * reward
        loss = torch.stack(terms).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.pending = []
        return float(loss.detach())

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.baseline = state["baseline"]
