"""fxprune.zoo CIFAR models: shapes, the architectures' exact sizes, width scaling, and every model prunes to
half its FLOPs with a slim model equal to the masked one."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
from fxprune.zoo import CIFAR_MODELS, get_cifar_model, mobilenet_v2_cifar, resnet56, resnet_cifar, vgg16_bn
from fxprune.zoo.cifar import BasicBlock, InvertedResidual
from helpers import assert_slim_equals_masked

X = torch.randn(1, 3, 32, 32)


def _width_kwargs(name: str, width: float) -> dict[str, float]:
    return {"width_mult" if name == "mobilenet_v2" else "width": width}


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name", list(CIFAR_MODELS))
def test_output_shape(name: str) -> None:
    model = get_cifar_model(name, num_classes=100).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_resnet56_size_and_macs() -> None:
    model = resnet56().eval()
    assert fxprune.count_params(model) == 855_770  # about 0.86M
    # count_flops counts 2 FLOPs per multiply-add: 125,747,840 MACs per 32x32 image (option A would be 125.5M)
    assert fxprune.count_flops(model, X) == 251_495_680
    shortcuts = [m for m in model.modules() if isinstance(m, BasicBlock) and not isinstance(m.shortcut, nn.Identity)]
    assert len(shortcuts) == 2  # option B: a 1x1 stride-2 conv + BN only where the shape changes
    assert all(s.shortcut[0].kernel_size == (1, 1) and s.shortcut[0].stride == (2, 2) for s in shortcuts)
    assert len(_convs(model)) == 1 + 54 + 2


def test_resnet_depths_and_init() -> None:
    for name, blocks in (("resnet20", 9), ("resnet32", 15), ("resnet56", 27), ("resnet110", 54)):
        model = get_cifar_model(name)
        assert sum(isinstance(m, BasicBlock) for m in model.modules()) == blocks, name
    conv = resnet56().layer3[4].conv1  # Kaiming normal, fan_out: std sqrt(2 / (64 * 9))
    assert abs(conv.weight.std().item() / (2 / (64 * 9)) ** 0.5 - 1) < 0.05
    bns = [m for m in resnet56().modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((b.weight == 1).all() and (b.bias == 0).all()) for b in bns)
    with pytest.raises(ValueError, match="6n \\+ 2.*got 54"):
        resnet_cifar(54)


def test_vgg16_and_mobilenet_v2_layout() -> None:
    vgg = vgg16_bn()
    assert [c.out_channels for c in _convs(vgg)] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512,
                                                     512]
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 5
    mbv2 = mobilenet_v2_cifar().eval()
    blocks = [m for m in mbv2.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17 and sum(b.residual for b in blocks) == 10
    with torch.no_grad():
        assert mbv2.features(X).shape == (1, 1280, 4, 4)  # 8x downsampling on CIFAR


@pytest.mark.parametrize("name,lo,hi", [("resnet20", 0.24, 0.26), ("resnet56", 0.24, 0.26),
                                        ("vgg16_bn", 0.24, 0.26),
                                        # channels rounded to multiples of 8, the 1280-wide last conv kept
                                        ("mobilenet_v2", 0.25, 0.35)])
def test_half_width_is_about_a_quarter_of_the_macs(name: str, lo: float, hi: float) -> None:
    full = fxprune.count_flops(get_cifar_model(name).eval(), X)
    half = fxprune.count_flops(get_cifar_model(name, **_width_kwargs(name, 0.5)).eval(), X)
    assert lo <= half / full <= hi


def test_unknown_name_and_bad_width() -> None:
    with pytest.raises(ValueError, match="'resnet18'.*resnet20, resnet32, resnet56, resnet110, vgg16_bn, "
                                         "mobilenet_v2"):
        get_cifar_model("resnet18")
    with pytest.raises(ValueError, match="width"):
        get_cifar_model("resnet20", width=0)


def _random_bn_stats(model: nn.Module) -> nn.Module:
    """Non-trivial BN running statistics, so that the slim == masked check sees real affine maps."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.mark.parametrize("name", list(CIFAR_MODELS))
def test_prunes_to_half_the_flops_slim_equals_masked(name: str) -> None:
    model = _random_bn_stats(get_cifar_model(name))
    res = fxprune.prune(model, X, method="l1", flops=0.5)
    assert fxprune.count_flops(res.model, X) <= 0.5 * fxprune.count_flops(model, X)
    assert fxprune.count_params(res.model) < fxprune.count_params(model)
    assert_slim_equals_masked(model, X, res, tol=1e-4)
