"""Channel rules for tensor functions and methods: element-wise math, cat/split/slicing, reshapes,
permutes, matmul, reductions. Each rule that depends on channel counts also rewrites its constants."""
from __future__ import annotations

import builtins
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from fxprune.analysis.rules.common import (arg, channelwise, item_of, nothing, passthrough, pointwise,
                                          reshape_labels)
from fxprune.analysis.context import Analysis
from fxprune.analysis.labels import Labels
from fxprune.analysis.rules.masked import build_masked_mean
from fxprune.analysis.registry import method_key as M
from fxprune.analysis.registry import register_rule
from fxprune.tracing.meta import shape_of

# --- element-wise -----------------------------------------------------------------------------
_POINTWISE_FUNCS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow, operator.neg,
    operator.iadd, operator.imul, operator.isub, operator.itruediv, operator.mod, operator.abs,
    torch.add, torch.sub, torch.mul, torch.div, torch.true_divide, torch.pow, torch.neg, torch.abs, torch.exp,
    torch.log, torch.sqrt, torch.rsqrt, torch.sigmoid, torch.tanh, torch.relu, torch.clamp, torch.clip,
    torch.where, torch.maximum, torch.minimum, torch.sin, torch.cos, torch.erf, torch.square, torch.reciprocal,
    torch.zeros_like, torch.ones_like, torch.full_like, torch.lerp, torch.addcmul, torch.sign,
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.selu, F.mish,
    F.softplus, F.hardtanh, F.sigmoid, F.tanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    F.logsigmoid, F.relu_, F.celu, operator.gt, operator.lt, operator.ge, operator.le, operator.eq, operator.ne,
    torch.gt, torch.lt, torch.ge, torch.le, torch.eq, torch.ne, torch.logical_and, torch.logical_or,
    torch.logical_not, operator.and_, operator.or_, operator.invert, torch.isnan, torch.isfinite,
]
_POINTWISE_METHODS = [
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "relu", "relu_", "sigmoid", "sigmoid_", "tanh",
    "clamp", "clamp_", "clamp_min", "clip", "exp", "log", "sqrt", "rsqrt", "neg", "abs", "pow", "contiguous",
    "float", "half", "bfloat16", "double", "to", "type", "type_as", "clone", "detach", "cpu", "cuda", "square",
    "sign", "masked_fill", "where", "reciprocal", "exp_", "sin", "cos", "requires_grad_", "gelu", "silu",
    "gt", "lt", "ge", "le", "eq", "ne", "logical_and", "logical_or", "logical_not", "bool", "int", "long",
]
register_rule(*_POINTWISE_FUNCS, *[M(m) for m in _POINTWISE_METHODS])(pointwise)
register_rule(M("dim"), M("numel"), M("new_zeros"), M("new_ones"), M("new_empty"),
              M("new_full"), M("new_tensor"), torch._assert, M("item"), M("tolist"), M("data_ptr"),
              torch.numel, builtins.len, M("element_size"), M("get_device"))(nothing)

try:  # torchvision's fx-wrapped stochastic depth: element-wise in eval, a per-sample scale in training
    from torchvision.ops.stochastic_depth import stochastic_depth

    register_rule(stochastic_depth)(lambda a, node: passthrough(a, node))
except ImportError:  # pragma: no cover - torchvision is a dependency
    pass

# --- shape queries ------------------------------------------------------------------------------
@dataclass
class ShapeInfo:
    """The value of `x.shape` / `x.size()`: the channel labels (or None) of each queried dim."""

    labels: list[np.ndarray | None]
    sizes: list[int]


def rewrite_size_read(ctx, node: fx.Node) -> None:
    """A channel count read at run time (`q.size(-1)`, `x.shape[1]`) gives the *dense* value in the slim
    graph, so arithmetic on it (a 1/sqrt(head_dim) scale) computes what the masked model computes. The read
    is scaled, not replaced by a constant: a batch merged into the same dim stays dynamic. Sizes fed to
    view/reshape are rewritten separately, by the reshape rule."""
    extra = ctx.extra(node)
    const, labels = extra.get("const"), extra.get("labels")
    if const is None:
        return
    alive = ctx.alive_count(labels) if labels is not None else const
    users = list(node.users)
    dense = scaled(node, node, const, alive, after=True)
    for user in users:
        user.args, user.kwargs = fx.node.map_aggregate(
            (user.args, user.kwargs), lambda v: dense if v is node else v)


def scaled(anchor: fx.Node, value: fx.Node, num: int, den: int, after: bool = False) -> fx.Node:
    """A node computing `value * num // den`, inserted next to `anchor` (`value` itself when num == den
    or den == 0)."""
    if num == den or den == 0:
        return value
    graph = anchor.graph
    with graph.inserting_after(anchor) if after else graph.inserting_before(anchor):
        times = graph.call_function(operator.mul, (value, num))
    with graph.inserting_after(times):
        return graph.call_function(operator.floordiv, (times, den))


def _shape_info(a: Analysis, x: Any) -> ShapeInfo | None:
    lab, shape = a.labels(x), a.shape(x) if isinstance(x, fx.Node) else None
    if shape is None:
        return None
    return ShapeInfo([lab.dims.get(d) if lab else None for d in range(len(shape))], list(shape))


@register_rule(builtins.getattr)
def getattr_rule(a: Analysis, node: fx.Node) -> Any:
    src, name = node.args[0], node.args[1]
    v = a.values.get(src.name) if isinstance(src, fx.Node) else None
    if isinstance(v, dict):  # a field of a dataclass / ModelOutput the forward built
        return item_of(a, node, v, name)
    return _shape_info(a, src) if name == "shape" else None


@register_rule(M("size"), rewrite=rewrite_size_read)
def size_rule(a: Analysis, node: fx.Node) -> Any:
    info = _shape_info(a, node.args[0])
    d = arg(node, 1, "dim")
    if info is None or d is None:
        return info
    if info.labels[d] is not None:
        a.node_extra[node.name] = {"const": info.sizes[d], "labels": info.labels[d]}
    return None


def shape_item(a: Analysis, node: fx.Node, info: ShapeInfo, idx: Any) -> Any:
    if isinstance(idx, slice):
        return ShapeInfo(info.labels[idx], info.sizes[idx])
    if isinstance(idx, int) and info.labels[idx] is not None:
        a.node_extra[node.name] = {"const": info.sizes[idx], "labels": info.labels[idx]}
    return None


# --- pooling / resampling / padding ----------------------------------------------------------
register_rule(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d,
              F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d,
              F.interpolate, F.upsample, F.lp_pool2d)(lambda a, node: channelwise(a, node, 1))


@register_rule(F.grid_sample)
def grid_sample_rule(a: Analysis, node: fx.Node) -> Labels | None:
    """grid_sample(input, grid): every channel of the input is sampled at the grid's points on its own, so
    channels pass along dim 1; the grid's last dim holds coordinates, never channels."""
    grid = a.labels(arg(node, 1, "grid"))
    if grid:
        a.freeze(grid, node, "grid_sample's grid holds sampling coordinates")
    return channelwise(a, node, 1)


@register_rule(F.pad)
def pad_rule(a: Analysis, node: fx.Node) -> Labels | None:
    """pad: channels on a dim whose size changes are frozen (passthrough does that)."""
    return passthrough(a, node)


@register_rule(torch.roll, M("roll"), torch.flip, M("flip"))
def roll_rule(a: Analysis, node: fx.Node) -> Labels | None:
    """roll/flip move positions along their dims: channels on those dims are frozen."""
    lab = a.labels(node.args[0])
    is_roll = node.target in (torch.roll, "roll")
    dims = arg(node, 2, "dims") if is_roll else arg(node, 1, "dims")
    if lab:
        dims = list(range(lab.ndim)) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
        for d in dims:
            if lab.get(d) is not None:
                a.table.freeze_array(lab.get(d), f"{getattr(node.target, '__name__', node.target)} over channels")
    return passthrough(a, node)


# --- reductions --------------------------------------------------------------------------------
_NORMS = (torch.norm, M("norm"))
_MASKABLE = {torch.sum, M("sum"), torch.mean, M("mean"), *_NORMS}  # zeros at pruned positions add nothing


def _key(node: fx.Node) -> Any:
    return M(node.target) if node.op == "call_method" else node.target


def _reduced_dims(node: fx.Node, ndim: int) -> list[int] | None:
    dims = arg(node, 2, "dim") if _key(node) in _NORMS else arg(node, 1, "dim")
    if dims is None:
        return None
    dims = [dims] if isinstance(dims, int) else list(dims)
    return [d % ndim for d in dims]


def _keepdim(node: fx.Node) -> bool:
    return bool(arg(node, 3, "keepdim", False) if _key(node) in _NORMS else arg(node, 2, "keepdim", False))


def _maskable(node: fx.Node) -> bool:
    if _key(node) in _NORMS:
        return arg(node, 1, "p", "fro") in ("fro", 1, 2, 1.0, 2.0)
    return _key(node) in _MASKABLE


def _reduce(a: Analysis, node: fx.Node) -> Labels | None:
    """Reductions. One channel dim reduced by sum / mean / a 1- or 2-norm is *consumed*: the masked model
    zeroes the pruned channels first (and mean divides by the kept count), so the slim model's plain
    reduction over the kept channels computes the same. Anything else over channels freezes them."""
    lab, out_shape = a.labels(node.args[0]), a.shape(node)
    if not lab or out_shape is None:
        return Labels(out_shape) if out_shape is not None else None
    reduced = _reduced_dims(node, lab.ndim)
    reduced = list(range(lab.ndim)) if reduced is None else reduced
    keepdim = _keepdim(node)
    over = [d for d in reduced if d in lab.dims]
    if len(over) == 1 and _maskable(node):
        a.consume(node, 0, over[0])
    else:
        for d in over:
            a.table.freeze_array(lab.dims[d], f"reduced over by {getattr(node.target, '__name__', node.target)}")
    return Labels(out_shape, _kept_dims(lab, reduced, keepdim))


def _kept_dims(lab: Labels, reduced: list[int], keepdim: bool) -> dict[int, np.ndarray]:
    """The labels of the dims a reduction keeps, renumbered when the reduced dims are dropped."""
    return {(d if keepdim else d - sum(1 for r in reduced if r < d)): arr
            for d, arr in lab.dims.items() if d not in reduced}


register_rule(torch.sum, M("sum"), torch.amax, torch.amin, M("amax"), M("amin"), torch.std, torch.var,
              M("std"), M("var"), torch.logsumexp, M("logsumexp"), torch.norm, M("norm"))(_reduce)
register_rule(torch.mean, M("mean"), masked=build_masked_mean)(_reduce)


@register_rule(torch.max, torch.min, M("max"), M("min"))
def max_rule(a: Analysis, node: fx.Node) -> Any:
    """max / min: of two tensors element-wise; over a dim, a (values, indices) pair; over all, a scalar.
    A channel dim reduced by max / min is frozen (a zeroed channel could be the max)."""
    other = arg(node, 1, "dim") if "other" not in node.kwargs else node.kwargs["other"]
    if isinstance(other, fx.Node):
        return pointwise(a, node)
    lab = a.labels(node.args[0])
    if other is None:
        a.freeze(lab, node, f"{node.target} over every dim")
        return Labels(a.shape(node)) if a.shape(node) is not None else None
    keepdim = bool(arg(node, 2, "keepdim", False))
    d = other % lab.ndim if lab else other
    if lab and lab.get(d) is not None:
        a.table.freeze_array(lab.get(d), f"reduced over by {node.target}")
    if not lab:
        return [None, None]
    shape = tuple(1 if i == d else s for i, s in enumerate(lab.shape) if i != d or keepdim)
    out = Labels(shape, _kept_dims(lab, [d], keepdim))
    return [out, out]


@register_rule(M("repeat_interleave"), torch.repeat_interleave, M("unfold"))
def along_dim_rule(a: Analysis, node: fx.Node) -> Labels | None:
    """Ops that rewrite one dim and keep the others in place: x.repeat_interleave(r, dim) and
    x.unfold(dim, size, step) (sliding windows; a new last dim). Channels along that dim are frozen."""
    lab, out_shape = a.labels(node.args[0]), a.shape(node)
    if out_shape is None:
        return None
    if not lab:
        return Labels(out_shape)
    dim = arg(node, 2, "dim") if node.target != "unfold" else arg(node, 1, "dimension")
    if dim is None:  # repeat_interleave without dim flattens first
        a.freeze(lab, node, "repeat_interleave over the flattened tensor")
        return Labels(out_shape)
    dim %= lab.ndim
    if lab.get(dim) is not None:
        a.table.freeze_array(lab.get(dim), f"{node.target} along a channel dimension")
    return Labels(out_shape, {d: x for d, x in lab.dims.items() if d != dim and out_shape[d] == len(x)})


def _freeze_along(a: Analysis, node: fx.Node, dim: Any, what: str) -> Labels | None:
    """Shape-preserving ops that mix values along `dim`: channels along it are frozen, others pass."""
    lab = a.labels(node.args[0])
    if lab and dim is not None and lab.get(dim) is not None:
        a.table.freeze_array(lab.get(dim), f"{what} over a channel dimension")
    return passthrough(a, node)


@register_rule(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, M("softmax"), M("log_softmax"))
def softmax_rule(a: Analysis, node: fx.Node) -> Labels | None:
    return _freeze_along(a, node, arg(node, 1, "dim"), "softmax")


@register_rule(F.normalize)
def normalize_rule(a: Analysis, node: fx.Node) -> Labels | None:
    return _freeze_along(a, node, arg(node, 2, "dim", 1), "normalize")


# --- permutes ------------------------------------------------------------------------------------
def _permuted(a: Analysis, node: fx.Node, perm: list[int]) -> Labels | None:
    lab, out_shape = a.labels(node.args[0]), a.shape(node)
    if not lab:
        return Labels(out_shape)
    perm = [p % lab.ndim for p in perm]
    return Labels(out_shape, {k: lab.dims[p] for k, p in enumerate(perm) if p in lab.dims})


@register_rule(torch.permute, M("permute"))
def permute_rule(a: Analysis, node: fx.Node) -> Labels | None:
    dims = node.args[1:] if len(node.args) > 2 else arg(node, 1, "dims")
    return _permuted(a, node, list(dims))


@register_rule(torch.transpose, M("transpose"), torch.swapaxes, M("swapaxes"), torch.swapdims, M("swapdims"))
def transpose_rule(a: Analysis, node: fx.Node) -> Labels | None:
    lab = a.labels(node.args[0])
    ndim = len(a.shape(node))
    d0, d1 = arg(node, 1, "dim0") % ndim, arg(node, 2, "dim1") % ndim
    perm = list(range(ndim))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return _permuted(a, node, perm) if lab else Labels(a.shape(node))


@register_rule(M("t"), torch.t)
def t_rule(a: Analysis, node: fx.Node) -> Labels | None:
    return _permuted(a, node, [1, 0]) if len(a.shape(node)) == 2 else passthrough(a, node)


# --- reshapes ------------------------------------------------------------------------------------
def _size_args(node: fx.Node) -> tuple[list[Any], int] | None:
    """The size list of view/reshape/expand and where it sits: (sizes, start index in node.args)."""
    if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)):
        return list(node.args[1]), -1
    if "shape" in node.kwargs or "size" in node.kwargs:
        return None
    return list(node.args[1:]), 1


def rewrite_sizes(ctx, node: fx.Node) -> None:
    """Write the new channel counts into int constants of a view/reshape/expand size list."""
    found = _size_args(node)
    lab = ctx.labels(node)
    if found is None or not lab:
        return
    sizes, where = found
    for d, arr in lab.dims.items():
        if d >= len(sizes):
            continue
        if isinstance(sizes[d], fx.Node):
            sizes[d] = scaled(node, sizes[d], ctx.alive_count(arr), len(arr))  # a batch factor stays dynamic
        elif isinstance(sizes[d], int) and sizes[d] != -1:
            sizes[d] = ctx.alive_count(arr)
    node.args = (node.args[0], tuple(sizes)) if where == -1 else (node.args[0], *sizes)


@register_rule(M("view"), M("reshape"), torch.reshape, rewrite=rewrite_sizes)
def view_rule(a: Analysis, node: fx.Node) -> Labels | None:
    return reshape_labels(a, node, a.labels(node.args[0]), a.shape(node))


@register_rule(torch.flatten, M("flatten"), M("unflatten"), torch.unflatten, M("squeeze"), torch.squeeze,
               M("unsqueeze"), torch.unsqueeze, M("view_as"), M("reshape_as"), rewrite=None)
def flatten_rule(a: Analysis, node: fx.Node) -> Labels | None:
    return reshape_labels(a, node, a.labels(node.args[0]), a.shape(node))


def _unsqueeze_pair_rule(a: Analysis, node: fx.Node) -> list | None:
    """torchvision MViT's fx-wrapped `_unsqueeze(x, target_dim, expand_dim) -> (x', x.dim())`: x' is x with
    perhaps one dim inserted, so its labels follow as for a reshape."""
    lab, shapes = a.labels(node.args[0]), shape_of(node)
    out = shapes[0] if isinstance(shapes, list) and shapes and isinstance(shapes[0], tuple) else None
    if out is None:
        if lab:
            a.freeze(lab, node, "an unsqueeze whose output shape was not recorded")
        return None
    return [reshape_labels(a, node, lab, out), None]


try:
    from torchvision.models.video import mvit as _mvit

    register_rule(_mvit._unsqueeze)(_unsqueeze_pair_rule)
    register_rule(_mvit._squeeze)(flatten_rule)
except ImportError:  # pragma: no cover
    pass


@register_rule(M("repeat"), M("tile"), torch.tile)  # repeat counts, not sizes: channel dims keep count 1
@register_rule(M("expand"), rewrite=rewrite_sizes)
def expand_rule(a: Analysis, node: fx.Node) -> Labels | None:
    lab, out_shape = a.labels(node.args[0]), a.shape(node)
    if not lab:
        return Labels(out_shape)
    off = len(out_shape) - lab.ndim
    dims = {}
    for d, arr in lab.dims.items():
        if out_shape[d + off] == lab.shape[d]:
            dims[d + off] = arr
        else:
            a.table.freeze_array(arr, "tiled by repeat")
    return Labels(out_shape, dims)


@register_rule(M("expand_as"))
def expand_as_rule(a: Analysis, node: fx.Node) -> Labels | None:
    return pointwise(a, node)
