"""FLOP terms of nodes whose work is spread over several differently-pruned dimensions.

The cost model scales a node's counted FLOPs by the kept fraction of each of its channel dimensions. That is
exact for a conv or a linear (all of its work iterates over its in x out channels) but not for a fused
attention: its q/k/v projections iterate over embedding x (heads x head dims), the score and value products
over heads x head dims only, and the output projection over (heads x v dims) x output channels. A splitter
registered here returns one term per part, each with the dimensions its own work iterates over; the parts'
shares come from the shapes and are scaled so that they add up to the FLOPs torch's flop counter counted
for the node (whatever kernel it picked).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch.fx as fx
from torch import nn

from fxprune.analysis.rules.common import arg
from fxprune.registry import Registry, qualified_name
from fxprune.tracing.meta import shape_of

Term = tuple[float, list[np.ndarray]]  # dense FLOPs, the arrays whose kept fractions scale them
Splitter = Callable[[Any, fx.Node, nn.Module | None], list[Term] | None]  # (analysis, node, module) -> terms

SPLITTERS: Registry[Any, Splitter] = Registry("FLOP splitters", describe=qualified_name)  # module class / function


def register_splitter(key: Any, *, override: bool = False) -> Callable[[Splitter], Splitter]:
    """Register a splitter for a fused op (a module class or a function): `fn(analysis, node, module)` returns
    the node's FLOPs as terms, each scaled by the kept fraction of its own label arrays."""
    def deco(fn: Splitter) -> Splitter:
        SPLITTERS.register(key, fn, override=override)
        return fn
    return deco


def split_terms(a, gm: fx.GraphModule, node: fx.Node, flops: int) -> list[Term] | None:
    """The node's FLOPs as several terms (None: the node has no splitter or it does not apply)."""
    module = gm.get_submodule(node.target) if node.op == "call_module" else None
    key = type(module) if module is not None else node.target if node.op == "call_function" else None
    splitter = SPLITTERS.get(key)
    parts = splitter(a, node, module) if splitter is not None else None
    if not parts:
        return None
    total = sum(f for f, _ in parts)
    return [(flops * f / total, [arr for arr in arrs if arr is not None]) for f, arrs in parts]


def _shape(node: Any) -> tuple[int, ...] | None:
    s = shape_of(node) if isinstance(node, fx.Node) else None
    s = s[0] if isinstance(s, list) and s else s
    return tuple(s) if s is not None else None


def _dims(a, param: str) -> dict[int, np.ndarray]:
    return a.params.get(param) or {}


@register_splitter(nn.MultiheadAttention)
def _mha(a, node: fx.Node, m: nn.MultiheadAttention) -> list[Term] | None:
    """q/k/v projections, scores, attention x values, output projection of `nn.MultiheadAttention`."""
    rows = _dims(a, f"{node.target}.in_proj_weight")
    out = _dims(a, f"{node.target}.out_proj.weight")
    q_shape, k_shape = _shape(arg(node, 0, "query")), _shape(arg(node, 1, "key"))
    if 0 not in rows or 1 not in out or q_shape is None or k_shape is None:
        return None  # separate k/v dims: kept whole, the node's own dims are exact
    e = m.embed_dim
    q_tokens, k_tokens = math.prod(q_shape[:-1]), math.prod(k_shape[:-1])
    batch = 1 if len(q_shape) == 2 else q_shape[0] if m.batch_first else q_shape[1]
    q_rows, k_rows, v_rows = rows[0][:e], rows[0][e:2 * e], rows[0][2 * e:]
    e_in, e_out = rows.get(1), out.get(0)
    pairs = q_tokens * k_tokens / batch  # query x key positions, summed over the batch
    return [(q_tokens * e * e, [q_rows, e_in]), (k_tokens * e * e, [k_rows, e_in]),
            (k_tokens * e * e, [v_rows, e_in]), (pairs * e, [q_rows]), (pairs * e, [v_rows]),
            (q_tokens * e * m.out_proj.out_features, [out[1], e_out])]


def _window_attention(a, node: fx.Node, _module: None) -> list[Term] | None:
    """qkv projection, scores and attention x values inside each window, output projection (Swin)."""
    x_shape = _shape(node.args[0])
    qkv, proj = a.labels(node.args[1]), a.labels(node.args[2])
    window = arg(node, 4, "window_size")
    if x_shape is None or qkv is None or proj is None or window is None:
        return None
    c, tokens, n = x_shape[-1], math.prod(x_shape[:-1]), math.prod(window)
    heads_dims = proj.get(1)
    return [(tokens * c * 3 * c, [qkv.get(0), qkv.get(1)]), (2 * tokens * n * c, [heads_dims]),
            (tokens * c * proj.shape[0], [heads_dims, proj.get(0)])]


try:
    from torchvision.models import swin_transformer as _swin

    register_splitter(_swin.shifted_window_attention)(_window_attention)
except ImportError:  # pragma: no cover - torchvision is a dependency
    pass
