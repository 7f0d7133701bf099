"""Channels inside the containers a forward builds (OrderedDict, dict, list, tuple, namedtuple, dataclass) are
followed, never dropped: the network output stays unpruned through any of them, indexing one finds its
channels, and what fxprune cannot follow is refused (or frozen under strict=False), never passed silently."""
from __future__ import annotations

import collections
import dataclasses
import operator
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fxprune
from fxprune.analysis import run_analysis
from fxprune.errors import UnsupportedOpError
from fxprune.tracing import propagate_shapes

from helpers import assert_unchanged, state_snapshot
from test_properties import build, specs

CLASSES = 21
X = torch.randn(1, 3, 16, 16)


class Pair(NamedTuple):
    out: torch.Tensor
    aux: torch.Tensor


@dataclasses.dataclass
class SegOutput:
    out: torch.Tensor
    aux: torch.Tensor | None = None


def wrap(kind: str, out: torch.Tensor, aux: torch.Tensor) -> Any:
    """`out` and `aux` in a container of `kind`, as a forward would return them."""
    if kind == "ordereddict":
        r = collections.OrderedDict()
        r["out"] = out
        r["aux"] = aux
        return r
    return {"dict": lambda: {"out": out, "aux": aux}, "list": lambda: [out, aux], "tuple": lambda: (out, aux),
            "namedtuple": lambda: Pair(out, aux), "dataclass": lambda: SegOutput(out, aux),
            "nested": lambda: {"out": (out, [aux])}}[kind]()


KINDS = ["ordereddict", "dict", "list", "tuple", "namedtuple", "dataclass", "nested"]


def leaves(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if dataclasses.is_dataclass(value):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for v in value for t in leaves(v)] if isinstance(value, (list, tuple)) else []


class Seg(nn.Module):
    """torchvision's segmentation shape: body -> classifier and aux classifier -> upsample -> a container."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head, self.aux = nn.Conv2d(16, CLASSES, 1), nn.Conv2d(16, CLASSES, 1)

    def forward(self, x: torch.Tensor) -> Any:
        f = self.body(x)
        up = [F.interpolate(h(f), size=x.shape[-2:], mode="bilinear") for h in (self.head, self.aux)]
        return wrap(self.kind, *up)


def check_container_model(model: nn.Module, x: torch.Tensor, **kw: Any) -> fxprune.PruneResult:
    """Every output leaf keeps its dense shape, slim == masked on every leaf, the caller's model untouched."""
    snap = state_snapshot(model)
    with torch.no_grad():
        dense = leaves(model(x))
        res = fxprune.prune(model, x, **kw)
        slim = leaves(res.model(x))
        masked = leaves(fxprune.apply_masks(model, x, res.plan)(x))
    assert [t.shape for t in slim] == [t.shape for t in dense] == [t.shape for t in masked]
    for s, m in zip(slim, masked):
        assert torch.allclose(s, m, atol=1e-4, rtol=1e-4)
    assert_unchanged(model, snap, x)
    return res


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_in_containers_are_never_pruned(kind):
    res = check_container_model(Seg(kind).eval(), X, ratio=0.5)
    assert any(len(d.keep) < d.size for d in res.plan.groups)  # the body was pruned ...
    assert all(t.shape[1] == CLASSES for t in leaves(res.model(X)))  # ... the classes were not


class Indexed(nn.Module):
    """A container built mid-forward and indexed again: by key, by position, by attribute."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = wrap(self.how, self.a(x), self.b(x))
        y = {"ordereddict": lambda: r["out"] + r["aux"], "namedtuple": lambda: r.out + r[1],
             "dataclass": lambda: r.out + r.aux}[self.how]()
        return self.c(F.relu(y))


@pytest.mark.parametrize("how", ["ordereddict", "namedtuple", "dataclass"])
def test_channels_are_followed_through_indexing(how):
    res = check_container_model(Indexed(how).eval(), X, ratio=0.5)
    ga = fxprune.analyse(Indexed(how).eval(), X)
    sizes = sorted(g.size for g in ga if g.prunable)
    assert sizes == [8]  # a and b are tied by the add through the container: one group of 8
    assert [len(d.keep) for d in res.plan.groups if d.size == 8] == [4]


def _graph_using_a_container(use: str) -> torch.fx.GraphModule:
    """conv -> a container node -> `use` of it -> conv: the graph fx records when a container is a node (a
    leaf or a wrapped function returned it). "values": OrderedDict(...).values(), which has no rule;
    "dynamic": (conv, conv)[x.size(0)], an index only known when the graph runs."""
    root = nn.Module()
    root.a, root.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
    g = torch.fx.Graph()
    x = g.placeholder("x")
    a = g.call_module("a", (x,))
    if use == "values":
        r = g.call_function(collections.OrderedDict, ({"out": a},))
        y = g.call_function(sum, (g.call_method("values", (r,)),))
    else:
        r = g.call_function(tuple, ([a, a],))
        y = g.call_function(operator.getitem, (r, g.call_method("size", (x, 0))))
    g.output(g.call_module("c", (y,)))
    gm = torch.fx.GraphModule(root, g)
    propagate_shapes(gm, (X,), {})
    return gm


def test_a_container_use_without_a_rule_is_refused_or_frozen():
    with pytest.raises(UnsupportedOpError, match="values"):
        run_analysis(_graph_using_a_container("values"), strict=True)
    ga = run_analysis(_graph_using_a_container("values"), strict=False)
    eights = [g for g in ga if g.size == 8]
    assert eights and all(len(g.frozen) == 8 for g in eights)


def test_a_container_item_fxprune_cannot_find_freezes_its_channels():
    ga = run_analysis(_graph_using_a_container("dynamic"), strict=True)
    eights = [g for g in ga if g.size == 8]
    assert eights and all("cannot follow" in next(iter(g.frozen.values())) for g in eights)


@settings(max_examples=12, deadline=None)
@given(spec=specs(), kind=st.sampled_from(KINDS), weight_seed=st.integers(0, 2**16))
def test_random_graphs_with_wrapped_outputs(spec, kind, weight_seed):
    inner, inputs = build(spec, weight_seed)

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> Any:
            y = self.inner(x)
            return wrap(kind, y, y * 2)

    check_container_model(Wrapped().eval(), inputs[0], method="random", ratio=0.5)


# --- torchvision's segmentation models: they return OrderedDict({"out": ..., "aux": ...}) ---------------------
SEGMENTATION = [(name, aux) for name in ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                                         "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
                for aux in ((False,) if name.startswith("lraspp") else (False, True))]
FAST = {("lraspp_mobilenet_v3_large", False), ("deeplabv3_mobilenet_v3_large", True), ("fcn_resnet50", True)}


def _segmentation(name: str, aux: bool) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    kw = {} if name.startswith("lraspp") else {"aux_loss": aux}
    return torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=CLASSES, **kw).eval()


@pytest.mark.parametrize("name,aux", [pytest.param(n, a, marks=() if (n, a) in FAST else pytest.mark.slow)
                                      for n, a in SEGMENTATION], ids=[f"{n}-aux{a}" for n, a in SEGMENTATION])
def test_torchvision_segmentation(name, aux, tmp_path):
    """B1's checks on every segmentation model: classes kept on "out" (and "aux"), FLOPs <= 0.6, slim == masked
    on every output, the caller untouched; ONNX parity on the fast ones."""
    x = torch.randn(1, 3, 64, 64)
    model = _segmentation(name, aux)
    res = check_container_model(model, x, ratio=0.5)
    out = res.model(x)
    assert list(out) == (["out", "aux"] if aux else ["out"]) and all(v.shape[1] == CLASSES for v in out.values())
    assert res.report.flops_ratio <= 0.6 and fxprune.count_flops(res.model, x) <= 0.6 * fxprune.count_flops(model, x)
    if (name, aux) in FAST:
        from fxprune.deploy.export import onnx_session_outputs

        path = fxprune.export(res.model, x, tmp_path / "seg.onnx")  # checks parity itself
        ort = onnx_session_outputs(path, x)
        assert [tuple(o.shape) for o in ort] == [tuple(v.shape) for v in out.values()]


def _graph_passing_a_dict_to(op: Any) -> torch.fx.GraphModule:
    """conv -> OrderedDict({"out": conv}) -> `op(container)`: an op with a rule that reads tensors only."""
    root = nn.Module()
    root.a = nn.Conv2d(3, 8, 3, padding=1)
    g = torch.fx.Graph()
    r = g.call_function(collections.OrderedDict, ({"out": g.call_module("a", (g.placeholder("x"),))},))
    g.output(g.call_function(op, (r,)))
    return torch.fx.GraphModule(root, g)


def test_a_dict_reaching_an_op_that_reads_tensors_is_refused_or_frozen():
    gm = _graph_passing_a_dict_to(len)  # len has a rule (it reads sizes); here it would see no channels
    propagate_shapes(gm, (X,), {})
    with pytest.raises(UnsupportedOpError, match="container"):
        run_analysis(gm, strict=True)
    ga = run_analysis(gm, strict=False)
    assert [g for g in ga if g.size == 8] and all(len(g.frozen) == 8 for g in ga if g.size == 8)
