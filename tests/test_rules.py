"""One small hand-built module per op rule: the discovered channel groups, slim == masked after a ratio
prune and after a random prune, and consistent module attributes in the slim model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.analysis.rules.common import channelwise
from fxprune.analysis.registry import RULES
from fxprune.nn import PrunedMultiheadAttention

from helpers import (assert_consistent_modules, assert_slim_equals_masked, assert_unchanged, check_prune,
                     make_plan_with_random_keep, outputs, prunable_sizes, rel_err, run, state_snapshot)

IMG = (1, 3, 8, 8)


def img(*shape: int) -> torch.Tensor:
    return torch.randn(*(shape or IMG))


def groups_of(model: nn.Module, x, **kw) -> list[fxprune.ChannelGroup]:
    return fxprune.analyse(model, x, **kw)


def output_group(groups, size: int) -> list[fxprune.ChannelGroup]:
    """Groups of `size` channels that are fully frozen because they reach the output."""
    return [g for g in groups if g.size == size and len(g.frozen) == g.size
            and any("output" in r for r in g.frozen.values())]


def common(model: nn.Module, x, sizes: list[int], n_out: int, **kw):
    """Assert the prunable group sizes, the frozen output group, and the prune invariants."""
    model.eval()
    snap = state_snapshot(model)
    groups = groups_of(model, x, **kw)
    assert prunable_sizes(groups) == sorted(sizes), [str(g) for g in groups]
    assert output_group(groups, n_out), "the output channels must form a fully frozen group"
    res, rnd = check_prune(model, x, **kw)
    assert res.report.params_after < res.report.params_before
    ref = outputs(model, x)
    for r in (res, rnd):
        assert [t.shape for t in outputs(r.model, x)] == [t.shape for t in ref]
    assert_unchanged(model, snap, x)
    return groups, res, rnd


def modules_of(gm: nn.Module, cls: type) -> list[nn.Module]:
    return [m for m in gm.modules() if isinstance(m, cls)]


# --- convolutions -------------------------------------------------------------------------------------
class ConvChain(nn.Module):
    def __init__(self, nd: int, groups: int = 1, mult: int = 1, c: int = 8) -> None:
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[nd - 1]
        pool = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[nd - 1]
        self.c1, self.b1 = conv(3, c, 3, padding=1), bn(c)
        self.c2, self.b2 = conv(c, c * mult, 3, padding=1, groups=groups), bn(c * mult)
        self.c3 = conv(c * mult, 6, 1)
        self.pool, self.fc = pool(1), nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(self.pool(self.c3(x)).flatten(1))


@pytest.mark.parametrize("nd,shape", [(1, (1, 3, 12)), (2, (1, 3, 8, 8)), (3, (1, 3, 4, 4, 4))])
def test_conv_nd_groups_1(nd, shape):
    _, res, _ = common(ConvChain(nd), torch.randn(shape), [8, 8, 6], 4)
    c1 = res.model.c1
    assert c1.out_channels == 4 and c1.weight.shape[0] == 4
    assert res.model.fc.out_features == 4


@pytest.mark.parametrize("groups,mult,sizes", [
    (8, 1, [8, 6]),        # depthwise: input channel i <-> output channel i
    (8, 2, [8, 2, 6]),     # depthwise with channel multiplier 2: channel (block, k)
    (4, 1, [4, 2, 2, 6]),  # 4 conv groups x 2 in-channels, 4 groups x 2 out-channels
])
def test_grouped_conv(groups, mult, sizes):
    _, res, rnd = common(ConvChain(2, groups=groups, mult=mult), img(), sizes, 4)
    for r in (res, rnd):
        c2 = r.model.c2
        assert c2.in_channels == r.model.c1.out_channels
        assert c2.in_channels == c2.weight.shape[1] * c2.groups
        if groups == 8:  # stays depthwise
            assert c2.groups == c2.in_channels
            assert c2.out_channels in (c2.groups, mult * c2.groups)
    c2 = res.model.c2
    if groups == 8:  # depthwise: each conv group is one channel, so pruning channels removes groups
        assert c2.groups < groups
    else:  # ratio budgets keep the conv groups and prune channels inside every group
        assert c2.groups == groups and c2.in_channels < 8


class TConvNet(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=groups)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.up(F.relu(self.c1(x)))))
        return self.fc(self.c2(x).mean((2, 3)))


@pytest.mark.parametrize("groups,sizes", [(1, [8, 6, 5]), (2, [2, 4, 3, 5])])
def test_conv_transpose(groups, sizes):
    _, res, rnd = common(TConvNet(groups), img(), sizes, 4)
    for r in (res, rnd):
        up = r.model.up
        assert up.in_channels == r.model.c1.out_channels == up.weight.shape[0]
        assert up.out_channels == up.weight.shape[1] * up.groups == r.model.bn.num_features
    assert res.model.up.out_channels < 6


# --- linear / norms ---------------------------------------------------------------------------------
class TokenMLP(nn.Module):
    def __init__(self, norm: str = "none") -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 12), nn.Linear(12, 4)
        self.norm = nn.LayerNorm(16) if norm == "ln" else nn.Identity()

    def forward(self, x):  # x: (B, N, 8)
        return self.fc3(F.gelu(self.fc2(self.norm(F.relu(self.fc1(x))))))


def test_linear_on_3d_input():
    x = torch.randn(2, 5, 8)
    _, res, _ = common(TokenMLP(), x, [16, 12], 4)
    assert res.model.fc1.out_features == 8 and res.model.fc2.in_features == 8


def test_layernorm_last_dim():
    x = torch.randn(2, 5, 8)
    m = TokenMLP("ln")
    with torch.no_grad():  # non-trivial affine so that a wrong slice shows
        m.norm.weight.uniform_(0.5, 1.5)
        m.norm.bias.uniform_(-1, 1)
    _, res, _ = common(m, x, [16, 12], 4)
    assert res.model.norm.normalized_shape == (8,)


class BN1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn1, self.fc2 = nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4)
        self.c1, self.bn2, self.c2 = nn.Conv1d(2, 6, 3), nn.BatchNorm1d(6), nn.Conv1d(6, 4, 1)

    def forward(self, x):  # (N, 8): BatchNorm1d over (N, C); and over (N, C, L) after a reshape
        h = F.relu(self.bn1(self.fc1(x)))
        s = F.relu(self.bn2(self.c1(x.view(x.shape[0], 2, 4))))
        return self.fc2(h) + self.c2(s).mean(-1)


def _randomise_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def test_batchnorm1d_2d():
    m = BN1dNet()
    _randomise_bn(m)
    _, res, _ = common(m, torch.randn(4, 8), [16, 6], 4)
    assert res.model.bn1.num_features == 8 and res.model.bn1.running_mean.numel() == 8
    assert res.model.bn2.num_features == 3
    m2 = ConvChain(2)
    _randomise_bn(m2)
    _, res2, _ = common(m2, img(2, 3, 8, 8), [8, 8, 6], 4)
    assert res2.model.b1.num_features == res2.model.c1.out_channels == 4


class ConvNeXtBlock(nn.Module):
    """Channels-last LayerNorm + MLP with a layer-scale gamma of shape (C,), residual back in NCHW."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        x = x + (self.gamma * y).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def test_layernorm_channels_last_convnext():
    m = ConvNeXtBlock()
    _randomise_bn(m)
    groups, res, rnd = common(m, img(), [8, 32], 3)
    g8 = next(g for g in groups if g.size == 8 and g.prunable)
    names = {s.name for s in g8.members if s.kind == "param"}
    assert {"stem.weight", "norm.weight", "pw2.weight", "gamma", "dw.weight"} <= names
    for r in (res, rnd):
        c = r.model.stem.out_channels
        assert r.model.norm.normalized_shape == (c,) and r.model.gamma.shape == (c,)
        assert r.model.dw.groups == c == r.model.pw1.in_features == r.model.pw2.out_features


class LayerNorm2d(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)
        self.bias = nn.Parameter(torch.randn(c))
        self.c = c

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        return F.layer_norm(x, (self.c,), self.weight, self.bias, 1e-6).permute(0, 3, 1, 2)


class LN2dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.ln, self.c2 = nn.Conv2d(3, 8, 3, padding=1), LayerNorm2d(8), nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.c2(self.ln(self.c1(x)))), 1).flatten(1))


def test_layernorm2d_functional_with_get_attr_weight():
    _, res, rnd = common(LN2dNet(), img(), [8, 6], 4)
    for r in (res, rnd):
        assert r.model.ln.weight.shape == (r.model.c1.out_channels,) == r.model.ln.bias.shape


class NormNet(nn.Module):
    def __init__(self, norm: nn.Module, act: nn.Module | None = None) -> None:
        super().__init__()
        self.c1, self.norm = nn.Conv2d(3, 8, 3, padding=1), norm
        self.act = act or nn.ReLU()
        self.c2, self.fc = nn.Conv2d(8, 6, 3, padding=1), nn.Linear(6, 4)

    def forward(self, x):
        x = self.act(self.norm(self.c1(x)))
        return self.fc(F.adaptive_avg_pool2d(self.c2(x), 1).flatten(1))


def test_groupnorm():
    m = NormNet(nn.GroupNorm(4, 8))
    _randomise_bn(m)
    _, res, rnd = common(m, img(), [4, 2, 6], 4)
    for r in (res, rnd):
        gn = r.model.norm
        assert gn.num_channels == r.model.c1.out_channels == gn.weight.numel()
        assert gn.num_channels % gn.num_groups == 0
    # ratio budgets keep the norm groups and halve the channels inside each
    assert res.model.norm.num_groups == 4 and res.model.norm.num_channels == 4


def test_instancenorm_affine():
    m = NormNet(nn.InstanceNorm2d(8, affine=True))
    _randomise_bn(m)
    _, res, _ = common(m, img(), [8, 6], 4)
    assert res.model.norm.num_features == 4 == res.model.norm.weight.numel()


def test_prelu_per_channel():
    m = NormNet(nn.BatchNorm2d(8), nn.PReLU(8))
    with torch.no_grad():
        m.act.weight.uniform_(-1, 1)
    _, res, _ = common(m, img(), [8, 6], 4)
    assert res.model.act.num_parameters == 4 == res.model.act.weight.numel()


class Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)
        self.acts = nn.Sequential(nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.LeakyReLU(0.1), nn.Dropout(0.5),
                                  nn.Dropout2d(0.3), nn.ReLU6())
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.acts(self.c1(x))
        x = torch.sigmoid(x) * torch.tanh(x) + F.elu(x) - F.hardsigmoid(x) + x.clamp(-1, 1)
        x = x + F.dropout(x, 0.2, self.training)
        x = F.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


def test_activations_and_dropout():
    common(Activations(), img(), [8, 6], 4)


class Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(6, 5, 1)
        self.mp, self.ap, self.gap = nn.MaxPool2d(2), nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):  # 16x16
        x = self.mp(F.relu(self.c1(x)))                     # 8x8
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)  # 16x16
        x = self.ap(F.relu(self.c2(x)))                     # 8x8
        x = F.max_pool2d(x, 2) + F.avg_pool2d(x, 2)         # 4x4
        x = F.interpolate(x, size=(8, 8), mode="nearest")
        return self.fc(self.gap(self.c3(x)).flatten(1))


def test_pools_and_interpolate():
    common(Pools(), img(1, 3, 16, 16), [8, 6, 5], 4)


# --- residuals, broadcasting, SE ----------------------------------------------------------------------
class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 1)  # on the pooled map: (N, 8, 1, 1), broadcast over H, W
        self.c4, self.fc = nn.Conv2d(8, 6, 1), nn.Linear(6, 4)

    def forward(self, x):
        a = F.relu(self.c1(x))
        b = self.c2(a)
        s = self.c3(F.adaptive_avg_pool2d(a, 1))
        y = F.relu(a + b + s)
        y = y + self.c2(y)  # a conv applied twice (shared weights)
        return self.fc(self.c4(y).mean((2, 3)))


def test_residual_add_with_broadcasting_merges_groups():
    groups, res, rnd = common(Residual(), img(), [8, 6], 4)
    g8 = next(g for g in groups if g.size == 8 and g.prunable)
    producers = {s.name for s in g8.producers if s.kind == "param"}
    assert {"c1.weight", "c2.weight", "c3.weight"} <= producers
    for r in (res, rnd):
        n = r.model.c1.out_channels
        assert r.model.c2.out_channels == r.model.c3.out_channels == r.model.c2.in_channels == n


class SE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.c2, self.fc = nn.Conv2d(8, 6, 1), nn.Linear(6, 3)

    def forward(self, x):
        a = F.relu(self.c1(x))
        b, c = a.shape[0], a.shape[1]
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(a, 1).flatten(1)))))
        a = a * s.view(b, c, 1, 1)
        return self.fc(self.c2(a).mean((2, 3)))


def test_se_channel_scaling():
    groups, res, rnd = common(SE(), img(), [8, 4, 6], 3)
    g8 = next(g for g in groups if g.size == 8 and g.prunable)
    assert {"c1.weight", "fc2.weight", "fc1.weight"} <= {s.name for s in g8.members}
    for r in (res, rnd):
        assert r.model.fc2.out_features == r.model.c1.out_channels == r.model.fc1.in_features


# --- cat / split / slicing ----------------------------------------------------------------------------
class CatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.c, self.fc = nn.Conv2d(14, 5, 1), nn.Linear(5, 4)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        return self.fc(self.c(y).mean((2, 3)))


def test_cat_gives_separate_groups():
    groups, res, rnd = common(CatNet(), img(), [8, 6, 5], 4)
    for r in (res, rnd):
        assert r.model.c.in_channels == r.model.a.out_channels + r.model.b.out_channels
    assert res.model.c.in_channels == 7


class SplitNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.p, self.q, self.r = nn.Conv2d(4, 5, 1), nn.Conv2d(4, 5, 1), nn.Conv2d(4, 5, 1)
        self.c2 = nn.Conv2d(12, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        a = F.relu(self.c1(x))
        p, q, r = torch.split(a, [4, 4, 4], dim=1)
        u, v = a.chunk(2, dim=1)  # 6 + 6
        s = self.p(p) + self.q(q) + self.r(r) + self.c2(torch.cat([v, u], 1))
        s = s + self.p(a[:, :4]) + self.r(a[:, 8:]) + a[:, 5].unsqueeze(1) + a[:, -2:-1]
        return self.fc(s.mean((2, 3)))


def test_split_chunk_slicing():
    groups, res, rnd = common(SplitNet(), img(), [12, 5], 3)
    g12 = next(g for g in groups if g.size == 12)
    assert 0 < len(g12.frozen) < 12  # split pieces keep one channel each
    for r in (res, rnd):
        n = r.model.c1.out_channels
        assert r.model.p.in_channels + r.model.q.in_channels + r.model.r.in_channels == n == r.model.c2.in_channels


# --- flatten / view / reshape / permute ----------------------------------------------------------------
class FlattenNet(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c1, self.fc1, self.fc2 = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Linear(64, 10), nn.Linear(10, 3)
        self.flat = nn.Flatten()

    def forward(self, x):  # 8x8 -> 4x4 -> 64 features
        a = F.relu(self.c1(x))
        if self.how == "flatten":
            f = torch.flatten(a, 1)
        elif self.how == "module":
            f = self.flat(a)
        elif self.how == "view":
            f = a.view(a.size(0), -1)
        else:
            f = a.reshape(1, 64)
        return self.fc2(F.relu(self.fc1(f)))


@pytest.mark.parametrize("how", ["flatten", "module", "view", "reshape"])
def test_flatten_view_reshape_into_linear(how):
    _, res, rnd = common(FlattenNet(how), img(), [4, 10], 3)
    for r in (res, rnd):
        assert r.model.fc1.in_features == r.model.c1.out_channels * 16  # one channel -> H*W features
    assert res.model.fc1.in_features == 32


class PermuteNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.fc1, self.c2 = nn.Conv2d(3, 8, 2, stride=2), nn.Linear(8, 12), nn.Conv1d(12, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        t = self.c1(x).flatten(2).transpose(1, 2)     # (B, N, 8)
        t = F.gelu(self.fc1(t))                       # (B, N, 12)
        t = t.permute(0, 2, 1)                        # (B, 12, N)
        t = torch.transpose(self.c2(t), 1, 2)         # (B, N, 6)
        return self.fc(t.mean(1))


def test_permute_transpose():
    _, res, _ = common(PermuteNet(), img(), [8, 12, 6], 3)
    assert res.model.c2.in_channels == res.model.fc1.out_features == 6


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


def _branch(cin: int, c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                         nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())


class ShuffleUnit(nn.Module):
    """ShuffleNetV2: a stride-2 unit (two branches on the same input) then a stride-1 unit (chunk)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1, self.b2 = _branch(8, 4), _branch(8, 4)
        self.b3 = _branch(4, 4)
        self.head, self.fc = nn.Conv2d(8, 6, 1), nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = channel_shuffle(torch.cat((self.b1(x), self.b2(x)), dim=1), 2)
        x1, x2 = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat((x1, self.b3(x2)), dim=1), 2)
        return self.fc(self.head(x).mean((2, 3)))


def test_channel_shuffle():
    m = ShuffleUnit()
    _randomise_bn(m)
    m.eval()
    groups = groups_of(m, img())
    assert any(g.prunable for g in groups)
    assert output_group(groups, 3)
    # the first shuffle splits the concatenated channels into (branch, channel) factors, so b1's and b2's
    # outputs share their channel factor; the second shuffle re-splits the interleaved half in a layout
    # that does not line up with the first (sizes 4x2 vs 2x4), so those factors are frozen (kept)
    shared = [g for g in groups if "b1.5.weight" in {s.name for s in g.producers}]
    assert shared and all("b2.5.weight" in {s.name for s in g.producers} for g in shared)
    assert any("incompatible" in r for g in groups for r in g.frozen.values())
    inner = [g for g in groups if g.prunable and not g.frozen]  # the branches' hidden widths stay free
    assert {"b1.0 output", "b2.0 output", "b3.0 output"} <= {g.origin for g in inner}
    res, rnd = check_prune(m, img())
    for r in (res, rnd):
        b1, b2, b3 = (getattr(getattr(r.model, b), "5") for b in ("b1", "b2", "b3"))
        assert b1.out_channels == b2.out_channels  # both halves keep the same channels
        assert r.model.head.in_channels == 2 * b3.out_channels
    assert res.report.params_after < res.report.params_before


# --- parameters used directly in forward -------------------------------------------------------------
class LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.beta = nn.Parameter(torch.randn(8, 1, 1))
        self.c3, self.fc = nn.Conv2d(8, 6, 1), nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = x + self.gamma * self.c2(x) + self.beta
        return self.fc(self.c3(x).mean((2, 3)))


def test_layer_scale_parameter_c11():
    groups, res, rnd = common(LayerScale(), img(), [8, 6], 3)
    g8 = next(g for g in groups if g.size == 8 and g.prunable)
    assert {"gamma", "beta"} <= {s.name for s in g8.members if s.kind == "param"}
    for r in (res, rnd):
        n = r.model.c1.out_channels
        assert r.model.gamma.shape == (n, 1, 1) == r.model.beta.shape


class TinyViT(nn.Module):
    """Patch embedding, class token, position embedding, one pre-norm block, classifier on the cls token."""

    def __init__(self, attn: str = "mha", dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.attn_kind, self.dim, self.heads, self.hd = attn, dim, heads, dim // heads
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 5, dim))
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        if attn == "mha":
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        elif attn == "sdpa":
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        else:
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.ls = nn.Parameter(torch.rand(dim) + 0.5)
        self.head = nn.Linear(dim, 5)

    def attention(self, h):
        b, n, c = h.shape
        if self.attn_kind == "mha":
            return self.attn(h, h, h, need_weights=False)[0]
        if self.attn_kind == "sdpa":
            qkv = self.qkv(h).reshape(b, n, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            o = F.scaled_dot_product_attention(q, k, v)
            return self.proj(o.transpose(1, 2).reshape(b, n, c))
        q = self.q(h).view(b, n, self.heads, self.hd)
        k = self.k(h).view(b, n, self.heads, self.hd)
        v = self.v(h).view(b, n, self.heads, self.hd)
        att = torch.einsum("bnhd,bmhd->bhnm", q, k) * self.hd ** -0.5
        o = torch.einsum("bhnm,bmhd->bnhd", att.softmax(-1), v)
        return self.proj(o.reshape(b, n, self.heads * self.hd))

    def forward(self, x):  # (B, 3, 8, 8) -> 4 patches + cls
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        t = t + self.attention(self.ln1(t))
        t = t + self.ls * self.fc2(F.gelu(self.fc1(self.ln2(t))))
        return self.head(t[:, 0])


def _vit_checks(kind: str, sizes: list[int]):
    m = TinyViT(kind)
    _randomise_bn(m)
    groups, res, rnd = common(m, img(), sizes, 5)
    g16 = next(g for g in groups if g.size == 16 and g.prunable)
    names = {s.name for s in g16.members if s.kind == "param"}
    assert {"cls", "pos", "ls", "patch.weight", "ln1.weight", "fc2.weight"} <= names
    for r in (res, rnd):
        e = r.model.patch.out_channels
        assert r.model.cls.shape == (1, 1, e) and r.model.pos.shape == (1, 5, e) and r.model.ls.shape == (e,)
        assert r.model.ln1.normalized_shape == (e,) and r.model.head.in_features == e
        assert r.model.head.out_features == 5
    return groups, res, rnd


def test_vit_multihead_attention_heads_pruned():
    groups, res, rnd = _vit_checks("mha", [16, 4, 4, 4, 32])
    for r in (res, rnd):
        attn = r.model.attn
        assert isinstance(attn, PrunedMultiheadAttention)
        assert attn.num_heads < 4 or attn.qk_head_dim < 4 or attn.v_head_dim < 4
    a = res.model.attn
    assert a.num_heads * a.qk_head_dim < 16 and a.embed_dim == 8


def test_vit_einsum_attention():
    groups, res, rnd = _vit_checks("einsum", [16, 4, 4, 4, 32])
    for r in (res, rnd):
        q, v, proj = r.model.q, r.model.v, r.model.proj
        assert q.out_features == r.model.k.out_features and proj.in_features == v.out_features
    assert res.model.q.out_features < 16 and res.model.proj.in_features < 16


def test_vit_sdpa_attention():
    groups, res, rnd = _vit_checks("sdpa", [16, 4, 4, 32])  # q, k and v share heads and head dims
    for r in (res, rnd):
        qkv, proj = r.model.qkv, r.model.proj
        assert qkv.out_features == 3 * proj.in_features
    assert res.model.qkv.out_features < 48


def test_output_never_pruned():
    cases = ((ConvChain(2), img(), "fc"), (TinyViT("mha"), img(), "head"), (TokenMLP(), torch.randn(1, 3, 8), "fc3"))
    for m, x, out in cases:
        m.eval()
        for kw in ({"ratio": 0.9}, {"flops": 0.05}, {"params": 0.05}):
            res = fxprune.prune(m, x, **kw)
            assert getattr(res.model, out).out_features == getattr(m, out).out_features
            assert outputs(res.model, x)[0].shape == outputs(m, x)[0].shape
            assert_slim_equals_masked(m, x, res)


# --- unsupported ops ------------------------------------------------------------------------------------
class CumsumNet(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        a = self.fn(F.relu(self.c1(x)))
        return self.fc(self.c3(F.relu(self.c2(a))).mean((2, 3)))


def _cumsum_channels(x):
    return torch.cumsum(x, dim=1)


def _fft_real(x):
    return torch.fft.fft(x, dim=1).real


@fx.wrap
def spatial_cumsum(x: torch.Tensor) -> torch.Tensor:
    """A user op that acts on each channel separately (cumulative sum along the width)."""
    return torch.cumsum(x, dim=-1)


def _spatial_cumsum_method(x):
    return spatial_cumsum(x)


@pytest.mark.parametrize("fn,what", [(_cumsum_channels, "cumsum"), (_fft_real, "fft")])
def test_unsupported_op_strict_error_and_strict_false(fn, what):
    m = CumsumNet(fn).eval()
    x = img()
    snap = state_snapshot(m)
    with pytest.raises(fxprune.UnsupportedOpError) as ei:
        fxprune.prune(m, x, ratio=0.5)
    msg = str(ei.value)
    gm = fxprune.trace(m, x)
    node = next(n for n in gm.graph.nodes if n.op != "placeholder" and what in n.name)
    assert f"'{node.name}'" in msg and "register_rule" in msg and "strict=False" in msg
    assert_unchanged(m, snap, x)
    with pytest.raises(fxprune.UnsupportedOpError):
        fxprune.analyse(m, x)

    groups = fxprune.analyse(m, x, strict=False)
    frozen8 = [g for g in groups if g.size == 8 and len(g.frozen) == 8]
    assert frozen8 and all("strict=False" in r for r in frozen8[0].frozen.values())
    assert prunable_sizes(groups) == [5, 6]
    res = fxprune.prune(m, x, ratio=0.5, strict=False)
    assert res.plan.strict is False
    assert res.model.c1.out_channels == 8 and res.model.c2.out_channels == 3
    assert any(gid == frozen8[0].id and "no channel rule" in why for gid, why in res.report.frozen)
    assert "frozen group" in str(res.report)
    assert_slim_equals_masked(m, x, res)
    assert_slim_equals_masked(m, x, res.plan)  # apply_plan / apply_masks follow plan.strict
    assert_unchanged(m, snap, x)


def test_register_rule_makes_unsupported_op_work():
    m = CumsumNet(_spatial_cumsum_method).eval()
    x = img()
    with pytest.raises(fxprune.UnsupportedOpError) as ei:
        fxprune.analyse(m, x)
    assert "spatial_cumsum" in str(ei.value)
    try:
        fxprune.register_rule(spatial_cumsum)(lambda a, node: channelwise(a, node, 1))
        groups = fxprune.analyse(m, x)
        assert prunable_sizes(groups) == [5, 6, 8]
        res, rnd = check_prune(m, x)
        assert res.model.c1.out_channels == 4
    finally:
        RULES.pop(spatial_cumsum, None)
    with pytest.raises(fxprune.UnsupportedOpError):
        fxprune.analyse(m, x)


# --- random plans built group by group ------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_random_keep_plans(seed):
    for m, x in ((Residual(), img()), (CatNet(), img()), (SE(), img()), (TokenMLP("ln"), torch.randn(2, 3, 8))):
        m.eval()
        plan = make_plan_with_random_keep(m, x, seed, per_group=True)
        slim, _ = assert_slim_equals_masked(m, x, plan)
        assert_consistent_modules(slim)
        plan2 = make_plan_with_random_keep(m, x, seed)
        assert_slim_equals_masked(m, x, plan2)


def test_helpers_detect_differences():
    """The helpers themselves: rel_err and assert_unchanged notice a changed model."""
    a, b = torch.ones(3), torch.zeros(3)
    assert rel_err(a, a) == 0 and rel_err((a, {"k": b}), (a, {"k": b})) == 0
    assert math.isclose(rel_err(a * 1.5, a), 0.5)
    m = ConvChain(2).eval()
    snap = state_snapshot(m)
    assert_unchanged(m, snap, img())
    with torch.no_grad():
        m.c1.bias.add_(1)
    with pytest.raises(AssertionError):
        assert_unchanged(m, snap, img())
    assert run(m, img()).shape == (1, 4)


# --- ops that reorder channels or read the channel count ---------------------------------------------------
class ChannelOp(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.c2(self.fn(F.relu(self.c1(x)))).mean((2, 3)))


def _roll_channels(a):
    return torch.roll(a, 1, dims=1)


def _flip_channels(a):
    return torch.flip(a, dims=[1])


def _flip_width(a):
    return torch.flip(a, dims=[3]) + a.roll(1, 2)


@pytest.mark.parametrize("fn", [_flip_width, _roll_channels, _flip_channels])
def test_roll_flip(fn):
    """roll/flip over H/W act per channel; over the channel dim they move channels to other positions, so
    those channels must be frozen (or the op rewritten) for slim == masked to hold."""
    m = ChannelOp(fn).eval()
    groups = groups_of(m, img())
    assert output_group(groups, 3)
    check_prune(m, img())


def _channel_count_scale(a):
    return a * (1.0 / a.shape[1])


def test_channel_count_read_at_run_time():
    """`a.shape[1]` is a Python number computed from the channel count: the slim model reads the pruned
    count, so either the dim is frozen or the value is rewritten; slim must still equal masked."""
    check_prune(ChannelOp(_channel_count_scale).eval(), img())


class DynamicScaleViT(TinyViT):
    """Attention whose softmax scale is read from the runtime head size (`q.size(-1) ** -0.5`)."""

    def __init__(self) -> None:
        super().__init__("einsum")

    def attention(self, h):
        b, n, _ = h.shape
        q, k, v = (lin(h).view(b, n, self.heads, -1).transpose(1, 2) for lin in (self.q, self.k, self.v))
        att = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5
        return self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1))


def test_attention_scale_read_from_head_dim():
    m = DynamicScaleViT()
    _randomise_bn(m)
    m.eval()
    assert any(g.prunable for g in groups_of(m, img()))
    check_prune(m, img())


class FunctionalParams(nn.Module):
    """Parameters used directly through F.conv2d / F.batch_norm / F.linear / matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3), nn.Parameter(torch.randn(8))
        self.g, self.be = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8))
        self.register_buffer("rm", torch.randn(8))
        self.register_buffer("rv", torch.rand(8) + 0.5)
        self.w2 = nn.Parameter(torch.randn(6, 8, 1, 1))
        self.lw, self.lb = nn.Parameter(torch.randn(5, 6)), nn.Parameter(torch.randn(5))
        self.W = nn.Parameter(torch.randn(5, 7))
        self.out = nn.Linear(7, 3)

    def forward(self, x):
        x = F.conv2d(x, self.w1, self.b1, padding=1)
        x = F.relu(F.batch_norm(x, self.rm, self.rv, self.g, self.be, False))
        x = F.linear(F.conv2d(x, self.w2).mean((2, 3)), self.lw, self.lb)
        return self.out(F.relu(x @ self.W))


def test_functional_conv_linear_with_parameters():
    """Only channel dims form groups: the 3x3 kernel dims of a functional conv weight are not channels."""
    m = FunctionalParams().eval()
    groups = groups_of(m, img())
    assert prunable_sizes(groups) == [5, 6, 7, 8]
    res, rnd = check_prune(m, img())
    for r in (res, rnd):
        assert r.model.w1.shape[1:] == (3, 3, 3)
        assert r.model.w1.shape[0] == r.model.g.shape[0] == r.model.rm.shape[0] == r.model.w2.shape[1]
        assert r.model.lw.shape[1] == r.model.w2.shape[0] and r.model.W.shape[0] == r.model.lw.shape[0]


def _where_positive(a):
    return torch.where(a > 0, a, 0.1 * a)


def test_comparison_feeding_where():
    """torch.where is element-wise and registered; its usual condition `a > 0` is element-wise too."""
    m = ChannelOp(_where_positive).eval()
    assert prunable_sizes(groups_of(m, img())) == [6, 8]
    check_prune(m, img())


class StackNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.c, self.fc = nn.Conv2d(8, 6, 1), nn.Linear(6, 3)

    def forward(self, x):
        s = torch.stack([self.a(x), self.b(x)], dim=1)  # (B, 2, 8, H, W): a's and b's channels meet
        return self.fc(self.c(torch.relu(s).sum(1)).mean((2, 3)))


def test_stack_ties_the_stacked_channels():
    m = StackNet().eval()
    groups = groups_of(m, img())
    shared = [g for g in groups if {"a.weight", "b.weight"} <= {s.name for s in g.producers}]
    assert len(shared) == 1 and shared[0].size == 8
    res = fxprune.prune(m, img(), ratio=0.5)
    assert res.model.a.out_channels == res.model.b.out_channels == 4
    assert_slim_equals_masked(m, img(), res)


class ChannelReduction(nn.Module):
    """GRN-style: a reduction over the channel dim feeds back into the features."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.c1, self.c2 = how, nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.c1(x)
        g = {"mean": lambda t: t.mean(1, keepdim=True), "sum": lambda t: torch.sum(t, dim=1, keepdim=True),
             "norm": lambda t: t.norm(p=2, dim=1, keepdim=True), "amax": lambda t: t.amax(1, keepdim=True),
             "grn": lambda t: t.norm(p=2, dim=(2, 3), keepdim=True).mean(dim=1, keepdim=True)}[self.how](h)
        return self.c2(h / (g.abs() + 1.0))


@pytest.mark.parametrize("how", ["mean", "sum", "norm", "grn"])
def test_sum_mean_norm_over_channels_are_prunable(how):
    """Zeroing pruned channels before sum / norm changes nothing; mean divides by the kept count."""
    m = ChannelReduction(how).eval()
    x = torch.randn(2, 3, 5, 5)
    res, _ = check_prune(m, x, ratio=0.5)
    assert res.model.c1.out_channels == 4


def test_amax_over_channels_freezes_them():
    m = ChannelReduction("amax").eval()
    x = torch.randn(2, 3, 5, 5)
    res = fxprune.prune(m, x, ratio=0.5)
    assert res.model.c1.out_channels == 8
    assert any("amax" in why for _, why in res.report.frozen)


class HeadsInBatch(nn.Module):
    """Heads folded into the batch dim, and the folded size read back at run time (timm's HaloNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = 4, nn.Conv2d(3, 3 * 16, 1), nn.Conv2d(16, 5, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b * self.heads, -1, h * w).chunk(3, dim=1)
        bh = q.shape[0]  # == b * heads: a channel-carrying dim merged with the batch
        att = (q.transpose(1, 2) @ k).softmax(-1)
        out = (v @ att.transpose(1, 2)).reshape(bh // self.heads, -1, h, w)
        return self.proj(out)


def test_size_read_of_a_dim_merging_batch_and_heads_stays_dynamic():
    m = HeadsInBatch().eval()
    x = torch.randn(1, 3, 4, 4)
    res, _ = check_prune(m, x, ratio=0.5)
    x3 = torch.randn(3, 3, 4, 4)  # a different batch size than the traced one
    masked = fxprune.apply_masks(m, x, res.plan)
    assert rel_err(run(res.model, x3), run(masked, x3)) <= 1e-5


class PatchOps(nn.Module):
    """nn.Unfold -> per-patch linear mixing -> F.fold, then repeat_interleave / Tensor.unfold / max."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.unfold, self.c2 = nn.Conv2d(3, 8, 1), nn.Unfold(2, stride=2), nn.Conv1d(8 * 4, 8 * 4, 1)
        self.c3, self.rnn, self.fc = nn.Conv2d(8, 6, 1), nn.LSTM(6, 5, batch_first=True, bidirectional=True), \
            nn.Linear(10, 3)

    def forward(self, x):
        h = self.c1(x)
        p = self.c2(self.unfold(h))
        h = h + F.fold(p, h.shape[-2:], 2, stride=2)
        h = self.c3(h.repeat_interleave(2, dim=2)).flatten(2)  # (B, 6, L)
        windows = h.unfold(2, 2, 2).max(-1)[0]  # sliding windows over tokens, max inside each
        seq, _ = self.rnn(windows.transpose(1, 2))
        return self.fc(seq.max(dim=1).values)


def test_unfold_fold_repeat_interleave_max_and_lstm():
    m = PatchOps().eval()
    x = torch.randn(2, 3, 4, 4)
    res, _ = check_prune(m, x, ratio=0.5)
    assert res.model.c1.out_channels == 4 and res.model.c3.out_channels == 3
    assert res.model.rnn.input_size == 3 and res.model.rnn.hidden_size == 5


class RmsAndListCat(nn.Module):
    """RMSNorm (module and functional) over channels-last tokens; torch.cat over a traced split list."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(5, 8), nn.RMSNorm(8), nn.Linear(8, 8)
        self.g = nn.Parameter(torch.rand(8) + 0.5)
        self.fc3 = nn.Linear(8, 3)

    def forward(self, x):
        h = self.norm(self.fc1(x))
        h = F.rms_norm(self.fc2(h), (8,), self.g, 1e-6)
        h = torch.cat(torch.split(h, 1, dim=1), dim=2)  # tokens moved next to channels: (B, 1, N*8)
        return self.fc3(h.reshape(h.shape[0], -1, 8))


@pytest.mark.skipif(not hasattr(nn, "RMSNorm"), reason="torch < 2.4 has no RMSNorm")
def test_rms_norm_and_cat_of_a_traced_list():
    m = RmsAndListCat().eval()
    x = torch.randn(2, 4, 5)
    res, _ = check_prune(m, x, ratio=0.5)
    assert res.model.fc1.out_features == 4 and res.model.norm.normalized_shape == (4,)
