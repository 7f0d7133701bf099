"""Inputs a user brings as they are: a model that already ran with autograd on, compiled and DataParallel
wrappers, a keyword-only forward, a file that is not a plan. Each works, or fails with an error that names it."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import fxprune
from fxprune.errors import PlanFileError

from helpers import assert_slim_equals_masked, assert_unchanged, state_snapshot

X = torch.randn(1, 3, 64, 64)


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def test_a_model_holding_non_leaf_tensors_from_a_forward_with_autograd():
    timm = pytest.importorskip("timm")
    model = timm.create_model("levit_128", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    snap = state_snapshot(model)  # before the forward: deepcopy itself refuses the cache it fills
    model(x)  # eval mode with autograd on: LeViT caches its attention biases as non-leaf tensors
    assert any(t.grad_fn is not None for m in model.modules() for t in getattr(m, "attention_bias_cache", {}).values())
    res = fxprune.prune(model, x, ratio=0.5)
    assert res.report.flops_ratio <= 0.6 and res.model(x).shape == (1, 1000)
    assert_unchanged(model, snap, x)


@pytest.mark.parametrize("wrap", [torch.compile, nn.DataParallel], ids=["torch.compile", "DataParallel"])
def test_wrapped_models_are_pruned_as_the_model_they_wrap(wrap):
    plain = fxprune.prune(_resnet(), X, ratio=0.5)
    wrapped_model = wrap(_resnet())
    snap = state_snapshot(wrapped_model)
    wrapped = fxprune.prune(wrapped_model, X, ratio=0.5)
    assert [d.keep for d in wrapped.plan.groups] == [d.keep for d in plain.plan.groups]
    assert wrapped.plan.graph_signature == plain.plan.graph_signature
    assert torch.allclose(wrapped.model(X), plain.model(X))
    assert_unchanged(wrapped_model, snap, X)
    assert_slim_equals_masked(wrap(_resnet()), X, wrapped.plan)  # apply_plan / apply_masks unwrap too


class KeywordOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, *, image: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(image)))


def test_a_keyword_only_forward():
    res = fxprune.prune(KeywordOnly().eval(), (), example_kwargs={"image": X}, ratio=0.5)
    assert res.model(image=X).shape == (1, 4, 64, 64) and [len(d.keep) for d in res.plan.groups][0] == 4
    with pytest.raises(TypeError, match="example_kwargs"):
        fxprune.prune(KeywordOnly().eval(), (), ratio=0.5)


@pytest.mark.parametrize("text, why", [("{not json", "invalid JSON at line 1, column 2"), ("[1, 2]", "JSON object"),
                                       ('{"groups": [], "graph_signature": "x", "colour": 1}', "unknown fields colour"),
                                       ('{"groups": []}', "missing graph_signature"),
                                       ('{"groups": [{"id": 0}], "graph_signature": "x"}', "a group must have")])
def test_a_file_that_is_not_a_plan(tmp_path, text, why):
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(PlanFileError, match="plan") as ei:
        fxprune.PruningPlan.load(path)
    assert str(path) in str(ei.value) and why in str(ei.value)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, fxprune.FxPruneError)
