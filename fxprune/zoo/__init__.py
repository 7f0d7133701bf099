"""Model zoo: small reference networks to prune, train and benchmark (CIFAR-10 sized for now).

>>> from fxprune.zoo import CIFAR_MODELS
>>> sorted(CIFAR_MODELS)[:2]
['mobilenet_v2', 'resnet110']
"""
from fxprune.zoo.cifar import (CIFAR_MODELS, get_cifar_model, mobilenet_v2_cifar, resnet20, resnet32, resnet56, resnet110,
                    resnet_cifar, vgg16_bn)

__all__ = ["CIFAR_MODELS", "get_cifar_model", "mobilenet_v2_cifar", "resnet110", "resnet20", "resnet32",
           "resnet56", "resnet_cifar", "vgg16_bn"]
