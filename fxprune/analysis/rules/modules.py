"""Channel rules for torch.nn modules (convs, linears, norms, activations, pooling)."""
from __future__ import annotations

import numpy as np
import torch.fx as fx
from torch import nn

from fxprune.analysis.rules.common import channelwise, passthrough, pointwise
from fxprune.analysis.context import Analysis
from fxprune.analysis.labels import Labels
from fxprune.analysis.rules.masked import build_masked_group_norm_module, build_masked_layer_norm_module, build_masked_rms_norm_module
from fxprune.analysis.registry import register_rule

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TCONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def conv_channels(a: Analysis, path: str, lin: np.ndarray | None, cin: int, cout: int, groups: int,
                  transposed: bool, bind=None, extra: dict | None = None) -> np.ndarray:
    """Output atoms of a (grouped) convolution; binds the weight's dims. Groups factorise the channels.

    `bind(name, dim, atoms, role)` ties the weight / bias dims to atoms; by default the module's own
    parameters `path.weight` / `path.bias` (functional convs pass their weight tensor's labels)."""
    if bind is None:
        def bind(name: str, dim: int, atoms: np.ndarray | None, role: str) -> None:
            a.bind_param(f"{path}.{name}", dim, atoms, role)
    if groups == 1:
        out = a.fresh(cout, f"{path} output")
        in_per, out_per = lin, out
    elif groups == cin and lin is not None and not transposed:  # depthwise: each conv group is one channel
        in_per = np.full((1,), -1, dtype=np.int64)
        out_per = a.fresh(cout // groups, f"{path} output channels per group")
        out = lin if cout == cin else a.product_atoms([lin, out_per], f"{path} output")
        if extra is not None:
            extra["groups"] = lin  # one conv group per input channel
    else:
        blocks = a.fresh(groups, f"{path} conv groups", "blocks")
        in_per = a.fresh(cin // groups, f"{path} input channels per group")
        if lin is None:
            why = f"{path}: grouped conv over channels that cannot be pruned"
            a.table.freeze_array(blocks, why)
            a.table.freeze_array(in_per, why)
        else:
            a.bind_products(lin, [blocks, in_per])
        out_per = a.fresh(cout // groups, f"{path} output channels per group")
        out = a.product_atoms([blocks, out_per], f"{path} output")
        if extra is not None:
            extra["groups"] = blocks
    if transposed:
        bind("weight", 0, lin, "consumer")
        bind("weight", 1, out_per, "producer")
    else:
        bind("weight", 0, out, "producer")
        bind("weight", 1, in_per, "consumer")
    bind("bias", 0, out, "producer")
    return out


@register_rule(*_CONVS, *_TCONVS)
def conv_rule(a: Analysis, node: fx.Node) -> Labels | None:
    m = a.module(node)
    lab, out_shape = a.labels(node.args[0]), a.shape(node)
    a.freeze_dims_except(lab, {1}, node, type(m).__name__)
    lin = lab.get(1) if lab else None
    out = conv_channels(a, node.target, lin, m.in_channels, m.out_channels, m.groups, isinstance(m, _TCONVS))
    a.consume(node, 0, 1)
    return Labels(out_shape, {1: out})


@register_rule(nn.Linear)
def linear_rule(a: Analysis, node: fx.Node) -> Labels | None:
    m: nn.Linear = a.module(node)
    lab, out_shape = a.labels(node.args[0]), a.shape(node)
    last = len(out_shape) - 1
    lin = lab.get(-1) if lab else None
    out = a.fresh(m.out_features, f"{node.target} output")
    a.bind_param(f"{node.target}.weight", 0, out, "producer")
    a.bind_param(f"{node.target}.weight", 1, lin, "consumer")
    a.bind_param(f"{node.target}.bias", 0, out, "producer")
    a.consume(node, 0, -1)
    dims = {d: arr for d, arr in (lab.dims.items() if lab else ()) if d != last}
    dims[last] = out
    return Labels(out_shape, dims)


@register_rule(nn.Bilinear)
def bilinear_rule(a: Analysis, node: fx.Node) -> Labels | None:
    for x in node.args[:2]:
        a.freeze(a.labels(x), node, "nn.Bilinear inputs are kept whole")
    out = a.fresh(a.module(node).out_features, f"{node.target} output")
    a.bind_param(f"{node.target}.weight", 0, out, "producer")
    a.bind_param(f"{node.target}.bias", 0, out, "producer")
    return Labels(a.shape(node), {len(a.shape(node)) - 1: out})


def _bind_channel_params(a: Analysis, path: str, names: tuple[str, ...], atoms: np.ndarray | None) -> None:
    m = a.modules[path]
    for n in names:
        t = getattr(m, n, None)
        if t is not None and getattr(t, "dim", lambda: 0)() >= 1 and t.shape[0] > 1:
            a.bind_param(f"{path}.{n}", 0, atoms)


@register_rule(nn.modules.batchnorm._NormBase)
def batchnorm_rule(a: Analysis, node: fx.Node) -> Labels | None:
    """BatchNorm and InstanceNorm: per-channel affine and running statistics along dim 1."""
    lab = a.labels(node.args[0])
    if lab:
        _bind_channel_params(a, node.target, ("weight", "bias", "running_mean", "running_var"), lab.get(1))
    return passthrough(a, node)


@register_rule(nn.LayerNorm, masked=build_masked_layer_norm_module)
def layernorm_rule(a: Analysis, node: fx.Node) -> Labels | None:
    m: nn.LayerNorm = a.module(node)
    lab = a.labels(node.args[0])
    if lab:
        k = len(m.normalized_shape)
        if k == 1:
            _bind_channel_params(a, node.target, ("weight", "bias"), lab.get(-1))
            a.consume(node, 0, -1)
        else:
            norm_dims = {lab.norm(-i) for i in range(1, k + 1)}
            a.freeze_dims_except(lab, set(range(lab.ndim)) - norm_dims, node, "LayerNorm over several dims")
    return passthrough(a, node)


if hasattr(nn, "RMSNorm"):  # torch >= 2.4
    register_rule(nn.RMSNorm, masked=build_masked_rms_norm_module)(layernorm_rule)


@register_rule(nn.GroupNorm, masked=build_masked_group_norm_module)
def groupnorm_rule(a: Analysis, node: fx.Node) -> Labels | None:
    m: nn.GroupNorm = a.module(node)
    lab = a.labels(node.args[0])
    lin = lab.get(1) if lab else None
    if lin is not None:
        blocks = a.fresh(m.num_groups, f"{node.target} norm groups", "blocks")
        a.bind_products(lin, [blocks, a.fresh(m.num_channels // m.num_groups, f"{node.target} channels/group")])
        a.node_extra[node.name] = {"groups": blocks}
        _bind_channel_params(a, node.target, ("weight", "bias"), lin)
        a.consume(node, 0, 1)
    return passthrough(a, node)


@register_rule(nn.PReLU)
def prelu_rule(a: Analysis, node: fx.Node) -> Labels | None:
    lab = a.labels(node.args[0])
    if lab and a.module(node).num_parameters > 1:
        a.bind_param(f"{node.target}.weight", 0, lab.get(1))
    return passthrough(a, node)


_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
    nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Tanhshrink, nn.Softsign, nn.LogSigmoid, nn.Threshold,
)
register_rule(*_ELEMENTWISE_MODULES)(pointwise)

_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.LPPool1d, nn.LPPool2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.PixelShuffle, nn.PixelUnshuffle,
)


@register_rule(*_POOLS)
def pool_rule(a: Analysis, node: fx.Node) -> Labels | None:
    if isinstance(a.module(node), (nn.PixelShuffle, nn.PixelUnshuffle)):
        a.freeze(a.labels(node.args[0]), node, "pixel shuffle moves channels into space")
        return Labels(a.shape(node))
    return channelwise(a, node, 1)


@register_rule(nn.Flatten)
def flatten_module_rule(a: Analysis, node: fx.Node) -> Labels | None:
    from fxprune.analysis.rules.common import reshape_labels

    return reshape_labels(a, node, a.labels(node.args[0]), a.shape(node))


@register_rule(nn.Softmax, nn.LogSoftmax, nn.Softmin)
def softmax_module_rule(a: Analysis, node: fx.Node) -> Labels | None:
    lab, dim = a.labels(node.args[0]), a.module(node).dim
    if lab and dim is not None and lab.get(dim) is not None:
        a.table.freeze_array(lab.get(dim), "softmax over a channel dimension")
    return passthrough(a, node)
