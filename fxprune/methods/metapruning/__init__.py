"""MetaPruning: a PruningNet and an evolutionary search, docs/methods/metapruning.md."""
from fxprune.methods.metapruning import method  # noqa: F401  (registers the method)
