"""Fold eval-mode BatchNorm layers into the convolution or linear layer that feeds them.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``,
so when its input is the output of a conv or linear layer it can be merged into that layer's weight and bias
and the BatchNorm removed: one kernel and one pass over the activations fewer per BN, the same numbers up to
float rounding. The arithmetic is torch's own (`torch.nn.utils.fusion.fuse_conv_bn_weights` and
`fuse_linear_bn_weights`), done in at least float32.

A BN node is folded when all of these hold (anything else is left as it is, never guessed at):

* the BN is an eval-mode ``nn.BatchNorm1d/2d/3d`` with running statistics (``track_running_stats=True``);
* its only input is the output of an ``nn.Conv1d/2d/3d``, an ``nn.ConvTranspose1d/2d/3d`` with
  ``groups=1`` (grouped transposed convs are left alone), or an ``nn.Linear``, and that output feeds the BN
  only;
* that conv / linear module is called at exactly one place in the graph and its parameters are not read
  anywhere else (a module shared by two call sites keeps its weights);
* for ``nn.Linear``: its output is 2-D ``(N, features)`` (BatchNorm1d normalises dim 1, a linear layer
  writes the last dim; they agree only in 2-D), or the BN has a single feature. The rank is read from the
  shapes fxprune records on its graphs, or found by running `example_inputs` through a copy; when it is
  unknown, the pair is left alone.

Only exact classes are folded (a subclass may change what ``forward`` computes). Functional calls
(``F.batch_norm``) are not folded.
"""
from __future__ import annotations

import copy
import logging
from collections import Counter
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from fxprune.errors import TraceError
from fxprune.tracing.meta import SHAPE
from fxprune.tracing.tracer import as_input_tuple

__all__ = ["fold_batchnorm"]

log = logging.getLogger(__name__)

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def fold_batchnorm(module: nn.Module, example_inputs: Any = None, *, inplace: bool = False) -> fx.GraphModule:
    """A new GraphModule computing what `module` computes, with every foldable BatchNorm folded into the
    conv / linear layer before it (see the module docstring for the exact rule).

    `module` is deep-copied first and never changed (with ``inplace=True`` it is not copied: its conv and
    linear layers get the folded weights, for callers that own it). A ``torch.fx.GraphModule`` (e.g. an
    fxprune slim model) is used as it is; any other module is traced with ``torch.fx.symbolic_trace`` (a
    `TraceError` says what to do when that fails). `example_inputs` (a tensor or a tuple of tensors) is only
    needed to fold Linear + BatchNorm1d pairs whose output rank the graph does not record.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    >>> folded = fold_batchnorm(net)
    >>> any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    False
    >>> x = torch.randn(2, 3, 8, 8)
    >>> torch.allclose(folded(x), net(x), atol=1e-5)
    True
    """
    gm = _as_graph_module(module if inplace else _deepcopy(module))
    shapes, usage = _ShapeLookup(gm, example_inputs), _Usage(gm)
    folded: list[str] = []
    for node in list(gm.graph.nodes):
        producer = _foldable_producer(gm, node, shapes, usage)
        if producer is None:
            continue
        _fold_into(gm.get_submodule(producer.target), gm.get_submodule(node.target))
        node.replace_all_uses_with(producer)
        gm.graph.erase_node(node)
        folded.append(node.target)
    _delete_unreferenced(gm, folded, _Usage(gm))
    gm.graph.lint()
    gm.recompile()
    return gm


# ------------------------------------------------------------------------------------------- tracing


def _deepcopy(module: nn.Module) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise TypeError(f"fold_batchnorm needs a torch.nn.Module, got {type(module).__name__}.")
    try:
        return copy.deepcopy(module)
    except Exception as exc:  # noqa: BLE001 -- any copy failure: say why a copy is needed
        raise TypeError(f"fold_batchnorm works on a deep copy so that {type(module).__name__} is not changed, "
                        f"but copy.deepcopy failed: {type(exc).__name__}: {exc}.") from exc


def _as_graph_module(module: nn.Module) -> fx.GraphModule:
    """`module` itself when it is a GraphModule, else its torch.fx.symbolic_trace (sharing its submodules)."""
    if isinstance(module, fx.GraphModule):
        return module
    try:
        return fx.symbolic_trace(module)
    except Exception as exc:  # noqa: BLE001 -- every tracing failure gets the same advice
        raise TraceError(
            f"fold_batchnorm could not trace {type(module).__name__} with torch.fx.symbolic_trace: "
            f"{type(exc).__name__}: {exc}. Folding BatchNorm needs a torch.fx graph. Fix: pass a GraphModule "
            f"instead, e.g. fxprune.trace(model, x) (it turns untraceable submodules into opaque leaves), "
            f"or skip folding with optimize(..., fold_bn=False).") from exc


class _ShapeLookup:
    """Output shape of a node: fxprune's recorded shape, fx's tensor_meta, or (once, lazily) a ShapeProp run
    of `example_inputs` through a copy of the graph module."""

    def __init__(self, gm: fx.GraphModule, example_inputs: Any) -> None:
        self.gm, self.example_inputs = gm, example_inputs
        self.probed: dict[str, Any] | None = None

    def __call__(self, node: fx.Node) -> tuple[int, ...] | None:
        shape = _recorded_shape(node.meta)
        if shape is None and self.example_inputs is not None:
            if self.probed is None:
                self.probed = self._probe()
            shape = _recorded_shape(self.probed.get(node.name, {}))
        return shape

    def _probe(self) -> dict[str, Any]:
        from torch.fx.passes.shape_prop import ShapeProp

        probe = copy.deepcopy(self.gm)  # running it may update train-mode BN statistics: not on ours
        device = next((t.device for t in probe.parameters()), None)
        inputs = [t.to(device) if device is not None else t for t in as_input_tuple(self.example_inputs)]
        try:
            with torch.no_grad():
                ShapeProp(probe).propagate(*inputs)
        except Exception:  # noqa: BLE001 -- no shapes: the Linear + BN pairs that need one stay unfolded
            log.debug("shape propagation for BatchNorm folding failed", exc_info=True)
            return {}
        return {n.name: n.meta for n in probe.graph.nodes}


def _recorded_shape(meta: dict[str, Any]) -> tuple[int, ...] | None:
    shape = meta.get(SHAPE)
    if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
        return shape
    tensor_meta = meta.get("tensor_meta")
    return tuple(tensor_meta.shape) if hasattr(tensor_meta, "shape") else None


# ------------------------------------------------------------------------------------------ matching


def _foldable_producer(gm: fx.GraphModule, node: fx.Node, shapes: _ShapeLookup, usage: _Usage) -> fx.Node | None:
    """The conv / linear node whose module `node`'s BatchNorm can be folded into, or None."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    bn = gm.get_submodule(node.target)
    producer = node.args[0]
    if type(bn) not in _BATCHNORMS or bn.training or bn.running_mean is None or bn.running_var is None:
        return None
    if not isinstance(producer, fx.Node) or producer.op != "call_module" or len(producer.users) != 1:
        return None
    layer = gm.get_submodule(producer.target)
    if not _layer_fits(layer, bn) or usage.calls[id(layer)] != 1 or usage.reads(producer.target):
        return None
    if type(layer) is nn.Linear and bn.num_features != 1 and _rank(shapes(producer)) != 2:
        return None
    return producer


def _rank(shape: tuple[int, ...] | None) -> int | None:
    return None if shape is None else len(shape)


def _layer_fits(layer: nn.Module, bn: nn.Module) -> bool:
    """`layer` is a conv / linear class that can absorb `bn`, with as many output channels as `bn` has."""
    if type(layer) in _CONVS or (type(layer) in _TRANSPOSED and layer.groups == 1):
        return layer.out_channels == bn.num_features
    if type(layer) is nn.Linear:
        return bn.num_features in (1, layer.out_features)
    return False


class _Usage:
    """Which modules the graph calls (counted per module object, modules inside a called module included:
    an opaque leaf may hold a conv the graph also calls) and which attributes get_attr nodes read."""

    def __init__(self, gm: fx.GraphModule) -> None:
        nodes = list(gm.graph.nodes)
        called = [gm.get_submodule(n.target) for n in nodes if n.op == "call_module"]
        self.calls = Counter(id(m) for module in called for m in module.modules())
        self.read = [n.target for n in nodes if n.op == "get_attr"]

    def reads(self, target: str) -> bool:
        """Some get_attr node reads `target` or something under it (e.g. a tied ``conv.weight``)."""
        return any(r == target or r.startswith(target + ".") for r in self.read)


# ------------------------------------------------------------------------------------------- folding


def _fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """Replace `layer`'s weight and bias (in place, on our copy) by the BN-folded ones, computed by torch's
    fusion helpers in at least float32 and cast back to the layer's dtypes."""
    weight, bias = layer.weight, layer.bias
    work = torch.promote_types(weight.dtype, torch.float32)
    stats = [t.detach().to(work) for t in _bn_affine(bn)]
    w = weight.detach().to(work)
    b = bias.detach().to(work) if bias is not None else None
    with torch.no_grad():
        if type(layer) is nn.Linear:
            new_w, new_b = fuse_linear_bn_weights(w, b, stats[0], stats[1], bn.eps, stats[2], stats[3])
        else:
            new_w, new_b = fuse_conv_bn_weights(w, b, stats[0], stats[1], bn.eps, stats[2], stats[3],
                                                transpose=type(layer) in _TRANSPOSED)
    bias_dtype = bias.dtype if bias is not None else weight.dtype
    layer.weight = nn.Parameter(new_w.detach().to(weight.dtype), requires_grad=weight.requires_grad)
    layer.bias = nn.Parameter(new_b.detach().to(bias_dtype), requires_grad=weight.requires_grad)


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """running mean, running var, gamma, beta; gamma = 1 and beta = 0 for a BN without affine parameters
    (passed explicitly: older torch's fuse_linear_bn_weights does not accept None for them)."""
    mean, var = bn.running_mean, bn.running_var
    gamma = bn.weight if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(mean)
    return mean, var, gamma, beta


def _delete_unreferenced(gm: fx.GraphModule, targets: list[str], usage: _Usage) -> None:
    """Delete the folded BatchNorm submodules that no remaining node calls, reads or holds."""
    for target in dict.fromkeys(targets):
        if usage.calls[id(gm.get_submodule(target))] == 0 and not usage.reads(target):
            gm.delete_submodule(target)
