"""Method backends; importing this package registers the built-in ones."""
from . import dcp, fpgm, jst, magnitude, metapruning, slimming, tas, taylor, uniform  # noqa: F401  (register the built-in methods)
from .registry import get_method, list_methods, method_summaries, register_method

__all__ = ["get_method", "list_methods", "method_summaries", "register_method"]
