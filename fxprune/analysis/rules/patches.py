"""Channel rules for patch extraction (unfold / fold) and recurrent layers (RNN, LSTM, GRU)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.analysis.context import Analysis
from fxprune.analysis.labels import Labels
from fxprune.analysis.registry import register_rule
from fxprune.tracing.meta import shape_of


def _kernel_positions(a: Analysis, node: fx.Node, n: int) -> np.ndarray:
    kk = a.fresh(n, f"{node.name} kernel positions")
    a.table.freeze_array(kk, "positions inside an unfold / fold kernel")
    return kk


def _patch_channels(a: Analysis, node: fx.Node, what: str) -> tuple[np.ndarray | None, Any]:
    """The input's channel atoms (other labelled dims frozen) and the output shape."""
    lab, out_shape = a.labels(node.args[0]), a.shape(node)
    a.freeze_dims_except(lab, {1}, node, what)
    return (lab.get(1) if lab else None), out_shape


@register_rule(nn.Unfold, F.unfold)
def unfold_rule(a: Analysis, node: fx.Node) -> Labels | None:
    """(B, C, H, W) -> (B, C * k*k, L): each channel becomes k*k rows (channel-major), a product term."""
    lin, out_shape = _patch_channels(a, node, "unfold")
    if lin is None or out_shape is None:
        return Labels(out_shape) if out_shape is not None else None
    kk = _kernel_positions(a, node, out_shape[1] // len(lin))
    return Labels(out_shape, {1: a.product_atoms([lin, kk], f"{node.name} unfolded channels")})


@register_rule(nn.Fold, F.fold)
def fold_rule(a: Analysis, node: fx.Node) -> Labels | None:
    """(B, C * k*k, L) -> (B, C, H, W): the inverse factorisation of unfold."""
    lin, out_shape = _patch_channels(a, node, "fold")
    if lin is None or out_shape is None:
        return Labels(out_shape) if out_shape is not None else None
    channels = a.fresh(out_shape[1], f"{node.name} folded channels")
    a.bind_products(lin, [channels, _kernel_positions(a, node, len(lin) // out_shape[1])])
    return Labels(out_shape, {1: channels})


def _unlabelled(shape: Any) -> Any:
    if isinstance(shape, tuple):
        return Labels(shape)
    return [_unlabelled(s) for s in shape] if isinstance(shape, list) else None


@register_rule(nn.RNNBase)
def rnn_rule(a: Analysis, node: fx.Node) -> Any:
    """Recurrent layers consume their input features (the columns of the first layer's input weights);
    their hidden units stay whole (the outputs carry no prunable channels)."""
    m, lab = a.module(node), a.labels(node.args[0])
    lin = lab.get(-1) if lab else None
    if lab:
        a.freeze_dims_except(lab, {lab.ndim - 1}, node, type(m).__name__)
    for name in ("weight_ih_l0", "weight_ih_l0_reverse"):
        a.bind_param(f"{node.target}.{name}", 1, lin, "consumer")
    a.consume(node, 0, -1)
    return _unlabelled(shape_of(node))
