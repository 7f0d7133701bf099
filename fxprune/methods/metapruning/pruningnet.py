"""MetaPruning's PruningNet, generated for any traced model.

Every conv / linear module whose weight carries a channel group gets a weight generator (two FC layers:
the width ratios of its input and output groups -> 32 hidden -> the full weight, installed as a
`torch.nn.utils.parametrize` parametrization), and every BatchNorm of a searched group is replaced by a
BatchNorm with one set of running statistics per width choice (the official code's per-width BN; the model's
own affine parameters are kept, shared by the widths, unless `metapruning_bn_affine=False`).
A candidate's widths (first channels kept, frozen ones always) are applied with the soft masks of
`fxprune.methods.search.gates`: zeroing an input channel at every consumer is what cropping the generated weight
does. The generator's bias starts at the module's current weight, so a trained model starts the PruningNet
at its own weights (the paper trains it from scratch; a freshly initialised model does the same here).
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from fxprune.analysis.analyse import GraphAnalysis
from fxprune.methods.search.gates import group_of_array, install_gates
from fxprune.methods.search.dist import average_norm_stats
from fxprune.methods.search.widths import WidthSpace

__all__ = ["PruningNet", "WidthState"]

HIDDEN = 32


class WidthState(nn.Module):
    """The current candidate: each searched group's width-choice index and width ratio."""

    def __init__(self, space: WidthSpace) -> None:
        super().__init__()
        self.space = space
        self.slot = {gid: i for i, gid in enumerate(space.gids)}  # group id -> row; unsearched groups: ratio 1
        self.register_buffer("ratios", torch.ones(len(space.gids) + 1), persistent=False)
        self.choice: tuple[int, ...] = tuple(len(space.fractions) - 1 for _ in space.gids)

    def set(self, choice: tuple[int, ...]) -> None:
        self.choice = tuple(int(k) for k in choice)
        ratios = [self.space.counts[gid][k] / self.space.ga.groups[gid].size for gid, k in zip(self.space.gids,
                                                                                                self.choice)]
        self.ratios.copy_(torch.as_tensor(ratios + [1.0]))

    def index_of(self, gid: int | None) -> int:
        return self.slot.get(gid, len(self.space.gids)) if gid is not None else len(self.space.gids)

    def choice_of(self, gid: int) -> int:
        return self.choice[self.slot[gid]]


class Generated(nn.Module):
    """The parametrization: weight = FC(relu(FC([in ratio, out ratio]))) reshaped (the original is unused).

    The second FC's matrix product is scaled by 1/sqrt(hidden): an SGD step then moves the generated weight
    by about the step of the weight itself (the bias path) plus a fraction of it (the width-dependent path).
    Unscaled, the hidden units' squared norm (about 10) multiplies the effective learning rate of every
    generated weight, and one epoch at the model's own learning rate wrecks a trained model."""

    def __init__(self, weight: torch.Tensor, state: WidthState, in_slot: int, out_slot: int) -> None:
        super().__init__()
        self.shape = tuple(weight.shape)
        self.state = [state]  # not a submodule: shared by every generator
        self.in_slot, self.out_slot = in_slot, out_slot
        self.fc1 = nn.Linear(2, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, weight.numel())
        with torch.no_grad():
            self.fc2.weight.mul_(0.01 * float(weight.std().clamp_min(1e-3)))
            self.fc2.bias.copy_(weight.detach().flatten())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        ratios = self.state[0].ratios
        x = torch.stack([ratios[self.in_slot], ratios[self.out_slot]]).to(self.fc1.weight.dtype)
        hidden = F.relu(self.fc1(x))
        return (self.fc2.bias + F.linear(hidden, self.fc2.weight) * HIDDEN ** -0.5).view(self.shape)


class PerWidthBatchNorm(nn.Module):
    """Batch norm with one set of running statistics per width choice of its group.

    `affine=False` is the official code's non-affine norm. `affine=True` keeps the model's own per-channel
    (gamma, beta), shared by every width (a group keeps its first channels, so channel c is the same channel at
    every width): a trained model's PruningNet then starts at the model's own function at full width."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, state: WidthState, gid: int, choices: int,
                 affine: bool = True) -> None:
        super().__init__()
        self.state, self.gid, self.eps, self.momentum = [state], gid, bn.eps, bn.momentum
        self.register_buffer("running_mean", torch.zeros(choices, bn.num_features))
        self.register_buffer("running_var", torch.ones(choices, bn.num_features))
        self.register_buffer("tracked", torch.zeros(choices, dtype=torch.long))
        keep = affine and bn.affine
        self.weight = nn.Parameter(bn.weight.detach().clone()) if keep else None
        self.bias = nn.Parameter(bn.bias.detach().clone()) if keep else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.state[0].choice_of(self.gid)
        factor = 0.0
        if self.training:
            self.tracked[k] += 1
            factor = 1.0 / float(self.tracked[k]) if self.momentum is None else self.momentum
        return F.batch_norm(x, self.running_mean[k], self.running_var[k], self.weight, self.bias, self.training,
                            factor, self.eps)

    def reset(self) -> None:
        """Forget the current width choice's statistics (before a recalibration)."""
        k = self.state[0].choice_of(self.gid)
        self.running_mean[k].zero_()
        self.running_var[k].fill_(1.0)
        self.tracked[k] = 0


class PruningNet:
    """A gated copy of the traced module with generated weights and per-width BN (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, ga: GraphAnalysis, space: WidthSpace, bn_affine: bool = True) -> None:
        self.space, self.bn_affine = space, bn_affine
        self.net, self.gates = install_gates(gm, ga)
        self.state = WidthState(space)
        self.net.add_module("fxprune_widths", self.state)
        self.generated = self._install_generators(ga)
        self.norms = self._install_norms(ga)

    def _install_generators(self, ga: GraphAnalysis) -> dict[str, Generated]:
        out = {}
        for node in self.net.graph.nodes:
            if node.op != "call_module":
                continue
            module = self.net.get_submodule(node.target)
            dims = ga.analysis.params.get(f"{node.target}.weight")
            if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) or not dims:
                continue
            slots = [self.state.index_of(group_of_array(ga, dims.get(d))) for d in (1, 0)]
            if all(s == len(self.space.gids) for s in slots) or node.target in out:
                continue  # no searched group on either side: trained as it is
            gen = Generated(module.weight, self.state, *slots)
            parametrize.register_parametrization(module, "weight", gen, unsafe=True)
            module.parametrizations.weight.original.requires_grad_(False)
            out[node.target] = gen
        return out

    def _install_norms(self, ga: GraphAnalysis) -> dict[str, PerWidthBatchNorm]:
        out = {}
        for name, module in list(self.net.named_modules()):
            dims = ga.analysis.params.get(f"{name}.weight") or ga.analysis.params.get(f"{name}.running_mean")
            if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not dims:
                continue
            gid = group_of_array(ga, dims.get(0))
            if gid not in self.state.slot:
                continue
            norm = PerWidthBatchNorm(module, self.state, gid, len(self.space.fractions), self.bn_affine)
            parent, _, child = name.rpartition(".")
            setattr(self.net.get_submodule(parent) if parent else self.net, child, norm)
            out[name] = norm
        return out

    def set(self, choice: tuple[int, ...]) -> None:
        """Run the candidate `choice` (one width-choice index per searched group) from now on."""
        self.state.set(choice)
        onehot = torch.zeros(len(self.space.gids), len(self.space.fractions))
        onehot[torch.arange(len(choice)), torch.as_tensor(choice)] = 1.0
        device = self.state.ratios.device
        self.gates.set(self.space.flat(onehot.to(device)))

    def recalibrate(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The current candidate's BN statistics recomputed (cumulative average) on `batches`."""
        was, saved = self.net.training, {name: n.momentum for name, n in self.norms.items()}
        for norm in self.norms.values():
            norm.reset()
            norm.momentum = None  # cumulative average over the batches
        self.net.train()
        with torch.no_grad():
            for x, _ in batches:
                self.net(x)
        for name, norm in self.norms.items():
            norm.momentum = saved[name]
        self.net.train(was)
        average_norm_stats(self.net)  # a distributed search: the statistics of every rank's batches

    def generated_weights(self) -> dict[str, torch.Tensor]:
        """{module name: the current candidate's generated full-size weight}."""
        with torch.no_grad():
            return {name: gen(None).detach().clone() for name, gen in self.generated.items()}

