"""docs/templates/search_method, copied into a package of its own as its README says, is a working method."""
from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest
import torch

import fxprune
from fxprune.errors import MethodOptionError
from fxprune.methods.registry import METHODS
from fxprune.zoo import resnet20

from helpers import assert_slim_equals_masked

TEMPLATE = Path(__file__).resolve().parent.parent / "docs" / "templates" / "search_method"
X = torch.randn(1, 3, 32, 32)


@pytest.fixture
def copied_method(tmp_path, monkeypatch):
    shutil.copytree(TEMPLATE, tmp_path / "my_search")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("my_search")
    yield module
    METHODS.unregister(module.method.NAME)
    for name in [m for m in sys.modules if m == "my_search" or m.startswith("my_search.")]:
        del sys.modules[name]


def test_the_template_prunes_within_budget(copied_method):
    torch.manual_seed(0)
    res = fxprune.prune(resnet20().eval(), X, method="random_search", flops=0.5, rs_samples=16)
    assert res.report.flops_ratio <= 0.5 + 1e-6
    fits = [c for c in res.plan.search["rs_candidates"] if c[0] <= 0.5]
    assert len(res.plan.search["rs_candidates"]) == 16 and fits and res.plan.search["search_s"] > 0
    torch.manual_seed(0)
    assert_slim_equals_masked(resnet20().eval(), X, res.plan)


def test_the_template_options_are_checked(copied_method):
    with pytest.raises(MethodOptionError, match="rs_samples"):
        fxprune.prune(resnet20().eval(), X, method="random_search", flops=0.5, rs_sample=16)
