"""fxprune: structured channel pruning of PyTorch models through torch.fx graphs.

>>> import fxprune
>>> "l1" in fxprune.list_methods()
True
"""
from .analysis import register_rule, method_key
from .api import __version__, analyse, apply_masks, apply_plan, prune, remove_masks
from .cost import count_flops, count_params
from .export import export
from .errors import ExportParityError, FxPruneError, PlanMismatchError, TraceError, UnsupportedOpError
from .methods import list_methods, register_method
from .trace import trace
from .types import ChannelGroup, ChannelSlot, GroupDecision, PruneResult, PruningPlan, Report


__all__ = [
    "ChannelGroup", "ChannelSlot", "ExportParityError", "FxPruneError", "GroupDecision", "PlanMismatchError",
    "PruneResult", "PruningPlan", "Report", "TraceError", "UnsupportedOpError", "__version__", "analyse",
    "apply_masks", "apply_plan", "count_flops", "count_params", "export", "list_methods", "method_key", "prune",
    "register_method", "register_rule", "remove_masks", "trace",
]
