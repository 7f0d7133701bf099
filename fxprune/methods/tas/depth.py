"""TAS's depth search over runs of residual blocks found in the graph (fxprune.analysis.blocks).

Every run of n >= 2 identity-shortcut blocks gets a learnable distribution over its depth d = 1 ... n (the
first d blocks kept, the rest removed). During the search the run's output is the TAS aggregation of the
sampled depths: sum_d w_d x (the value after block d), with w the Gumbel-softmax weights of the sampled
depths (`DepthMix`, one node inserted after the run's last output point). In the expected cost, block k of
a run is present with probability P(d >= k), which scales the cost terms of the nodes of its branch.
The most probable depth of each run gives the blocks the plan removes (`PruningPlan.skipped_blocks`).
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from fxprune.analysis.blocks import BlockRun, find_runs
from fxprune.cost.model import CostModel

__all__ = ["DepthGates", "DepthSearch", "DepthSpace"]

DEPTH_PREFIX = "fxprune_depth_"


class DepthGates(nn.Module):
    """The current depth weighting of every run (None: full depth), read by the runs' DepthMix modules."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[torch.Tensor] | None = None

    def set(self, weights: list[torch.Tensor] | None) -> None:
        self.weights = weights


class DepthMix(nn.Module):
    """sum_d w_d x points[d] for one run; the deepest point when no weighting is set."""

    def __init__(self, gates: DepthGates, run: int) -> None:
        super().__init__()
        self.run = run
        self._gates = [gates]  # a list: not registered as a submodule twice

    def forward(self, *points: torch.Tensor) -> torch.Tensor:
        weights = self._gates[0].weights
        if weights is None:
            return points[-1]
        w = weights[self.run].to(points[-1].dtype)
        return sum(w[d] * p for d, p in enumerate(points))


class DepthSpace:
    """The searched runs of a traced module and what their depth choices cost and remove."""

    def __init__(self, runs: list[BlockRun]) -> None:
        self.runs = runs
        self.sizes = [len(r.blocks) for r in runs]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(runs))]  # first block's index of each run

    @classmethod
    def build(cls, gm: fx.GraphModule) -> DepthSpace:
        return cls(find_runs(gm, min_blocks=2))

    def __len__(self) -> int:
        return len(self.runs)

    def install(self, gated: fx.GraphModule) -> DepthGates:
        """Insert a DepthMix after every run's last point of `gated` (a graph copy); returns their gates."""
        gates = DepthGates()
        gated.add_module(f"{DEPTH_PREFIX}gates", gates)
        nodes = {n.name: n for n in gated.graph.nodes}
        for r, run in enumerate(self.runs):
            name = f"{DEPTH_PREFIX}{r}"
            gated.add_module(name, DepthMix(gates, r))
            last = nodes[run.points[-1]]
            with gated.graph.inserting_after(last):
                mix = gated.graph.call_module(name, tuple(nodes[p] for p in run.points))
            last.replace_all_uses_with(mix, delete_user_cb=lambda user: user is not mix)
        gated.recompile()
        return gates

    def active(self, probs: list[torch.Tensor]) -> torch.Tensor:
        """P(block present) of every block of every run: P(d >= k) for block k (1-based) of a run."""
        parts = [torch.flip(torch.cumsum(torch.flip(p, [0]), 0), [0]) for p in probs]
        return torch.cat(parts) if parts else torch.zeros(0)

    def skipped(self, depths: list[int]) -> list[list[str]]:
        """[add, shortcut] of every block beyond each run's depth (depths are 1-based counts)."""
        return [[b.add, b.shortcut] for run, d in zip(self.runs, depths) for b in run.blocks[d:]]

    def term_blocks(self, gm: fx.GraphModule, cost: CostModel, kind: str) -> list[int]:
        """For each cost term of `kind`, the global index of the block whose branch holds it (-1: none)."""
        node_block = {name: self.offsets[r] + k for r, run in enumerate(self.runs)
                      for k, b in enumerate(run.blocks) for name in b.branch}
        if kind == "flops":
            return [node_block.get(n, -1) for n in cost.flop_nodes]
        param_block = _param_blocks(gm, node_block)
        return [param_block.get(n, -1) for n in cost.param_names]


def _param_blocks(gm: fx.GraphModule, node_block: dict[str, int]) -> dict[str, int]:
    """Parameters used only inside one block's branch -> that block."""
    users: dict[str, set[int]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            names = [f"{node.target}.{p}" for p, _ in gm.get_submodule(node.target).named_parameters()]
        elif node.op == "get_attr":
            names = [node.target]
        else:
            continue
        blocks = {node_block.get(u.name, -1) for u in node.users} if node.op == "get_attr" else {
            node_block.get(node.name, -1)}
        for name in names:
            users.setdefault(name, set()).update(blocks)
    return {name: next(iter(blocks)) for name, blocks in users.items() if len(blocks) == 1 and -1 not in blocks}


class DepthSearch:
    """The depth side of one TAS search: the space, the installed gates and the depth logits."""

    def __init__(self, space: DepthSpace, gates: DepthGates, device: torch.device,
                 generator: torch.Generator) -> None:
        self.space, self.gates = space, gates
        self.betas = [nn.Parameter((0.01 * torch.randn(n, generator=generator)).to(device)) for n in space.sizes]

    def sample(self, tau: float, samples: int, generator: torch.Generator, grad: bool) -> None:
        """Set the gates to freshly sampled depth weightings (differentiable in the betas when `grad`)."""
        from fxprune.methods.tas.space import sample_two

        self.gates.set([sample_two((b if grad else b.detach())[None], tau, samples, generator)[0]
                        for b in self.betas])

    def expected_active(self) -> torch.Tensor:
        return self.space.active([torch.softmax(b, 0) for b in self.betas])

    def argmax_active(self) -> torch.Tensor:
        return self.space.active([torch.nn.functional.one_hot(b.argmax(), len(b)).to(b) for b in self.betas])

    def depths(self) -> list[int]:
        """The most probable depth (number of blocks kept) of every run."""
        return [int(b.argmax()) + 1 for b in self.betas]
