"""Channel analysis: op rules (one table), atoms and labels, and the pass that builds channel groups."""
from fxprune.analysis import rules  # noqa: F401  (registers the op rules)
from fxprune.analysis.analyse import GraphAnalysis, run_analysis
from fxprune.analysis.registry import OpRule, method_key, register_rule

__all__ = ["GraphAnalysis", "OpRule", "method_key", "register_rule", "run_analysis"]
