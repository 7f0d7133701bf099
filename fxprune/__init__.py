"""fxprune: structured channel pruning of PyTorch models through torch.fx graphs.

The pipeline, one package per stage: `tracing` (model -> annotated fx graph), `analysis` (channel groups),
`cost` (FLOPs / params / latency of a decision), `selection` (scores + budget -> `Keep`), `rewrite` (masks and
the slim model), `methods` (scorers and searches), `deploy` (export, runtimes, timing); `train`, `data`,
`zoo`, `report` and `cli` around them. `fxprune.prune` chains the stages; `fxprune.stages` exposes them one by
one (`prepare`, `score`, `select`, `cost_model`, `mask`, `shrink`, `make_plan`).

>>> import fxprune
>>> "l1" in fxprune.list_methods()
True
"""
from fxprune import compat
from fxprune.analysis import method_key, register_rule
from fxprune.analysis.analyse import GraphAnalysis
from fxprune.analysis.keep import Keep
from fxprune.api import PruneOptions, apply_masks, apply_plan, prune, remove_masks
from fxprune.cost.model import CostModel, count_flops, count_params
from fxprune.deploy import Target, optimize
from fxprune.deploy.export import export
from fxprune.errors import (DeployParityError, ExportParityError, FxPruneError, PlanFileError, PlanMismatchError,
                            RunDirError, TraceError, UnsupportedOpError)
from fxprune.methods import list_methods, register_method, register_search
from fxprune.registry import Registry
from fxprune.report.run_dir import load, load_run_info
from fxprune.rewrite.fixers import register_fixer
from fxprune.stages import __version__, analyse, cost_model, make_plan, mask, prepare, score, select, shrink, trace
from fxprune.types import ChannelGroup, ChannelSlot, GroupDecision, PruneResult, PruningPlan, Report

compat.install()  # models saved before the stage-package layout name old module paths

__all__ = [
    "ChannelGroup", "ChannelSlot", "CostModel", "DeployParityError", "ExportParityError", "FxPruneError",
    "GraphAnalysis", "GroupDecision", "Keep", "PlanFileError", "PlanMismatchError", "PruneOptions", "PruneResult", "PruningPlan",
    "Registry", "Report", "RunDirError", "Target", "TraceError", "UnsupportedOpError", "__version__", "analyse",
    "apply_masks", "apply_plan", "cost_model", "count_flops", "count_params", "export", "list_methods", "load",
    "load_run_info", "make_plan", "mask", "method_key", "optimize", "prepare", "prune", "register_fixer",
    "register_method", "register_rule", "register_search", "remove_masks", "score", "select", "shrink", "trace",
]
