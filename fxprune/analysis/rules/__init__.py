"""The op rules, one table (`fxprune.analysis.registry.RULES`); importing this package registers them all.

`common` holds the helpers rules share, `masked` the masked forms of ops that the mask stage builds.
"""
from fxprune.analysis.rules import attention, modules, patches, structure, tensor  # noqa: F401  (register the op rules)
