"""Data for training and evaluating pruned models: CIFAR-10 from a JPEG archive, as on-device tensor loaders.

>>> from fxprune.data import CLASSES, MEAN, STD
>>> len(CLASSES), CLASSES[0], MEAN[0]
(10, 'airplane', 0.4914)
"""
from fxprune.data.cifar10 import CLASSES, MEAN, STD, load_cifar10
from fxprune.data.loader import TensorLoader, cifar10_loaders

__all__ = ["CLASSES", "MEAN", "STD", "TensorLoader", "cifar10_loaders", "load_cifar10"]
