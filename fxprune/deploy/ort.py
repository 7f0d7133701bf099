"""Run a module with ONNX Runtime on the CPU: a tuned InferenceSession, and a torch-facing wrapper.

The module's BatchNorms are folded first (fxprune.deploy.fold), then it is exported with fxprune.export's
ONNX path (TorchScript-based exporter, the dynamo exporter as fallback, ``onnx.checker``). The session uses
every graph optimisation ONNX Runtime has (``ORT_ENABLE_ALL``: constant folding, node fusions, layout
changes), `threads` intra-op threads, one inter-op thread and sequential execution -- the settings that
are fastest for one small-batch request at a time. The export is static: the session takes the example
inputs' shapes only.

onnxruntime is imported inside the functions that need it: importing fxprune never imports it.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from fxprune.deploy.export import onnx_feeds, export
from fxprune.tracing.tracer import as_input_tuple
from fxprune.deploy.fold import fold_batchnorm

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["OrtModule", "ort_session"]


def ort_session(module: nn.Module, example_inputs: Any, threads: int = 2, path: str | Path | None = None, *,
                fold_bn: bool = True, check: bool = True) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU InferenceSession computing what `module` computes on inputs shaped like
    `example_inputs`.

    The ONNX file is written to `path` (kept) or to a temporary directory (deleted once the session has
    loaded it). With `check=True` fxprune.export checks the file against the (folded) module and raises
    ExportParityError on a mismatch. `module` is not changed.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU()).eval()
    >>> session = ort_session(net, torch.randn(2, 4), threads=1)
    >>> [i.name for i in session.get_inputs()]
    ['input_0']
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}.")
    inputs = as_input_tuple(example_inputs)
    model = _eval_copy(module)
    model = fold_batchnorm(model, inputs) if fold_bn else model
    if path is not None:
        return _session(export(model, inputs, path, check=check), threads)
    with tempfile.TemporaryDirectory(prefix="fxprune-ort-") as tmp:
        return _session(export(model, inputs, Path(tmp) / "model.onnx", check=check), threads)


def _eval_copy(module: nn.Module) -> nn.Module:
    """An eval-mode deep copy: ONNX records inference behaviour, and the caller's module stays as it is."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
    return copy.deepcopy(module).eval()


def _session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtModule(nn.Module):
    """An onnxruntime session called like the torch module it was exported from: torch tensors in (any
    device; floating ones are cast to the dtype the session wants), CPU torch tensors out, nested like the
    module's outputs when `output_spec` (a pytree spec of them) is given.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    >>> x = torch.randn(1, 3, 8, 8)
    >>> ort_net = OrtModule.from_module(net, x, threads=1)
    >>> torch.allclose(ort_net(x), net(x), atol=1e-5)
    True
    """

    def __init__(self, session: onnxruntime.InferenceSession, output_spec: TreeSpec | None = None) -> None:
        super().__init__()
        self.session = session
        self.output_spec = output_spec
        self._inputs = session.get_inputs()

    @classmethod
    def from_module(cls, module: nn.Module, example_inputs: Any, threads: int = 2,
                    path: str | Path | None = None, *, fold_bn: bool = True) -> OrtModule:
        """`ort_session` of `module` (not checked: callers compare with their own reference), wrapped;
        outputs come back nested as `module`'s do."""
        inputs = as_input_tuple(example_inputs)
        model = _eval_copy(module)
        with torch.no_grad():
            leaves, spec = tree_flatten(model(*inputs))
        spec = spec if all(isinstance(t, torch.Tensor) for t in leaves) else None
        return cls(ort_session(model, inputs, threads, path, fold_bn=fold_bn, check=False), spec)

    def forward(self, *inputs: torch.Tensor) -> Any:
        self._check(inputs)
        feeds = onnx_feeds([i.name for i in self._inputs], tuple(self._cast(t, i) for t, i in
                                                                  zip(inputs, self._inputs)))
        outputs = [torch.from_numpy(a) for a in self.session.run(None, feeds)]
        if self.output_spec is not None and self.output_spec.num_leaves == len(outputs):
            return tree_unflatten(outputs, self.output_spec)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _check(self, inputs: tuple[Any, ...]) -> None:
        want = [tuple(i.shape) for i in self._inputs]
        got = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in inputs]
        fits = len(got) == len(want) and all(
            isinstance(g, tuple) and len(g) == len(w) and all(not isinstance(d, int) or d == s for d, s in zip(w, g))
            for g, w in zip(got, want))
        if not fits:
            raise ValueError(f"this ONNX Runtime session was exported for input shapes {want} and takes those "
                             f"only; got {got}. Build it again from an example of the new shape.")

    @staticmethod
    def _cast(t: torch.Tensor, spec: Any) -> torch.Tensor:
        t = t.detach().cpu()
        wanted = _ORT_FLOATS.get(spec.type)
        return t.to(wanted) if wanted is not None and t.is_floating_point() else t


_ORT_FLOATS = {"tensor(float)": torch.float32, "tensor(double)": torch.float64, "tensor(float16)": torch.float16}
