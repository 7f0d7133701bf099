"""Method backends; importing this package registers the built-in ones.

`registry` (METHODS, register_method / register_search), `config` (MethodConfig: a method's options),
`result` (SearchResult: what a search returns), `calibration` (batches for data-driven methods); `scorers/`
(l1, l2, fpgm, taylor, slimming, uniform, random), `search/` (what the searches share) and one folder per seed
method (`tas/`, `dcp/`, `jst/`, `metapruning/`). Each method's config class is exported here too, for
`fxprune.prune(model, x, method=TasConfig(tas_epochs=2), flops=0.5)`.
"""
from fxprune.methods import dcp, jst, metapruning, scorers, tas  # noqa: F401  (register the built-in methods)
from fxprune.methods.config import MethodConfig
from fxprune.methods.dcp.method import DcpConfig
from fxprune.methods.jst.method import JstConfig
from fxprune.methods.metapruning.method import MetaPruningConfig
from fxprune.methods.registry import (METHODS, get_method, list_methods, method_config, method_summaries,
                                      register_method, register_search)
from fxprune.methods.result import SearchResult
from fxprune.methods.scorers.fpgm import FPGMConfig
from fxprune.methods.scorers.magnitude import MagnitudeConfig, RandomConfig
from fxprune.methods.scorers.slimming import SlimmingConfig
from fxprune.methods.scorers.taylor import TaylorConfig
from fxprune.methods.scorers.uniform import UniformConfig
from fxprune.methods.tas.method import TasConfig

__all__ = ["METHODS", "DcpConfig", "FPGMConfig", "JstConfig", "MagnitudeConfig", "MetaPruningConfig", "MethodConfig",
           "RandomConfig", "SearchResult", "SlimmingConfig", "TasConfig", "TaylorConfig", "UniformConfig",
           "get_method", "list_methods", "method_config", "method_summaries", "register_method", "register_search"]
