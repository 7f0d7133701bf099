"""Deployment optimisations: BatchNorm folding, runtime selection (eager, CUDA graphs, torch.compile, ONNX
Runtime) and parity checks against the original module. See docs/deployment.md, "Optimising for inference".

>>> import torch
>>> from torch import nn
>>> from fxprune.deploy import optimize
>>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU()).eval()
>>> fast = optimize(net, torch.randn(2, 4), "cpu", mode="eager")
>>> type(fast).__name__, fast.mode
('Optimized', 'eager')
"""
from .align import measure_alignment
from .fold import fold_batchnorm
from .latency_table import LatencyModel
from .optimize import Optimized, optimize
from .ort import OrtModule, ort_session
from .parity import Parity
from .target import Target

__all__ = ["LatencyModel", "Optimized", "OrtModule", "Parity", "Target", "fold_batchnorm", "measure_alignment",
           "optimize", "ort_session"]
