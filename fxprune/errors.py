"""Errors raised by fxprune. Every message names the thing, says why, and says how to fix it."""
from __future__ import annotations


class FxPruneError(Exception):
    """Base class of every error fxprune raises on purpose."""


class TraceError(FxPruneError):
    """The model could not be turned into a torch.fx graph."""


class UnsupportedOpError(FxPruneError):
    """A graph node touches a channel dimension and no channel rule is registered for its target."""


class PlanMismatchError(FxPruneError):
    """A PruningPlan was applied to a model whose graph differs from the one the plan was made for."""


class PlanFileError(FxPruneError, ValueError):
    """A plan file (or JSON text) is not a PruningPlan: invalid JSON, or fields a plan does not have."""


class ExportParityError(FxPruneError):
    """An exported model does not compute what the torch module computes."""


class UnknownMethodError(FxPruneError, KeyError):
    """No method backend is registered under the requested name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class RunDirError(FxPruneError):
    """A run directory is missing a file, or holds files that do not fit together (weights vs plan)."""


class DeployParityError(ExportParityError):
    """An optimised model (fxprune.deploy.optimize) does not compute what the original module computes."""


class MethodOptionError(FxPruneError, ValueError):
    """A method option is unknown to the method (a misspelled key) or its value does not fit the option."""
