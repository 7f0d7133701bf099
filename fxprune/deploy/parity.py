"""How close an optimised model's outputs are to the original module's float32 outputs.

The measure is the one `fxprune.export` uses: per output tensor the relative error
``||optimised - reference|| / ||reference||`` (Frobenius norms) and the max abs difference; an output passes
when either is within its tolerance. `Parity` keeps the worst of each over all outputs.

>>> import torch
>>> p = measure_parity(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))
>>> p.max_abs_error, p.relative_error
(0.0, 0.0)
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.utils._pytree import tree_flatten

from fxprune.errors import DeployParityError

__all__ = ["Parity", "check_parity", "default_tolerances", "measure_parity"]

_TINY = 1e-12  # floor of ||reference||, so all-zero outputs do not divide by zero

# (rtol, atol) by the dtype the optimised model computes in
_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (2e-2, 1e-3),
    torch.float16: (2e-2, 1e-3),
}
_TF32_TOLERANCES = (5e-3, 1e-4)  # float32 on a GPU with TF32 matmuls / convolutions allowed


class Parity(NamedTuple):
    """Worst max abs difference and worst relative error over the output tensors."""

    max_abs_error: float
    relative_error: float


def default_tolerances(dtype: torch.dtype, device: torch.device) -> tuple[float, float]:
    """(rtol, atol) for a model computing in `dtype` on `device`.

    float32 on CUDA with TF32 allowed (``torch.backends.cudnn.allow_tf32`` is on by default) gets the
    looser TF32 tolerances: its convolutions round their inputs to 10 mantissa bits.

    >>> default_tolerances(torch.bfloat16, torch.device("cpu"))
    (0.02, 0.001)
    """
    if dtype == torch.float32 and device.type == "cuda" and _tf32_allowed():
        return _TF32_TOLERANCES
    return _TOLERANCES.get(dtype, _TOLERANCES[torch.float16])


def _tf32_allowed() -> bool:
    return bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)


def measure_parity(actual: Any, expected: Any) -> Parity:
    """Parity of `actual` against `expected`: two (nested) outputs with the same tensor leaves.

    A different number of tensors or a different shape raises DeployParityError.
    """
    got, want = _tensors(actual), _tensors(expected)
    if len(got) != len(want):
        raise DeployParityError(f"the optimised model returns {len(got)} output tensors but the original "
                                f"module returns {len(want)}.")
    worst_abs = worst_rel = 0.0
    for i, (a, b) in enumerate(zip(got, want)):
        if a.shape != b.shape:
            raise DeployParityError(f"output {i} of the optimised model has shape {tuple(a.shape)} but the "
                                    f"original module's has shape {tuple(b.shape)}.")
        a, b = a.detach().cpu().double(), b.detach().cpu().double()
        if torch.equal(a, b):
            continue
        diff = (a - b).abs()
        if diff.isnan().any():  # NaN where the reference has none (or the other way): fails every tolerance
            return Parity(float("nan"), float("nan"))
        worst_abs = max(worst_abs, float(diff.max()))
        worst_rel = max(worst_rel, float(torch.linalg.vector_norm(a - b))
                        / max(float(torch.linalg.vector_norm(b)), _TINY))
    return Parity(worst_abs, worst_rel)


def check_parity(parity: Parity, rtol: float, atol: float, what: str) -> None:
    """Raise DeployParityError unless ``relative_error <= rtol`` or ``max_abs_error <= atol``.

    >>> check_parity(Parity(0.5, 0.1), rtol=1e-2, atol=1e-3, what="mode 'eager'")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fxprune.errors.DeployParityError: mode 'eager' differs ...: relative error 0.1 > rtol 0.01 and max abs ...
    """
    if parity.relative_error <= rtol or parity.max_abs_error <= atol:
        return
    raise DeployParityError(
        f"{what} differs from the original module in float32: relative error {parity.relative_error:.3g} > "
        f"rtol {rtol:g} and max abs error {parity.max_abs_error:.3g} > atol {atol:g}. If the difference is "
        f"expected (e.g. a low-precision dtype), loosen rtol/atol, or pass check=False to skip the check.")


def _tensors(outputs: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(outputs)[0] if isinstance(t, torch.Tensor)]
