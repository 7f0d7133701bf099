"""A representative timm subset, end to end (protocol B1 in miniature: small inputs and depths).

Every model: prune(l1, ratio=0.5) -> the slim output has the dense shape and is finite, FLOPs <= 0.6 of
dense, slim == masked on two inputs, the caller's model untouched; ONNX parity (onnxruntime) on a few.
The full timm list of issue 3 at its default input sizes runs as benchmarks/zoo_coverage.py --set timm.
"""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import fxprune
from helpers import assert_slim_equals_masked, check_zoo_model, outputs, rel_err

# (name, create_model kwargs, input size): smaller images / depths where the architecture allows it
MODELS = [
    ("vit_tiny_patch16_224", dict(img_size=64, depth=2), 64),  # fused qkv attention, cls token, pos embed
    ("swin_tiny_patch4_window7_224",  # windows, relative position bias per head, patch merging
     dict(img_size=64, window_size=4, embed_dim=32, depths=(1, 1), num_heads=(2, 4)), 64),
    ("convnext_atto", dict(depths=(1, 1, 1, 1)), 64),  # LayerNorm2d, layer scale
    ("efficientnet_b0", {}, 64),  # BatchNormAct2d, squeeze-excite, depthwise
    ("mobilenetv3_small_050", {}, 64),
    ("mobilenetv4_conv_small", {}, 64),
    ("repvgg_a0", {}, 64),  # three parallel branches summed
    ("levit_128s", dict(img_size=64), 64),  # attention biases gathered per head, q/k/v split of a fused qkv
    ("maxvit_nano_rw_256", dict(img_size=64), 64),  # block / grid attention, MBConv
    ("mobilevit_xxs", {}, 64),  # MobileVitBlock: shape-dependent control flow -> shape-specialised tracing
    ("nfnet_l0", {}, 64),  # weight standardisation (F.batch_norm over the weight), grouped computed-weight convs
    ("beit_base_patch16_224", dict(img_size=64, depth=2, embed_dim=64, num_heads=4), 64),  # rel-pos bias mask
    ("edgenext_xx_small", {}, 64),  # F.normalize, positional encoding from constants, split-transpose attention
]
ONNX = {"vit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "mobilevit_xxs", "levit_128s"}


def build(name: str, kwargs: dict) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():  # random BN statistics, so that BN is not the identity
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name,kwargs,size", MODELS, ids=[m for m, _, _ in MODELS])
def test_prune_timm_model(name: str, kwargs: dict, size: int, tmp_path) -> None:
    check_zoo_model(build(name, kwargs), torch.randn(1, 3, size, size),
                    tmp_path / f"{name}.onnx" if name in ONNX else None)


def test_vit_heads_and_head_dims_are_rewritten_without_hand_patching() -> None:
    """timm's fused-qkv Attention: the slim module's num_heads / head_dim attributes are not used by the
    rewritten graph (its reshape constants are), and q/k/v/proj widths agree."""
    model = build("vit_tiny_patch16_224", dict(img_size=64, depth=2))
    x = torch.randn(2, 3, 64, 64)
    res = fxprune.prune(model, x, ratio=0.5)
    attn = res.model.get_submodule("blocks.0.attn")
    qkv_out, proj_in = attn.qkv.out_features, attn.proj.in_features
    assert qkv_out % 3 == 0 and qkv_out // 3 == proj_in < 192
    assert_slim_equals_masked(model, x, res, tol=1e-4)


def test_specialised_submodule_is_listed_and_stays_prunable() -> None:
    model = build("mobilevit_xxs", {})
    x = torch.randn(1, 3, 64, 64)
    gm = fxprune.trace(model, x)
    assert gm.meta["fxprune_specialised"] and not gm.meta["fxprune_auto_leaves"]
    res = fxprune.prune(model, x, ratio=0.5)
    block = next(n for n in gm.meta["fxprune_specialised"])  # a MobileVitBlock: its convs got slimmer
    dense_convs = [m for m in model.get_submodule(block).modules() if isinstance(m, nn.Conv2d)]
    slim_convs = [m for n, m in res.model.named_modules() if n.startswith(block.replace(".", "_")) or
                  n.startswith(block)]
    assert dense_convs and slim_convs
    assert sum(m.weight.numel() for m in slim_convs if isinstance(m, nn.Conv2d)) < sum(
        m.weight.numel() for m in dense_convs)
    # batch size is not baked into the specialised graph
    x4 = torch.randn(4, 3, 64, 64)
    masked = fxprune.apply_masks(model, x, res.plan)
    assert rel_err(outputs(res.model, x4), outputs(masked, x4)) <= 1e-4


@pytest.mark.parametrize("name,kwargs,table", [
    ("levit_128s", dict(img_size=64), "stages.0.blocks.0.attn.attention_biases"),
    ("swin_tiny_patch4_window7_224", MODELS[1][1], "layers.0.blocks.0.attn.relative_position_bias_table"),
    ("maxvit_nano_rw_256", dict(img_size=64), "stages.0.blocks.0.attn_block.attn.rel_pos.relative_position_bias_table"),
    ("beit_base_patch16_224", MODELS[11][1], "blocks.0.attn.relative_position_bias_table"),
])
def test_per_head_bias_tables_are_sliced_with_the_heads(name: str, kwargs: dict, table: str) -> None:
    """Whole heads are removed: the per-head table loses the same heads (its head dim shrinks), nothing
    else; slim == masked shows the right rows were kept."""
    model = build(name, kwargs)
    x = torch.randn(1, 3, 64, 64)
    res = fxprune.prune(model, x, ratio=0.5)
    dense = model.get_parameter(table)
    slim = dict(res.model.named_parameters())[table]
    head_dim = 0 if "attention_biases" in table else 1
    assert slim.shape[head_dim] == (dense.shape[head_dim] + 1) // 2
    assert slim.shape[1 - head_dim] == dense.shape[1 - head_dim]
    assert_slim_equals_masked(model, x, res, tol=1e-4)
