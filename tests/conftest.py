"""Shared pytest configuration: hypothesis profiles and per-test torch seeding.

Hypothesis profiles (pick one with the environment variable HYPOTHESIS_PROFILE):

* ``ci`` (the default when HYPOTHESIS_PROFILE is unset): a few hundred random graphs in total across
  tests/test_properties.py, a couple of minutes on two cores.
* ``dev``: a long sweep (2000 examples per property), for hunting bugs locally.

Each property in tests/test_properties.py scales its own example count from the active profile's
``max_examples`` (see ``scaled`` there), so the per-property counts stay in proportion in every profile.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
    # no "explain" phase: on a failure it reruns the shrunk example hundreds of times (minutes here)
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
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
