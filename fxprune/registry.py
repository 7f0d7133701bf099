"""The one registry type behind every extension table: op rules, module fixers, FLOP splitters, latency-table
shapes and methods.

A registration under a key that is already taken warns (`RegistryCollisionWarning`) and replaces the entry only
when `override=True` is passed; otherwise it is refused with a `RegistryError` that names both entries.
`Registry.override` replaces an entry for the length of a `with` block (tests, experiments) and restores it.

>>> reg = Registry("greetings")
>>> reg.register("en", "hello")
'hello'
>>> reg.register("en", "hi")
Traceback (most recent call last):
...
fxprune.registry.RegistryError: greetings: 'en' is already registered ('hello'); pass override=True to replace it, or use Registry.override(...) in a with block for a scoped replacement.
>>> with reg.override("en", "hi"):
...     reg["en"]
'hi'
>>> reg["en"], reg.list()
('hello', ['en'])
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from fxprune.errors import FxPruneError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class RegistryError(FxPruneError, KeyError):
    """A registration collides with an existing one, or a lookup names nothing registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RegistryCollisionWarning(UserWarning):
    """An entry was replaced by an explicit `override=True` registration."""


class Registry(Generic[K, V]):
    """A named table from keys to entries with collision checks, listing and scoped overrides.

    `describe(key)` renders a key in messages and listings (e.g. a callable's qualified name).
    """

    def __init__(self, name: str, describe: Callable[[K], str] = str) -> None:
        self.name = name
        self.describe = describe
        self._entries: dict[K, V] = {}

    def register(self, key: K, value: V, *, override: bool = False) -> V:
        """Add `value` under `key`; a taken key is refused unless `override=True` (which warns)."""
        if key in self._entries and self._entries[key] is not value:
            old = self._entries[key]
            if not override:
                raise RegistryError(
                    f"{self.name}: {self.describe(key)!r} is already registered ({_short(old)}); pass override=True "
                    f"to replace it, or use Registry.override(...) in a with block for a scoped replacement.")
            warnings.warn(f"{self.name}: {self.describe(key)!r} replaced ({_short(old)} -> {_short(value)}).",
                          RegistryCollisionWarning, stacklevel=2)
        self._entries[key] = value
        return value

    def unregister(self, key: K) -> V:
        """Remove and return the entry under `key` (RegistryError when there is none)."""
        if key not in self._entries:
            raise RegistryError(f"{self.name}: nothing is registered under {self.describe(key)!r}.")
        return self._entries.pop(key)

    def pop(self, key: K, default: V | None = None) -> V | None:
        """Remove and return the entry under `key`, or `default` (dict-style)."""
        return self._entries.pop(key, default)

    @contextlib.contextmanager
    def override(self, key: K, value: V) -> Iterator[V]:
        """`value` under `key` inside the block; the previous entry (or none) afterwards."""
        old = self._entries.get(key, _MISSING)
        self._entries[key] = value
        try:
            yield value
        finally:
            if old is _MISSING:
                self._entries.pop(key, None)
            else:
                self._entries[key] = old

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._entries.get(key, default)

    def __getitem__(self, key: K) -> V:
        try:
            return self._entries[key]
        except KeyError:
            raise RegistryError(f"{self.name}: nothing is registered under {self.describe(key)!r}; registered: "
                                f"{', '.join(self.list()[:20])}.") from None

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)

    def items(self):
        return self._entries.items()

    def keys(self):
        return self._entries.keys()

    def values(self):
        return self._entries.values()

    def list(self) -> list[str]:
        """The registered keys as sorted display names."""
        return sorted(self.describe(k) for k in self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {len(self)} entries)"


def qualified_name(key: object) -> str:
    """A registry key as a name: `torch.nn.modules.conv.Conv2d`, `torch.functional.split`, `Tensor.view`.

    >>> import torch
    >>> qualified_name(torch.nn.Conv2d), qualified_name(("method", "view"))
    ('torch.nn.modules.conv.Conv2d', 'Tensor.view')
    """
    if isinstance(key, tuple) and len(key) == 2 and key[0] == "method":
        return f"Tensor.{key[1]}"
    name = getattr(key, "__qualname__", None) or getattr(key, "__name__", None)
    return f"{getattr(key, '__module__', None) or '?'}.{name}" if name else str(key)


def _short(value: object) -> str:
    """A registered entry in a message: a function or class by its qualified name, anything else by repr."""
    name = getattr(value, "__qualname__", None) or getattr(value, "name", None)
    if name is None:
        return repr(value)[:80]
    return f"{getattr(value, '__module__', '')}.{name}".lstrip(".")
