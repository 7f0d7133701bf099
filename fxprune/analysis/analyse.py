"""The analysis pass: propagate channel labels through the graph, then read off the channel groups."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.fx as fx

from ..errors import UnsupportedOpError
from ..types import ChannelGroup, ChannelSlot, signature_of
from .atoms import UNIT
from .context import Analysis
from .labels import Labels
from .registry import describe_target, registration_hint, rule_for_node


@dataclass
class GraphAnalysis:
    """Everything later stages need: the pass's state, the groups, and each group's channel atoms."""

    analysis: Analysis
    groups: list[ChannelGroup]
    roots: list[list[int]]  # group id -> its channel atoms (free roots), in channel order
    signature: str

    def alive_fn(self, keep: dict[int, list[int]]):
        """A function atom -> bool for a keep decision {group id: kept channel indices}."""
        table = self.analysis.table
        alive_roots = {r for gid, idx in keep.items() for r in (self.roots[gid][i] for i in idx)}
        decided = {r for gid in keep for r in self.roots[gid]}
        cache: dict[int, bool] = {}

        def alive(atom: int) -> bool:
            if atom == UNIT:
                return True
            if atom not in cache:
                leaves = table.leaves(atom)
                cache[atom] = all(r in alive_roots or r not in decided for r in leaves)
            return cache[atom]
        return alive


def run_analysis(gm: fx.GraphModule, strict: bool = True) -> GraphAnalysis:
    """Propagate labels node by node, freeze what reaches the outputs, and build the groups."""
    a = Analysis(gm, strict)
    for node in gm.graph.nodes:
        a.values[node.name] = _propagate(a, node)
    _freeze_outputs(a)
    groups, roots = _build_groups(a)
    return GraphAnalysis(a, groups, roots, _signature(gm, groups))


def _propagate(a: Analysis, node: fx.Node) -> Any:
    if node.op in ("placeholder", "output"):
        return None
    if node.op == "get_attr":
        return _get_attr_labels(a, node)
    rule = rule_for_node(node, a.modules)
    if rule is not None:
        return rule.propagate(a, node)
    labelled = [v for v in _input_labels(a, node) if v]
    if not labelled:
        return None
    if a.strict:
        raise UnsupportedOpError(
            f"node '{node.name}' ({describe_target(node, a.modules)}) receives channels but fxprune has no rule "
            f"for it, so it cannot tell which channels it mixes. Register one with "
            f"{registration_hint(node, a.modules)}, mark its module as a leaf, or pass strict=False to keep "
            f"(freeze) every channel that reaches it.")
    for lab in labelled:
        a.freeze(lab, node, f"no channel rule for {describe_target(node, a.modules)} (strict=False)")
    return None


def _input_labels(a: Analysis, node: fx.Node) -> list[Labels | None]:
    out: list[Labels | None] = []
    for x in node.all_input_nodes:
        v = a.values.get(x.name)
        out.extend(v if isinstance(v, (list, tuple)) else [v])
    return [v for v in out if isinstance(v, Labels)]


def _get_attr_labels(a: Analysis, node: fx.Node) -> Labels | None:
    shape = a.shape(node)
    dtype = node.meta.get("fxprune_dtype")
    if shape is None or (dtype is not None and not dtype.is_floating_point):
        return Labels(shape) if shape is not None else None  # integer buffers are indices, not channels
    dims = {d: a.param_atoms(node.target, d, s) for d, s in enumerate(shape) if s > 1}
    return Labels(shape, dims)


def _freeze_outputs(a: Analysis) -> None:
    for node in a.gm.graph.find_nodes(op="output") if hasattr(a.gm.graph, "find_nodes") else [
            n for n in a.gm.graph.nodes if n.op == "output"]:
        for lab in _input_labels(a, node):
            a.freeze(lab, node, "reaches the network output (output channels are never pruned)")


def _all_slots(a: Analysis):
    for name, v in a.values.items():
        for i, lab in enumerate(v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(lab, Labels):
                suffix = f"[{i}]" if isinstance(v, (list, tuple)) else ""
                for d, arr in lab.dims.items():
                    yield ChannelSlot("node", name + suffix, d), arr
    for q, per in a.params.items():
        for d, arr in per.items():
            yield ChannelSlot("param", q, d, a.roles.get((q, d), "pass")), arr


class _AtomIndex:
    """Vectorised views of the atom table: root of every atom, group key of every atom, term leaves."""

    def __init__(self, table) -> None:
        parent = np.asarray(table.parent, dtype=np.int64)
        while True:  # pointer jumping: every atom straight to its root
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
        sroot = np.asarray([table.space_root(s) for s in range(len(table.spaces))], dtype=np.int64)
        self.root = parent
        self.gkey = sroot[np.asarray(table.space_of, dtype=np.int64)] if len(parent) else parent
        self.is_term = np.zeros(len(parent), dtype=bool)
        self.is_term[list(table.term)] = True
        self.term = table.term
        self.leaves: dict[int, np.ndarray] = {}
        for r in table.term:
            self._leaves_of(r)

    def _leaves_of(self, r: int, depth: int = 0) -> np.ndarray:
        got = self.leaves.get(r)
        if got is not None:
            return got
        parts = []
        for f in self.term[r]:
            rf = int(self.root[f])
            parts.append(self._leaves_of(rf, depth + 1) if self.is_term[rf] and depth < 32 else [rf])
        out = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
        self.leaves[r] = out
        return out

    def free_roots(self, arr: np.ndarray) -> np.ndarray:
        rs = np.unique(self.root[arr[arr >= 0]])
        terms = rs[self.is_term[rs]]
        plain = rs[~self.is_term[rs]]
        if len(terms):
            plain = np.unique(np.concatenate([plain] + [self.leaves[int(t)] for t in terms]))
        return plain


def _build_groups(a: Analysis) -> tuple[list[ChannelGroup], list[list[int]]]:
    table = a.table
    idx = _AtomIndex(table)
    slot_roots = [(slot, idx.free_roots(arr)) for slot, arr in _all_slots(a)]
    every = np.unique(np.concatenate([r for _, r in slot_roots])) if slot_roots else np.zeros(0, np.int64)
    keys = idx.gkey[every]
    first_space: dict[int, int] = {}
    for sid in range(len(table.spaces)):
        first_space.setdefault(table.space_root(sid), sid)
    order = sorted(set(keys.tolist()), key=lambda k: first_space[k])
    index = {k: i for i, k in enumerate(order)}
    groups, roots = [], []
    for k in order:
        rs = every[keys == k].tolist()
        frozen = {i: table.frozen[r] for i, r in enumerate(rs) if r in table.frozen}
        groups.append(ChannelGroup(index[k], len(rs), [], frozen, table.spaces[first_space[k]].origin))
        roots.append(rs)
    for slot, rs in slot_roots:
        for k in np.unique(idx.gkey[rs]).tolist():
            groups[index[k]].members.append(slot)
    return groups, roots


def _signature(gm: fx.GraphModule, groups: list[ChannelGroup]) -> str:
    parts = [f"{n.op}:{_target_name(n.target)}:{n.meta.get('fxprune_shape')}" for n in gm.graph.nodes]
    parts += [f"group:{g.size}" for g in groups]
    return signature_of(parts)


def _target_name(target: Any) -> str:
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', getattr(target, '__name__', ''))}"
