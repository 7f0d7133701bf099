"""What fxprune 0.1.0 saved before the stage-package layout still loads and computes the same (files in
tests/data/saved_by_0.1.0, see its README)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
import torchvision

import fxprune

SAVED = Path(__file__).resolve().parent / "data" / "saved_by_0.1.0"


def _reference():
    return torch.load(SAVED / "reference.pt", weights_only=True)


def _dense(ref) -> torch.nn.Module:
    m = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                                             mlp_dim=32, num_classes=4).eval()
    m.load_state_dict(ref["dense_state"])
    return m


def test_pickled_slim_and_masked_graph_modules_load():
    ref = _reference()
    slim = torch.load(SAVED / "slim.pt", weights_only=False)
    masked = torch.load(SAVED / "masked.pt", weights_only=False)
    with torch.no_grad():
        assert torch.allclose(slim(ref["x"]), ref["slim"], atol=1e-6)
        assert torch.allclose(masked(ref["x"]), ref["masked"], atol=1e-6)


def test_old_paths_are_aliases_only():
    assert sys.modules["fxprune.trace"] is fxprune.tracing.tracer and callable(fxprune.trace)
    assert sys.modules["fxprune.analysis.masked"] is fxprune.analysis.rules.masked


def test_run_directory_and_plan_load(tmp_path):
    ref = _reference()
    run = shutil.copytree(SAVED / "run", tmp_path / "run")
    with torch.no_grad():
        slim = fxprune.load(run, _dense(ref))
        assert torch.allclose(slim(ref["x"]), ref["slim"], atol=1e-6)
        again = fxprune.apply_plan(_dense(ref), ref["x"], fxprune.PruningPlan.load(run / "plan.json"))
        assert torch.allclose(again(ref["x"]), ref["slim"], atol=1e-6)
