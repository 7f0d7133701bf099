"""example_inputs as a tuple (and kwargs); outputs as tuples, lists, dicts, namedtuples, dataclasses and
Hugging Face style ModelOutputs (an OrderedDict that is also a dataclass)."""
from __future__ import annotations

import dataclasses
from collections import OrderedDict, namedtuple

import pytest
import torch
from torch import nn

import fxprune
from helpers import assert_slim_equals_masked, outputs

Pair = namedtuple("Pair", ["logits", "features"])


@dataclasses.dataclass
class DataOut:
    logits: torch.Tensor
    features: torch.Tensor | None = None


class ModelOutput(OrderedDict):
    """The shape of transformers.utils.ModelOutput: a dict whose non-None fields are also attributes."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is not None:
                self[f.name] = getattr(self, f.name)


@dataclasses.dataclass
class HFOutput(ModelOutput):
    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None
    attentions: torch.Tensor | None = None


class TwoInputs(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(2, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x, y, scale=None):
        h = torch.relu(self.a(x) + self.b(y))
        f = self.c(h)
        logits = self.fc(f.mean((2, 3)))
        if scale is not None:
            logits = logits * scale
        if self.kind == "tuple":
            return logits, f
        if self.kind == "list":
            return [logits, f]
        if self.kind == "dict":
            return {"logits": logits, "features": f}
        if self.kind == "dataclass":
            return DataOut(logits=logits, features=f)
        if self.kind == "modeloutput":
            return HFOutput(logits=logits, features=f)
        return Pair(logits, f)


@pytest.mark.parametrize("kind", ["tuple", "list", "dict", "namedtuple", "dataclass", "modeloutput"])
def test_output_structures(kind: str) -> None:
    torch.manual_seed(0)
    m = TwoInputs(kind).eval()
    x = (torch.randn(1, 3, 8, 8), torch.randn(1, 2, 8, 8))
    res = fxprune.prune(m, x, ratio=0.5)
    out = res.model(*x)
    dense = m(*x)
    assert type(out) is type(dense) or (kind == "namedtuple" and tuple(out) is not None)
    if kind in ("dataclass", "modeloutput"):
        assert torch.equal(out.logits, outputs(res.model, x)[0]) and out.features.shape == dense.features.shape
    # every output's channels are kept (they reach the network output)
    assert [t.shape for t in outputs(res.model, x)] == [t.shape for t in outputs(m, x)]
    assert res.model.a.out_channels < 8  # the hidden group (a + b) is pruned
    assert_slim_equals_masked(m, x, res)


def test_example_kwargs() -> None:
    torch.manual_seed(0)
    m = TwoInputs("tuple").eval()
    x = (torch.randn(1, 3, 8, 8), torch.randn(1, 2, 8, 8))
    scale = torch.full((1, 5), 2.0)
    res = fxprune.prune(m, x, ratio=0.5, example_kwargs={"scale": scale})
    assert res.model(*x, scale)[0].shape == (1, 5)
