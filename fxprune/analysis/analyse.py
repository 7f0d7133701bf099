"""The analysis pass: propagate channel labels through the graph, then read off the channel groups."""
from __future__ import annotations

import builtins
import operator
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np
import torch.fx as fx

from fxprune.errors import UnsupportedOpError
from fxprune.types import ChannelGroup, ChannelSlot, signature_of
from fxprune.analysis.context import Analysis, flat_items, flat_labels
from fxprune.analysis.labels import Labels
from fxprune.analysis.registry import describe_target, registration_hint, rule_for_node
from fxprune.tracing.meta import auto_leaves, dtype_of, shape_of


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
        term_roots = np.fromiter(table.term.keys(), dtype=np.int64, count=len(table.term))
        self.is_term[term_roots] = True
        self.term_row = np.full(len(parent), -1, dtype=np.int64)
        self.term_row[term_roots] = np.arange(len(term_roots))
        self.leaf_matrix = self._leaf_matrix(table, term_roots)

    def _leaf_matrix(self, table, term_roots: np.ndarray) -> np.ndarray:
        """Row i: the free leaves of term root i, padded with -1 (vectorised for flat terms)."""
        rows: list[np.ndarray] = [np.zeros(0, np.int64)] * len(term_roots)
        by_arity: dict[int, list[int]] = {}
        for i, r in enumerate(term_roots.tolist()):
            by_arity.setdefault(len(table.term[r]), []).append(i)
        for k, idx in by_arity.items():
            facs = self.root[np.asarray([table.term[int(term_roots[i])] for i in idx], dtype=np.int64)]
            nested = self.is_term[facs].any(1)
            for j, i in enumerate(idx):
                rows[i] = facs[j] if not nested[j] else np.asarray(table.leaves(int(term_roots[i])), np.int64)
        width = max((len(r) for r in rows), default=0)
        out = np.full((len(rows), width), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        return out

    def free_roots(self, arr: np.ndarray) -> np.ndarray:
        rs = np.unique(self.root[arr[arr >= 0]])
        is_term = self.is_term[rs]
        if not is_term.any():
            return rs
        leaves = self.leaf_matrix[self.term_row[rs[is_term]]].ravel()
        return np.unique(np.concatenate([rs[~is_term], leaves[leaves >= 0]]))


@dataclass(eq=False)
class GraphAnalysis:
    """The analysed graph: the hand-off from the analysis to every later stage (cost model, selection, masks,
    rewrite, methods). `fxprune.prepare` / `fxprune.analyse` return one.

    It holds the traced GraphModule (`gm`), the channel groups (`groups`; the object also reads as the
    sequence of its groups: `ga[0]`, `len(ga)`, `for g in ga`), each group's channel atoms, and the
    structural signature a `PruningPlan` is checked against.
    """

    analysis: Analysis
    groups: list[ChannelGroup]
    roots: list[list[int]]  # group id -> its channel atoms (free roots), in channel order
    signature: str
    index: _AtomIndex = None  # type: ignore[assignment]
    example_inputs: tuple = ()  # what the graph was traced and shaped with (set by fxprune.prepare)
    example_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def gm(self) -> fx.GraphModule:
        """The traced GraphModule the analysis describes."""
        return self.analysis.gm

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[ChannelGroup]:
        return iter(self.groups)

    def __getitem__(self, i):  # noqa: ANN001 -- an index or a slice, as on the list of groups
        return self.groups[i]

    def __repr__(self) -> str:
        return f"GraphAnalysis({len(self.groups)} groups, signature {self.signature})"

    def alive_roots(self, keep: Mapping[int, list[int]]) -> np.ndarray:
        """Bool per atom: False for the free roots a keep decision {group id: kept indices} removes."""
        alive = np.ones(len(self.index.root), dtype=bool)
        for gid, kept in keep.items():
            roots = np.asarray(self.roots[gid], dtype=np.int64)
            alive[roots] = False
            alive[roots[np.asarray(kept, dtype=np.int64)]] = True
        return alive

    def keep_mask(self, arr: np.ndarray, alive_roots: np.ndarray) -> np.ndarray:
        """Which positions of a label array survive (a product survives when all its factors do)."""
        out = np.ones(len(arr), dtype=bool)
        valid = arr >= 0
        if not valid.any():
            return out
        r = self.index.root[arr[valid]]
        alive = alive_roots[r]
        t = self.index.is_term[r]
        if t.any():
            leaves = self.index.leaf_matrix[self.index.term_row[r[t]]]
            alive[t] = np.where(leaves >= 0, alive_roots[np.maximum(leaves, 0)], True).all(1)
        out[valid] = alive
        return out

    def group_of(self, channels: np.ndarray | int) -> np.ndarray | int:
        """The group id of global channel id(s) (as `channel_positions` returns them)."""
        gid = np.searchsorted(self.offsets, channels, side="right") - 1
        return int(gid) if np.ndim(gid) == 0 else gid

    def channel_positions(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, global channel id) pairs: every free root each position is made of."""
        valid = np.nonzero(arr >= 0)[0]
        r = self.index.root[arr[valid]]
        t = self.index.is_term[r]
        pos = [valid[~t]]
        roots = [r[~t]]
        if t.any():
            leaves = self.index.leaf_matrix[self.index.term_row[r[t]]]
            rows = np.repeat(valid[t], leaves.shape[1])
            flat = leaves.ravel()
            pos.append(rows[flat >= 0])
            roots.append(flat[flat >= 0])
        pos_all, roots_all = np.concatenate(pos), np.concatenate(roots)
        chan = self.channel_of[roots_all]
        ok = chan >= 0
        return pos_all[ok], chan[ok]


def run_analysis(gm: fx.GraphModule, strict: bool = True, opaque: tuple[type, ...] = ()) -> GraphAnalysis:
    """Propagate labels node by node, freeze what reaches the outputs, and build the groups.

    Modules of the `opaque` types (the user's leaf modules) are black boxes: the channels entering and
    leaving them are frozen, in strict mode too.
    """
    a = Analysis(gm, strict)
    a.opaque = tuple(opaque)
    a.auto_leaves = auto_leaves(gm)
    for node in gm.graph.nodes:
        a.values[node.name] = _propagate(a, node)
    _freeze_outputs(a)
    groups, roots, index = _build_groups(a)
    ga = GraphAnalysis(a, groups, roots, _signature(gm, groups), index)
    ga.channel_of = np.full(len(index.root), -1, dtype=np.int64)
    ga.offsets = np.cumsum([0] + [g.size for g in groups])
    for gid, rs in enumerate(roots):
        ga.channel_of[np.asarray(rs, dtype=np.int64)] = ga.offsets[gid] + np.arange(len(rs))
    return ga


def _propagate(a: Analysis, node: fx.Node) -> Any:
    if node.op in ("placeholder", "output"):
        return None
    if node.op == "get_attr":
        return _get_attr_labels(a, node)
    rule = rule_for_node(node, a.modules)
    if rule is not None:
        _check_no_mapping_reaches(a, node)
        return rule.propagate(a, node)
    if node.op == "call_function" and isinstance(node.target, type) and (issubclass(
            node.target, (tuple, list, dict)) or is_dataclass(node.target)):
        return _container(a, node)
    labelled = [v for v in _input_labels(a, node) if v]
    if not labelled:
        return None
    why = _opaque_reason(a, node)
    if why:
        for lab in labelled:
            a.freeze(lab, node, why)
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


CONTAINER_OPS = (operator.getitem, builtins.getattr)  # the rules that read an item out of a container's value


def _check_no_mapping_reaches(a: Analysis, node: fx.Node) -> None:
    """A dict-like container (an OrderedDict, a dataclass the forward built) reaching an op whose rule reads
    labels, not containers: that rule would see no channels, so it is refused, or frozen under strict=False."""
    if node.op == "call_function" and node.target in CONTAINER_OPS:
        return
    inside = [lab for x in node.all_input_nodes if isinstance(a.values.get(x.name), dict)
              for lab in flat_labels(a.values[x.name])]
    if not inside:
        return
    if a.strict:
        raise UnsupportedOpError(
            f"node '{node.name}' ({describe_target(node, a.modules)}) receives a dict-like container that holds "
            f"channels, and its rule reads tensors only. Take the item out first (x = out['key']), or pass "
            f"strict=False to keep (freeze) every channel inside.")
    for lab in inside:
        a.freeze(lab, node, f"a container reaches {describe_target(node, a.modules)} (strict=False)")


def _container(a: Analysis, node: fx.Node) -> Any:
    """A container the forward builds moves nothing: its value is its items' values, with the structure kept
    (a dict for a dict subclass or a dataclass / ModelOutput, a list for a tuple / list / namedtuple), so that
    indexing it later finds the channels and the network output freezes everything inside it."""
    args, kwargs = a.structure(list(node.args)), a.structure(dict(node.kwargs))
    if issubclass(node.target, dict):
        out: dict = {}
        for x in args:  # OrderedDict({...}), OrderedDict([(k, v), ...])
            out.update(x if isinstance(x, dict) else {k: v for k, v in x} if isinstance(x, list) and all(
                isinstance(p, list) and len(p) == 2 for p in x) else {})
        return {**out, **kwargs}
    if is_dataclass(node.target):
        return {**dict(zip([f.name for f in fields(node.target)], args)), **kwargs}
    if len(args) == 1 and not kwargs and not _is_namedtuple(node.target):  # tuple([...]), list(x)
        return args[0] if isinstance(args[0], list) else [args[0]]
    return [*args, *kwargs.values()]


def _is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and hasattr(cls, "_fields")


def _opaque_reason(a: Analysis, node: fx.Node) -> str:
    if node.op != "call_module":
        return ""
    cls = type(a.modules[node.target]).__name__
    if node.target in a.auto_leaves:
        return (f"enters '{node.target}' ({cls}), an automatic opaque leaf: torch.fx could not trace it "
                f"({a.auto_leaves[node.target]})")
    if a.opaque and isinstance(a.modules[node.target], a.opaque):
        return f"enters opaque leaf module {cls}"
    return ""


def _input_labels(a: Analysis, node: fx.Node) -> list[Labels]:
    """Every Labels the node's inputs carry, inside containers too."""
    return [lab for x in node.all_input_nodes for lab in flat_labels(a.values.get(x.name))]


def _get_attr_labels(a: Analysis, node: fx.Node) -> Labels | None:
    shape = a.shape(node)
    dtype = dtype_of(node)
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
        for suffix, lab in flat_items(v):
            for d, arr in lab.dims.items():
                yield ChannelSlot("node", name + suffix, d), arr
    for q, per in a.params.items():
        for d, arr in per.items():
            yield ChannelSlot("param", q, d, a.roles.get((q, d), "pass")), arr


def _build_groups(a: Analysis) -> tuple[list[ChannelGroup], list[list[int]], _AtomIndex]:
    """Free roots and their group keys for every slot at once (vectorised over all slots)."""
    table = a.table
    idx = _AtomIndex(table)
    slots = list(_all_slots(a))
    lens = [len(arr) for _, arr in slots]
    flat = np.concatenate([arr for _, arr in slots]) if slots else np.zeros(0, np.int64)
    sid = np.repeat(np.arange(len(slots)), lens)
    valid = flat >= 0
    r, sid = idx.root[flat[valid]], sid[valid]
    t = idx.is_term[r]
    leaves = idx.leaf_matrix[idx.term_row[r[t]]]
    lsid = np.repeat(sid[t], leaves.shape[1]) if leaves.size else np.zeros(0, np.int64)
    lflat = leaves.ravel()
    roots_all = np.concatenate([r[~t], lflat[lflat >= 0]])
    sid_all = np.concatenate([sid[~t], lsid[lflat >= 0]])
    every = np.unique(roots_all)
    keys = idx.gkey[every]
    first_space: dict[int, int] = {}
    for s in range(len(table.spaces)):
        first_space.setdefault(table.space_root(s), s)
    order = sorted(set(keys.tolist()), key=lambda k: first_space[k])
    index = {k: i for i, k in enumerate(order)}
    groups, roots = [], []
    by_key = np.argsort(keys, kind="stable")  # `every` is sorted, so each group's roots stay sorted
    bounds = np.searchsorted(keys[by_key], np.asarray(order if order else [0]), side="left")
    ends = np.searchsorted(keys[by_key], np.asarray(order if order else [0]), side="right")
    for j, k in enumerate(order):
        rs = every[by_key[bounds[j]:ends[j]]].tolist()
        frozen = {i: table.frozen[x] for i, x in enumerate(rs) if x in table.frozen}
        space = table.spaces[first_space[k]]
        groups.append(ChannelGroup(index[k], len(rs), [], frozen, space.origin, space.kind))
        roots.append(rs)
    span = int(idx.gkey.max()) + 1 if len(idx.gkey) else 1
    pairs = np.unique(sid_all * span + idx.gkey[roots_all])
    for p in pairs.tolist():
        groups[index[p % span]].members.append(slots[p // span][0])
    return groups, roots, idx


def _signature(gm: fx.GraphModule, groups: list[ChannelGroup]) -> str:
    parts = [f"{n.op}:{_target_name(n.target)}:{shape_of(n)}" for n in gm.graph.nodes]
    parts += [f"group:{g.size}" for g in groups]
    return signature_of(parts)


def _target_name(target: Any) -> str:
    if isinstance(target, str):  # fx numbers lifted tensor constants per process: drop the number
        return re.sub(r"^_tensor_constant\d+$", "_tensor_constant", target)
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', getattr(target, '__name__', ''))}"
