"""Method options as typed config dataclasses: one per method, its defaults written once.

Every registered method has a config class (`register_method(..., config=...)`): a dataclass whose field
names are the option keys `fxprune.prune(..., **options)` and the CLI's `-o KEY=VALUE` accept, and whose
defaults are the method's defaults. `MethodConfig.from_options` checks the keys before any work is done: a
misspelled option is an error that names the method, the key, the closest valid key and every valid one.
Scalar fields (`int`, `float`, `str`, `bool`, optionally `| None`) are converted to their type; `None` for a
field that does not admit it means the default. `validate()` checks the values (e.g. a choice among names).

>>> from dataclasses import dataclass
>>> @dataclass
... class ToyConfig(MethodConfig):
...     toy_batches: int = 4
...     toy_scale: float = 1.0
>>> ToyConfig.from_options({"toy_batches": "8"}, method="toy")
ToyConfig(toy_batches=8, toy_scale=1.0)
>>> ToyConfig.from_options({"toy_batchs": 8}, method="toy")
Traceback (most recent call last):
...
fxprune.errors.MethodOptionError: method 'toy' has no option 'toy_batchs' (did you mean 'toy_batches'?). Its options: toy_batches, toy_scale.
>>> ToyConfig.from_options({"toy_scale": "big"}, method="toy")
Traceback (most recent call last):
...
fxprune.errors.MethodOptionError: method 'toy': option toy_scale='big' must be a float.
"""
from __future__ import annotations

import contextvars
import dataclasses
import difflib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, Union, get_args, get_origin

from fxprune.errors import MethodOptionError

C = TypeVar("C", bound="MethodConfig")

_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}
_METHOD: contextvars.ContextVar[str | None] = contextvars.ContextVar("fxprune_method_config", default=None)


@dataclass
class MethodConfig:
    """The options of a method that takes none; the base of every method's config dataclass."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, kind, optional = getattr(self, f.name), *_scalar_type(f.type)
            if kind is None:
                continue
            if value is None:
                if not optional:  # None stands for the default
                    setattr(self, f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
                continue
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                try:
                    setattr(self, f.name, kind(value))
                except (TypeError, ValueError):
                    name = _METHOD.get() or type(self).__name__
                    raise MethodOptionError(f"method {name!r}: option {f.name}={value!r} must be "
                                            f"{'an' if kind is int else 'a'} {kind.__name__}.") from None
        self.validate()

    def validate(self) -> None:
        """Check the option values together (override it; raise ValueError naming the option)."""

    @classmethod
    def options(cls) -> list[str]:
        """The option keys, sorted."""
        return sorted(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_options(cls: type[C], options: Mapping[str, Any] | None = None, *, method: str | None = None) -> C:
        """The config of `options` (the keyword options given to `fxprune.prune`): every key must be a field."""
        options = dict(options or {})
        valid = cls.options()
        name = method or cls.__name__
        for key in options:
            if key not in valid:
                raise MethodOptionError(_unknown(name, key, valid))
        token = _METHOD.set(name)
        try:
            return cls(**options)
        finally:
            _METHOD.reset(token)

    def to_options(self) -> dict[str, Any]:
        """{option key: value} of every option (values as they are, not copied)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def changed_options(self) -> dict[str, Any]:
        """{option key: value} of the options that differ from the defaults (what a plan records)."""
        default = type(self)()
        return {k: v for k, v in self.to_options().items() if v != getattr(default, k)}


@dataclass
class SeedOption(MethodConfig):
    """`seed`: the random seed of a method that draws random numbers. Every built-in method accepts it (those
    that draw none ignore it), so one seed can be passed whatever the method."""

    seed: int = 0


@dataclass
class SearchOptions(SeedOption):
    """The options every learned search shares: `seed` and `progress` (progress bars)."""

    progress: bool = True


def _unknown(method: str, key: str, valid: list[str]) -> str:
    if not valid:
        return (f"method {method!r} takes no options, got {key!r} (a method's options are the fields of the config "
                f"dataclass it is registered with: register_method(..., config=...)).")
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"method {method!r} has no option {key!r}{hint}. Its options: {', '.join(valid)}."


def _scalar_type(annotation: Any) -> tuple[type | None, bool]:
    """(int / float / str / bool or None, whether None is allowed) of a field annotation (a string under
    `from __future__ import annotations`, else a type)."""
    if isinstance(annotation, str):
        parts = [p.strip() for p in annotation.split("|")]
        optional = "None" in parts
        rest = [p for p in parts if p != "None"]
        return (_SCALARS.get(rest[0]) if len(rest) == 1 else None), optional
    if get_origin(annotation) in (Union, types.UnionType):
        args = get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        kind = rest[0] if len(rest) == 1 and rest[0] in _SCALARS.values() else None
        return kind, len(rest) < len(args)
    return (annotation if annotation in _SCALARS.values() else None), False
