"""`optimize`: a module made ready for inference -- BatchNorm folded, moved, cast, laid out, run by the fastest
runtime -- and checked against the original in float32.

Steps, all on a deep copy (the caller's module and inputs are never changed, even when a step fails):

1. ``eval()``; fold every foldable BatchNorm into its conv / linear (fxprune.deploy.fold, ``fold_bn=True``);
2. move to `device`; cast weights to `dtype` (default: bfloat16 on CUDA, float32 on the CPU); inputs are
   cast inside the wrapper, outputs come back in the dtype the model produces;
3. channels_last memory format (default: on for CUDA when an input is 4-D, off on the CPU);
4. run with a runtime from fxprune.deploy.modes.MODES: ``eager``, ``cuda_graph`` (CUDA only), ``compile``,
   or ``onnxruntime`` (CPU only, ``runtime="onnxruntime"``). ``mode="auto"`` builds every torch runtime the
   device has, times each (warm-up, then the median), and keeps the fastest that passes the parity check.
   A runtime that fails to build (torch.compile without a compiler, a forward CUDA graphs cannot capture)
   is recorded in ``errors`` and skipped; a mode asked for by name falls back to ``eager`` with a warning.
5. parity (``check=True``): the outputs on `example_inputs` are compared with the original module's,
   computed in float32 on the same device (TF32 off); a mismatch beyond rtol / atol is a DeployParityError.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from fxprune.errors import DeployParityError
from fxprune.deploy.timing import check_device
from fxprune.tracing.tracer import as_input_tuple
from fxprune.deploy.fold import fold_batchnorm
from fxprune.deploy.modes import MODES, Inputs, Runner, Setup, median_ms, timing_step
from fxprune.deploy.parity import Parity, check_parity, default_tolerances, measure_parity

__all__ = ["Optimized", "optimize"]

_DEFAULT_DTYPE = {"cpu": torch.float32, "cuda": torch.bfloat16}
_RUNTIME_MODES = {"torch": None, "onnxruntime": "onnxruntime"}  # runtime -> the mode it forces


class Optimized(nn.Module):
    """An optimised model, called like the original. Inference only (calls run under inference_mode).

    Attributes: ``mode`` (the runtime that runs it), ``dtype``, ``device``, ``channels_last``, ``parity``
    (`Parity` against the original module in float32, None with ``check=False``), ``timings_ms`` (median ms
    of every mode timed by ``mode="auto"``), ``errors`` (mode -> why it was not used) and ``module`` (the
    prepared module: BN folded, moved, cast; an OrtModule for onnxruntime).
    """

    def __init__(self, module: nn.Module, runner: Runner, *, mode: str, setup: Setup, parity: Parity | None,
                 timings_ms: dict[str, float], errors: dict[str, str]) -> None:
        super().__init__()
        self.module = module
        object.__setattr__(self, "_runner", runner)  # not a submodule: a compiled wrapper shares module's weights
        self.mode, self.dtype, self.device = mode, setup.dtype, setup.device
        self.channels_last = setup.channels_last
        self.parity, self.timings_ms, self.errors = parity, timings_ms, errors

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self._runner(*inputs)

    def timing_step(self, *inputs: torch.Tensor) -> Callable[[], Any]:
        """A zero-argument callable that runs the forward pass on `inputs` without the per-call input handling
        (cast / memory format / copy into a CUDA graph's buffers) and output copy: what to time when the
        compute alone matters, e.g. one layer of a latency table.

        >>> import torch
        >>> fast = optimize(torch.nn.Linear(4, 2), torch.randn(1, 4), "cpu", mode="eager")
        >>> fast.timing_step(torch.randn(1, 4))().shape
        torch.Size([1, 2])
        """
        return timing_step(self._runner, tuple(inputs))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, device={self.device}, dtype={self.dtype}, parity={self.parity}"


@dataclasses.dataclass
class _Trial:
    """One mode built (or not), checked and maybe timed."""

    mode: str
    runner: Runner | None = None
    parity: Parity | None = None
    ms: float | None = None
    error: str | None = None
    parity_failed: bool = False


def optimize(module: nn.Module, example_inputs: Any, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None, *, mode: str = "auto", runtime: str = "torch",
             fold_bn: bool = True, channels_last: bool | None = None, check: bool = True,
             atol: float | None = None, rtol: float | None = None, warmup: int = 5, repeats: int = 20,
             compile_mode: str | None = None, ort_threads: int = 2, cudnn_benchmark: bool = True) -> Optimized:
    """`module` prepared for inference on `device` and run by the runtime `mode` names (see the module
    docstring for every step).

    `example_inputs` (a tensor or a tuple of tensors, batch included) is what the modes are built, checked
    and timed on; ``cuda_graph`` and ``onnxruntime`` accept these shapes only. `rtol` / `atol` default by
    dtype (float32: 1e-4 / 1e-5; bfloat16 and float16: 2e-2 / 1e-3; float32 with TF32 on CUDA: 5e-3 /
    1e-4). `compile_mode` is torch.compile's ``mode`` (None: its default; ``"max-autotune-no-cudagraphs"``
    tunes kernels, slow to compile; ``"reduce-overhead"`` adds CUDA graphs). `ort_threads` is the
    onnxruntime session's intra-op thread count. `cudnn_benchmark` (CUDA) lets cuDNN time its convolution
    algorithms for each shape while the model runs (the global flag is set around each call and restored).

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    >>> x = torch.randn(1, 3, 16, 16)
    >>> fast = optimize(net, x, "cpu", mode="eager")
    >>> fast.mode, fast.dtype, fast.parity.relative_error < 1e-4
    ('eager', torch.float32, True)
    >>> torch.allclose(fast(x), net(x), atol=1e-5)
    True
    """
    inputs = as_input_tuple(example_inputs)
    dev = check_device(device)
    names = _modes_to_try(mode, runtime, dev)
    dtype = _resolve_dtype(dtype, dev, names)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}.")
    setup = Setup(dev, dtype, _use_channels_last(channels_last, dev, inputs), compile_mode, ort_threads,
                  cudnn_benchmark and dev.type == "cuda")
    expected = _reference_outputs(module, inputs, dev) if check else None
    model = _prepare(module, inputs, setup, fold_bn)
    tol = _tolerances(dtype, dev, rtol, atol)
    trials = [_trial(name, model, setup, inputs, expected, tol) for name in names]
    if len(names) > 1:
        return _pick_fastest(trials, model, setup, inputs, warmup, repeats)
    return _explicit(trials[0], model, setup, inputs, expected, tol)


# ------------------------------------------------------------------------------------------- arguments


def _modes_to_try(mode: str, runtime: str, device: torch.device) -> list[str]:
    """The mode names to build: one, or every auto mode the device has."""
    if runtime not in _RUNTIME_MODES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(map(repr, _RUNTIME_MODES))}.")
    forced = _RUNTIME_MODES[runtime]
    if forced is not None and mode not in ("auto", forced):
        raise ValueError(f"runtime={runtime!r} runs mode {forced!r} only; got mode={mode!r}.")
    mode = forced or mode
    if mode == "auto":
        return [name for name, m in MODES.items() if m.in_auto and device.type in m.devices]
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of 'auto', {', '.join(map(repr, MODES))}.")
    if device.type not in MODES[mode].devices:
        raise ValueError(f"mode {mode!r} runs on {' or '.join(sorted(MODES[mode].devices))} only, not on "
                         f"device {device}. Use mode='auto' to try every mode this device has.")
    return [mode]


def _resolve_dtype(dtype: torch.dtype | None, device: torch.device, names: list[str]) -> torch.dtype:
    dtype = dtype or _DEFAULT_DTYPE.get(device.type, torch.float32)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype (torch.float32, torch.bfloat16, ...), got {dtype!r}.")
    if names == ["onnxruntime"] and dtype != torch.float32:
        raise ValueError(f"the onnxruntime path runs float32 models only, got dtype={dtype}. Pass dtype=None.")
    return dtype


def _use_channels_last(asked: bool | None, device: torch.device, inputs: Inputs) -> bool:
    if asked is not None:
        return bool(asked)
    return device.type == "cuda" and any(t.dim() == 4 for t in inputs)


def _tolerances(dtype: torch.dtype, device: torch.device, rtol: float | None, atol: float | None
                ) -> tuple[float, float]:
    default_rtol, default_atol = default_tolerances(dtype, device)
    return (default_rtol if rtol is None else rtol), (default_atol if atol is None else atol)


# ----------------------------------------------------------------------------------------- preparing


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Full float32 matmuls and convolutions on CUDA inside; the caller's TF32 settings restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _reference_outputs(module: nn.Module, inputs: Inputs, device: torch.device) -> Any:
    """The original module's outputs in float32 on `device` (an eval copy; BatchNorm not folded)."""
    reference = copy.deepcopy(module).eval().to(device=device, dtype=torch.float32)
    args = Setup(device, torch.float32, channels_last=False).prepare(inputs)
    with torch.inference_mode(), _no_tf32():
        return reference(*args)


def _prepare(module: nn.Module, inputs: Inputs, setup: Setup, fold_bn: bool) -> nn.Module:
    """Deep copy, eval, BatchNorm folded, moved, cast, channels_last."""
    model = copy.deepcopy(module).eval()
    if fold_bn:
        model = fold_batchnorm(model, inputs, inplace=True)  # our copy
    model = model.to(device=setup.device, dtype=setup.dtype)
    return model.to(memory_format=torch.channels_last) if setup.channels_last else model


# -------------------------------------------------------------------------------------------- running


def _trial(name: str, model: nn.Module, setup: Setup, inputs: Inputs, expected: Any,
           tol: tuple[float, float]) -> _Trial:
    """Build mode `name` (eager errors propagate: the model itself does not run) and check its parity."""
    trial = _Trial(name)
    try:
        trial.runner = MODES[name].build(model, setup, inputs)
    except Exception as exc:  # noqa: BLE001 -- any failure of an optional runtime: record it, try the others
        if name == "eager":
            raise
        trial.error = f"{type(exc).__name__}: {exc}"
        return trial
    if expected is not None:
        trial.parity = measure_parity(trial.runner(*inputs), expected)
        try:
            check_parity(trial.parity, *tol, what=f"mode {name!r} ({setup.dtype}, {setup.device})")
        except DeployParityError as exc:
            trial.error, trial.parity_failed = str(exc), True
    return trial


def _explicit(trial: _Trial, model: nn.Module, setup: Setup, inputs: Inputs, expected: Any,
              tol: tuple[float, float]) -> Optimized:
    """The mode asked for; eager (with a warning) when it could not be built; parity failures raise."""
    if trial.parity_failed:
        raise DeployParityError(trial.error)
    errors = {}
    if trial.runner is None:
        warnings.warn(f"mode {trial.mode!r} could not be built ({trial.error}); running eagerly instead.",
                      RuntimeWarning, stacklevel=3)
        errors[trial.mode] = trial.error
        trial = _trial("eager", model, setup, inputs, expected, tol)
        if trial.parity_failed:
            raise DeployParityError(trial.error)
    return _wrap(trial, model, setup, {}, errors)


def _pick_fastest(trials: list[_Trial], model: nn.Module, setup: Setup, inputs: Inputs, warmup: int,
                  repeats: int) -> Optimized:
    """Time every mode that built and passed parity; keep the fastest."""
    prepared = setup.prepare(inputs)  # timed without host-to-device copies and casts
    ok = [t for t in trials if t.error is None]
    for t in ok:
        t.ms = median_ms(t.runner, prepared, setup.device, warmup, repeats)
    errors = {t.mode: t.error for t in trials if t.error is not None}
    if not ok:
        raise DeployParityError("no mode matches the original module:\n" +
                                "\n".join(f"{name}: {why}" for name, why in errors.items()))
    best = min(ok, key=lambda t: t.ms)
    return _wrap(best, model, setup, {t.mode: t.ms for t in ok}, errors)


def _wrap(trial: _Trial, model: nn.Module, setup: Setup, timings: dict[str, float],
          errors: dict[str, str]) -> Optimized:
    module = trial.runner if isinstance(trial.runner, nn.Module) else model  # OrtModule: the session wrapper
    return Optimized(module, trial.runner, mode=trial.mode, setup=setup, parity=trial.parity,
                     timings_ms=timings, errors=errors)
