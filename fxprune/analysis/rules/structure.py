"""Rules that move channels between tensors: cat/stack, split/chunk/unbind, indexing, matmul, and the
functional forms of linear, conv and norms (used with parameters read directly in forward)."""
from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from fxprune.analysis.rules.common import arg, broadcast_unify, item_of, passthrough, pointwise
from fxprune.analysis.context import Analysis
from fxprune.analysis.labels import Labels
from fxprune.analysis.rules.masked import (build_masked_batch_norm_fn, build_masked_group_norm_fn, build_masked_layer_norm_fn,
                     build_masked_rms_norm_fn)
from fxprune.analysis.registry import method_key as M
from fxprune.analysis.registry import register_rule
from fxprune.analysis.rules.modules import conv_channels
from fxprune.analysis.rules.tensor import ShapeInfo, rewrite_size_read, shape_item
from fxprune.tracing.meta import shape_of


# --- concatenation ------------------------------------------------------------------------------
def _unify_other_dims(a: Analysis, labs: list[Labels | None], shapes: list[tuple[int, ...]], skip: int,
                      node: fx.Node) -> dict[int, np.ndarray]:
    dims: dict[int, np.ndarray] = {}
    nd = len(shapes[0])
    for d in range(nd):
        if d == skip or shapes[0][d] <= 1:
            continue
        arrs = [lab.dims.get(d) if lab else None for lab in labs]
        have = [x for x in arrs if x is not None]
        if not have:
            continue
        if len(have) < len(arrs):
            for x in have:
                a.table.freeze_array(x, "stacked with a tensor that carries no channels")
            continue
        for x in have[1:]:
            a.table.unify_arrays(have[0], x)
        dims[d] = have[0]
    return dims


def _joined(a: Analysis, node: fx.Node):
    """The parts of a cat/stack: (parts, output shape, dim, their labels, their shapes)."""
    tensors = arg(node, 0, "tensors")
    out_shape = a.shape(node)
    dim = arg(node, 1, "dim", 0) % len(out_shape)
    if isinstance(tensors, fx.Node):  # one traced list, e.g. torch.cat(torch.split(x, 1, 1), 3)
        values, shapes = a.values.get(tensors.name), shape_of(tensors) or []
        labs = list(values) if isinstance(values, (list, tuple)) else [None] * len(shapes)
        names = [f"{tensors.name}[{i}]" for i in range(len(shapes))]
        return names, out_shape, dim, [x if isinstance(x, Labels) else None for x in labs], list(shapes)
    parts = list(tensors)
    return [p.name for p in parts], out_shape, dim, [a.labels(p) for p in parts], [a.shape(p) for p in parts]


@register_rule(torch.cat, torch.concat, torch.concatenate)
def cat_rule(a: Analysis, node: fx.Node) -> Labels | None:
    parts, out_shape, dim, labs, shapes = _joined(a, node)
    dims = _unify_other_dims(a, labs, shapes, dim, node)
    if any(lab and lab.get(dim) is not None for lab in labs):
        pieces = []
        for lab, shp, p in zip(labs, shapes, parts):
            arr = lab.get(dim) if lab else None
            if arr is None:
                arr = a.fresh(shp[dim], f"{p} (no channel identity)")
                a.table.freeze_array(arr, "concatenated part that carries no channels")
            pieces.append(arr)
        dims[dim] = np.concatenate(pieces)
    return Labels(out_shape, dims)


@register_rule(torch.stack)
def stack_rule(a: Analysis, node: fx.Node) -> Labels | None:
    _, out_shape, dim, labs, shapes = _joined(a, node)
    inner = _unify_other_dims(a, labs, shapes, -1, node)
    return Labels(out_shape, {(d if d < dim else d + 1): x for d, x in inner.items()})


# --- split / chunk / unbind ------------------------------------------------------------------------
def _piece_sizes(node: fx.Node, a: Analysis) -> list[int]:
    shapes = shape_of(node)
    return [s[_split_dim(node, len(shapes[0]))] for s in shapes]


def _split_dim(node: fx.Node, ndim: int) -> int:
    return arg(node, 2, "dim", 0) % ndim


def rewrite_split(ctx, node: fx.Node) -> None:
    lab = ctx.labels(node.args[0])
    shapes = shape_of(node)
    dim = _split_dim(node, len(shapes[0]))
    arr = lab.get(dim) if lab else None
    if arr is None:
        return
    sizes, start = [], 0
    for s in _piece_sizes(node, None):
        sizes.append(ctx.alive_count(arr[start:start + s]))
        start += s
    node.target = torch.split if node.op == "call_function" else "split"
    node.args = (node.args[0], sizes, dim)
    node.kwargs = {}


@register_rule(torch.split, M("split"), torch.chunk, M("chunk"), torch.tensor_split, M("tensor_split"),
               rewrite=rewrite_split)
def split_rule(a: Analysis, node: fx.Node) -> list[Labels] | None:
    lab = a.labels(node.args[0])
    shapes = shape_of(node)
    if not isinstance(shapes, list):
        return None
    dim = _split_dim(node, len(shapes[0]))
    out, start = [], 0
    for s in shapes:
        dims = {d: x for d, x in (lab.dims.items() if lab else ()) if d != dim}
        arr = lab.get(dim) if lab else None
        if arr is not None:
            piece = arr[start:start + s[dim]]
            a.table.freeze_atom(int(piece[0]), "keeps every split piece non-empty")
            dims[dim] = piece
        start += s[dim]
        out.append(Labels(s, dims))
    return out


@register_rule(torch.unbind, M("unbind"))
def unbind_rule(a: Analysis, node: fx.Node) -> list[Labels] | None:
    lab = a.labels(node.args[0])
    shapes = shape_of(node)
    dim = arg(node, 1, "dim", 0) % (len(shapes[0]) + 1)
    if lab and lab.get(dim) is not None:
        a.table.freeze_array(lab.get(dim), "unbind selects each position by index")
    dims = {(d if d < dim else d - 1): x for d, x in (lab.dims.items() if lab else ()) if d != dim}
    return [Labels(s, dict(dims)) for s in shapes]


# --- indexing -------------------------------------------------------------------------------------
def _index_items(idx: Any, ndim: int) -> list[Any] | None:
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in items):
        return None
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    out: list[Any] = []
    for i in items:
        if i is Ellipsis:
            out.extend([slice(None)] * (ndim - n_real))
        else:
            out.append(i)
    if Ellipsis not in items:
        out.extend([slice(None)] * (ndim - n_real))
    return out


def rewrite_getitem(ctx, node: fx.Node) -> None:
    if "const" in ctx.extra(node):
        rewrite_size_read(ctx, node)
        return
    lab = ctx.labels(node.args[0])
    if not lab:
        return
    items = _index_items(node.args[1], lab.ndim)
    if items is None:
        return
    d, new = 0, []
    for it in items:
        arr = lab.get(d) if it is not None else None
        if isinstance(it, int) and arr is not None:
            it = ctx.alive_count(arr[: it % len(arr)])
        elif isinstance(it, slice) and arr is not None and (it.step in (None, 1)):
            lo, hi, _ = it.indices(len(arr))
            it = slice(ctx.alive_count(arr[:lo]), ctx.alive_count(arr[:hi]), None) if (lo, hi) != (0, len(arr)) \
                else it
        new.append(it)
        d += 0 if it is None else 1
    node.args = (node.args[0], tuple(new) if isinstance(node.args[1], tuple) else new[0], *node.args[2:])


@register_rule(operator.getitem, rewrite=rewrite_getitem)
def getitem_rule(a: Analysis, node: fx.Node) -> Any:
    src, idx = node.args[0], node.args[1]
    v = a.values.get(src.name) if isinstance(src, fx.Node) else None
    if isinstance(v, ShapeInfo):
        return shape_item(a, node, v, idx)
    if isinstance(v, (list, tuple, dict)):
        return item_of(a, node, v, idx)
    lab, out_shape = a.labels(src), a.shape(node)
    if out_shape is None:
        return None
    if not lab:
        return Labels(out_shape)
    if isinstance(idx, fx.Node):  # table[index]: rows gathered by a tensor, trailing dims pass
        return _gather_rows(a, node, lab, idx, out_shape)
    gathered = _single_tensor_index(idx)
    if gathered is not None:  # table[:, index]: one dim gathered by a tensor, the others whole
        return _gather_along(a, lab, gathered, idx[gathered], out_shape)
    items = _index_items(idx, lab.ndim)
    if items is None:
        a.freeze(lab, node, "advanced (tensor) indexing of a channel dimension")
        return Labels(out_shape)
    return _basic_index(a, node, lab, items, out_shape)


def _gather_rows(a: Analysis, node: fx.Node, lab: Labels, idx: fx.Node, out_shape) -> Labels:
    if lab.get(0) is not None:
        a.table.freeze_array(lab.get(0), "rows looked up by a tensor index")
    idx_nd = len(a.shape(idx) or ())
    return Labels(out_shape, {d - 1 + idx_nd: x for d, x in lab.dims.items() if d > 0})


def _single_tensor_index(idx: Any) -> int | None:
    """Position of the tensor in an index like (:, :, t): one tensor, every other item a full slice."""
    if not isinstance(idx, tuple):
        return None
    tensors = [i for i, it in enumerate(idx) if isinstance(it, fx.Node)]
    full = all(it == slice(None) for i, it in enumerate(idx) if i not in tensors)
    return tensors[0] if len(tensors) == 1 and full else None


def _gather_along(a: Analysis, lab: Labels, d: int, idx: fx.Node, out_shape) -> Labels:
    if lab.get(d) is not None:
        a.table.freeze_array(lab.get(d), "positions gathered by a tensor index")
    shift = len(a.shape(idx) or ()) - 1
    dims = {k if k < d else k + shift: x for k, x in lab.dims.items() if k != d}
    return Labels(out_shape, {k: x for k, x in dims.items() if k < len(out_shape) and out_shape[k] == len(x)})


def _basic_index(a: Analysis, node: fx.Node, lab: Labels, items: list[Any], out_shape) -> Labels:
    dims: dict[int, np.ndarray] = {}
    d = od = 0
    for it in items:
        if it is None:
            od += 1
            continue
        arr = lab.dims.get(d)
        if isinstance(it, int):
            if arr is not None:
                a.table.freeze_atom(int(arr[it]), "selected by an integer index")
        elif isinstance(it, slice):
            if arr is not None:
                if it.step not in (None, 1):
                    a.table.freeze_array(arr, "strided slicing of a channel dimension")
                else:
                    dims[od] = arr[it]
            od += 1
        d += 1
    return Labels(out_shape, {k: v for k, v in dims.items() if len(v) > 1 or out_shape[k] == len(v)})


def _indexed_shape(shape: tuple[int, ...], items: list[Any]) -> tuple[int, ...]:
    out, d = [], 0
    for it in items:
        if it is None:
            out.append(1)
            continue
        if isinstance(it, slice):
            out.append(len(range(*it.indices(shape[d]))))
        d += 1
    return tuple(out)


@register_rule(operator.setitem, rewrite=rewrite_getitem)
def setitem_rule(a: Analysis, node: fx.Node) -> None:
    """x[idx] = v (in place): the written region of x and v (broadcast) share their channels; x's labels
    are unchanged. A tensor index freezes both."""
    x, idx, v = node.args[0], node.args[1], node.args[2]
    lab, lv = a.labels(x), a.labels(v)
    items = _index_items(idx, lab.ndim) if lab else None
    if items is None:
        for t in (lab, lv):
            a.freeze(t, node, "indexed assignment with a tensor index")
        return None
    region = _basic_index(a, node, lab, items, _indexed_shape(lab.shape, items))
    vshape = a.shape(v) if isinstance(v, fx.Node) else None
    if vshape is not None:  # v broadcasts into the region, as in an element-wise op
        broadcast_unify(a, node, [(region, region.shape), (lv, vshape)], region.shape)
    return None


# --- matmul ---------------------------------------------------------------------------------------
@register_rule(torch.matmul, operator.matmul, torch.bmm, M("matmul"), M("bmm"), M("__matmul__"))
def matmul_rule(a: Analysis, node: fx.Node) -> Labels | None:
    x, y = node.args[0], node.args[1]
    lx, ly, out_shape = a.labels(x), a.labels(y), a.shape(node)
    sx, sy = a.shape(x), a.shape(y)
    if len(sx) < 2 or len(sy) < 2:
        for lab in (lx, ly):
            a.freeze(lab, node, "matmul with a 1-D operand")
        return Labels(out_shape)
    kx, ky = lx.get(-1) if lx else None, ly.get(-2) if ly else None
    if kx is not None and ky is not None:
        a.table.unify_arrays(kx, ky)
        a.consume(node, 0, len(sx) - 1)
    elif kx is not None or ky is not None:
        a.table.freeze_array(kx if kx is not None else ky, "contracted with a tensor that carries no channels")
    dims = _batch_dims(a, lx, ly, sx, sy, out_shape)
    nd = len(out_shape)
    if lx and lx.get(-2) is not None:
        dims[nd - 2] = lx.get(-2)
    if ly and ly.get(-1) is not None:
        dims[nd - 1] = ly.get(-1)
    return Labels(out_shape, dims)


def _batch_dims(a, lx, ly, sx, sy, out_shape) -> dict[int, np.ndarray]:
    nd = len(out_shape)
    dims: dict[int, np.ndarray] = {}
    for d in range(nd - 2):
        arrs = []
        for lab, shp in ((lx, sx), (ly, sy)):
            od = d - (nd - len(shp))
            if od >= 0 and shp[od] > 1:
                arrs.append(lab.dims.get(od) if lab else None)
        have = [x for x in arrs if x is not None]
        if have and len(have) < len(arrs):
            for x in have:
                a.table.freeze_array(x, "batched matmul against a tensor without channels on this dim")
        elif len(have) == 2:
            a.table.unify_arrays(have[0], have[1])
            dims[d] = have[0]
        elif have:
            dims[d] = have[0]
    return dims


# --- functional forms with explicit parameters ------------------------------------------------------
@register_rule(F.linear)
def functional_linear_rule(a: Analysis, node: fx.Node) -> Labels | None:
    lab, w, b = a.labels(node.args[0]), a.labels(arg(node, 1, "weight")), a.labels(arg(node, 2, "bias"))
    out_shape = a.shape(node)
    last = len(out_shape) - 1
    win = w.get(1) if w else None
    lin = lab.get(-1) if lab else None
    if lin is not None and win is not None:
        a.table.unify_arrays(lin, win)
        a.consume(node, 0, last)
    elif lin is not None or win is not None:
        a.table.freeze_array(lin if lin is not None else win, "functional linear over fixed features")
    out = w.get(0) if w else None
    if out is not None and b and b.get(0) is not None:
        a.table.unify_arrays(out, b.get(0))
    dims = {d: x for d, x in (lab.dims.items() if lab else ()) if d != last}
    if out is not None:
        dims[last] = out
    return Labels(out_shape, dims)


def functional_layer_norm_rule(a: Analysis, node: fx.Node) -> Labels | None:
    lab = a.labels(node.args[0])
    shape = arg(node, 1, "normalized_shape")
    k = len(shape) if isinstance(shape, (tuple, list)) else 1
    params = [a.labels(p) for p in (arg(node, 2, "weight"), arg(node, 3, "bias"))]
    if lab and k == 1 and lab.get(-1) is not None:
        for pl in params:
            if pl and pl.get(0) is not None:
                a.table.unify_arrays(lab.get(-1), pl.get(0))
        a.consume(node, 0, -1)
        return passthrough(a, node)
    for x in (lab, *params):  # normalised dims without channel identity: the affine params stay whole
        if x:
            a.freeze(x, node, "layer_norm over several dims or over dims without channel identity")
    return passthrough(a, node)


def rewrite_layer_norm(ctx, node: fx.Node) -> None:
    lab = ctx.labels(node.args[0])
    if lab and lab.get(-1) is not None:
        n = ctx.alive_count(lab.get(-1))
        args = list(node.args)
        if len(args) > 1:
            args[1] = type(args[1])([n]) if isinstance(args[1], (list, tuple)) else [n]
            node.args = tuple(args)
        else:
            node.kwargs = {**node.kwargs, "normalized_shape": [n]}


register_rule(F.layer_norm, rewrite=rewrite_layer_norm, masked=build_masked_layer_norm_fn)(
    functional_layer_norm_rule)
if hasattr(F, "rms_norm"):  # torch >= 2.4: same channel structure as layer_norm, weight only
    register_rule(F.rms_norm, rewrite=rewrite_layer_norm, masked=build_masked_rms_norm_fn)(
        functional_layer_norm_rule)


def rewrite_group_norm(ctx, node: fx.Node) -> None:
    extra = ctx.extra(node)
    if "groups" in extra:
        args = list(node.args)
        args[1] = ctx.alive_count(extra["groups"])
        node.args = tuple(args)


@register_rule(F.group_norm, rewrite=rewrite_group_norm, masked=build_masked_group_norm_fn)
def functional_group_norm_rule(a: Analysis, node: fx.Node) -> Labels | None:
    lab = a.labels(node.args[0])
    lin = lab.get(1) if lab else None
    if lin is not None:
        g = arg(node, 1, "num_groups")
        blocks = a.fresh(g, f"{node.name} norm groups", "blocks")
        a.bind_products(lin, [blocks, a.fresh(len(lin) // g, f"{node.name} channels/group")])
        a.node_extra[node.name] = {"groups": blocks}
        for p in (arg(node, 2, "weight"), arg(node, 3, "bias")):
            pl = a.labels(p)
            if pl and pl.get(0) is not None:
                a.table.unify_arrays(lin, pl.get(0))
        a.consume(node, 0, 1)
    return passthrough(a, node)


def _stats_from_input(node: fx.Node) -> bool:
    if node.target is F.instance_norm:
        return bool(arg(node, 5, "use_input_stats", True))
    return bool(arg(node, 5, "training", False))


def _bind_stats_dims(a: Analysis, node: fx.Node, lab: Labels | None) -> None:
    """Statistics taken over the input (training mode, instance norm, weight standardisation): one
    labelled reduced dim is consumed (mask-aware statistics), several are frozen."""
    reduced = [d for d in (lab.dims if lab else {}) if d != 1]
    if len(reduced) == 1 and node.target is F.batch_norm:
        a.consume(node, 0, reduced[0])
    else:
        for d in reduced:
            a.table.freeze_array(lab.dims[d], "norm statistics taken over channels")


@register_rule(F.batch_norm, F.instance_norm, masked=build_masked_batch_norm_fn)
def functional_batch_norm_rule(a: Analysis, node: fx.Node) -> Labels | None:
    lab = a.labels(node.args[0])
    if _stats_from_input(node):
        _bind_stats_dims(a, node, lab)
    lin = lab.get(1) if lab else None
    for p in node.args[1:] + tuple(node.kwargs.values()):
        pl = a.labels(p)
        if pl and pl.get(0) is not None:
            if lin is not None:
                a.table.unify_arrays(lin, pl.get(0))
            else:
                a.table.freeze_array(pl.get(0), "norm statistics of channels that cannot be pruned")
    return passthrough(a, node)


def rewrite_conv_groups(ctx, node: fx.Node) -> None:
    """F.conv's `groups` argument: the number of conv groups left (depthwise: the kept channels)."""
    groups = ctx.extra(node).get("groups")
    if groups is None:
        return
    n = ctx.alive_count(groups)
    if len(node.args) > 6:
        node.args = (*node.args[:6], n, *node.args[7:])
    else:
        node.kwargs = {**node.kwargs, "groups": n}


@register_rule(F.conv1d, F.conv2d, F.conv3d, rewrite=rewrite_conv_groups)
def functional_conv_rule(a: Analysis, node: fx.Node) -> Labels | None:
    """F.conv with any weight tensor (a parameter, or one computed from it, e.g. weight standardisation):
    the weight's labels are bound like a conv module's parameters, grouped convs included."""
    lab, w, b = a.labels(node.args[0]), arg(node, 1, "weight"), arg(node, 2, "bias")
    a.freeze_dims_except(lab, {1}, node, "conv")
    ws, wl, bl = a.shape(w), a.labels(w), a.labels(b)
    if not isinstance(w, fx.Node) or ws is None:
        a.freeze(lab, node, "functional conv with a constant weight")
        return Labels(a.shape(node))
    for d in range(2, len(ws)):
        if wl and wl.get(d) is not None:
            a.table.freeze_array(wl.get(d), "convolution kernel positions")
    tensors = {"weight": wl, "bias": bl}

    def bind(name: str, dim: int, atoms: np.ndarray | None, role: str) -> None:
        mine = tensors[name].get(dim) if tensors[name] else None
        if mine is not None and atoms is not None:
            a.table.unify_arrays(mine, atoms)
        elif mine is not None:
            a.table.freeze_array(mine, "conv over channels that cannot be pruned")

    lin, groups, extra = lab.get(1) if lab else None, arg(node, 6, "groups", 1), {}
    out = conv_channels(a, node.name, lin, ws[1] * groups, ws[0], groups, False, bind, extra)
    if extra:
        a.node_extra[node.name] = extra
    a.consume(node, 0, 1)
    return Labels(a.shape(node), {1: out})


__all__ = ["conv_channels", "pointwise"]
