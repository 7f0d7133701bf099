"""The deployment target: where latency is measured for latency budgets and hardware-aware widths.

A `Target` names the device, the dtype the model will run in, the CPU threads, how each measurement is
taken (warm-up, median of repeats; CUDA events on CUDA, `time.perf_counter` on the CPU, through
`fxprune.deploy.measure.measure_latency`) and where measurements are cached. A custom `timer(module, inputs) -> ms`
replaces the measurement, e.g. a fake timer in tests or a remote device's timer.

>>> t = Target("cpu", threads=1, repeats=3, warmup=1, cache=False)
>>> t.time(torch.nn.Linear(8, 8), (torch.randn(2, 8),)) > 0
True
"""
from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fxprune.deploy.optimize import optimize
from fxprune.deploy.timing import check_device, time_callable

__all__ = ["Target", "as_target", "cache_dir"]

Timer = Callable[[nn.Module, tuple], float]


@dataclass(frozen=True)
class Target:
    """Where and how latency is measured.

    device: "cpu" or "cuda[:N]". dtype: the dtype the model runs in (default: bfloat16 on CUDA, float32 on
    the CPU). threads: CPU threads while measuring (default: torch's setting). runtime: how the model will be
    deployed, a mode of `fxprune.optimize` ("eager", "cuda_graph", "compile", "onnxruntime"; default:
    "cuda_graph" on CUDA, "eager" on the CPU); every measurement runs the module as optimize() prepares it
    for that runtime (BatchNorm folded, channels_last and bf16 on CUDA). timer: replaces the
    measurement (`timer(module, inputs) -> milliseconds`). repeats / warmup: timed and untimed passes per
    measurement. points: grid points per channel dimension of the latency table. cache: a folder for the
    measurements (True: `$FXPRUNE_CACHE/latency` or `~/.cache/fxprune/latency`; False: no cache; a custom
    timer is cached only when it has a `cache_key` attribute).
    """

    device: str = "cpu"
    dtype: torch.dtype | None = None
    threads: int | None = None
    runtime: str | None = None
    timer: Timer | None = None
    repeats: int = 20
    warmup: int = 5
    points: int = 6
    cache: bool | str | Path = True

    def __post_init__(self) -> None:
        if self.timer is None:
            check_device(self.device)
        if self.points < 2:
            raise ValueError(f"Target.points={self.points}: the latency table needs at least 2 grid points per "
                             f"channel dimension (default 6).")

    @property
    def run_dtype(self) -> torch.dtype:
        return self.dtype or (torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32)

    @property
    def run_mode(self) -> str:
        return self.runtime or ("cuda_graph" if torch.device(self.device).type == "cuda" else "eager")

    def time(self, module: nn.Module, inputs: tuple) -> float:
        """Milliseconds of one forward pass of `module` on `inputs` on this target (median of `repeats`)."""
        if self.timer is not None:
            return float(self.timer(module, inputs))
        with self.threads_set():
            fast = optimize(module, inputs, self.device, self.run_dtype, mode=self.run_mode, check=False,
                            ort_threads=self.threads or 2)
            step = fast.timing_step(*(t.to(self.device) for t in inputs))
            return time_callable(step, self.device, self.repeats, self.warmup)

    @contextlib.contextmanager
    def threads_set(self) -> Iterator[None]:
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def key(self) -> str | None:
        """What identifies these measurements in the cache (None: not cacheable)."""
        if self.timer is not None:
            custom = getattr(self.timer, "cache_key", None)
            return f"timer-{custom}" if custom else None
        dev = torch.device(self.device)
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or
                                                                           platform.machine())
        threads = self.threads or torch.get_num_threads()
        what = (f"{dev.type}-{name}-{str(self.run_dtype).replace('torch.', '')}-{self.run_mode}-t{threads}-"
                f"torch{torch.__version__}")
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in what)

    def cache_path(self, kind: str) -> Path | None:
        key = self.key()
        if self.cache is False or key is None:
            return None
        root = cache_dir() if self.cache is True else Path(self.cache)
        return root / f"{kind}-{key}.json"


def cache_dir() -> Path:
    """`$FXPRUNE_CACHE/latency`, else `~/.cache/fxprune/latency`."""
    return Path(os.environ.get("FXPRUNE_CACHE") or Path.home() / ".cache" / "fxprune") / "latency"


def as_target(target: Target | str | None, default_device: str = "cpu") -> Target:
    """A Target from a Target, a device string or None (`default_device`).

    >>> as_target("cpu").device
    'cpu'
    """
    if target is None:
        return Target(default_device)
    if isinstance(target, str):
        return Target(target)
    if isinstance(target, Target):
        return target
    raise TypeError(f"target must be a fxprune.Target or a device string such as 'cuda' or 'cpu', got "
                    f"{type(target).__name__}.")
