"""fxprune: structured channel pruning of PyTorch models through torch.fx graphs.

>>> import fxprune
>>> "l1" in fxprune.list_methods()
True
"""
from .analysis import register_rule, method_key
from .api import __version__, analyse, apply_masks, apply_plan, prune, remove_masks
from .cost import count_flops, count_params
from .deploy import Target, optimize
from .export import export
from .errors import DeployParityError, ExportParityError, FxPruneError, PlanMismatchError, RunDirError, TraceError, UnsupportedOpError
from .methods import list_methods, register_method
from .run import load, load_run_info
from .trace import trace
from .types import ChannelGroup, ChannelSlot, GroupDecision, PruneResult, PruningPlan, Report


__all__ = [
    "ChannelGroup", "ChannelSlot", "DeployParityError", "ExportParityError", "FxPruneError", "GroupDecision", "PlanMismatchError",
    "PruneResult", "PruningPlan", "Report", "RunDirError", "Target", "TraceError", "UnsupportedOpError", "__version__",
    "analyse", "apply_masks", "apply_plan", "count_flops", "count_params", "export", "list_methods", "load",
    "load_run_info", "method_key", "optimize", "prune",
    "register_method", "register_rule", "remove_masks", "trace",
]
