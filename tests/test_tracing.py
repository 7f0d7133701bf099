"""The tracer's fallbacks: shape-specialised submodules, automatic opaque leaves, timm's notrace registry,
forward-time caches that must not leak into the caller's model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.analysis.rules.common import passthrough
from fxprune.analysis.registry import RULES
from helpers import assert_slim_equals_masked, assert_unchanged, outputs, rel_err, state_snapshot


class PadToMultiple(nn.Module):
    """Branches on the input's spatial size (torch.fx cannot trace `if` on a symbolic shape)."""

    def __init__(self, c: int, mult: int = 4) -> None:
        super().__init__()
        self.mult, self.conv, self.proj = mult, nn.Conv2d(c, 2 * c, 3, padding=1), nn.Conv2d(2 * c, c, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        if h % self.mult or w % self.mult:
            x = F.pad(x, (0, (-w) % self.mult, 0, (-h) % self.mult))
        b, c = x.shape[:2]
        y = self.proj(torch.relu(self.conv(x)))
        return y.reshape(b, c, -1).mean(-1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block, self.fc = nn.Conv2d(3, 8, 3, padding=1), PadToMultiple(8), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.block(torch.relu(self.stem(x))))


def test_shape_branching_submodule_is_specialised_and_pruned() -> None:
    m = Net().eval()
    x = torch.randn(1, 3, 6, 6)
    snap = state_snapshot(m)
    gm = fxprune.trace(m, x)
    assert set(gm.meta["fxprune_specialised"]) == {"block"} and not gm.meta["fxprune_auto_leaves"]
    res = fxprune.prune(m, x, ratio=0.5)
    assert res.model.block.conv.out_channels == 8 and res.model.stem.out_channels == 4
    assert_slim_equals_masked(m, x, res)
    assert_unchanged(m, snap, x)
    # the batch dim stays symbolic inside the specialised block
    x3 = torch.randn(3, 3, 6, 6)
    assert rel_err(outputs(res.model, x3), outputs(fxprune.apply_masks(m, x, res.plan), x3)) <= 1e-5


class CachedBias(nn.Module):
    """Caches a tensor built in forward on itself (timm's LeViT / EfficientFormer do this in eval mode)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bias_table = nn.Parameter(torch.randn(c, 4))
        self.register_buffer("idx", torch.tensor([0, 1, 2, 3, 0, 1]), persistent=False)
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x):
        if "b" not in self.cache:
            self.cache["b"] = self.bias_table[:, self.idx]
        return x + self.cache["b"].sum(-1)[None, :, None, None]


def test_forward_time_caches_stay_off_the_callers_model() -> None:
    m = nn.Sequential(nn.Conv2d(3, 6, 1), CachedBias(6), nn.Conv2d(6, 2, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    for _ in range(2):  # a second call must not meet proxies left over from the first
        fxprune.analyse(m, x)
        res = fxprune.prune(m, x, ratio=0.5)
    assert m[1].cache == {}
    assert res.model.get_submodule("0").out_channels == 3
    assert_slim_equals_masked(m, x, res)


class ShapeBlock(PadToMultiple):
    pass


class RuleBlock(nn.Module):
    """A block timm registers as not traceable *and* fxprune has a rule for: it stays one node."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent: fx could not trace it anyway
            return x * self.scale[None, :, None, None]
        return x * self.scale[None, :, None, None]


@pytest.fixture
def timm_registry():
    from timm.layers import _fx as timm_fx

    added = []

    def register(cls, rule=None):
        timm_fx.register_notrace_module(cls)
        added.append(cls)
        if rule is not None:
            fxprune.register_rule(cls)(rule)

    yield register
    for cls in added:
        timm_fx._leaf_modules.discard(cls)
        RULES.pop(cls, None)


def _scale_rule(a, node):
    """RuleBlock scales each channel: its `scale` parameter carries the input's channels."""
    lab = a.labels(node.args[0])
    a.bind_param(f"{node.target}.scale", 0, lab.get(1) if lab else None)
    return passthrough(a, node)


def test_timm_notrace_module_with_an_fxprune_rule_stays_a_leaf(timm_registry) -> None:
    timm_registry(RuleBlock, _scale_rule)
    m = nn.Sequential(nn.Conv2d(3, 6, 1), RuleBlock(6), nn.Conv2d(6, 2, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    gm = fxprune.trace(m, x)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["0", "1", "2"]
    assert not gm.meta["fxprune_auto_leaves"]
    res = fxprune.prune(m, x, ratio=0.5)
    assert res.model.get_submodule("1").scale.numel() == 3  # pruned through the rule, not frozen
    assert_slim_equals_masked(m, x, res)


def test_timm_notrace_module_without_a_rule_is_traced_through(timm_registry) -> None:
    """timm says "do not trace ShapeBlock"; fxprune has no rule for it, so a leaf would freeze its
    channels: it is traced (with concrete shapes) and its convs are pruned."""
    timm_registry(ShapeBlock)
    m = nn.Sequential(nn.Conv2d(3, 8, 1), ShapeBlock(8)).eval()
    x = torch.randn(1, 3, 6, 6)
    gm = fxprune.trace(m, x)
    assert "1.conv" in {n.target for n in gm.graph.nodes if n.op == "call_module"}
    res = fxprune.prune(m, x, ratio=0.5)
    assert res.model.get_submodule("1.conv").out_channels == 8
    assert_slim_equals_masked(m, x, res)


class SetItemAttention(nn.Module):
    """In-place `x[:, :, 1:, 1:] = ...` on a traced tensor (timm's MViTv2 relative positions) and a buffer
    expanded to the traced batch size (timm's ConViT: fx runs buffer methods eagerly unless specialised)."""

    def __init__(self) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = 2, nn.Linear(6, 3 * 8), nn.Linear(8, 4)
        self.rel = nn.Parameter(torch.randn(2, 1, 1))  # a per-head bias added to the token-token block
        self.register_buffer("table", torch.ones(1, 1, 5, 5))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = q @ k.transpose(-2, -1) * self.table.expand(b, -1, -1, -1)
        attn[:, :, 1:, 1:] = attn[:, :, 1:, 1:] + self.rel
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(out)


def test_setitem_and_tensor_attribute_expand_are_traced_and_pruned() -> None:
    m = SetItemAttention().eval()
    x = torch.randn(2, 5, 6)
    gm = fxprune.trace(m, x)
    assert any(n.target is __import__("operator").setitem for n in gm.graph.nodes)
    assert not gm.meta["fxprune_auto_leaves"] and "" in gm.meta["fxprune_specialised"]
    res = fxprune.prune(m, x, ratio=0.5)
    assert res.model.qkv.out_features < 24  # head dims pruned through the in-place write
    assert_slim_equals_masked(m, x, res)


@torch.fx.wrap
def _scaled_by_mutating(x, sizes):
    sizes[0] = sizes[0] * 1  # mutates the list it is given, as torchvision's Swin3D window helper does
    return x * 2


def test_a_wrapped_function_may_mutate_its_list_argument():
    from fxprune.analysis.registry import OpRule
    from fxprune.analysis.rules.common import pointwise

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(_scaled_by_mutating(self.a(x), [1, 2]))

    x = torch.randn(1, 3, 8, 8)
    with RULES.override(_scaled_by_mutating, OpRule(pointwise)):
        res = fxprune.prune(M().eval(), x, ratio=0.5)
    assert res.report.flops_ratio <= 0.5 and torch.isfinite(res.model(x)).all()


def test_wrapped_functions_without_a_rule_are_traced_through():
    """torch.fx.wrap'ed library functions with no rule become ordinary ops (their channels followed), while
    torchvision.ops' stay one node."""
    pytest.importorskip("torchvision")
    from torchvision.models.video import swin_transformer

    gm = fxprune.trace(torchvision_swin3d(), torch.randn(1, 3, 8, 32, 32))
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert swin_transformer.shifted_window_attention_3d not in targets  # no rule: traced through
    assert any(getattr(t, "__name__", "") == "linear" for t in targets)  # its projections are now ops of the graph


def torchvision_swin3d():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.get_model("swin3d_t", weights=None).eval()
