"""The package graph: stage packages import only downwards, and no module imports itself back in a cycle.

Read off the source with `ast` (every `import` and `from ... import`, at module level or inside functions),
so a lazy import cannot hide an upward dependency or a cycle. The layers, lowest first, are drawn in
docs/overview.md ("The package graph").
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "fxprune"

# Lowest first. A module may import from a lower layer, or from its own stage package; never upwards and
# never from another package of its own layer.
LAYERS: list[set[str]] = [
    {"fxprune.errors"},
    {"fxprune.types", "fxprune.registry", "fxprune.nn"},
    {"fxprune.tracing"},
    {"fxprune.analysis", "fxprune.deploy", "fxprune.data", "fxprune.zoo"},
    {"fxprune.cost"},
    {"fxprune.selection", "fxprune.rewrite"},
    {"fxprune.train"},
    {"fxprune.methods"},
    {"fxprune.stages"},
    {"fxprune.api"},
    {"fxprune.report"},
    {"fxprune.compat"},  # sys.modules aliases for old module paths that saved models name
    {"fxprune"},  # the package root: the public surface, re-exported
    {"fxprune.cli"},
]

# Inside methods/: the shared parts never import a seed method, and the seed methods never import each other.
SEED_METHODS = {"fxprune.methods.tas", "fxprune.methods.dcp", "fxprune.methods.jst", "fxprune.methods.metapruning"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every fxprune module `path` imports (resolving relative imports and `from pkg import submodule`)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block) for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "fxprune")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "fxprune":
                continue
            for a in node.names:  # `from fxprune.cli import models` imports the submodule itself
                sub = ROOT.parent / Path(*f"{base}.{a.name}".split("."))
                out.add(f"{base}.{a.name}" if sub.with_suffix(".py").exists() or sub.is_dir() else base)
    out.discard(name)
    return out


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
GRAPH = {m: imports_of(p) for m, p in MODULES.items()}


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the stage package) of a module: the longest matching entry of LAYERS."""
    best = None
    for i, layer in enumerate(LAYERS):
        for pkg in layer:
            if (module == pkg or module.startswith(pkg + ".")) and (best is None or len(pkg) > len(best[1])):
                best = (i, pkg)
    assert best is not None, f"{module} is in no layer: add its package to LAYERS (and to docs/overview.md)"
    return best


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


def upward(module: str, targets: set[str]) -> list[str]:
    """The imports of `module` that go up or sideways (to another package of its own layer or above)."""
    mine, my_pkg = layer_of(module)
    bad = []
    for target in sorted(targets):
        theirs, their_pkg = layer_of(target)
        if their_pkg != my_pkg and theirs >= mine:
            bad.append(f"{target} (layer {theirs}, {their_pkg})")
    return bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` ({module: modules it imports}), or None. An import of a module's own
    package (its __init__ re-exporting it) is not followed."""
    def deps(m: str) -> list[str]:
        return sorted(t for t in graph.get(m, ()) if t in graph and not m.startswith(t + "."))

    state: dict[str, int] = {}
    for start in sorted(graph):
        if start in state:
            continue
        stack, path = [(start, iter(deps(start)))], [start]
        state[start] = 1
        while stack:
            m, it = stack[-1]
            t = next(it, None)
            if t is None:
                stack.pop()
                path.pop()
                state[m] = 2
            elif state.get(t) == 1:
                return path[path.index(t):] + [t]
            elif t not in state:
                state[t] = 1
                stack.append((t, iter(deps(t))))
                path.append(t)
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module):
    bad = upward(module, GRAPH[module])
    assert not bad, f"{module} (layer {layer_of(module)[0]}) imports upwards or sideways: {', '.join(bad)}"


def _seed_of(module: str) -> str | None:
    return next((s for s in SEED_METHODS if module == s or module.startswith(s + ".")), None)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("fxprune.methods.")))
def test_seed_methods_stand_alone(module):
    seed = _seed_of(module)
    for target in GRAPH[module]:
        other = _seed_of(target)
        assert other is None or other == seed, (
            f"{module} imports {target}: shared method code must not depend on a seed method, nor one seed method "
            f"on another (move what they share to fxprune.methods.search)")


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_look_for():
    assert upward("fxprune.tracing.tracer", {"fxprune.analysis.registry"})  # the lazy import trace.py had
    assert upward("fxprune.cost.model", {"fxprune.deploy.target"}) == []
    assert upward("fxprune.analysis.analyse", {"fxprune.deploy.target"})  # sideways: same layer, other package
    assert find_cycle({"fxprune.a": {"fxprune.b"}, "fxprune.b": {"fxprune.c"}, "fxprune.c": {"fxprune.a"}}) == [
        "fxprune.a", "fxprune.b", "fxprune.c", "fxprune.a"]
    assert find_cycle({"fxprune.x": {"fxprune.x.y"}, "fxprune.x.y": {"fxprune.x"}}) is None
