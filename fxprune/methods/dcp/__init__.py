"""DCP: discrimination-aware channel pruning, docs/methods/dcp.md."""
from fxprune.methods.dcp import method  # noqa: F401  (registers the method)
