"""fxprune: structured channel pruning of PyTorch models through torch.fx graphs.

>>> import fxprune
>>> "l1" in fxprune.list_methods()
True
"""
from fxprune.analysis import method_key, register_rule
from fxprune.api import __version__, analyse, apply_masks, apply_plan, prune, remove_masks
from fxprune.cost.model import count_flops, count_params
from fxprune.deploy import Target, optimize
from fxprune.deploy.export import export
from fxprune.errors import DeployParityError, ExportParityError, FxPruneError, PlanMismatchError, RunDirError, TraceError, UnsupportedOpError
from fxprune.methods import list_methods, register_method
from fxprune.report.run_dir import load, load_run_info
from fxprune.tracing.tracer import trace
from fxprune.types import ChannelGroup, ChannelSlot, GroupDecision, PruneResult, PruningPlan, Report


__all__ = [
    "ChannelGroup", "ChannelSlot", "DeployParityError", "ExportParityError", "FxPruneError", "GroupDecision", "PlanMismatchError",
    "PruneResult", "PruningPlan", "Report", "RunDirError", "Target", "TraceError", "UnsupportedOpError", "__version__",
    "analyse", "apply_masks", "apply_plan", "count_flops", "count_params", "export", "list_methods", "load",
    "load_run_info", "method_key", "optimize", "prune",
    "register_method", "register_rule", "remove_masks", "trace",
]
