"""Method backends; importing this package registers the built-in ones."""
from . import magnitude  # noqa: F401  (registers l1, l2, random)
from .registry import get_method, list_methods, method_summaries, register_method

__all__ = ["get_method", "list_methods", "method_summaries", "register_method"]
