"""Channel analysis: op rules (one table), atoms and labels, and the pass that builds channel groups."""
from . import rules_attention, rules_modules, rules_patches, rules_structure, rules_tensor  # noqa: F401  (register the op rules)
from .analyse import GraphAnalysis, run_analysis
from .registry import OpRule, method_key, register_rule

__all__ = ["GraphAnalysis", "OpRule", "method_key", "register_rule", "run_analysis"]
