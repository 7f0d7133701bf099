"""Shape-specialised tracing of submodules that symbolic tracing cannot handle.

torch.fx traces with symbolic shapes, so a submodule whose forward branches on a shape (`if H % ws:`,
`math.ceil(H / p)`) fails to trace. For such a submodule fxprune retries with *concrete* shapes: while
the tracer is inside it, `x.shape`, `x.size()`, `x.dim()` and `x.ndim` return the example input's sizes
(dim 0, the batch, stays symbolic), computed by running every recorded op on meta tensors as it is
traced. The graph of that submodule is then specialised to the example's spatial size and channel
counts (the channel counts fxprune rewrites anyway); the rest of the model stays symbolic.

This is the technique of Hugging Face's `HFTracer`, written here because it has to cooperate with
fxprune's leaf policy and scope tracking (torch's `make_fx` would trace to aten ops instead of modules).
"""
from __future__ import annotations

import contextlib
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from fxprune.tracing import meta

META_VALUE = meta.TRACE_VALUE


def _meta_of(x: Any) -> Any:
    if isinstance(x, fx.Proxy):
        return x.node.meta.get(META_VALUE)
    if isinstance(x, torch.Tensor):
        return torch.empty_like(x, device="meta") if x.device.type != "meta" else x
    return x


def _to_meta(tree: Any) -> Any:
    return torch.utils._pytree.tree_map(_meta_of, tree, is_leaf=lambda v: isinstance(v, fx.Proxy))


class ShapeProxy(fx.Proxy):
    """A Proxy whose shape queries are concrete while its tracer is inside a specialised submodule, and
    which records in-place item assignment (plain fx Proxies cannot)."""

    @property
    def shape(self) -> Any:
        size = self.tracer.concrete_size(self)
        return fx.Proxy.__getattr__(self, "shape") if size is None else size

    @property
    def ndim(self) -> Any:
        size = self.tracer.concrete_size(self)
        return fx.Proxy.__getattr__(self, "ndim") if size is None else len(size)

    def size(self, dim: int | None = None) -> Any:
        size = self.tracer.concrete_size(self)
        if size is None:
            attr = fx.Proxy.__getattr__(self, "size")
            return attr() if dim is None else attr(dim)
        return size if dim is None else size[dim]

    def dim(self) -> Any:
        size = self.tracer.concrete_size(self)
        return fx.Proxy.__getattr__(self, "dim")() if size is None else len(size)

    def __setitem__(self, index: Any, value: Any) -> None:
        """`x[idx] = v` on a traced tensor: recorded as an in-place operator.setitem node."""
        self.tracer.create_proxy("call_function", operator.setitem, (self, index, value), {})


class SpecialisingTracerMixin:
    """Records meta values per node (only when some submodule is specialised) and answers shape queries
    with them inside the specialised submodules. Mixed into LeafTracer."""

    def init_specialise(self, specialise: frozenset[str], example_inputs: tuple[torch.Tensor, ...],
                        example_kwargs: dict[str, Any]) -> None:
        self.specialise = specialise
        self.specialise_types: set[type] = set()  # filled by the tracer: the classes of `specialise`
        self.example_meta = [_meta_of(t) for t in example_inputs]
        self.example_kwargs_meta = _to_meta(example_kwargs)
        self.special_depth = int("" in specialise)  # "": the model's own forward is specialised
        self._placeholders = 0

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ShapeProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if self.specialise and isinstance(p, fx.Proxy):
            try:
                p.node.meta[META_VALUE] = self._meta_value(kind, target, args, kwargs)
            except Exception:  # noqa: BLE001 -- no meta value: shape queries on it stay symbolic
                p.node.meta[META_VALUE] = None
        return p

    def _meta_value(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        if kind == "placeholder":
            i = self._placeholders
            self._placeholders += 1
            if i < len(self.example_meta):
                return self.example_meta[i]
            return self.example_kwargs_meta.get(target)
        if kind == "get_attr":
            return _meta_of(_lookup(self.root, str(target)))
        margs, mkwargs = _to_meta(args), _to_meta(kwargs)
        with torch.no_grad():
            if kind == "call_function":
                return target(*margs, **mkwargs)
            if kind == "call_method":
                return getattr(margs[0], target)(*margs[1:], **mkwargs)
            if kind == "call_module":  # runs module code: fx's patches off, so nothing is recorded
                with _patches_reverted():
                    return _run_module_on_meta(_lookup(self.root, target), margs, mkwargs)
        return None

    def concrete_size(self, proxy: fx.Proxy) -> tuple | None:
        if not self.special_depth:
            return None
        value = proxy.node.meta.get(META_VALUE)
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return None
        batch = fx.Proxy.__getattr__(proxy, "size")(0)
        return (batch, *(int(s) for s in value.shape[1:]))

    def to_bool(self, obj: fx.Proxy) -> bool:
        """`if` on a traced value: inside a specialised submodule, branch on its concrete (shape) value."""
        value = obj.node.meta.get(META_VALUE) if self.special_depth else None
        if isinstance(value, (bool, int)):
            return bool(value)
        return super().to_bool(obj)

    def enter_scope(self, path: str, module: nn.Module) -> bool:
        special = path in self.specialise or type(module) in self.specialise_types
        self.special_depth += special
        return special

    def leave_scope(self, special: bool) -> None:
        self.special_depth -= special


def _lookup(root: nn.Module, target: str) -> Any:
    """`root.a.b.c` read through the modules' own dicts (fx patches nn.Module.__getattr__ while tracing)."""
    obj: Any = root
    for part in target.split("."):
        if isinstance(obj, nn.Module):
            found = [d[part] for d in (obj._modules, obj._parameters, obj._buffers) if part in d]
            obj = found[0] if found else object.__getattribute__(obj, part)
        else:
            obj = getattr(obj, part)
    return obj


def _patches_reverted() -> Any:
    """Run real code while tracing: fx patches nn.Module.__call__ and wrapped functions for the trace."""
    from torch.fx import _symbolic_trace

    revert = getattr(_symbolic_trace, "_maybe_revert_all_patches", None)
    return revert() if revert is not None else contextlib.nullcontext()


def on_meta(module: nn.Module) -> Any:
    """Context in which `module`'s parameters and buffers are meta tensors (no memory, no compute)."""
    from torch.nn.utils.stateless import _reparametrize_module

    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    return _reparametrize_module(module, {n: torch.empty_like(t, device="meta") for n, t in tensors.items()})


def _run_module_on_meta(module: nn.Module, args: Any, kwargs: dict) -> Any:
    with on_meta(module):
        return module(*args, **kwargs)
