"""Model -> torch.fx GraphModule with shape metadata and per-node FLOPs.

The tracer follows torch.fx's default leaf policy (modules of `torch.nn` are leaves) plus any module
types the user names in `leaf_modules`. Shapes come from one forward pass on meta tensors (no real compute;
falls back to a real pass for data-dependent ops that meta tensors cannot run). FLOPs per node come from
torch's flop formulas (`fxprune.tracing.flops.FlopCounter`, FlopCounterMode without its module tracker), so
fxprune counts FLOPs exactly as PyTorch does.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from fxprune.errors import TraceError
from fxprune.registry import Registry, qualified_name
from fxprune.tracing import meta
from fxprune.tracing.flops import FlopCounter
from fxprune.tracing.specialise import SpecialisingTracerMixin, on_meta



def as_input_tuple(example_inputs: Any, allow_empty: bool = False) -> tuple[torch.Tensor, ...]:
    """Normalise `example_inputs` (a tensor or a tuple/list of tensors) to a tuple, or raise TypeError. An
    empty tuple is allowed when the inputs come as keywords (`allow_empty`: example_kwargs were given)."""
    items = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if isinstance(items, (tuple, list)) and not items and not allow_empty:
        raise TypeError("example_inputs is empty: pass the forward's positional inputs (a torch.Tensor or a tuple "
                        "of them, e.g. torch.randn(1, 3, 224, 224)); a keyword-only forward (forward(self, *, "
                        "image)) takes example_inputs=() and example_kwargs={'image': x}.")
    if not isinstance(items, (tuple, list)):
        raise TypeError(
            f"example_inputs must be a torch.Tensor or a tuple of tensors, got {type(example_inputs).__name__}. "
            f"Pass e.g. torch.randn(1, 3, 224, 224).")
    for i, t in enumerate(items):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"example_inputs[{i}] is a {type(t).__name__}, not a torch.Tensor. fxprune traces the model "
                f"with tensors only; pass non-tensor options through example_kwargs or bind them with "
                f"functools.partial in a wrapper module.")
    return tuple(items)


MAX_FALLBACKS = 64

HasRule = Callable[[Any], bool]  # a module class or function -> does the analysis have a rule for exactly it


def _no_rules(key: Any) -> bool:
    return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


class LeafTracer(SpecialisingTracerMixin, fx.Tracer):
    """fx.Tracer with a leaf-module policy; remembers which module it was inside when tracing fails.

    Leaves: torch.nn modules (fx's default), instances of the user's `leaf_modules` types, the submodules
    named in `leaf_names` (the automatic fallback), and modules / functions that timm registered as
    not traceable *when fxprune has a channel rule for that exact class or function* (others are traced
    through: a leaf without a rule is opaque and freezes its channels, so tracing in is tried first).
    Submodules named in `specialise` are traced with concrete shapes (see fxprune.tracing.specialise).
    """

    def __init__(self, leaf_modules: Sequence[type] = (), leaf_names: frozenset[str] = frozenset(),
                 specialise: frozenset[str] = frozenset(), example_inputs: tuple[torch.Tensor, ...] = (),
                 example_kwargs: dict[str, Any] | None = None, has_rule: HasRule = _no_rules) -> None:
        self.has_rule = has_rule
        ruled_modules, ruled_functions = _timm_notrace(True, has_rule)
        super().__init__(autowrap_functions=tuple(ruled_functions))
        self.leaf_types = tuple(leaf_modules) + tuple(ruled_modules)
        self.leaf_names = leaf_names
        self.fxprune_scope: list[str] = []
        self.init_specialise(specialise, example_inputs, example_kwargs or {})

    def trace(self, root, concrete_args=None):  # noqa: ANN001 -- fx.Tracer's signature
        if isinstance(root, nn.Module) and self.specialise:  # same class, same code: specialise them all
            self.specialise_types = {type(root.get_submodule(p)) for p in self.specialise}
        with _wraps_without_rules_lifted(self.has_rule):
            return super().trace(root, concrete_args)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        """Parameters come back as get_attr proxies, as in fx, but looked up by identity in a table built
        once (fx scans every named parameter on every access: quadratic in the model size). Inside
        shape-specialised submodules buffers are proxied too, so that `self.table.expand(B, -1)` with a
        traced B is recorded instead of run (fx proxies a buffer only when it is passed to an op)."""
        is_param = isinstance(attr_val, nn.Parameter)
        if not is_param and not (self.special_depth and type(attr_val) is torch.Tensor):
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        name = self._tensor_names(buffers=not is_param).get(id(attr_val))
        if name is None:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def _tensor_names(self, buffers: bool) -> dict[int, str]:
        key = "_fxprune_buffer_names" if buffers else "_fxprune_param_names"
        if key not in self.__dict__:
            named = self.root.named_buffers() if buffers else self.root.named_parameters()
            table: dict[int, str] = {}
            for n, t in named:
                table.setdefault(id(t), n)
            self.__dict__[key] = table
        return self.__dict__[key]

    def create_arg(self, a: Any) -> Any:
        """Keep the type of structured outputs: dataclasses (Hugging Face's ModelOutput, an OrderedDict
        dataclass, included) and dict subclasses are rebuilt by a call to their class in the graph."""
        if dataclasses.is_dataclass(a) and not isinstance(a, type):
            kwargs = {f.name: self.create_arg(getattr(a, f.name)) for f in dataclasses.fields(a) if f.init}
            return self.create_node("call_function", type(a), (), kwargs)
        if isinstance(a, dict) and type(a) is not dict and not isinstance(a, fx.immutable_collections.immutable_dict):
            return self.create_node("call_function", type(a), (super().create_arg(dict(a)),), {})
        return super().create_arg(a)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m) or type(m).__name__
        self.fxprune_scope.append(path)
        special = self.enter_scope(path, m)
        out = super().call_module(m, forward, args, kwargs)
        self.leave_scope(special)
        self.fxprune_scope.pop()
        return out


def _timm_notrace(with_rules: bool, has_rule: HasRule) -> tuple[list[type], list[Any]]:
    """timm's notrace modules and functions that do (`with_rules=True`) or do not have an fxprune rule
    registered for exactly them (`has_rule`: the analysis's answer; tracing does not import the analysis)."""
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:  # timm is optional
        return [], []

    def pick(items: Any) -> list[Any]:
        return [x for x in items if has_rule(x) == with_rules]

    return pick(getattr(timm_fx, "_leaf_modules", ())), pick(getattr(timm_fx, "_autowrap_functions", ()))


# Libraries whose torch.fx.wrap'ed functions are traced through when fxprune has no rule for them (they wrap
# for their own tracing needs; the bodies are ordinary torch code). torchvision.ops (RoIAlign and friends) call
# compiled operators and stay one node; so does a function the user wrapped (they register a rule for it).
LIFT_WRAPPED = ("timm.", "torchvision.models.")


@contextlib.contextmanager
def _wraps_without_rules_lifted(has_rule: HasRule) -> Iterator[None]:
    """Libraries mark some functions with `torch.fx.wrap` (always one opaque call_function node): timm's
    notrace functions, torchvision's Swin3D attention and MViT helpers. For those of `LIFT_WRAPPED` libraries
    fxprune has no rule for, trace through them instead: an opaque node would stop the analysis at every channel
    it touches. (Shape-dependent code inside them is handled by the specialising fallback.)"""
    from torch.fx import _symbolic_trace as st

    table = getattr(st, "_wrapped_fns_to_patch", None)
    lifted = {}
    if isinstance(table, dict):
        for key, frame_globals in list(table.items()):
            fn = frame_globals.get(key[1])
            module = getattr(fn, "__module__", "") or ""
            if fn is not None and not has_rule(fn) and module.startswith(LIFT_WRAPPED):
                lifted[key] = table.pop(key)
    try:
        yield
    finally:
        if lifted:
            table.update(lifted)


def trace(model: nn.Module, example_inputs: Any, *, leaf_modules: Sequence[type] = (),
          example_kwargs: dict[str, Any] | None = None, copy_model: bool = True,
          has_rule: HasRule = _no_rules) -> fx.GraphModule:
    """Trace `model` into a GraphModule annotated with shapes and FLOPs.

    The model is deep-copied first (unless `copy_model=False`, which still copies the module objects but
    shares their parameters and buffers), so nothing done during tracing or to the graph module reaches
    the caller's model. When torch.fx fails inside a submodule (say, an `if` on a shape), tracing is
    retried with that innermost submodule traced on concrete shapes (fxprune.tracing.specialise; listed in
    `gm.meta["fxprune_specialised"]`); if it still fails there, it becomes an opaque leaf (listed with the
    reason in `gm.meta["fxprune_auto_leaves"]`) whose entering and leaving channels the analysis keeps.
    A failure outside every submodule raises TraceError. `has_rule(cls_or_fn)` says whether the analysis has
    a channel rule for exactly that class or function (`fxprune.trace` passes the analysis's answer): timm's
    not-traceable parts with a rule stay single nodes, the others are traced through.

    >>> import torch, torchvision, fxprune
    >>> gm = fxprune.trace(torchvision.models.resnet18(weights=None), torch.randn(1, 3, 64, 64))
    >>> gm.graph.find_nodes(op="placeholder")[0].meta["fxprune_shape"]
    (1, 3, 64, 64)
    """
    inputs = as_input_tuple(example_inputs, allow_empty=bool(example_kwargs))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    model = unwrap(model)
    kwargs = example_kwargs or {}
    auto: dict[str, str] = {}  # submodule -> why it is an opaque leaf
    special: dict[str, str] = {}  # submodule -> why it is traced with concrete shapes
    while True:
        root = copy.deepcopy(model, _detached(model)) if copy_model else _structural_copy(model)
        tracer = LeafTracer(leaf_modules, frozenset(auto), frozenset(special), inputs, kwargs, has_rule)
        try:
            graph = tracer.trace(root, concrete_args=_unused_defaults(model, len(inputs), kwargs))
            break
        except Exception as exc:  # noqa: BLE001 -- any tracing failure: specialise, make a leaf, or raise
            where = tracer.fxprune_scope[-1] if tracer.fxprune_scope else ""
            inside = "" in special or any(where == s or where.startswith(s + ".") for s in special)
            if (not where and inside) or where in auto or len(auto) + len(special) >= MAX_FALLBACKS:
                raise _trace_error(model, tracer, exc) from exc
            (auto if inside and where else special)[where] = _one_line(exc)
    _name_baked_inputs(graph, {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)})
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    gm.meta[meta.AUTO_LEAVES] = auto
    gm.meta[meta.SPECIALISED] = {k: v for k, v in special.items() if k not in auto}
    propagate_shapes(gm, inputs, kwargs)
    return gm


# Wrappers whose own forward is not the model's: traced (and pruned) is the module they wrap.
WRAPPERS: dict[str, str] = {"OptimizedModule": "_orig_mod",  # torch.compile(model)
                            "DataParallel": "module", "DistributedDataParallel": "module"}


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile / DataParallel / DistributedDataParallel wrappers (the model itself when
    it is not wrapped). The slim model is the inner one: compile or wrap it again after pruning."""
    while type(model).__name__ in WRAPPERS and isinstance(getattr(model, WRAPPERS[type(model).__name__], None),
                                                           nn.Module):
        model = getattr(model, WRAPPERS[type(model).__name__])
    return model


def _detached(model: nn.Module) -> dict[int, Any]:
    """A deepcopy memo that copies the non-leaf tensors a module keeps in plain attributes (a cache filled by
    a forward run with autograd on, e.g. timm's LeViT attention biases) as detached tensors: deepcopy refuses
    tensors that are not graph leaves."""
    memo: dict[int, Any] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if value.grad_fn is not None and id(value) not in memo:
                memo[id(value)] = value.detach().clone()
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    for m in model.modules():
        for name, value in vars(m).items():
            if name not in ("_parameters", "_buffers", "_modules"):
                visit(value)
    return memo


def _structural_copy(model: nn.Module) -> nn.Module:
    """Copy the module tree (so forward-time attribute writes, e.g. caches, stay off the caller's model)
    while sharing parameters and buffers (cheap; tracing never writes to them)."""
    memo: dict[int, Any] = _detached(model)
    memo.update({id(t): t for t in model.parameters()})
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


def _unused_defaults(model: nn.Module, n_inputs: int, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Forward parameters the caller does not pass keep their defaults in the graph (so `if y is None`
    takes the branch the caller's call takes, instead of tracing `y` as a tensor), and keyword inputs that are
    not tensors (`num_flow_updates=12`, `return_dict=False`) are baked in as the constants they are."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    fixed = {p.name: p.default for p in params[n_inputs:]
             if p.name not in kwargs and p.default is not inspect.Parameter.empty
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    fixed.update({k: v for k, v in kwargs.items() if k in named and not isinstance(v, torch.Tensor)})
    return fixed or None


def _name_baked_inputs(graph: fx.Graph, baked: dict[str, Any]) -> None:
    """fx names the placeholder of a constant keyword input `name_1`, with the forward's default: give it back
    its own name and the value it was traced with, so the pruned module is called as the model is
    (`slim(a, b, num_flow_updates=2)`, or without it); fx's assert still refuses another value."""
    for node in graph.nodes:
        if node.op != "placeholder":
            continue
        name = node.target.rsplit("_", 1)[0] if node.target.rsplit("_", 1)[-1].isdigit() else node.target
        if name in baked and name not in {n.target for n in graph.nodes if n.op == "placeholder"}:
            node.target, node.args = name, (baked[name],)


def _trace_error(model: nn.Module, tracer: LeafTracer, exc: Exception) -> TraceError:
    where = tracer.fxprune_scope[-1] if tracer.fxprune_scope else ""
    sub = model.get_submodule(where) if where else model
    cls = type(sub).__name__
    place = f"submodule '{where}' ({cls})" if where else f"model {cls}"
    if not where:
        return TraceError(
            f"torch.fx could not trace {place}: {type(exc).__name__}: {exc}. The failure is in the model's own "
            f"forward, outside any submodule, so no part of it can be made an opaque leaf. This usually means "
            f"data-dependent control flow (an `if` on a tensor value) or an untraceable call there. Fix: move "
            f"that code into a submodule (fxprune then treats it as a leaf and keeps its channels), or make "
            f"the forward traceable.")
    return TraceError(
        f"torch.fx could not trace {place}: {type(exc).__name__}: {exc}. This usually means data-dependent "
        f"control flow (an `if` on a tensor value) or an untraceable call. Fix: treat it as an opaque leaf, "
        f"e.g. fxprune.prune(model, x, leaf_modules=({cls},)) -- its channels are then kept -- or make its "
        f"forward traceable.")


NO_FLOPS = "no_flops"  # the FLOP counter never charges it: run it outside the counter (skips slow decompositions)
SAME_SHAPE = "same_shape"  # output has the input's shape and dtype, no FLOPs: on meta tensors it need not run
SHAPE_SHORTCUTS: Registry[Any, str] = Registry("shape-pass shortcuts", describe=qualified_name)


def register_shape_shortcut(*keys: Any, kind: str, override: bool = False) -> None:
    """Declare module classes (and subclasses) or functions the shape pass may shortcut: `NO_FLOPS` ones run
    outside the FLOP counter (it counts matmuls, convs and attention only), `SAME_SHAPE` modules do not run on
    meta tensors at all."""
    if kind not in (NO_FLOPS, SAME_SHAPE):
        raise ValueError(f"register_shape_shortcut: kind must be {NO_FLOPS!r} or {SAME_SHAPE!r}, got {kind!r}.")
    for key in keys:
        SHAPE_SHORTCUTS.register(key, kind, override=override)


register_shape_shortcut(nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.GELU,
                        nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Dropout, nn.Identity, kind=SAME_SHAPE)
register_shape_shortcut(nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, torch.nn.functional.batch_norm,
                        torch.nn.functional.layer_norm, torch.nn.functional.group_norm, kind=NO_FLOPS)


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, counter: FlopCounter) -> None:
        super().__init__(gm)
        self.counter = counter
        self.modules = dict(gm.named_modules())
        types = [(k, v) for k, v in SHAPE_SHORTCUTS.items() if isinstance(k, type)]
        self.no_flop_types = tuple(k for k, _ in types)
        self.same_shape_types = tuple(k for k, v in types if v == SAME_SHAPE)
        self.no_flop_functions = {k for k in SHAPE_SHORTCUTS.keys() if not isinstance(k, type)}

    def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple, dict]:
        """The node's arguments with fx's immutable lists and dicts thawed: a wrapped function may mutate a list
        it is given (torchvision's Swin3D `_get_window_and_shift_size` does), as it can when the module runs."""
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        return _thawed(args), _thawed(kwargs)

    def _may_have_flops(self, n: fx.Node) -> bool:
        if n.op == "call_module":
            return not isinstance(self.modules[n.target], self.no_flop_types)
        if n.op == "call_function":
            return n.target not in self.no_flop_functions
        return n.op == "call_method"

    def _same_shape_input(self, n: fx.Node) -> torch.Tensor | None:
        if n.op == "call_module" and len(n.args) == 1 and not n.kwargs and isinstance(
                self.modules[n.target], self.same_shape_types):
            x = self.env.get(n.args[0]) if isinstance(n.args[0], fx.Node) else None
            if isinstance(x, torch.Tensor) and x.device.type == "meta":
                return x
        return None

    def run_node(self, n: fx.Node) -> Any:
        shortcut = self._same_shape_input(n)
        if shortcut is not None:
            meta.record(n, _shape_of(shortcut), 0, shortcut.dtype)
            return shortcut
        if not self._may_have_flops(n):
            with _suspended(self.counter):
                out = super().run_node(n)
            meta.record(n, _shape_of(out), 0, _dtype(out))
            return out
        before = self.counter.get_total_flops()
        out = super().run_node(n)
        meta.record(n, _shape_of(out), self.counter.get_total_flops() - before, _dtype(out))
        return out


def _thawed(value: Any) -> Any:
    if isinstance(value, fx.immutable_collections.immutable_list):
        return [_thawed(v) for v in value]
    if isinstance(value, fx.immutable_collections.immutable_dict):
        return {k: _thawed(v) for k, v in value.items()}
    if type(value) is tuple:
        return tuple(_thawed(v) for v in value)
    return value


def _dtype(value: Any) -> torch.dtype | None:
    return value.dtype if isinstance(value, torch.Tensor) else None


class _suspended:
    """Temporarily leave a dispatch mode (the FLOP counter) for ops it would not charge anyway."""

    def __init__(self, mode: FlopCounter) -> None:
        self.mode = mode

    def __enter__(self) -> None:
        from torch.utils._python_dispatch import _pop_mode_temporarily

        self.ctx = _pop_mode_temporarily()
        self.ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.ctx.__exit__(*exc)


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(int(s) for s in value.shape)
    if isinstance(value, (tuple, list)):
        return [_shape_of(v) for v in value]
    if isinstance(value, dict):
        return {k: _shape_of(v) for k, v in value.items()}
    return None


def propagate_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], kwargs: dict[str, Any]) -> None:
    """Record output shapes and FLOPs on every node (a meta pass first, a real pass as fallback)."""
    args = _bind_inputs(gm, inputs, kwargs)
    try:
        _run_on_meta(gm, args)
    except Exception:  # noqa: BLE001 -- meta tensors cannot run data-dependent ops; a real pass can
        saved = {n: b.detach().clone() for n, b in gm.named_buffers()}
        try:
            _run_recorder(gm, args)
        finally:  # a training-mode forward updates BN statistics: put them back
            with torch.no_grad():
                for n, b in gm.named_buffers():
                    if n in saved and b.shape == saved[n].shape:
                        b.copy_(saved[n])


def _run_on_meta(gm: fx.GraphModule, args: list[Any]) -> None:
    """Shapes and FLOPs without computing anything: parameters and inputs swapped for meta tensors."""
    meta_args = [torch.empty_like(a, device="meta") if isinstance(a, torch.Tensor) else a for a in args]
    with on_meta(gm):
        _run_recorder(gm, meta_args)


def _run_recorder(gm: fx.GraphModule, args: list[Any]) -> None:
    counter = FlopCounter()
    with torch.no_grad(), counter:
        _ShapeRecorder(gm, counter).run(*args)


def _bind_inputs(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], kwargs: dict[str, Any]) -> list[Any]:
    placeholders = gm.graph.find_nodes(op="placeholder") if hasattr(gm.graph, "find_nodes") else [
        n for n in gm.graph.nodes if n.op == "placeholder"]
    args: list[Any] = list(inputs)
    for ph in placeholders[len(inputs):]:
        if ph.target in kwargs:
            args.append(kwargs[ph.target])
        elif ph.args:
            args.append(ph.args[0])
        else:
            raise TypeError(f"the model's forward needs an input '{ph.target}' that example_inputs does not give; "
                            f"pass it positionally or in example_kwargs.")
    return args
