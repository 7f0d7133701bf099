"""Channel labels of one tensor: which dimensions carry channels, and which atom sits at each position."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Labels:
    """`dims[d]` is the atom array of dimension `d` (length `shape[d]`); unlisted dims carry no channels."""

    shape: tuple[int, ...]
    dims: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def norm(self, d: int) -> int:
        return d + self.ndim if d < 0 else d

    def get(self, d: int) -> np.ndarray | None:
        return self.dims.get(self.norm(d))

    def with_dims(self, shape: tuple[int, ...], dims: dict[int, np.ndarray]) -> Labels:
        return Labels(tuple(shape), {d: a for d, a in dims.items() if a is not None})

    def __bool__(self) -> bool:
        return bool(self.dims)


def same_labels(shape: tuple[int, ...], src: Labels) -> Labels:
    """Pass-through: the output carries the input's labels on every dim whose size did not change."""
    dims = {d: a for d, a in src.dims.items() if d < len(shape) and shape[d] == src.shape[d]}
    return Labels(tuple(shape), dims)
