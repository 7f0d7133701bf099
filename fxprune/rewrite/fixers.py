"""Per-module attribute fixers, one registry keyed by module type: after the parameters were sliced,
bring attributes such as in_channels / num_features / normalized_shape in line with them."""
from __future__ import annotations

from collections.abc import Callable

import torch.fx as fx
from torch import nn

from fxprune.analysis.keep import Survivors
from fxprune.registry import Registry, qualified_name

Fixer = Callable[[Survivors, fx.Node, nn.Module], None]
FIXERS: Registry[type, Fixer] = Registry("module fixers", describe=qualified_name)


def register_fixer(*types: type, override: bool = False) -> Callable[[Fixer], Fixer]:
    """Register `fix(ctx, node, module)` for module classes (and their subclasses): after the rewriter sliced
    a module's parameters, `fix` brings its attributes in line (`ctx.alive_count(arr)` counts the kept
    positions of a label array). See docs/extending.md, "A custom module".

    >>> from torch import nn
    >>> fixer_for(nn.Conv2d(3, 8, 3)).__name__
    'fix_conv'
    """
    def deco(fn: Fixer) -> Fixer:
        for t in types:
            FIXERS.register(t, fn, override=override)
        return fn
    return deco


def fixer_for(module: nn.Module) -> Fixer | None:
    """The fixer registered for the module's class or its nearest registered base class."""
    for cls in type(module).__mro__:
        if cls in FIXERS:
            return FIXERS[cls]
    return None


def _channels_in(ctx: Survivors, node: fx.Node, default: int, dim: int = 1) -> int:
    lab = ctx.labels(node.args[0])
    arr = lab.get(dim) if lab else None
    return default if arr is None else ctx.alive_count(arr)


@register_fixer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def fix_conv(ctx: Survivors, node: fx.Node, m: nn.Module) -> None:
    new_in = _channels_in(ctx, node, m.in_channels)
    m.out_channels = m.weight.shape[0]
    m.in_channels = new_in
    m.groups = new_in // m.weight.shape[1]


@register_fixer(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def fix_conv_transpose(ctx: Survivors, node: fx.Node, m: nn.Module) -> None:
    out = ctx.labels(node)
    m.in_channels = m.weight.shape[0]
    m.out_channels = ctx.alive_count(out.get(1)) if out and out.get(1) is not None else m.out_channels
    m.groups = m.out_channels // m.weight.shape[1]


@register_fixer(nn.Linear)
def fix_linear(ctx: Survivors, node: fx.Node, m: nn.Module) -> None:
    m.out_features, m.in_features = m.weight.shape


@register_fixer(nn.Bilinear)
def fix_bilinear(ctx: Survivors, node: fx.Node, m: nn.Module) -> None:
    m.out_features = m.weight.shape[0]


@register_fixer(nn.modules.batchnorm._NormBase)
def fix_batchnorm(ctx: Survivors, node: fx.Node, m: nn.Module) -> None:
    m.num_features = _channels_in(ctx, node, m.num_features)


@register_fixer(nn.LayerNorm, *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []))
def fix_layernorm(ctx: Survivors, node: fx.Node, m: nn.Module) -> None:
    if len(m.normalized_shape) == 1:
        m.normalized_shape = (_channels_in(ctx, node, m.normalized_shape[0], dim=-1),)


@register_fixer(nn.GroupNorm)
def fix_groupnorm(ctx: Survivors, node: fx.Node, m: nn.Module) -> None:
    m.num_channels = _channels_in(ctx, node, m.num_channels)
    groups = ctx.extra(node).get("groups")
    if groups is not None:
        m.num_groups = ctx.alive_count(groups)


@register_fixer(nn.PReLU)
def fix_prelu(ctx: Survivors, node: fx.Node, m: nn.Module) -> None:
    m.num_parameters = m.weight.numel()


@register_fixer(nn.RNNBase)
def fix_rnn(ctx: Survivors, node: fx.Node, m: nn.Module) -> None:
    m.input_size = m.weight_ih_l0.shape[1]
    if hasattr(m, "_init_flat_weights"):  # the fused kernels read a cached list of the weights
        m._init_flat_weights()


@register_fixer(nn.MultiheadAttention)
def fix_mha(ctx: Survivors, node: fx.Node, m: nn.Module) -> None:
    """Swap in a PrunedMultiheadAttention carrying the sliced tensors and the original softmax scale."""
    from fxprune.nn import PrunedMultiheadAttention

    extra = ctx.extra(node)
    if "heads" not in extra:
        return
    new = PrunedMultiheadAttention(
        m.in_proj_weight.shape[1], ctx.alive_count(extra["heads"]), ctx.alive_count(extra["qk"]),
        ctx.alive_count(extra["v"]), m.out_proj.weight.shape[0], m.head_dim ** -0.5, m.batch_first,
        bias=m.in_proj_bias is not None)
    new.in_proj_weight = m.in_proj_weight
    new.in_proj_bias = m.in_proj_bias
    new.out_proj.weight, new.out_proj.bias = m.out_proj.weight, m.out_proj.bias
    new.train(m.training)
    _set_submodule(ctx.root, node.target, new)


def _set_submodule(root: nn.Module, target: str, new: nn.Module) -> None:
    owner, _, name = target.rpartition(".")
    setattr(root.get_submodule(owner) if owner else root, name, new)
