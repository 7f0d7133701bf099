"""Hardware-aware widths: the channel multiple a device runs well, measured on the device.

GPU kernels work on tiles (tensor cores take channel counts in multiples of 8 for 16-bit types, often 16 or
more for the best kernels), so a layer with 65 channels can cost what one with 72 costs. The alignment of a
target is found by timing a reference 3x3 convolution (in = out = c channels) for every c in a sweep and
computing its efficiency (c x c work per millisecond): the alignment is the smallest multiple m whose every
multiple in the sweep runs at (nearly) the best efficiency seen. `prune(..., round_to="auto")` rounds every
group's kept count up to it, so the channels kept beyond the budget's need are the ones the device would
have paid for anyway. The result is cached per target (`Target.cache`).

>>> fake = lambda conv, inputs: conv.in_channels * -(-conv.out_channels // 8) * 8.0  # tiles of 8 channels
>>> measure_alignment(Target("cpu", timer=fake, cache=False))
8
"""
from __future__ import annotations

import json

import torch
from torch import nn

from fxprune.deploy.target import Target

__all__ = ["ALIGNMENT_CANDIDATES", "measure_alignment"]

ALIGNMENT_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)


def _reference_times(target: Target, widths: range) -> dict[int, float]:
    cuda = torch.device(target.device).type == "cuda"
    batch, side = (64, 28) if cuda else (1, 28)
    out = {}
    for c in widths:
        conv = nn.Conv2d(c, c, 3, padding=1, bias=False).eval()
        out[c] = target.time(conv, (torch.randn(batch, c, side, side),))
    return out


def _efficiency(times: dict[int, float]) -> dict[int, float]:
    """Work per millisecond at each width, relative to the best width (the reference conv does c x c work)."""
    rate = {c: c * c / t for c, t in times.items() if t > 0}
    best = max(rate.values(), default=1.0)
    return {c: r / best for c, r in rate.items()}


def _worst_multiple(efficiency: dict[int, float], m: int) -> float:
    """The lowest relative efficiency among the sweep's multiples of m."""
    return min((e for c, e in efficiency.items() if c % m == 0), default=0.0)


def measure_alignment(target: Target, sweep: tuple[int, int] = (64, 128), tolerance: float = 0.05,
                      candidates: tuple[int, ...] = ALIGNMENT_CANDIDATES) -> int:
    """The smallest channel multiple m of `candidates` at which `target` runs at full speed: every multiple of
    m in `sweep` does at least (1 - tolerance) of the best work per millisecond of any width of the sweep
    (a reference 3x3 convolution with c input and c output channels). When no candidate qualifies (noise),
    the one whose worst multiple comes closest."""
    lo, hi = sweep
    if not 1 <= lo < hi:
        raise ValueError(f"sweep={sweep}: give two widths 1 <= low < high, e.g. (64, 128).")
    path = target.cache_path("align")
    key = f"{lo}-{hi}-{tolerance}-{candidates}"
    cached = json.loads(path.read_text()) if path is not None and path.exists() else {}
    if key in cached:
        return int(cached[key])
    efficiency = _efficiency(_reference_times(target, range(lo, hi + 1)))
    scores = {m: _worst_multiple(efficiency, m) for m in sorted(candidates) if m <= (hi - lo) // 2}
    fits = [m for m, score in scores.items() if score >= 1 - tolerance]
    best = fits[0] if fits else max(scores, key=lambda m: (scores[m], -m), default=1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**cached, key: best}))
    return best


def alignment_profile(target: Target, sweep: tuple[int, int] = (64, 128)) -> dict[int, float]:
    """The reference convolution's time (ms) at every width of `sweep`, for plots and reports."""
    return _reference_times(target, range(sweep[0], sweep[1] + 1))

