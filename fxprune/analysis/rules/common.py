"""Building blocks shared by the op rules: element-wise broadcasting, pass-through, reshape alignment."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx

from fxprune.analysis.context import Analysis, flat_labels
from fxprune.analysis.labels import Labels, same_labels


def tensor_args(node: fx.Node) -> list[fx.Node]:
    out = [x for x in node.args if isinstance(x, fx.Node)]
    out += [x for x in node.kwargs.values() if isinstance(x, fx.Node)]
    return out


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def pointwise(a: Analysis, node: fx.Node) -> Labels | None:
    """Broadcasting element-wise op: positions that meet in the output are unified."""
    out_shape = a.shape(node)
    if out_shape is None:
        return None
    operands = [(a.labels(x), a.shape(x)) for x in tensor_args(node) if a.shape(x) is not None]
    return Labels(out_shape, broadcast_unify(a, node, operands, out_shape))


def broadcast_unify(a: Analysis, node: fx.Node, operands: list[tuple[Labels | None, tuple[int, ...]]],
                    out_shape: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Operands broadcast to `out_shape`: labels meeting at an output dim are unified (a full-size operand
    without labels there freezes them); returns the output's labelled dims."""
    nd = len(out_shape)
    dims: dict[int, np.ndarray] = {}
    for d in range(nd):
        if out_shape[d] <= 1:
            continue
        labelled, bare = [], False
        for lab, shp in operands:
            od = d - (nd - len(shp))
            if od < 0 or shp[od] == 1:
                continue
            arr = lab.dims.get(od) if lab else None
            if arr is None:
                bare = True
            else:
                labelled.append(arr)
        if not labelled:
            continue
        if bare:
            for arr in labelled:
                a.table.freeze_array(arr, "meets a tensor without channel identity in an element-wise op")
            a.notes.setdefault(node.name, "element-wise op with an operand that carries no channels")
            continue
        for other in labelled[1:]:
            a.table.unify_arrays(labelled[0], other)
        dims[d] = labelled[0]
    for lab, shp in operands:  # labelled dims that vanish into a size-1 output dim cannot be tracked
        for od, arr in (lab.dims.items() if lab else ()):
            d = od + nd - len(shp)
            if d < 0 or out_shape[d] != shp[od]:
                a.table.freeze_array(arr, "reduced by broadcasting")
    return dims


def passthrough(a: Analysis, node: fx.Node, src: Any = None) -> Labels | None:
    """Output keeps the input's labels on dims whose size did not change; others are frozen."""
    src = node.args[0] if src is None else src
    lab, out_shape = a.labels(src), a.shape(node)
    if out_shape is None:
        return None
    if not lab:
        return Labels(out_shape)
    for d, arr in lab.dims.items():
        if d >= len(out_shape) or out_shape[d] != lab.shape[d]:
            a.table.freeze_array(arr, "dimension resized by a pass-through op")
    return same_labels(out_shape, lab)


def channelwise(a: Analysis, node: fx.Node, channel_dim: int = 1) -> Labels | None:
    """Ops that act on each channel separately but mix the other dims (pooling, interpolation)."""
    lab = a.labels(node.args[0])
    if lab:
        a.freeze_dims_except(lab, {lab.norm(channel_dim)}, node, "pooling/resampling")
    return passthrough(a, node)


def nothing(a: Analysis, node: fx.Node) -> None:
    """Ops whose result carries no channels (shape queries, asserts)."""
    return None


def align_reshape(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input dims with runs of output dims that have equal products (size-1 dims skipped)."""
    i = j = 0
    chunks: list[tuple[list[int], list[int]]] = []
    while True:
        while i < len(src) and src[i] == 1:
            i += 1
        while j < len(dst) and dst[j] == 1:
            j += 1
        if i == len(src) or j == len(dst):
            return chunks if i == len(src) and j == len(dst) else None
        ins, outs, pi, po = [i], [j], src[i], dst[j]
        i, j = i + 1, j + 1
        while pi != po:
            if pi < po:
                if i == len(src):
                    return None
                ins.append(i)
                pi *= src[i]
                i += 1
            else:
                if j == len(dst):
                    return None
                outs.append(j)
                po *= dst[j]
                j += 1
        chunks.append((ins, outs))


def reshape_labels(a: Analysis, node: fx.Node, lab: Labels | None, out_shape: tuple[int, ...]) -> Labels:
    """Labels after a view/reshape/flatten: merged dims repeat or multiply labels, split dims factorise."""
    if not lab:
        return Labels(out_shape)
    chunks = align_reshape(lab.shape, out_shape)
    if chunks is None:
        a.freeze(lab, node, "reshape that fxprune cannot align")
        return Labels(out_shape)
    dims: dict[int, np.ndarray] = {}
    for ins, outs in chunks:
        labelled = [d for d in ins if d in lab.dims]
        if not labelled:
            continue
        if len(outs) == 1:
            dims[outs[0]] = _merged(a, lab, ins, labelled, node)
        elif len(ins) == 1:
            factors = [a.fresh(out_shape[o], f"{node.name} split dim {o}") for o in outs]
            a.bind_products(lab.dims[ins[0]], factors)
            dims.update({o: f for o, f in zip(outs, factors) if len(f) > 1})
        else:
            for d in labelled:
                a.table.freeze_array(lab.dims[d], "reshape that regroups several channel dims at once")
            a.notes.setdefault(node.name, "reshape regroups several channel dims at once")
    return Labels(out_shape, dims)


def _merged(a: Analysis, lab: Labels, ins: list[int], labelled: list[int], node: fx.Node) -> np.ndarray:
    sizes = [lab.shape[d] for d in ins]
    if len(labelled) == 1:
        d = labelled[0]
        view = [1] * len(ins)
        view[ins.index(d)] = sizes[ins.index(d)]
        return np.broadcast_to(lab.dims[d].reshape(view), sizes).reshape(-1).copy()
    factors = [lab.dims[d] if d in lab.dims else np.full((lab.shape[d],), -1, dtype=np.int64) for d in ins]
    return a.product_atoms(factors, f"{node.name} merged dims")


def item_of(a: Analysis, node: fx.Node, container: list | tuple | dict, key: Any) -> Any:
    """`container[key]` of a container's value (a dict's by key, a list's or a ModelOutput's by position or
    slice); a key fxprune cannot resolve freezes every channel inside instead of losing them."""
    try:
        if isinstance(container, dict):
            return container[key] if not isinstance(key, (int, slice)) else list(container.values())[key]
        if isinstance(key, (int, slice)):
            return container[key]
    except (KeyError, IndexError, TypeError):
        pass
    for lab in flat_labels(container):
        a.freeze(lab, node, f"taken out of a container by {key!r}, which fxprune cannot follow")
    return None
