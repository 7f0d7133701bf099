"""The method's options: field names are the option keys, defaults are written here once."""
from __future__ import annotations

from dataclasses import dataclass

from fxprune.methods.config import MethodConfig


@dataclass
class RandomSearchConfig(MethodConfig):
    rs_samples: int = 32  # candidates drawn
    rs_min_fraction: float = 0.2  # each group keeps at least this fraction of its channels
    seed: int = 0

    def validate(self) -> None:
        if self.rs_samples < 1 or not 0 < self.rs_min_fraction <= 1:
            raise ValueError(f"rs_samples must be >= 1 and 0 < rs_min_fraction <= 1, got {self.rs_samples}, "
                             f"{self.rs_min_fraction}.")
