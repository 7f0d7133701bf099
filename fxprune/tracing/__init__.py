"""Stage 1, capture: the model becomes a torch.fx graph whose nodes carry the documented meta (see `meta`).

The analysis reads a graph only through `fxprune.tracing.meta`: any capture front-end that records those keys
can feed it.
"""
from fxprune.tracing.tracer import as_input_tuple, propagate_shapes, trace

__all__ = ["as_input_tuple", "propagate_shapes", "trace"]
