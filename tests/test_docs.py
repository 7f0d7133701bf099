"""The Python examples in the docs run as written (each file's blocks in order, in one namespace), and the
registrations they make are undone afterwards."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fxprune.registry import Registry

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _registries() -> list[Registry]:
    import fxprune.analysis.registry as rules
    import fxprune.cost.latency_table as latency
    import fxprune.cost.terms as terms
    import fxprune.methods.registry as methods
    import fxprune.rewrite.fixers as fixers
    import fxprune.tracing.tracer as tracer

    found = []
    for module in (rules, latency, terms, methods, fixers, tracer):
        found += [v for v in vars(module).values() if isinstance(v, Registry)]
    return found


@pytest.fixture
def restored_registries():
    saved = [(r, dict(r.items())) for r in _registries()]
    yield
    for registry, entries in saved:
        for key in [k for k in registry.keys() if k not in entries]:
            registry.unregister(key)


def python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), re.S)


@pytest.mark.parametrize("name", ["overview.md", "extending.md"])
def test_doc_examples_run(name, tmp_path, monkeypatch, restored_registries):
    blocks = python_blocks(name)
    assert blocks, f"docs/{name} has no python examples"
    monkeypatch.chdir(tmp_path)  # examples may write plan.json and the like
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/{name}, python block {i + 1}", "exec"), namespace)  # noqa: S102

