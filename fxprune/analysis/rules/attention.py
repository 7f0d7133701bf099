"""Attention: nn.MultiheadAttention, torchvision's Swin window attention, scaled_dot_product_attention,
einsum. Heads and head dims become two factor groups; q/k share head dims, v has its own where the
implementation allows; head counts, head sizes and softmax scales are rewritten in the slim graph."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune import nn as fxnn
from fxprune.analysis.rules.common import arg
from fxprune.analysis.context import Analysis, NodeFacts
from fxprune.analysis.labels import Labels
from fxprune.analysis.rules.masked import apply_mask
from fxprune.analysis.registry import register_rule
from fxprune.tracing.meta import shape_of


# --- nn.MultiheadAttention --------------------------------------------------------------------------
def _mha_blocks(a: Analysis, path: str, heads: int, head_dim: int) -> tuple[np.ndarray, ...]:
    h = a.fresh(heads, f"{path} heads", "blocks")
    qk = a.fresh(head_dim, f"{path} q/k head dims")
    v = a.fresh(head_dim, f"{path} v head dims")
    q_rows, k_rows = a.product_atoms([h, qk], f"{path} q"), a.product_atoms([h, qk], f"{path} k")
    v_rows = a.product_atoms([h, v], f"{path} v")
    return h, qk, v, np.concatenate([q_rows, k_rows, v_rows]), v_rows


def mha_rule(a: Analysis, node: fx.Node) -> list[Labels | None]:
    m: nn.MultiheadAttention = a.module(node)
    path = node.target
    out_shape = tuple(shape_of(node)[0])
    if not m._qkv_same_embed_dim:
        for x in node.args[:3]:
            a.freeze(a.labels(x), node, "MultiheadAttention with separate k/v dims is kept whole")
        return [Labels(out_shape), None]
    inputs = [a.labels(arg(node, i, n)) for i, n in enumerate(("query", "key", "value"))]
    embed = [lab.get(-1) if lab else None for lab in inputs]
    h, qk, v, rows, v_rows = _mha_blocks(a, path, m.num_heads, m.head_dim)
    a.node_extra[node.name] = {"heads": h, "qk": qk, "v": v}
    have = [e for e in embed if e is not None]
    if len(have) < 3:
        for e in have:
            a.table.freeze_array(e, "attention inputs of which some carry no channels")
        embed_atoms = None
    else:
        embed_atoms = have[0]
        for e in have[1:]:
            a.table.unify_arrays(embed_atoms, e)
    a.bind_param(f"{path}.in_proj_weight", 0, rows, "producer")
    a.bind_param(f"{path}.in_proj_weight", 1, embed_atoms, "consumer")
    a.bind_param(f"{path}.in_proj_bias", 0, rows, "producer")
    out = a.fresh(m.out_proj.out_features, f"{path} output")
    a.bind_param(f"{path}.out_proj.weight", 1, v_rows, "consumer")
    a.bind_param(f"{path}.out_proj.weight", 0, out, "producer")
    a.bind_param(f"{path}.out_proj.bias", 0, out, "producer")
    for i in range(3):
        a.consume(node, i, -1)
    dims = {d: x for d, x in (inputs[0].dims.items() if inputs[0] else ()) if d != len(out_shape) - 1}
    dims[len(out_shape) - 1] = out
    return [Labels(out_shape, dims), None]


def build_masked_mha(graph: fx.Graph, node: fx.Node, m: nn.MultiheadAttention, mask: fx.Node,
                     make_mask, *, dim: int | None = None, facts: NodeFacts | None = None) -> fx.Node:
    """Masked model: the original attention, with in-projection rows of removed heads/dims zeroed."""
    p = node.target
    rows = (facts or {}).get("rows")
    rows_mask = make_mask(rows) if rows is not None else None
    w = graph.get_attr(f"{p}.in_proj_weight")
    b = graph.get_attr(f"{p}.in_proj_bias") if m.in_proj_bias is not None else None
    if rows_mask is not None:
        w = graph.call_function(apply_mask, (w, rows_mask, 0))
        b = graph.call_function(apply_mask, (b, rows_mask, 0)) if b is not None else None
    ins = [graph.call_function(apply_mask, (arg(node, i, n), mask, -1)) for i, n in
           enumerate(("query", "key", "value"))]
    ow = graph.get_attr(f"{p}.out_proj.weight")
    ob = graph.get_attr(f"{p}.out_proj.bias") if m.out_proj.bias is not None else None
    out = graph.call_function(fxnn.mha_forward, (*ins, w, b, ow, ob, m.num_heads, m.head_dim, m.head_dim,
                                                 m.head_dim ** -0.5, m.batch_first, node.kwargs.get("attn_mask")))
    return graph.call_function(tuple, ([out, None],))


def _mha_propagate(a: Analysis, node: fx.Node):
    out = mha_rule(a, node)
    if a.module(node)._qkv_same_embed_dim:
        a.node_extra[node.name]["rows"] = a.params[f"{node.target}.in_proj_weight"][0]
    return out


register_rule(nn.MultiheadAttention, masked=build_masked_mha)(_mha_propagate)


# --- torchvision Swin ------------------------------------------------------------------------------
def _swin_rule(a: Analysis, node: fx.Node) -> Labels | None:
    """torchvision's (shifted) window attention: qkv rows and proj columns are heads x head dims."""
    x = a.labels(node.args[0])
    qkv_w, proj_w = a.labels(node.args[1]), a.labels(node.args[2])
    heads_n = arg(node, 5, "num_heads")
    c = a.shape(node.args[0])[-1]
    h = a.fresh(heads_n, f"{node.name} heads", "blocks")
    hd = a.fresh(c // heads_n, f"{node.name} head dims")
    n = heads_n * (c // heads_n)
    a.node_extra[node.name] = {"heads": h, "head_dim": c // heads_n}
    lin = x.get(-1) if x else None
    for lab in (qkv_w, a.labels(arg(node, 9, "qkv_bias"))):  # q, k and v rows: heads x head dims
        if lab and lab.get(0) is not None:
            for i in range(3):
                a.bind_products(lab.get(0)[i * n:(i + 1) * n], [h, hd])
    if qkv_w:
        if lin is not None:
            a.table.unify_arrays(qkv_w.get(1), lin)
        else:
            a.table.freeze_array(qkv_w.get(1), "attention over channels that cannot be pruned")
    scale = a.labels(arg(node, 11, "logit_scale"))
    if scale and scale.get(0) is not None:
        a.table.unify_arrays(scale.get(0), h)
    rpb = a.labels(node.args[3])
    if rpb and rpb.get(1) is not None:
        a.table.unify_arrays(rpb.get(1), h)
    out = proj_w.get(0) if proj_w else a.fresh(c, f"{node.name} output")
    if proj_w:
        a.bind_products(proj_w.get(1), [h, hd])
    pb = a.labels(arg(node, 10, "proj_bias"))
    if pb and pb.get(0) is not None:
        a.table.unify_arrays(pb.get(0), out)
    a.consume(node, 0, -1)
    a.consume(node, 1, 0)
    if "qkv_bias" in node.kwargs:
        a.consume(node, "qkv_bias", 0)
    dims = {d: v for d, v in x.dims.items() if d != len(x.shape) - 1} if x else {}
    dims[len(a.shape(node)) - 1] = out
    return Labels(a.shape(node), dims)


def _swin_rewrite(ctx, node: fx.Node) -> None:
    extra = ctx.extra(node)
    args = list(node.args)
    heads = ctx.alive_count(extra["heads"])
    if len(args) > 5:
        args[5] = heads
    else:
        node.kwargs = {**node.kwargs, "num_heads": heads}
    node.args = tuple(args)
    node.target = fxnn.window_attention
    node.kwargs = {**node.kwargs, "scale": extra["head_dim"] ** -0.5}


def _relative_bias_rule(a: Analysis, node: fx.Node) -> Labels | None:
    table = a.labels(node.args[0])
    if table and table.get(0) is not None:
        a.table.freeze_array(table.get(0), "relative-position table rows are looked up by index")
    heads = table.get(1) if table else None
    return Labels(a.shape(node), {1: heads} if heads is not None else {})


def _patch_merging_rule(a: Analysis, node: fx.Node) -> Labels | None:
    """torchvision's Swin patch merging: 2x2 neighbours concatenated along channels (4 copies)."""
    lab = a.labels(node.args[0])
    if not lab:
        return Labels(a.shape(node))
    a.freeze_dims_except(lab, {lab.ndim - 1}, node, "patch merging")
    last = lab.get(-1)
    return Labels(a.shape(node), {lab.ndim - 1: np.concatenate([last] * 4)} if last is not None else {})


try:
    from torchvision.models import swin_transformer as _swin

    register_rule(_swin._patch_merging_pad)(_patch_merging_rule)
    register_rule(_swin.shifted_window_attention, rewrite=_swin_rewrite)(_swin_rule)
    register_rule(_swin._get_relative_position_bias)(_relative_bias_rule)
    register_rule(fxnn.window_attention)(_swin_rule)
except ImportError:  # pragma: no cover
    pass


# --- scaled_dot_product_attention ----------------------------------------------------------------------
def _sdpa_rewrite(ctx, node: fx.Node) -> None:
    if "scale" not in node.kwargs and len(node.args) < 7:
        e = ctx.ga.analysis.shape(node.args[0])[-1]
        node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(e)}


@register_rule(F.scaled_dot_product_attention, rewrite=_sdpa_rewrite)
def sdpa_rule(a: Analysis, node: fx.Node) -> Labels | None:
    q, k, v = (a.labels(node.args[i]) for i in range(3))
    shapes = [a.shape(node.args[i]) for i in range(3)]
    qe, ke = (q.get(-1) if q else None), (k.get(-1) if k else None)
    if qe is not None and ke is not None:
        a.table.unify_arrays(qe, ke)
        a.consume(node, 0, len(shapes[0]) - 1)
    elif qe is not None or ke is not None:
        a.table.freeze_array(qe if qe is not None else ke, "attention against a tensor without channels")
    dims = {}
    for d in range(len(shapes[0]) - 2):
        arrs = [lab.get(d) if lab else None for lab in (q, k, v)]
        have = [x for x in arrs if x is not None]
        if have and len(have) < 3:
            for x in have:
                a.table.freeze_array(x, "attention batch dim labelled on some inputs only")
        elif have:
            a.table.unify_arrays(have[0], have[1])
            a.table.unify_arrays(have[0], have[2])
            dims[d] = have[0]
    ve = v.get(-1) if v else None
    if ve is not None:
        dims[len(shapes[0]) - 1] = ve
    _bind_attn_mask(a, node, dims, len(shapes[0]))
    return Labels(a.shape(node), dims)


def _bind_attn_mask(a: Analysis, node: fx.Node, dims: dict[int, np.ndarray], ndim: int) -> None:
    """The additive mask / bias broadcasts against (..., heads, L, S): its batch-like dims (e.g. a per-head
    relative position bias) share the query's channels there; a dense mask dim of full size freezes them."""
    mask_node = arg(node, 3, "attn_mask")
    shape = a.shape(mask_node) if isinstance(mask_node, fx.Node) else None
    if shape is None:
        return
    mask = a.labels(mask_node)
    for d, size in enumerate(shape):
        od, md = d + ndim - len(shape), mask.get(d) if mask else None
        if od >= ndim - 2 or od < 0:
            if md is not None:
                a.table.freeze_array(md, "attention mask labelled along its token dims")
        elif md is not None and dims.get(od) is not None:
            a.table.unify_arrays(dims[od], md)
        elif md is not None:
            a.table.freeze_array(md, "attention mask labelled where the query is not")
        elif size != 1 and dims.get(od) is not None:
            a.table.freeze_array(dims[od], "attention against a mask without channel identity")


# --- einsum ------------------------------------------------------------------------------------------------
@register_rule(torch.einsum)
def einsum_rule(a: Analysis, node: fx.Node) -> Labels | None:
    eq = node.args[0].replace(" ", "")
    ops = list(node.args[1]) if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) else list(
        node.args[1:])
    if "..." in eq or "->" not in eq:
        for o in ops:
            a.freeze(a.labels(o), node, "einsum with an ellipsis or implicit output")
        return Labels(a.shape(node))
    lhs, out = eq.split("->")
    letters: dict[str, list[np.ndarray | None]] = {}
    sizes: dict[str, int] = {}
    for spec, o in zip(lhs.split(","), ops):
        lab, shp = a.labels(o), a.shape(o)
        for d, ch in enumerate(spec):
            sizes[ch] = max(sizes.get(ch, 1), shp[d])
            if shp[d] > 1:
                letters.setdefault(ch, []).append(lab.dims.get(d) if lab else None)
    merged: dict[str, np.ndarray] = {}
    for ch, arrs in letters.items():
        have = [x for x in arrs if x is not None]
        if not have:
            continue
        if len(have) < len(arrs):
            for x in have:
                a.table.freeze_array(x, f"einsum index '{ch}' meets a tensor without channels")
            continue
        for x in have[1:]:
            a.table.unify_arrays(have[0], x)
        merged[ch] = have[0]
    contracted = set(letters) - set(out)
    first = lhs.split(",")[0]
    for ch in contracted & set(merged):
        if len(node.args) > 2 and ch in first:
            a.consume(node, 1, first.index(ch))
        else:
            a.table.freeze_array(merged[ch], "einsum contraction that fxprune cannot mask")
    return Labels(a.shape(node), {d: merged[ch] for d, ch in enumerate(out) if ch in merged})


__all__ = ["einsum_rule", "mha_rule", "sdpa_rule"]


# --- fxprune.nn.mha_forward (slim attention; lets a pruned model be analysed and pruned again) ----------
def _mha_forward_rule(a: Analysis, node: fx.Node) -> Labels | None:
    heads_n, qk_n, v_n = node.args[7], node.args[8], node.args[9]
    name = node.name
    h = a.fresh(heads_n, f"{name} heads", "blocks")
    qk, v = a.fresh(qk_n, f"{name} q/k head dims"), a.fresh(v_n, f"{name} v head dims")
    v_rows = a.product_atoms([h, v], f"{name} v")
    rows = np.concatenate([a.product_atoms([h, qk], f"{name} q"), a.product_atoms([h, qk], f"{name} k"), v_rows])
    a.node_extra[name] = {"heads": h, "qk": qk, "v": v}
    embed = [a.labels(node.args[i]) for i in range(3)]
    in_w, in_b, out_w, out_b = (a.labels(node.args[i]) for i in range(3, 7))
    lin = [e.get(-1) if e else None for e in embed]
    if in_w:
        a.table.unify_arrays(in_w.get(0), rows)
        for e in lin:
            if e is not None:
                a.table.unify_arrays(in_w.get(1), e)
    if in_b and in_b.get(0) is not None:
        a.table.unify_arrays(in_b.get(0), rows)
    out = out_w.get(0) if out_w else None
    if out_w:
        a.table.unify_arrays(out_w.get(1), v_rows)
    if out_b and out_b.get(0) is not None and out is not None:
        a.table.unify_arrays(out_b.get(0), out)
    for i in range(3):
        a.consume(node, i, -1)
    a.consume(node, 3, 0)
    if node.args[4] is not None:
        a.consume(node, 4, 0)
    shape = a.shape(node)
    dims = {d: x for d, x in (embed[0].dims.items() if embed[0] else ()) if d != len(shape) - 1}
    if out is not None:
        dims[len(shape) - 1] = out
    return Labels(shape, dims)


def _mha_forward_rewrite(ctx, node: fx.Node) -> None:
    extra = ctx.extra(node)
    args = list(node.args)
    args[7], args[8], args[9] = (ctx.alive_count(extra[k]) for k in ("heads", "qk", "v"))
    node.args = tuple(args)


register_rule(fxnn.mha_forward, rewrite=_mha_forward_rewrite)(_mha_forward_rule)
