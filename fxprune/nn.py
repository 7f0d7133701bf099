"""Modules and functions the slim graph uses where a library block cannot express pruned widths.

`nn.MultiheadAttention` ties its inner width to its embedding width, and torchvision's Swin attention
derives the head size (and with it the softmax scale) from its input width. After pruning heads or head
dims those no longer hold, so the slim graph calls these versions, which take the widths and the
original scale explicitly and compute exactly what the original computes on the kept channels.
"""
from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn


@fx.wrap
def mha_forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, in_weight: torch.Tensor,
                in_bias: torch.Tensor | None, out_weight: torch.Tensor, out_bias: torch.Tensor | None,
                num_heads: int, qk_head_dim: int, v_head_dim: int, scale: float, batch_first: bool,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention with separate q/k and v head sizes and an explicit softmax scale."""
    if not batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    b, lq, lk = query.shape[0], query.shape[1], key.shape[1]
    eq, ev = num_heads * qk_head_dim, num_heads * v_head_dim
    wq, wk, wv = in_weight.split([eq, eq, ev])
    bq, bk, bv = in_bias.split([eq, eq, ev]) if in_bias is not None else (None, None, None)
    q = F.linear(query, wq, bq).reshape(b, lq, num_heads, qk_head_dim).transpose(1, 2)
    k = F.linear(key, wk, bk).reshape(b, lk, num_heads, qk_head_dim).transpose(1, 2)
    v = F.linear(value, wv, bv).reshape(b, lk, num_heads, v_head_dim).transpose(1, 2)
    attn = (q * scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        attn = attn + attn_mask
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, lq, ev)
    out = F.linear(out, out_weight, out_bias)
    return out if batch_first else out.transpose(0, 1)


class PrunedMultiheadAttention(nn.Module):
    """Drop-in for an eval-mode `nn.MultiheadAttention` whose heads / head dims were pruned.

    Returns `(output, None)` like `nn.MultiheadAttention(..., need_weights=False)`.
    """

    def __init__(self, embed_dim: int, num_heads: int, qk_head_dim: int, v_head_dim: int, out_dim: int,
                 scale: float, batch_first: bool, bias: bool = True) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.qk_head_dim, self.v_head_dim, self.scale = qk_head_dim, v_head_dim, scale
        rows = num_heads * (2 * qk_head_dim + v_head_dim)
        self.in_proj_weight = nn.Parameter(torch.empty(rows, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(rows)) if bias else None
        self.out_proj = nn.Linear(num_heads * v_head_dim, out_dim, bias=bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask=None,
                need_weights: bool = True, attn_mask=None, average_attn_weights: bool = True,
                is_causal: bool = False):
        out = mha_forward(query, key, value, self.in_proj_weight, self.in_proj_bias, self.out_proj.weight,
                          self.out_proj.bias, self.num_heads, self.qk_head_dim, self.v_head_dim, self.scale,
                          self.batch_first, attn_mask)
        return out, None


@fx.wrap
def window_attention(x: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor,
                     relative_position_bias: torch.Tensor, window_size: list[int], num_heads: int,
                     shift_size: list[int], attention_dropout: float = 0.0, dropout: float = 0.0,
                     qkv_bias: torch.Tensor | None = None, proj_bias: torch.Tensor | None = None,
                     logit_scale: torch.Tensor | None = None, training: bool = False,
                     scale: float | None = None) -> torch.Tensor:
    """Swin (shifted) window attention as in torchvision, with an explicit softmax `scale`.

    Semantics follow torchvision.models.swin_transformer.shifted_window_attention; the head size is taken
    from the qkv weight (not from the input width) and `scale` defaults to head_size ** -0.5.
    """
    b, h, w, c = x.shape
    head = qkv_weight.shape[0] // (3 * num_heads)
    pad_r = (window_size[1] - w % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - h % window_size[0]) % window_size[0]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, ph, pw, _ = x.shape
    shift = list(shift_size)
    shift = [0 if window_size[i] >= (ph, pw)[i] else shift[i] for i in range(2)]
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    nw = (ph // window_size[0]) * (pw // window_size[1])
    x = x.view(b, ph // window_size[0], window_size[0], pw // window_size[1], window_size[1], c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b * nw, window_size[0] * window_size[1], c)
    if logit_scale is not None and qkv_bias is not None:
        n = num_heads * head
        qkv_bias = torch.cat([qkv_bias[:n], torch.zeros_like(qkv_bias[n: 2 * n]), qkv_bias[2 * n:]])
    qkv = F.linear(x, qkv_weight, qkv_bias).reshape(x.size(0), x.size(1), 3, num_heads, head)
    qkv = qkv.permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * (scale if scale is not None else head ** -0.5)) @ k.transpose(-2, -1)
    attn = attn + relative_position_bias
    if sum(shift) > 0:
        attn = attn + _shift_mask(x, ph, pw, window_size, shift, nw, num_heads)
    attn = F.dropout(F.softmax(attn, dim=-1), p=attention_dropout, training=training)
    x = (attn @ v).transpose(1, 2).reshape(x.size(0), x.size(1), num_heads * head)
    x = F.dropout(F.linear(x, proj_weight, proj_bias), p=dropout, training=training)
    x = x.view(b, ph // window_size[0], pw // window_size[1], window_size[0], window_size[1], -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, -1)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


def _shift_mask(x: torch.Tensor, ph: int, pw: int, window_size: list[int], shift: list[int], nw: int,
                num_heads: int) -> torch.Tensor:
    mask = x.new_zeros((ph, pw))
    h_slices = ((0, -window_size[0]), (-window_size[0], -shift[0]), (-shift[0], None))
    w_slices = ((0, -window_size[1]), (-window_size[1], -shift[1]), (-shift[1], None))
    count = 0
    for hs in h_slices:
        for ws in w_slices:
            mask[hs[0]: hs[1], ws[0]: ws[1]] = count
            count += 1
    mask = mask.view(ph // window_size[0], window_size[0], pw // window_size[1], window_size[1])
    mask = mask.permute(0, 2, 1, 3).reshape(nw, window_size[0] * window_size[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
    bsz = x.size(0) // nw
    return mask.unsqueeze(1).unsqueeze(0).expand(bsz, nw, num_heads, mask.size(1), mask.size(2)).reshape(
        bsz * nw, num_heads, mask.size(1), mask.size(2))
