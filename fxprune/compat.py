"""Old module paths that saved objects still name.

`torch.save` of a slim or masked GraphModule pickles its tracer class and the functions its code calls by
module path. Models saved before the stage-package layout name `fxprune.trace` (the tracer class, now in
`fxprune.tracing.tracer`) and `fxprune.analysis.masked` (the masked ops, now `fxprune.analysis.rules.masked`).
`install()` makes those paths resolve to the modules that hold the names now, as `sys.modules` entries only:
`fxprune.trace` stays the function. Plans, run directories and checkpoints are JSON, safetensors and
weights-only files: they name no module and need nothing here.
"""
from __future__ import annotations

import sys
from types import ModuleType

from fxprune.analysis.rules import masked
from fxprune.tracing import tracer

MOVED: dict[str, ModuleType] = {
    "fxprune.trace": tracer,
    "fxprune.analysis.masked": masked,
}


def install() -> None:
    """Alias each old path in `sys.modules` (idempotent)."""
    for old, module in MOVED.items():
        sys.modules.setdefault(old, module)
