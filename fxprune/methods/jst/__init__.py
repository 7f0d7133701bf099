"""Joint Search-and-Training with ThresNet, docs/methods/jst.md."""
from fxprune.methods.jst import method  # noqa: F401  (registers the method)
