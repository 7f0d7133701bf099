"""Per-group channel gates driving the soft masks of a graph copy: the shared tool of learned methods.

A learned method (TAS, and later JST or MetaPruning) expresses its current choice as one gate vector per
channel group (a tensor of `g.size` values: 1 keeps a channel, 0 removes it, anything in between scales
it). `install_gates` takes a deep copy of a traced module, writes a soft mask at every consumer input of
every group (exactly where `fxprune.apply_masks` puts its masks) and replaces each mask by a call to one
`ChannelGates` module. Each mask position is made of one or several channels (a head x head-dim position of
attention has two factors); its value is the product of the gates of its channels, and positions that carry
no group's channel stay 1. With 0/1 gates the gated copy computes exactly what the masked model (and so the
slim model) of the same keep decision computes.

>>> import torch, fxprune
>>> m = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
>>> ga = fxprune.prepare(m, torch.randn(1, 4))
>>> gated, gates = install_gates(ga.gm, ga)
>>> gates.set({0: torch.tensor([1., 1., 0., 0., 0., 0.])})
>>> gates(0)
tensor([1., 1., 0., 0., 0., 0.])
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from fxprune.analysis.keep import Keep
from fxprune.analysis.analyse import GraphAnalysis
from fxprune.rewrite.masks import insert_masks

GATES_NAME = "fxprune_gates"


def position_index(ga: GraphAnalysis, arr: np.ndarray) -> torch.Tensor:
    """(positions, factors) global channel ids of every position of a label array.

    Missing factors (positions carrying fewer channels, or none) hold the pad id `ga.offsets[-1]`, which
    indexes an extra constant 1 appended to a flat gate vector: the product over a row is the position's
    value.
    """
    n_chan = int(ga.offsets[-1])
    pos, chan = ga.channel_positions(arr)
    counts = np.bincount(pos, minlength=len(arr)) if len(pos) else np.zeros(len(arr), dtype=np.int64)
    width = max(int(counts.max()) if len(counts) else 0, 1)
    out = np.full((len(arr), width), n_chan, dtype=np.int64)
    order = np.argsort(pos, kind="stable")
    pos, chan = pos[order], chan[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else counts
    slot = np.arange(len(pos)) - starts[pos] if len(pos) else pos
    out[pos, slot] = chan
    return torch.as_tensor(out)


def group_of_array(ga: GraphAnalysis, arr: np.ndarray | None) -> int | None:
    """The group of the first channel a label array carries (None: no array, or no channel)."""
    if arr is None or not len(arr):
        return None
    _, chan = ga.channel_positions(arr[:1])
    return ga.group_of(int(chan[0])) if len(chan) else None


def flat_gates(ga: GraphAnalysis, gates: dict[int, torch.Tensor], like: torch.Tensor | None = None) -> torch.Tensor:
    """One vector over all channels of all groups (groups not in `gates`: ones) plus the trailing pad 1."""
    device = like.device if like is not None else None
    parts = []
    for g in ga.groups:
        v = gates.get(g.id)
        parts.append(torch.ones(g.size, device=device) if v is None else v.to(device=device, dtype=torch.float32))
    parts.append(torch.ones(1, device=device))
    return torch.cat(parts)


class ChannelGates(nn.Module):
    """Computes every mask site's value from per-group gate vectors (`set` them before each forward)."""

    def __init__(self, ga: GraphAnalysis, arrays: list[np.ndarray]) -> None:
        super().__init__()
        self.ga = ga
        self.n_sites = len(arrays)
        for i, arr in enumerate(arrays):
            self.register_buffer(f"index_{i}", position_index(ga, arr), persistent=False)
        self.flat: torch.Tensor | None = None

    def set(self, gates: dict[int, torch.Tensor] | torch.Tensor | None) -> None:
        """Gate vectors {group id: (size,) tensor} (missing groups: ones), a flat vector from
        `flat_gates`, or None (every gate 1)."""
        if gates is None or isinstance(gates, torch.Tensor):
            self.flat = gates
        else:
            self.flat = flat_gates(self.ga, gates, getattr(self, "index_0", None))

    def forward(self, site: int) -> torch.Tensor:
        index = getattr(self, f"index_{site}")
        if self.flat is None:
            return torch.ones(index.shape[0], device=index.device)
        return self.flat[index].prod(1)


def inherit_weights(gm: nn.Module, gated: nn.Module) -> None:
    """Copy the search-trained state of a gated copy into `gm`: every entry `gm` has with the same shape
    (the gates' own buffers and reshaped search-only tensors are left out)."""
    own = gm.state_dict()
    gm.load_state_dict({k: v for k, v in gated.state_dict().items() if k in own and own[k].shape == v.shape},
                       strict=False)


def install_gates(gm: fx.GraphModule, ga: GraphAnalysis, keep: Keep | None = None
                  ) -> tuple[fx.GraphModule, ChannelGates]:
    """A deep copy of `gm` whose every mask is computed by one `ChannelGates` module (returned too).

    `keep` (an earlier decision) only decides where masks go, as in `insert_masks(soft=True)`: every consumer
    input of every group gets one, so the gates reach all channels.
    """
    gated = copy.deepcopy(gm)
    arrays: dict[str, np.ndarray] = {}
    insert_masks(gated, ga, keep or {}, soft=True, arrays=arrays)
    names = list(arrays)
    gates = ChannelGates(ga, [arrays[n] for n in names])
    device = next((p.device for p in gated.parameters()), None)
    if device is not None:
        gates.to(device)
    gated.add_module(GATES_NAME, gates)
    site_of = {n: i for i, n in enumerate(names)}
    for node in list(gated.graph.nodes):
        if node.op == "get_attr" and node.target in site_of:
            with gated.graph.inserting_before(node):
                call = gated.graph.call_module(GATES_NAME, (site_of[node.target],))
            node.replace_all_uses_with(call)
            gated.graph.erase_node(node)
    for n in names:
        delattr(gated, n)
    gated.graph.lint()
    gated.recompile()
    return gated, gates
