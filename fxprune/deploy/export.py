"""Save a (pruned) model as ONNX, TorchScript or a torch.export program, and check the file computes what
the module computes.

The file suffix picks the format, and each format uses the exporter that is most robust for it:

* ``.onnx`` -- ``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``) first. It records
  the ops a forward pass actually runs, so it handles any torch.fx GraphModule fxprune produces and behaves
  the same on every torch from 2.4 on. When the installed torch has dropped it, or it fails on the model,
  the torch.export-based ("dynamo") exporter is used instead (``torch.onnx.dynamo_export`` on torch 2.4).
  The file is validated with ``onnx.checker`` and, with ``check=True``, run with onnxruntime on the CPU.
* ``.pt`` -- TorchScript via ``torch.jit.trace``: fx GraphModules are straight-line Python, which tracing
  captures exactly. ``torch.jit.script`` is the fallback for modules tracing rejects. Reloaded with
  ``torch.jit.load``.
* ``.pt2`` -- ``torch.export.export`` + ``torch.export.save``, PyTorch's current whole-graph format, reloaded
  with ``torch.export.load(...).module()``. torch.export cannot serialise namedtuple outputs of classes
  nobody registered with it, so such outputs are saved as plain tuples (as TorchScript and ONNX do anyway).

onnx and onnxruntime are imported only inside the functions that need them: importing fxprune never
imports them.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from fxprune.errors import ExportParityError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["export", "onnx_session_outputs", "DEFAULT_OPSET"]

log = logging.getLogger(__name__)

Inputs = tuple[torch.Tensor, ...]

DEFAULT_OPSET = 17  # TorchScript-based ONNX exporter: supported by onnxruntime >= 1.14 and every torch >= 2.4
DYNAMO_DEFAULT_OPSET = 18  # the dynamo exporter translates to opset 18 natively; lower ones need a conversion
_TINY = 1e-12  # floor of ||reference|| in the relative error, so all-zero outputs do not divide by zero
_EXTERNAL_DATA_BYTES = 1 << 30  # weights above this go to a side file (ONNX protobufs stop at 2 GiB)


class _Format(NamedTuple):
    """How one file format is written and read back."""

    name: str
    save: Callable[[nn.Module, Inputs, Path, int | None], None]
    run: Callable[[Path, Inputs], Any]


def export(module: nn.Module, example_inputs: Any, path: str | Path, *, check: bool = True,
           rtol: float = 1e-3, atol: float = 1e-5, opset: int | None = None) -> Path:
    """Save `module` to `path` in the format its suffix names (``.onnx``, ``.pt`` or ``.pt2``).

    The module is exported in eval mode from a deep copy, so the caller's module (its weights, buffers and
    train/eval flags) is never changed. With `check=True` the saved file is loaded back, run on
    `example_inputs` and compared with the module's outputs: every output tensor must satisfy
    ``||exported - torch|| / ||torch|| <= rtol`` or ``max|exported - torch| <= atol``, otherwise
    `ExportParityError` is raised (the file is left on disk for inspection). `opset` is used by ONNX only
    (default 17, or 18 when the dynamo exporter has to be used).

    >>> import pathlib, tempfile, torch
    >>> from torch import nn
    >>> from fxprune.deploy.export import export
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     saved = export(net, torch.randn(2, 4), pathlib.Path(tmp) / "net.onnx")
    ...     print(saved.name, saved.exists())
    net.onnx True
    """
    inputs = _as_inputs(example_inputs)
    path = Path(path)
    fmt = _format_for(path)
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
    with _eval_copy(module) as model:
        expected = _run_torch(model, inputs) if check else None
        path.parent.mkdir(parents=True, exist_ok=True)
        with _quiet():
            fmt.save(model, inputs, path, opset)
    if check:
        with _quiet():
            actual = fmt.run(path, inputs)
        _check_parity(fmt.name, path, expected, actual, rtol, atol)
    return path


def onnx_session_outputs(path: str | Path, example_inputs: Any) -> list[np.ndarray]:
    """Run the ONNX file at `path` with onnxruntime (CPUExecutionProvider) and return its outputs.

    Inputs are matched by the names `export` gives them (``input_0``, ``input_1``, ...) and otherwise by
    position, so files from other exporters work too.
    """
    import onnxruntime as ort

    inputs = _as_inputs(example_inputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return list(session.run(None, onnx_feeds([i.name for i in session.get_inputs()], inputs)))


# ---------------------------------------------------------------------------------------------- helpers


def _as_inputs(example_inputs: Any) -> Inputs:
    """A tensor or a tuple of tensors -> tuple of tensors; anything else is a TypeError."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, tuple) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return example_inputs
    got = type(example_inputs).__name__
    if isinstance(example_inputs, tuple):
        got = "tuple of (" + ", ".join(type(t).__name__ for t in example_inputs) + ")"
    raise TypeError(f"example_inputs must be a torch.Tensor or a tuple of torch.Tensors, got {got}. "
                    f"Pass e.g. torch.randn(1, 3, 224, 224), or (x, y) for a model with two inputs.")


def _format_for(path: Path) -> _Format:
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"cannot tell the export format of '{path}': its suffix '{path.suffix}' is not one of "
                         f"{', '.join(_FORMATS)}. Use .onnx for ONNX, .pt for TorchScript or .pt2 for "
                         f"torch.export.") from None


@contextlib.contextmanager
def _eval_copy(module: nn.Module) -> Iterator[nn.Module]:
    """Yield an eval-mode deep copy of `module`; restore every train/eval flag of `module` afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        model = copy.deepcopy(module)
    except Exception:  # noqa: BLE001 -- an uncopyable attribute: export in place, flags restored below
        log.debug("deepcopy of %s failed; exporting it in place", type(module).__name__, exc_info=True)
        model = module
    try:
        yield model.eval()
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter warnings (TracerWarning, deprecations, 'legacy exporter' notices)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _run_torch(model: nn.Module, inputs: Inputs) -> Any:
    with torch.no_grad():
        return model(*inputs)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------- ONNX


def _save_onnx(model: nn.Module, inputs: Inputs, path: Path, opset: int | None) -> None:
    """TorchScript-based exporter first, dynamo exporter if that fails; the result must pass onnx.checker."""
    import onnx

    failures: list[str] = []
    last: Exception | None = None
    for exporter in (_onnx_torchscript, _onnx_dynamo):
        try:
            exporter(model, inputs, path, opset)
            onnx.checker.check_model(str(path))
            log.debug("ONNX export of %s used %s", type(model).__name__, exporter.__name__)
            return
        except Exception as exc:  # noqa: BLE001 -- try the next exporter, report all failures below
            failures.append(f"{exporter.__name__}: {type(exc).__name__}: {exc}")
            last = exc
    raise RuntimeError(f"ONNX export of {type(model).__name__} failed with both exporters:\n"
                       + "\n".join(failures)) from last


def _onnx_input_names(inputs: Inputs) -> list[str]:
    return [f"input_{i}" for i in range(len(inputs))]


def _onnx_torchscript(model: nn.Module, inputs: Inputs, path: Path, opset: int | None) -> None:
    """The TorchScript-based exporter (the only one on torch 2.4, `dynamo=False` from torch 2.5 on)."""
    extra = {"dynamo": False} if _accepts(torch.onnx.export, "dynamo") else {}
    torch.onnx.export(model, inputs, str(path), input_names=_onnx_input_names(inputs),
                      opset_version=opset or DEFAULT_OPSET, do_constant_folding=True, **extra)


def _onnx_dynamo(model: nn.Module, inputs: Inputs, path: Path, opset: int | None) -> None:
    """The torch.export-based exporter (`dynamo=True` from torch 2.5, `torch.onnx.dynamo_export` before)."""
    if not _accepts(torch.onnx.export, "dynamo"):
        torch.onnx.dynamo_export(model, *inputs).save(str(path))
        return
    extra: dict[str, Any] = {}
    if _accepts(torch.onnx.export, "external_data"):  # small models in one file, no "<name>.onnx.data"
        n_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        extra["external_data"] = n_bytes > _EXTERNAL_DATA_BYTES
    torch.onnx.export(model, inputs, str(path), dynamo=True, input_names=_onnx_input_names(inputs),
                      opset_version=opset or DYNAMO_DEFAULT_OPSET, verbose=False, **extra)


def onnx_feeds(names: list[str], inputs: Inputs) -> dict[str, np.ndarray]:
    arrays = {name: t.detach().cpu().numpy() for name, t in zip(_onnx_input_names(inputs), inputs)}
    if all(name in arrays for name in names):
        return {name: arrays[name] for name in names}
    if len(names) != len(inputs):
        raise ValueError(f"the ONNX model takes {len(names)} inputs ({', '.join(names)}) but "
                         f"{len(inputs)} example inputs were given.")
    return dict(zip(names, arrays.values()))


# ----------------------------------------------------------------------------------- TorchScript, .pt2


def _save_torchscript(model: nn.Module, inputs: Inputs, path: Path, opset: int | None) -> None:
    """torch.jit.trace (strict=False lets dict/list outputs through); torch.jit.script if tracing fails."""
    try:
        scripted = torch.jit.trace(model, inputs, strict=False, check_trace=False)
    except Exception:  # noqa: BLE001 -- scripting handles some modules tracing cannot
        log.debug("torch.jit.trace failed on %s; scripting it", type(model).__name__, exc_info=True)
        scripted = torch.jit.script(model)
    torch.jit.save(scripted, str(path))


def _run_torchscript(path: Path, inputs: Inputs) -> Any:
    with torch.no_grad():
        return torch.jit.load(str(path))(*inputs)


class _PlainOutputs(nn.Module):
    """Wraps a module so its namedtuple outputs become plain tuples (torch.export can serialise those)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any) -> Any:
        return _plain(self.inner(*args))


def _plain(tree: Any) -> Any:
    if isinstance(tree, tuple):  # namedtuples included: tuple(...) drops the field names
        return tuple(_plain(x) for x in tree)
    if isinstance(tree, list):
        return [_plain(x) for x in tree]
    if isinstance(tree, dict):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def _has_namedtuple(tree: Any) -> bool:
    if isinstance(tree, tuple) and hasattr(type(tree), "_fields"):
        return True
    children = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (tuple, list)) else ()
    return any(_has_namedtuple(x) for x in children)


def _save_exported(model: nn.Module, inputs: Inputs, path: Path, opset: int | None) -> None:
    """torch.export.export + torch.export.save; namedtuple outputs are saved as plain tuples."""
    if _has_namedtuple(_run_torch(model, inputs)):
        model = _PlainOutputs(model)
    torch.export.save(torch.export.export(model, inputs), str(path))


def _run_exported(path: Path, inputs: Inputs) -> Any:
    with torch.no_grad():
        return torch.export.load(str(path)).module()(*inputs)


_FORMATS: dict[str, _Format] = {
    ".onnx": _Format("ONNX", _save_onnx, onnx_session_outputs),
    ".pt": _Format("TorchScript", _save_torchscript, _run_torchscript),
    ".pt2": _Format("torch.export", _save_exported, _run_exported),
}


# ----------------------------------------------------------------------------------------------- parity


def _leaves(outputs: Any) -> list[np.ndarray]:
    """The tensors (and arrays) of a nested output, in pytree order, as float64 arrays."""
    import numpy as np

    arrays = []
    for leaf in tree_flatten(outputs)[0]:
        if isinstance(leaf, torch.Tensor):
            leaf = leaf.detach().cpu().resolve_conj()
            leaf = (leaf if leaf.is_complex() else leaf.to(torch.float64)).numpy()
        if isinstance(leaf, np.ndarray):
            arrays.append(leaf if np.iscomplexobj(leaf) else leaf.astype(np.float64))
    return arrays


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """||actual - expected|| / max(||expected||, tiny) (Frobenius norms)."""
    import numpy as np

    return float(np.linalg.norm(actual - expected) / max(float(np.linalg.norm(expected)), _TINY))


def _check_parity(fmt: str, path: Path, expected: Any, actual: Any, rtol: float, atol: float) -> None:
    """Raise ExportParityError unless every exported output matches the torch output."""
    import numpy as np

    want, got = _leaves(expected), _leaves(actual)
    hint = f"The file is at {path}; pass check=False to skip this check."
    if len(got) != len(want):
        raise ExportParityError(f"the {fmt} export returns {len(got)} output tensors but the torch module "
                                f"returns {len(want)}. {hint}")
    for i, (a, b) in enumerate(zip(got, want)):
        if a.shape != b.shape:
            raise ExportParityError(f"{fmt} export output {i} has shape {tuple(a.shape)} but the torch module's "
                                    f"has shape {tuple(b.shape)}. {hint}")
        if np.array_equal(a, b, equal_nan=True):
            continue
        err, diff = _relative_error(a, b), float(np.max(np.abs(a - b)))
        if not (err <= rtol or diff <= atol):
            raise ExportParityError(
                f"{fmt} export output {i} differs from the torch module: relative error {err:.3g} > rtol "
                f"{rtol:g} and max abs diff {diff:.3g} > atol {atol:g}. If the difference is expected, loosen "
                f"rtol/atol; {hint}")
