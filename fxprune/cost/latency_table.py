"""Latency model: a model's latency on a target device as a function of the channels each group keeps.

FLOPs say little about latency on a GPU (narrow layers are launch- and memory-bound, widths off the tensor-
core multiples waste work), so latency budgets use measurements. For every convolution and linear layer of
the traced graph the model measures that layer alone on the target at a grid of (input, output) widths
(`Target.points` per dimension, the dense width included) and interpolates bilinearly between them; layers of
the same shape share one table, and measurements are cached on disk per device, dtype, threads and torch
version (`Target.cache`). The rest of the model's time comes from one whole-model measurement:

* ops with FLOPs but no table (grouped convolutions, matmuls of attention) get the model's measured time per
  FLOP and scale with their kept FLOPs fraction, like the FLOPs cost model;
* what remains (normalisations, activations, additions, pooling: memory-bound work) is spread over the
  nodes by output size and scales with each node's kept output channels; unlabelled outputs are a constant.

`LatencyModel.latency(ctx)` is what `select` bisects for `prune(..., latency=0.5)`; `linear_terms()` is its
first-order form (each term's dense time x the kept fractions) for TAS's differentiable expected cost.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from fxprune.analysis.analyse import GraphAnalysis
from fxprune.analysis.keep import Survivors
from fxprune.tracing.meta import flops_of, shape_of
from fxprune.deploy.target import Target
from fxprune.registry import Registry, qualified_name

__all__ = ["LatencyModel", "OpShape", "grid_widths"]


@dataclass(frozen=True)
class OpShape:
    """One convolution or linear layer, rebuildable at any input / output width."""

    cls: type
    in_ch: int
    out_ch: int
    depthwise: bool
    options: tuple  # constructor keyword arguments other than the widths, as (name, value) pairs
    input_shape: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.cls.__name__}{dict(self.options)}{list(self.input_shape)}"

    def build(self, c_in: int, c_out: int) -> tuple[nn.Module, tuple[torch.Tensor]]:
        """The layer with `c_in` input and `c_out` output channels (depthwise: both `c_out`) and an input."""
        kw = dict(self.options)
        if self.depthwise:
            c_in, kw["groups"] = c_out, c_out
        module = self.cls(c_in, c_out, **kw)
        shape = list(self.input_shape)
        shape[-1 if self.cls is nn.Linear else 1] = c_in
        return module, (torch.randn(shape),)


def _conv_shape(m: nn.Module, input_shape: tuple[int, ...]) -> OpShape | None:
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    if m.groups != 1 and not depthwise:
        return None  # grouped: scaled by FLOPs
    opts = (("kernel_size", m.kernel_size), ("stride", m.stride), ("padding", m.padding),
            ("dilation", m.dilation), ("bias", m.bias is not None), ("padding_mode", m.padding_mode))
    return OpShape(type(m), m.in_channels, m.out_channels, depthwise, opts, tuple(input_shape))


def _linear_shape(m: nn.Module, input_shape: tuple[int, ...]) -> OpShape | None:
    return OpShape(nn.Linear, m.in_features, m.out_features, False, (("bias", m.bias is not None),),
                   tuple(input_shape))


ShapeOf = Callable[[nn.Module, tuple[int, ...]], "OpShape | None"]
OP_SHAPES: Registry[type, ShapeOf] = Registry("latency-table shapes", describe=qualified_name)


def register_latency_shape(*types: type, override: bool = False) -> Callable[[ShapeOf], ShapeOf]:
    """Register `shape_of(module, input_shape) -> OpShape | None` for module classes: the latency table times
    such a layer alone over a grid of (in, out) widths. Layers without one are scaled by their FLOPs."""
    def deco(fn: ShapeOf) -> ShapeOf:
        for t in types:
            OP_SHAPES.register(t, fn, override=override)
        return fn
    return deco


register_latency_shape(nn.Conv1d, nn.Conv2d, nn.Conv3d)(_conv_shape)
register_latency_shape(nn.Linear)(_linear_shape)


def grid_widths(size: int, points: int) -> list[int]:
    """`points` widths spread evenly up to `size` (the dense width always included).

    >>> grid_widths(16, 4)
    [4, 8, 12, 16]
    """
    return sorted({max(1, -(-size * k // points)) for k in range(1, points + 1)})


@dataclass
class _Table:
    op: OpShape
    in_arr: np.ndarray | None
    out_arr: np.ndarray | None
    in_grid: list[int]
    out_grid: list[int]
    values: np.ndarray  # ms, [len(in_grid), len(out_grid)]

    def widths(self, ctx: Survivors | None) -> tuple[int, int]:
        c_out = self.op.out_ch if ctx is None or self.out_arr is None else ctx.alive_count(self.out_arr)
        c_in = self.op.in_ch if ctx is None or self.in_arr is None else ctx.alive_count(self.in_arr)
        return (c_out, c_out) if self.op.depthwise else (c_in, c_out)

    def __call__(self, ctx: Survivors | None) -> float:
        c_in, c_out = self.widths(ctx)
        rows = [np.interp(c_out, self.out_grid, row) for row in self.values]
        return float(np.interp(c_in, self.in_grid, rows))


Term = tuple[float, list[np.ndarray]]  # (dense milliseconds, arrays whose kept fractions scale it)


@dataclass
class LatencyModel:
    """Predicted latency (ms) of one analysed graph under a keep decision; see the module docstring."""

    tables: list[_Table] = field(default_factory=list)
    scaled: list[Term] = field(default_factory=list)
    fixed_ms: float = 0.0
    dense_measured_ms: float = 0.0
    measurements: int = 0  # layer measurements taken (not from the cache) while building

    def latency(self, ctx: Survivors | None) -> float:
        tables = sum(t(ctx) for t in self.tables)
        return tables + sum(ms * _fraction(ctx, arrs) for ms, arrs in self.scaled) + self.fixed_ms

    def linear_terms(self) -> tuple[list[Term], float]:
        """First-order terms (dense ms of each table times its width fractions) and the constant part."""
        tables = [(float(t.values[-1, -1]), [a for a in (t.in_arr, t.out_arr) if a is not None])
                  for t in self.tables]
        return tables + list(self.scaled), self.fixed_ms

    @classmethod
    def build(cls, gm: fx.GraphModule, ga: GraphAnalysis, example_inputs: tuple, target: Target) -> LatencyModel:
        """Measure the layers of `gm` (traced by fxprune, shapes propagated) and the whole model on `target`."""
        store = _Store(target.cache_path("layers"))
        model = cls()
        modules = dict(gm.named_modules())
        flop_nodes, memory_nodes = [], []
        for node in gm.graph.nodes:
            op = _op_shape(node, modules)
            if op is not None:
                model.tables.append(_measure_table(op, _weight_dims(ga, node), target, store))
            elif flops_of(node):
                flop_nodes.append(node)
            elif node.op in ("call_module", "call_function", "call_method"):
                memory_nodes.append(node)
        store.save()
        model.measurements = store.taken
        model.dense_measured_ms = target.time(gm, example_inputs)
        model._spread_rest(ga, flop_nodes, memory_nodes, gm)
        return model

    def _spread_rest(self, ga: GraphAnalysis, flop_nodes: list[fx.Node], memory_nodes: list[fx.Node],
                     gm: fx.GraphModule) -> None:
        rest = max(0.0, self.dense_measured_ms - sum(t(None) for t in self.tables))
        table_flops = sum(flops_of(n) for n in gm.graph.nodes) - sum(
            flops_of(n) for n in flop_nodes)
        table_ms = sum(t(None) for t in self.tables)
        per_flop = table_ms / table_flops if table_flops and table_ms else None
        for node in flop_nodes:
            flops = flops_of(node)
            ms = min(rest, flops * per_flop) if per_flop else rest * flops / max(1, _total_flops(flop_nodes))
            self.scaled.append((ms, _output_dims(ga, node)))
        rest -= sum(ms for ms, _ in self.scaled)
        sizes = [(_numel(n), _output_dims(ga, n)) for n in memory_nodes]
        total = sum(s for s, _ in sizes)
        for numel, dims in sizes:
            share = rest * numel / total if total else 0.0
            if dims:
                self.scaled.append((share, dims))
            else:
                self.fixed_ms += share
        if not total:
            self.fixed_ms += max(0.0, rest)


def _op_shape(node: fx.Node, modules: dict[str, nn.Module]) -> OpShape | None:
    if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    module = modules.get(node.target)
    make = OP_SHAPES.get(type(module))
    shape = shape_of(node.args[0])
    return make(module, tuple(shape)) if make and isinstance(shape, tuple) else None


def _weight_dims(ga: GraphAnalysis, node: fx.Node) -> tuple[np.ndarray | None, np.ndarray | None]:
    dims = ga.analysis.params.get(f"{node.target}.weight", {})
    return dims.get(1), dims.get(0)


def _output_dims(ga: GraphAnalysis, node: fx.Node) -> list[np.ndarray]:
    out = ga.analysis.values.get(node.name)
    return list(out.dims.values()) if hasattr(out, "dims") else []


def _numel(node: fx.Node) -> int:
    shape = shape_of(node)
    return int(np.prod(shape)) if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape) else 0


def _total_flops(nodes: list[fx.Node]) -> int:
    return sum(flops_of(n) for n in nodes)


def _fraction(ctx: Survivors | None, arrs: list[np.ndarray]) -> float:
    out = 1.0
    for arr in arrs if ctx is not None else ():
        out *= ctx.alive_fraction(arr)
    return out


def _measure_table(op: OpShape, dims: tuple, target: Target, store: _Store) -> _Table:
    in_arr, out_arr = dims
    in_grid = [op.out_ch] if op.depthwise else _grid(op.in_ch, in_arr, target.points)
    out_grid = _grid(op.out_ch, out_arr, target.points)
    values = np.array([[store.get(op, ci, co, target) for co in out_grid] for ci in in_grid])
    return _Table(op, in_arr, out_arr, in_grid, out_grid, values)


def _grid(size: int, arr: np.ndarray | None, points: int) -> list[int]:
    return grid_widths(size, points) if arr is not None else [size]


class _Store:
    """Layer measurements, read from and written to one JSON file per target (atomically)."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.taken = path, 0
        self.values: dict[str, float] = {}
        if path is not None and path.exists():
            try:
                self.values = json.loads(path.read_text())
            except (OSError, ValueError):
                self.values = {}  # a damaged cache is measured anew

    def get(self, op: OpShape, c_in: int, c_out: int, target: Target) -> float:
        key = f"{op.key}|{c_in}|{c_out}"
        if key not in self.values:
            module, inputs = op.build(c_in, c_out)
            self.values[key] = target.time(module.eval(), inputs)
            self.taken += 1
        return self.values[key]

    def save(self) -> None:
        if self.path is None or not self.taken:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.values, f)
        os.replace(tmp, self.path)
