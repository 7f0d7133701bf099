"""CIFAR (32x32) models: ResNet-20/32/56/110 (He et al. 2016), VGG-16 with BN, MobileNetV2.

Every builder takes `num_classes` and a width multiplier; `get_cifar_model(name, **kwargs)` looks one up in
`CIFAR_MODELS`.

>>> import torch
>>> get_cifar_model("resnet20", num_classes=100)(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 100])
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                    512, 512, 512, "M")
# MobileNetV2 stages (expansion t, channels c, blocks n, stride s); strides as in the ImageNet model except
# the first stage with t=6 (24 channels), which keeps stride 1 on CIFAR
MBV2_CFG: tuple[tuple[int, int, int, int], ...] = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                                                    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


def _init(model: nn.Module) -> nn.Module:
    """Kaiming-normal convs (fan_out, ReLU), BN weight 1 and bias 0, Linear N(0, 0.01) with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


def _check_width(name: str, width: float) -> None:
    if not width > 0:
        raise ValueError(f"{name} must be a positive width multiplier (1.0 = the paper's widths), got {width}")


# --- ResNet ---------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU. The shortcut is a 1x1 conv + BN where the
    shape changes (option B), the identity otherwise."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, 3, stride)
        self.conv2, self.bn2 = _conv_bn(cout, cout, 3)
        self.relu = nn.ReLU(inplace=True)
        reshape = stride != 1 or cin != cout
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if reshape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """Stem conv3x3 + BN + ReLU, three stages of BasicBlocks (the 2nd and 3rd start with stride 2), global
    average pooling, Linear."""

    def __init__(self, blocks: int, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        widths = [_scaled(c, width) for c in (16, 32, 64)]
        self.conv1, self.bn1 = _conv_bn(3, widths[0], 3)
        self.relu = nn.ReLU(inplace=True)
        cin, stages = widths[0], []
        for i, cout in enumerate(widths):
            stages.append(nn.Sequential(*[BasicBlock(cin if b == 0 else cout, cout, 2 if i and b == 0 else 1)
                                          for b in range(blocks)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet_cifar(depth: int, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """The CIFAR ResNet of He et al. 2016 with depth = 6n + 2 (n BasicBlocks per stage, widths 16/32/64 times
    `width`) and option-B (1x1 conv + BN) shortcuts where the shape changes.

    >>> import fxprune
    >>> fxprune.count_params(resnet_cifar(20))
    272474
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), "
                         f"got {depth}")
    _check_width("width", width)
    return _init(ResNetCIFAR((depth - 2) // 6, num_classes, width))


def resnet20(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """ResNet-20 for CIFAR (3 blocks per stage)."""
    return resnet_cifar(20, num_classes, width)


def resnet32(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """ResNet-32 for CIFAR (5 blocks per stage)."""
    return resnet_cifar(32, num_classes, width)


def resnet56(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """ResNet-56 for CIFAR (9 blocks per stage)."""
    return resnet_cifar(56, num_classes, width)


def resnet110(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """ResNet-110 for CIFAR (18 blocks per stage)."""
    return resnet_cifar(110, num_classes, width)


# --- VGG ------------------------------------------------------------------------------------------------
class _FeaturesClassifier(nn.Module):
    """A `features` stack, global average pooling and a Linear `classifier` (VGG and MobileNetV2 heads)."""

    def _set_head(self, layers: list[nn.Module], channels: int, num_classes: int) -> None:
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class VGGCIFAR(_FeaturesClassifier):
    """conv3x3-BN-ReLU layers and 2x2 max pools from `cfg`, global average pooling (the identity on the 1x1
    map a 32x32 input leaves), one Linear: the CIFAR VGG of network slimming (Liu et al. 2017)."""

    def __init__(self, cfg: Sequence[int | str], num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            cout = _scaled(int(v), width)
            layers += [*_conv_bn(cin, cout, 3), nn.ReLU(inplace=True)]
            cin = cout
        self._set_head(layers, cin, num_classes)


def vgg16_bn(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """VGG-16 with BN for CIFAR: 13 conv layers (64 ... 512 channels times `width`), 5 max pools, Linear.

    >>> import fxprune
    >>> fxprune.count_params(vgg16_bn())
    14724042
    """
    _check_width("width", width)
    return _init(VGGCIFAR(VGG16_CFG, num_classes, width))


# --- MobileNetV2 ----------------------------------------------------------------------------------------
def _divisible(channels: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, never more than 10% down (as torchvision's MobileNetV2)."""
    out = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * channels else out


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped for t=1) + BN + ReLU6, depthwise 3x3 + BN + ReLU6, 1x1 projection + BN; the input
    is added back where stride is 1 and the channels match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)] if expand != 1 else []
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
                   *_conv_bn(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2CIFAR(_FeaturesClassifier):
    """MobileNetV2 (Sandler et al. 2018) for 32x32 inputs: see `mobilenet_v2_cifar`."""

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0) -> None:
        super().__init__()
        cin = _divisible(32 * width_mult)
        last = _divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [*_conv_bn(3, cin, 3, 1), nn.ReLU6(inplace=True)]
        for t, c, n, s in MBV2_CFG:
            cout = _divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers += [*_conv_bn(cin, last, 1), nn.ReLU6(inplace=True)]
        self._set_head(layers, last, num_classes)


def mobilenet_v2_cifar(num_classes: int = 10, width_mult: float = 1.0) -> nn.Module:
    """MobileNetV2 for CIFAR, as the usual ports (kuangliu/pytorch-cifar, chenyaofo/pytorch-cifar-models):
    the ImageNet network's first two stride-2 layers -- the stem conv and the first block of the 24-channel
    stage -- get stride 1, so a 32x32 input is downsampled 8x (to 4x4) instead of 32x. Channels are
    `width_mult` times the paper's, rounded to multiples of 8; the last 1x1 conv has 1280 channels (times
    `width_mult` when it is above 1); no dropout.

    >>> import fxprune
    >>> fxprune.count_params(mobilenet_v2_cifar())
    2236682
    """
    _check_width("width_mult", width_mult)
    return _init(MobileNetV2CIFAR(num_classes, width_mult))


# --- registry -------------------------------------------------------------------------------------------
CIFAR_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "vgg16_bn": vgg16_bn,
    "mobilenet_v2": mobilenet_v2_cifar,
}


def get_cifar_model(name: str, **kwargs) -> nn.Module:
    """Build the CIFAR model `name` of `CIFAR_MODELS` (kwargs: num_classes, and width / width_mult).

    >>> get_cifar_model("vgg16_bn", num_classes=100).classifier.out_features
    100
    >>> get_cifar_model("resnet18")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown CIFAR model 'resnet18'; valid names: resnet20, resnet32, ..., mobilenet_v2
    """
    if name not in CIFAR_MODELS:
        raise ValueError(f"unknown CIFAR model {name!r}; valid names: {', '.join(CIFAR_MODELS)}")
    return CIFAR_MODELS[name](**kwargs)
