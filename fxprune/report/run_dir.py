"""Run directories: everything one pruning run produced, saved as data, and the slim model rebuilt from it.

A run directory holds ``plan.json`` (the PruningPlan), ``report.txt`` / ``report.json`` (the Report),
``slim.safetensors`` (the slim model's weights), ``run.json`` (model spec, input size, training history,
date, fxprune version, command line) and the exports (``slim.onnx``, ``slim.pt``, ``slim.pt2``).

`load` rebuilds the slim model from JSON and safetensors only: nothing is unpickled, so a run directory
from someone else is as safe to load as the architecture you construct for it.

>>> import tempfile, torch, torchvision, fxprune
>>> from fxprune.report.run_dir import save_run
>>> x = torch.randn(1, 3, 64, 64)
>>> res = fxprune.prune(torchvision.models.resnet18(weights=None).eval(), x, flops=0.5)
>>> with tempfile.TemporaryDirectory() as tmp:
...     files = save_run(res, x, tmp, exports=())
...     slim = fxprune.load(tmp, torchvision.models.resnet18(weights=None))
...     print(sorted(files), torch.equal(slim.eval()(x), res.model.eval()(x)))
['plan', 'report', 'report_json', 'run', 'weights'] True
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from fxprune.api import apply_plan
from fxprune.deploy.export import export
from fxprune.errors import RunDirError
from fxprune.stages import __version__
from fxprune.types import PruningPlan

RUN_FORMAT = 1
FILES = {"plan": "plan.json", "report": "report.txt", "report_json": "report.json", "weights": "slim.safetensors",
         "run": "run.json"}
EXPORT_FILES = {"onnx": "slim.onnx", "torchscript": "slim.pt", "pt2": "slim.pt2"}  # --export NAME -> file

__all__ = ["EXPORT_FILES", "FILES", "check_run_dir", "load", "load_run_info", "run_inputs", "save_run",
           "update_run_info"]


def save_run(result: Any, example_inputs: Any, out_dir: str | Path, *, model_spec: str | None = None,
             command: str | None = None, exports: Iterable[str] = ("onnx",)) -> dict[str, Path]:
    """Write the run directory of a PruneResult under `out_dir` and return {name: path} of what was written.

    `exports` names formats of `EXPORT_FILES` ("onnx", "torchscript", "pt2"); each file is parity-checked
    against the slim model by `fxprune.export`. `model_spec` and `command` are recorded in run.json so the
    CLI can rebuild the model later (`fxprune export RUN`, `fxprune bench RUN`).
    """
    exports = list(exports)
    unknown = [e for e in exports if e not in EXPORT_FILES]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; use any of {', '.join(EXPORT_FILES)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / n for k, n in FILES.items()}
    model, inputs = _on_cpu(result.model), _cpu_inputs(example_inputs)
    result.plan.save(paths["plan"])
    paths["report"].write_text(str(result.report) + "\n")
    paths["report_json"].write_text(json.dumps(result.report.to_dict(), indent=1) + "\n")
    _save_weights(model, paths["weights"])
    history = [h.to_dict() for h in getattr(result, "history", None) or []]
    _write_json(paths["run"], {**_input_fields(inputs), "model": model_spec, "history": history,
                               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "fxprune": __version__, "command": command, "format": RUN_FORMAT})
    for name in exports:
        paths[name] = out / EXPORT_FILES[name]
        export(model, inputs[0] if len(inputs) == 1 else inputs, paths[name])
    return paths


def load(run_dir: str | Path, model: nn.Module, example_inputs: Any = None) -> fx.GraphModule:
    """Rebuild the slim model of a run directory on a freshly constructed `model` (the dense architecture).

    The plan is applied to `model` (traced on `example_inputs`, default: random inputs of the run's input
    size), then the slim weights are loaded from ``slim.safetensors`` with strict key and shape checks. Only
    JSON and safetensors are read: nothing is unpickled. Parameters keep `model`'s dtype and device.
    """
    run_dir = check_run_dir(run_dir, "plan", "weights")
    inputs = run_inputs(run_dir) if example_inputs is None else example_inputs
    slim = apply_plan(model, inputs, PruningPlan.load(run_dir / FILES["plan"]))
    state = _read_weights(run_dir / FILES["weights"])
    _check_state(slim, state, run_dir / FILES["weights"])
    slim.load_state_dict(state, strict=True)
    return slim


def load_run_info(run_dir: str | Path) -> dict[str, Any]:
    """The contents of ``run.json`` (an empty dict when the directory has none)."""
    path = Path(run_dir) / FILES["run"]
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is not valid JSON ({e}); fix or delete it.") from e


def update_run_info(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into ``run.json`` (created when missing) and return the new contents."""
    info = {**load_run_info(run_dir), **fields}
    _write_json(Path(run_dir) / FILES["run"], info)
    return info


def run_inputs(run_dir: str | Path, batch: int = 1) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Random example inputs of the shapes recorded in ``run.json``, with batch size `batch`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = update_run_info(tmp, input_size=[3, 8, 8])
    ...     tuple(run_inputs(tmp, batch=2).shape)
    (2, 3, 8, 8)
    """
    info = load_run_info(run_dir)
    sizes = info.get("input_sizes") or ([info["input_size"]] if info.get("input_size") else None)
    if not sizes:
        raise RunDirError(f"{Path(run_dir) / FILES['run']} is missing or records no input_size, so example "
                          f"inputs cannot be built; pass example_inputs (e.g. torch.randn(1, 3, 224, 224)).")
    tensors = tuple(torch.randn(batch, *s) for s in sizes)
    return tensors[0] if len(tensors) == 1 else tensors


def check_run_dir(run_dir: str | Path, *needed: str) -> Path:
    """`run_dir` as a Path; RunDirError naming the missing files among `needed` (keys of FILES)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"'{path}' is not a run directory (no such directory); write one with "
                          f"`fxprune prune ... --out DIR` or fxprune.report.run_dir.save_run.")
    missing = [FILES[k] for k in needed if not (path / FILES[k]).is_file()]
    if missing:
        raise RunDirError(f"'{path}' is not a complete run directory: {' and '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} missing; write "
                          f"it with `fxprune prune ... --out DIR` or fxprune.report.run_dir.save_run.")
    return path


# ---------------------------------------------------------------------------------------------- helpers


def _on_cpu(model: nn.Module) -> nn.Module:
    """`model` itself when it is on the CPU already, else a CPU copy (the caller's model stays put)."""
    import copy

    on_cpu = all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    return model if on_cpu else copy.deepcopy(model).cpu()


def _cpu_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("example_inputs must be a tensor or a tuple of tensors, e.g. torch.randn(1, 3, 224, 224).")
    return tuple(t.detach().cpu() for t in inputs)


def _input_fields(inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    sizes = [list(t.shape[1:]) for t in inputs]
    return {"input_size": sizes[0]} if len(sizes) == 1 else {"input_size": sizes[0], "input_sizes": sizes}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def _save_weights(model: nn.Module, path: Path) -> None:
    """The state_dict as safetensors: contiguous CPU tensors, each storage written once (tied weights are
    saved under every name, as copies, so load_state_dict(strict=True) finds all keys)."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    tensors = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        tensors[name] = t.clone() if ptr in seen or t.numel() * t.element_size() < t.untyped_storage().nbytes() else t
        seen.add(ptr)
    save_file(tensors, str(path), metadata={"format": "fxprune-slim", "fxprune": __version__})


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error type for every kind of damage
        raise RunDirError(f"{path} cannot be read as safetensors ({type(e).__name__}: {e}); the file is "
                          f"truncated or not a safetensors file. Write the run again with save_run.") from e


def _check_state(slim: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise RunDirError naming the keys and shapes in which the saved weights differ from the slim model."""
    want = {k: tuple(v.shape) for k, v in slim.state_dict().items()}
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {want[k]}" for k in sorted(set(want) & set(state))
              if tuple(state[k].shape) != want[k]]
    if not (missing or extra or shapes):
        return
    parts = [f"{label} {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
             for label, items in (("missing keys", missing), ("unexpected keys", extra),
                                  ("shape mismatches", shapes)) if items]
    raise RunDirError(f"the weights in {path} do not fit the slim model rebuilt from the plan ({'; '.join(parts)})."
                      f" The weights were saved from another model or edited; write the run again with save_run.")
