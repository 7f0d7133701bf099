"""The state one analysis pass builds: atom table, labels per node, parameter labels, mask sites."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
import torch.fx as fx
from torch import nn

from fxprune.tracing.meta import shape_of
from fxprune.analysis.atoms import UNIT, AtomTable
from fxprune.analysis.labels import Labels


@dataclass(frozen=True)
class MaskSite:
    """Where the masked model multiplies a tensor by a group's mask: input `arg` of `node`, along `dim`."""

    node: str
    arg: int | str  # positional index, or keyword name
    dim: int

    def source(self, node: fx.Node) -> Any:
        """The argument of `node` this site masks."""
        return node.kwargs.get(self.arg) if isinstance(self.arg, str) else node.args[self.arg]


def flat_labels(value: Any) -> list[Labels]:
    """Every `Labels` inside a node's value: the value itself, or those nested in its lists, tuples and dicts
    (a container the forward built: a tuple, an OrderedDict, a dataclass / ModelOutput)."""
    if isinstance(value, Labels):
        return [value]
    if isinstance(value, (list, tuple)):
        return [lab for v in value for lab in flat_labels(v)]
    if isinstance(value, dict):
        return [lab for v in value.values() for lab in flat_labels(v)]
    return []


def flat_items(value: Any, path: str = "") -> list[tuple[str, Labels]]:
    """(path, Labels) for every Labels in a value: "" for the value itself, "[0]", "['out']", "[1][0]" inside."""
    if isinstance(value, Labels):
        return [(path, value)]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    return [x for k, v in items for x in flat_items(v, f"{path}[{k!r}]" if isinstance(k, str) else f"{path}[{k}]")]


class NodeFacts(TypedDict, total=False):
    """What a rule learned about one node that the later stages (cost, masks, rewrite) need from it."""

    heads: np.ndarray  # attention-head atoms
    qk: np.ndarray  # query / key head-dim atoms
    v: np.ndarray  # value head-dim atoms
    head_dim: int  # the head dim a scaled-dot-product scale was computed from
    rows: np.ndarray  # nn.MultiheadAttention's in-projection rows (the masked model zeroes removed ones)
    groups: np.ndarray  # conv groups / norm groups atoms
    const: int  # a constant size argument (view / reshape / split sizes) ...
    labels: np.ndarray  # ... and the atoms that constant counts


@dataclass
class Analysis:
    gm: fx.GraphModule
    strict: bool = True
    table: AtomTable = field(default_factory=AtomTable)
    values: dict[str, Any] = field(default_factory=dict)  # node name -> Labels | list | None
    params: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    roles: dict[tuple[str, int], str] = field(default_factory=dict)
    mask_sites: list[MaskSite] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # node name -> why its channels were frozen
    node_extra: dict[str, NodeFacts] = field(default_factory=dict)  # node name -> its rule's facts for later stages

    def __post_init__(self) -> None:
        self.modules: dict[str, nn.Module] = dict(self.gm.named_modules())
        self.opaque: tuple[type, ...] = ()
        self.whole_params: set[tuple[str, int]] = set()  # (param, dim) an op uses whole (bound to None)
        self.auto_leaves: dict[str, str] = {}  # qualname -> why tracing fell back to a leaf there

    # -- reading ----------------------------------------------------------------------------
    def labels(self, arg: Any) -> Labels | None:
        if isinstance(arg, fx.Node):
            v = self.values.get(arg.name)
            return v if isinstance(v, Labels) else None
        return None

    def structure(self, arg: Any) -> Any:
        """The value of an argument with its structure: a node's value, lists / tuples as lists and dicts as
        dicts of their items' values, anything else None."""
        if isinstance(arg, fx.Node):
            return self.values.get(arg.name)
        if isinstance(arg, (list, tuple)):
            return [self.structure(x) for x in arg]
        if isinstance(arg, dict):
            return {k: self.structure(v) for k, v in arg.items()}
        return None

    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        s = shape_of(node)
        return s if isinstance(s, tuple) else None

    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[node.target]

    # -- writing ----------------------------------------------------------------------------
    def fresh(self, size: int, origin: str, kind: str = "channels") -> np.ndarray:
        """Fresh atoms; kind="blocks" marks a factor that counts blocks (conv groups, heads)."""
        return self.table.new_space(size, origin, kind)

    def bind_param(self, qualname: str, dim: int, atoms: np.ndarray | None, role: str = "pass") -> None:
        """Say that `qualname` along `dim` carries `atoms` (unifying if the parameter is shared)."""
        if not self._has_tensor(qualname):
            return
        per = self.params.setdefault(qualname, {})
        if atoms is None:  # the op keeps this dim whole (e.g. a conv over unprunable input channels)
            self.whole_params.add((qualname, dim))
            if dim in per:
                self.table.freeze_array(per[dim], f"{qualname} dim {dim} is used whole")
            return
        if dim in per:
            self.table.unify_arrays(per[dim], atoms)
        else:
            per[dim] = atoms
        self.roles.setdefault((qualname, dim), role)

    def _has_tensor(self, qualname: str) -> bool:
        owner, _, name = qualname.rpartition(".")
        mod = self.modules.get(owner)
        return mod is not None and getattr(mod, name, None) is not None

    def param_atoms(self, qualname: str, dim: int, size: int) -> np.ndarray:
        per = self.params.setdefault(qualname, {})
        if dim not in per:
            per[dim] = self.fresh(size, f"{qualname}[dim {dim}]")
            if (qualname, dim) in self.whole_params:
                self.table.freeze_array(per[dim], f"{qualname} dim {dim} is used whole")
        return per[dim]

    def consume(self, node: fx.Node, arg: int | str, dim: int) -> None:
        self.mask_sites.append(MaskSite(node.name, arg, dim))

    def freeze(self, labels: Labels | None, node: fx.Node, reason: str) -> None:
        if not labels:
            return
        for arr in labels.dims.values():
            self.table.freeze_array(arr, reason)
        self.notes.setdefault(node.name, reason)

    def freeze_dims_except(self, labels: Labels | None, keep: set[int], node: fx.Node, what: str) -> None:
        """Freeze labelled dims an op mixes in ways it does not track (e.g. a conv over token labels)."""
        if not labels:
            return
        for d, arr in labels.dims.items():
            if d not in keep:
                self.table.freeze_array(arr, f"{what} mixes dimension {d}")
                self.notes.setdefault(node.name, f"{what} mixes dimension {d}")

    def bind_products(self, atoms: np.ndarray, factors: list[np.ndarray]) -> None:
        """Position i (row-major over the factors' sizes) of `atoms` is the product of one atom per factor."""
        for f in factors:
            self.table.mark_factors(f)
        grids = np.meshgrid(*factors, indexing="ij")
        flat = [g.reshape(-1) for g in grids]
        if self._all_fresh(atoms, factors):  # bulk path: new atoms bound to new factors, nothing to unify
            terms = dict(zip(atoms.tolist(), zip(*(f.tolist() for f in flat))))
            self.table.term.update(terms)
            for a in [a for a in terms if a in self.table.frozen]:  # a kept position keeps its factors
                reason = self.table.frozen.pop(a)
                for f in terms[a]:
                    self.table.frozen.setdefault(f, reason)
            return
        for i, a in enumerate(atoms.tolist()):
            self.table.bind_product(a, tuple(int(f[i]) for f in flat))

    def _all_fresh(self, atoms: np.ndarray, factors: list[np.ndarray]) -> bool:
        t = self.table
        parent = np.asarray(t.parent[int(atoms.min()):int(atoms.max()) + 1]) if len(atoms) and atoms.min() >= 0 \
            else None
        if parent is None or len(np.unique(atoms)) != len(atoms) or len(factors) < 2:
            return False
        if not np.array_equal(parent[atoms - atoms.min()], atoms):
            return False
        for f in factors:
            if f.min() < 0 or any(int(x) in t.term or t.parent[int(x)] != int(x) for x in f.tolist()):
                return False
        return not any(a in t.term for a in atoms.tolist())

    def product_atoms(self, factors: list[np.ndarray], origin: str) -> np.ndarray:
        size = int(np.prod([len(f) for f in factors]))
        out = self.fresh(size, origin)
        if size > 1:
            self.bind_products(out, factors)
        return out if size > 1 else np.full((size,), UNIT, dtype=np.int64)
