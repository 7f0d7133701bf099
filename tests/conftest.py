"""Shared pytest configuration: hypothesis profiles and per-test torch seeding.

Hypothesis profiles (pick one with the environment variable HYPOTHESIS_PROFILE):

* ``ci`` (the default when HYPOTHESIS_PROFILE is unset): derandomized (a fixed example sequence, so CI is
  reproducible; use ``dev`` to explore new examples), max_examples=400, which tests/test_properties.py
  splits into 400 (ratio plans) + 200 (FLOPs/params budgets) + 20 (ONNX parity) random graphs, about a
  minute on two cores when everything passes. No "explain" phase (it reruns a failing example hundreds
  of times) and one reported bug per property (report_multiple_bugs=False), so a failing run stays a
  few minutes; the failure is still shrunk to a minimal spec.
* ``dev``: max_examples=2000 (2000 + 1000 + 100 graphs), for hunting bugs locally.

tests/test_properties.py derives its per-property counts from the active profile's ``max_examples``
(N_RATIO, N_GLOBAL, N_ONNX there), so they stay in proportion in every profile.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "ci",
    max_examples=400,
    deadline=None,
    derandomize=True,  # the same examples on every CI run: a red run is reproducible, not luck
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
    # no "explain" phase: on a failure it reruns the shrunk example hundreds of times (minutes here);
    # and one bug per property: shrinking every distinct failure found can take several minutes
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    report_multiple_bugs=False,
)
settings.register_profile(
    "dev",
    max_examples=2000,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _torch_seed():
    """Every test starts from the same global torch RNG state, whatever ran before it."""
    torch.manual_seed(0)
    yield
