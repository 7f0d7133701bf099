"""A representative torchvision subset, end to end: prune, slim == masked, FLOPs shrink, the caller's model
is untouched, the slim graph re-traces; ONNX parity on a few. Protocol B1 in miniature (small inputs)."""
from __future__ import annotations


import pytest
import torch
import torchvision
from torch import nn

import fxprune
from helpers import assert_slim_equals_masked, check_zoo_model, outputs, rel_err

# (model, input size): small inputs keep the suite fast; ViT and Swin need their native patch grid
MODELS = [
    ("resnet18", 64), ("resnext50_32x4d", 64), ("mobilenet_v3_small", 64), ("efficientnet_b0", 64),
    ("densenet121", 64), ("shufflenet_v2_x0_5", 64), ("regnet_y_400mf", 64), ("convnext_tiny", 64),
    ("googlenet", 64), ("inception_v3", 96), ("vit_b_32", 224), ("swin_t", 64), ("maxvit_t", 224),
]
ONNX = {"resnet18", "shufflenet_v2_x0_5", "convnext_tiny", "vit_b_32", "swin_t"}


def build(name: str) -> nn.Module:
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    with torch.no_grad():  # torchvision zero-initialises some heads; random weights make the check meaningful
        for m in model.modules():
            if isinstance(m, nn.Linear) and not m.weight.any():
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name,size", MODELS, ids=[m for m, _ in MODELS])
def test_prune_zoo_model(name: str, size: int, tmp_path) -> None:
    model = build(name)
    x = torch.randn(1, 3, size, size)
    res = check_zoo_model(model, x, tmp_path / f"{name}.onnx" if name in ONNX else None)
    retraced = fxprune.trace(res.model, x)
    assert rel_err(outputs(retraced, x), outputs(res.model, x)) == 0.0


def test_flops_budget_is_met_globally() -> None:
    model = build("resnet18")
    x = torch.randn(1, 3, 64, 64)
    res = fxprune.prune(model, x, flops=0.5)
    ratio = fxprune.count_flops(res.model, x) / fxprune.count_flops(model, x)
    assert 0.45 <= ratio <= 0.5
    widths = {kept / size for _, size, kept, _ in res.report.widths if size != 1000}
    assert len(widths) > 3  # a global threshold, not one uniform ratio


def test_params_budget_and_round_to() -> None:
    model = build("mobilenet_v3_small")
    x = torch.randn(1, 3, 64, 64)
    res = fxprune.prune(model, x, params=0.6, round_to=8)
    assert res.report.params_ratio <= 0.6
    for gid, size, kept, _ in res.report.widths:
        group_frozen = kept == size
        assert group_frozen or kept % 8 == 0 or size < 8
    assert_slim_equals_masked(model, x, res, tol=1e-4)


def test_plan_json_roundtrip_rebuilds_the_same_slim_model(tmp_path) -> None:
    model = build("mobilenet_v3_small")
    x = torch.randn(1, 3, 64, 64)
    res = fxprune.prune(model, x, flops=0.4)
    res.plan.save(tmp_path / "plan.json")
    again = fxprune.apply_plan(build("mobilenet_v3_small"), x, fxprune.PruningPlan.load(tmp_path / "plan.json"))
    assert rel_err(outputs(again, x), outputs(res.model, x)) <= 1e-6


def test_a_pruned_vit_can_be_pruned_again() -> None:
    model = build("vit_b_32")
    x = torch.randn(1, 3, 224, 224)
    once = fxprune.prune(model, x, ratio=0.5)
    twice = fxprune.prune(once.model, x, ratio=0.5)
    assert twice.report.flops_ratio <= 0.6
    assert_slim_equals_masked(once.model, x, twice, tol=1e-4)


def test_ignore_keeps_a_modules_output_channels() -> None:
    model = build("resnet18")
    x = torch.randn(1, 3, 64, 64)
    res = fxprune.prune(model, x, ratio=0.5, ignore=["layer1.0.conv1", "layer4.1.conv1"])
    sub = res.model.get_submodule
    assert sub("layer1.0.conv1").out_channels == 64 and sub("layer4.1.conv1").out_channels == 512
    assert sub("layer2.0.conv1").out_channels == 64  # the rest is pruned (128 -> 64)
    with pytest.raises(ValueError, match="no module named"):
        fxprune.prune(model, x, ratio=0.5, ignore=["layer9"])
