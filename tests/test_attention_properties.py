"""Property-based tests of attention pruning (hypothesis): random embed dims, head counts, qkv fused or
separate, with or without biases, SDPA or explicit softmax(q k^T) v, timm's own Attention (with and
without qk-norm) and torch's nn.MultiheadAttention.

Each example builds a pre-norm residual block ``h = in(x); h = h + attn(norm(h)); out = head(mean(h))``,
prunes it with a random plan (random kept channels of every group: the residual stream, whole heads,
per-head dims) and asserts: slim == masked on two inputs (relative error <= 1e-4), every module of the
slim model is self-consistent, the output shape is unchanged, and the plan rebuilds the same slim model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fxprune
from helpers import assert_consistent_modules, assert_slim_equals_masked, outputs, rel_err

VARIANTS = ("fused", "separate", "timm", "torch_mha")
N_EXAMPLES = max(settings.default.max_examples // 4, 25)


class FusedQKV(nn.Module):
    """One Linear makes q, k and v: reshape (B, N, 3, H, D), permute, unbind."""

    def __init__(self, dim: int, heads: int, bias: bool, sdpa: bool) -> None:
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=bias), nn.Linear(dim, dim, bias=bias)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(attend(q, k, v, self.sdpa).transpose(1, 2).reshape(b, n, c))


class SeparateQKV(nn.Module):
    """Three Linears; per-head views with x.size() queries; the output merged with reshape(B, N, -1)."""

    def __init__(self, dim: int, heads: int, bias: bool, sdpa: bool) -> None:
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=bias) for _ in range(3))
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x):
        b, n = x.size(0), x.size(1)
        q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        return self.proj(attend(q, k, v, self.sdpa).transpose(1, 2).reshape(b, n, -1))


class TorchMHA(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool, sdpa: bool) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, bias=bias, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


def attend(q, k, v, sdpa: bool):
    if sdpa:
        return F.scaled_dot_product_attention(q, k, v)
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return attn.softmax(dim=-1) @ v


def make_attention(variant: str, dim: int, heads: int, bias: bool, sdpa: bool, qk_norm: bool) -> nn.Module:
    if variant == "timm":
        from timm.models.vision_transformer import Attention

        attn = Attention(dim, num_heads=heads, qkv_bias=bias, qk_norm=qk_norm, norm_layer=nn.LayerNorm)
        attn.fused_attn = sdpa
        return attn
    cls = {"fused": FusedQKV, "separate": SeparateQKV, "torch_mha": TorchMHA}[variant]
    return cls(dim, heads, bias, sdpa)


class Block(nn.Module):
    def __init__(self, in_dim: int, dim: int, attn: nn.Module) -> None:
        super().__init__()
        self.inp, self.norm, self.attn, self.head = nn.Linear(in_dim, dim), nn.LayerNorm(dim), attn, nn.Linear(dim, 5)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.attn(self.norm(h))
        return self.head(h.mean(1))


@st.composite
def attention_blocks(draw):
    variant = draw(st.sampled_from(VARIANTS))
    heads, head_dim = draw(st.integers(1, 4)), draw(st.integers(2, 8))
    spec = dict(variant=variant, dim=heads * head_dim, heads=heads, bias=draw(st.booleans()),
                sdpa=draw(st.booleans()), qk_norm=variant == "timm" and draw(st.booleans()))
    return spec, draw(st.integers(2, 6)), draw(st.integers(3, 9)), draw(st.integers(0, 2**16))


@settings(max_examples=N_EXAMPLES, deadline=None)
@given(attention_blocks())
def test_random_attention_block_slim_equals_masked(case) -> None:
    spec, in_dim, tokens, seed = case
    torch.manual_seed(seed)
    model = Block(in_dim, spec["dim"], make_attention(**spec)).eval()
    x = torch.randn(2, tokens, in_dim)
    ratio = 0.2 + 0.6 * (seed % 97) / 96
    res = fxprune.prune(model, x, method="random", ratio=ratio, seed=seed)
    assert outputs(res.model, x)[0].shape == (2, 5)
    assert_consistent_modules(res.model)
    assert_slim_equals_masked(model, x, res, tol=1e-4)
    again = fxprune.apply_plan(model, x, res.plan)
    assert rel_err(outputs(again, x), outputs(res.model, x)) <= 1e-6


def test_fused_attention_prunes_whole_heads_and_head_dims() -> None:
    """Both kinds of group exist for a fused-qkv block: the heads (4) and the per-head dims (8)."""
    model = Block(6, 32, make_attention("fused", 32, 4, True, True, False)).eval()
    x = torch.randn(2, 7, 6)
    sizes = sorted(g.size for g in fxprune.analyse(model, x) if g.prunable)
    assert 4 in sizes and 8 in sizes, sizes
    res = fxprune.prune(model, x, ratio=0.5)
    assert res.model.attn.qkv.out_features == 3 * 2 * 4  # 2 heads x 4 dims, for q, k and v
    assert_slim_equals_masked(model, x, res, tol=1e-4)
