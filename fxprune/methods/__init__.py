"""Method backends; importing this package registers the built-in ones."""
from fxprune.methods import dcp, jst, metapruning, scorers, tas  # noqa: F401  (register the built-in methods)
from fxprune.methods.registry import get_method, list_methods, method_summaries, register_method

__all__ = ["get_method", "list_methods", "method_summaries", "register_method"]
