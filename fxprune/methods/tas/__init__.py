"""TAS: Transformable Architecture Search (width and depth), docs/methods/tas.md."""
from fxprune.methods.tas import method  # noqa: F401  (registers the method)
