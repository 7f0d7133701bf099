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
from fxprune.deploy.align import measure_alignment
from fxprune.deploy.fold import fold_batchnorm
from fxprune.deploy.measure import measure_latency
from fxprune.deploy.optimize import Optimized, optimize
from fxprune.deploy.ort import OrtModule, ort_session
from fxprune.deploy.parity import Parity
from fxprune.deploy.target import Target

__all__ = ["Optimized", "OrtModule", "Parity", "Target", "fold_batchnorm", "measure_alignment", "measure_latency",
           "optimize", "ort_session"]
