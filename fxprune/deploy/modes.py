"""The runtimes `optimize` can run a prepared module with, in one registry (`MODES`), and their timing.

A mode's ``build(module, setup, example)`` returns a runner: a callable taking the caller's inputs (any
device, float dtype or memory format) and returning the module's outputs. Building runs the module at
least once on `example`, so a mode that cannot work (torch.compile without a compiler, a forward CUDA
graphs cannot capture) fails there, where `optimize` catches it.

* ``eager`` -- the module as it is, under ``torch.inference_mode``.

On CUDA every mode runs with ``torch.backends.cudnn.benchmark`` set as `Setup.cudnn_benchmark` says (optimize:
on by default): cuDNN then times its convolution algorithms for each new shape instead of guessing, which
matters most for the unusual channel counts of pruned models. A CUDA graph keeps the algorithms chosen while
it was captured.
* ``compile`` -- ``torch.compile(module, mode=setup.compile_mode)``; compiled on the first call.
* ``cuda_graph`` -- one forward captured in a ``torch.cuda.CUDAGraph`` on static input buffers; each call
  copies its inputs into them and replays. Valid for the captured shapes only: any other shape is a
  ValueError (no silent fallback: a replay on the wrong shape would compute garbage).
* ``onnxruntime`` -- the module exported to ONNX and run by an onnxruntime CPU session (fxprune.deploy.ort).
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils._pytree import tree_map

from fxprune.deploy.timing import time_callable

__all__ = ["MODES", "Mode", "Setup", "median_ms", "timing_step"]

Inputs = tuple[torch.Tensor, ...]
Runner = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Setup:
    """Where and how the prepared module runs: inputs are moved and cast to match it."""

    device: torch.device
    dtype: torch.dtype
    channels_last: bool
    compile_mode: str | None = None
    ort_threads: int = 2
    cudnn_benchmark: bool = False  # let cuDNN time its algorithms for each new shape (CUDA)

    @contextlib.contextmanager
    def cudnn(self) -> Iterator[None]:
        """torch.backends.cudnn.benchmark as this setup wants it inside; the caller's setting restored after."""
        saved = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = saved

    def prepare(self, inputs: Inputs) -> Inputs:
        """`inputs` on the device; floating ones in the dtype, 4-D ones channels_last when asked.
        Returns the caller's tensors themselves when nothing needs to change (they are never written)."""
        return tuple(self._prepare_one(t) for t in inputs)

    def _prepare_one(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, self.dtype) if t.is_floating_point() else t.to(self.device)
        if self.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t


class Mode(NamedTuple):
    """A runtime: how to build its runner, on which device types it exists, and whether "auto" tries it."""

    build: Callable[[nn.Module, Setup, Inputs], Runner]
    devices: frozenset[str]
    in_auto: bool


class _Eager:
    """Runs `fn` (the module, or its torch.compile wrapper) on prepared inputs under inference_mode."""

    def __init__(self, fn: Callable[..., Any], setup: Setup) -> None:
        self.fn, self.setup = fn, setup

    def __call__(self, *inputs: torch.Tensor) -> Any:
        with torch.inference_mode(), self.setup.cudnn():
            return self.fn(*self.setup.prepare(inputs))

    def step(self, *inputs: torch.Tensor) -> Callable[[], Any]:
        """The forward pass alone, on inputs prepared once (for timing: no per-call cast or copy)."""
        with torch.inference_mode():
            prepared = self.setup.prepare(inputs)

        def run() -> Any:
            with self.setup.cudnn():
                return self.fn(*prepared)
        return run


def _build_eager(module: nn.Module, setup: Setup, example: Inputs) -> Runner:
    runner = _Eager(module, setup)
    runner(*example)
    return runner


def _build_compile(module: nn.Module, setup: Setup, example: Inputs) -> Runner:
    runner = _Eager(torch.compile(module, mode=setup.compile_mode), setup)
    runner(*example)  # compiles now: a failure belongs to building, not to the caller's first call
    return runner


class _CudaGraph:
    """One forward pass captured on static input buffers and replayed (the recipe of the PyTorch CUDA
    graphs docs: warm-up on a side stream, capture, then copy-in + replay). Outputs are cloned out of the
    graph's static buffers, so a later call never overwrites what an earlier one returned."""

    def __init__(self, module: nn.Module, setup: Setup, example: Inputs) -> None:
        with torch.cuda.device(setup.device), torch.inference_mode(), setup.cudnn():
            self.static_inputs = tuple(t.clone() for t in setup.prepare(example))
            side = torch.cuda.Stream(setup.device)
            side.wait_stream(torch.cuda.current_stream(setup.device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    module(*self.static_inputs)
            torch.cuda.current_stream(setup.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_outputs = module(*self.static_inputs)

    def __call__(self, *inputs: torch.Tensor) -> Any:
        self._check(inputs)
        with torch.inference_mode():
            for static, t in zip(self.static_inputs, inputs):
                static.copy_(t)  # casts dtype, moves device, keeps the static buffer's memory format
            self.graph.replay()
            return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, self.static_outputs)

    def step(self, *inputs: torch.Tensor) -> Callable[[], Any]:
        """The replay alone, on inputs copied in once (for timing: no per-call copy-in or output clone)."""
        self._check(inputs)
        with torch.inference_mode():
            for static, t in zip(self.static_inputs, inputs):
                static.copy_(t)
        return self.graph.replay

    def _check(self, inputs: tuple[Any, ...]) -> None:
        want = [(tuple(s.shape), s.is_floating_point() or s.dtype) for s in self.static_inputs]
        got = [(tuple(t.shape), t.is_floating_point() or t.dtype) if isinstance(t, torch.Tensor) else type(t)
               for t in inputs]
        if got != want:
            raise ValueError(
                f"this cuda_graph model was captured for inputs {_describe(self.static_inputs)} and replays "
                f"those shapes only; got {_describe(inputs)}. Call fxprune.deploy.optimize again with an "
                f"example of the new shape, or use mode='eager' or mode='compile', which take any shape.")


def _describe(inputs: tuple[Any, ...]) -> str:
    return "(" + ", ".join(f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
                           for t in inputs) + ")"


def _build_cuda_graph(module: nn.Module, setup: Setup, example: Inputs) -> Runner:
    return _CudaGraph(module, setup, example)


def _build_onnxruntime(module: nn.Module, setup: Setup, example: Inputs) -> Runner:
    from fxprune.deploy.ort import OrtModule

    return OrtModule.from_module(module, example, threads=setup.ort_threads, fold_bn=False)  # optimize folds


MODES: dict[str, Mode] = {
    "eager": Mode(_build_eager, frozenset({"cpu", "cuda"}), in_auto=True),
    "cuda_graph": Mode(_build_cuda_graph, frozenset({"cuda"}), in_auto=True),
    "compile": Mode(_build_compile, frozenset({"cpu", "cuda"}), in_auto=True),
    "onnxruntime": Mode(_build_onnxruntime, frozenset({"cpu"}), in_auto=False),
}


def timing_step(runner: Runner, inputs: Inputs) -> Callable[[], Any]:
    """A zero-argument callable running `runner`'s computation on `inputs`: the forward pass alone where the
    runner can separate it from its per-call input handling (eager, compile, cuda_graph), else the call."""
    step = getattr(runner, "step", None)
    return step(*inputs) if step is not None else (lambda: runner(*inputs))


def median_ms(runner: Runner, inputs: Inputs, device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``runner(*inputs)`` over `repeats` timed calls after `warmup` untimed ones
    (fxprune.deploy.timing.time_callable: CUDA events on a GPU, perf_counter on the CPU)."""
    return time_callable(lambda: runner(*inputs), device, repeats, warmup)
