"""The one table of op rules: how channels flow through each fx target.

A rule is registered against a module class (call_module), a function (call_function) or a method
name (call_method). Its `propagate(analysis, node)` returns the node's output labels and records what
the node ties together; its optional `rewrite(ctx, node)` updates the node's constant arguments (view
sizes, split sizes, head counts) once channels are removed; its optional `masked` builds the node the
masked model calls instead of the target (for ops such as layer_norm whose result depends on how many
channels there are, so that masked == slim holds exactly):
`masked(graph, node, module, mask, make_mask, *, dim, facts)` with `dim` the masked (reduced) dim and `facts`
the rule's own `NodeFacts` for that node.

>>> import torch
>>> from fxprune.analysis.registry import rule_for_key
>>> rule_for_key(torch.cat).propagate.__name__
'cat_rule'
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.fx as fx
from torch import nn

from fxprune.registry import Registry, qualified_name


@dataclass(frozen=True)
class OpRule:
    propagate: Callable[..., Any]
    rewrite: Callable[..., None] | None = None
    masked: Callable[..., Any] | None = None


RULES: Registry[Any, OpRule] = Registry("op rules", describe=qualified_name)


def method_key(name: str) -> tuple[str, str]:
    return ("method", name)


def register_rule(*targets: Any, rewrite: Callable[..., None] | None = None,
                  masked: Callable[..., Any] | None = None, override: bool = False) -> Callable:
    """Register `propagate` for each target: a module class, a function, or `method_key("view")`.

    A target that already has a rule is refused unless `override=True` (`RULES.override(...)` replaces one
    for a `with` block). Example (a custom element-wise function; `pointwise` unifies the positions that meet):

    >>> import torch
    >>> from fxprune.analysis.rules.common import pointwise
    >>> def my_swish(x):
    ...     return x * torch.sigmoid(x)
    >>> _ = register_rule(my_swish)(pointwise)
    >>> rule_for_key(my_swish).propagate is pointwise
    True
    >>> _ = RULES.unregister(my_swish)
    """
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for t in targets:
            RULES.register(t, OpRule(fn, rewrite, masked), override=override)
        return fn
    return deco


def rule_for_key(key: Any) -> OpRule | None:
    if isinstance(key, type):
        for cls in key.__mro__:
            if cls in RULES:
                return RULES[cls]
        return None
    try:
        return RULES.get(key)
    except TypeError:  # unhashable target
        return None


def has_exact_rule(key: Any) -> bool:
    """True when a rule is registered for exactly this class or function (not inherited)."""
    try:
        return key in RULES
    except TypeError:
        return False


def rule_for_node(node: fx.Node, modules: dict[str, nn.Module]) -> OpRule | None:
    if node.op == "call_module":
        return rule_for_key(type(modules[node.target]))
    if node.op == "call_method":
        return rule_for_key(method_key(node.target))
    if node.op == "call_function":
        return rule_for_key(node.target)
    return None


def describe_target(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        cls = type(modules[node.target])
        return f"module {cls.__module__}.{cls.__qualname__}"
    if node.op == "call_method":
        return f"method Tensor.{node.target}"
    t = node.target
    return f"function {getattr(t, '__module__', '?')}.{getattr(t, '__qualname__', getattr(t, '__name__', t))}"


def registration_hint(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        key = type(modules[node.target]).__qualname__
    elif node.op == "call_method":
        key = f'method_key("{node.target}")'
    else:
        key = getattr(node.target, "__qualname__", str(node.target))
    return f"fxprune.register_rule({key})(your_rule)"
