"""A random-search pruning method: a template to copy (see README.md)."""
from . import method  # noqa: F401  (registers the method)
