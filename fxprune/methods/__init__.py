"""Method backends; importing this package registers the built-in ones."""
from fxprune.methods import dcp, jst, metapruning, scorers, tas  # noqa: F401  (register the built-in methods)
from fxprune.methods.config import MethodConfig
from fxprune.methods.registry import (get_method, list_methods, method_config, method_summaries, register_method,
                                      register_search)
from fxprune.methods.result import SearchResult

__all__ = ["MethodConfig", "SearchResult", "get_method", "list_methods", "method_config", "method_summaries",
           "register_method", "register_search"]
