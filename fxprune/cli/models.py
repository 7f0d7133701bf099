"""MODEL arguments of the console script: one registry of model sources, tried in order, and --input-size.

>>> parse_input_size("3x299x299")
(3, 299, 299)
>>> [name for name in MODEL_SOURCES]
['file', 'torchvision', 'timm', 'cifar', 'factory']
>>> source_of("torchvision.models:resnet18"), source_of("cifar:resnet20"), source_of("resnet18")
('factory', 'cifar', None)
>>> tuple(example_input("cifar:resnet20", None).shape)
(1, 3, 32, 32)
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_INPUT_SIZE = (3, 224, 224)
INPUT_SIZE_OF = {"inception_v3": (3, 299, 299)}  # torchvision names whose default input is not 224x224
CIFAR_INPUT_SIZE = (3, 32, 32)
_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
SAVED_SUFFIXES = (".pt", ".pth")


class UsageError(Exception):
    """Bad command-line usage: reported on stderr with exit code 2."""


@dataclass(frozen=True)
class ModelSource:
    """One MODEL form: whether a spec is of this form, how to build it, its default input size."""

    form: str  # how --help and error messages describe the form
    matches: Callable[[str], bool]
    build: Callable[[str], Any]
    input_size: Callable[[str], tuple[int, ...] | None] = lambda spec: None


def _prefixed(prefix: str) -> Callable[[str], bool]:
    return lambda spec: spec.startswith(prefix + ":") and len(spec) > len(prefix) + 1


def _name(spec: str) -> str:
    return spec.partition(":")[2]


# ----------------------------------------------------------------------------- the sources


def _torchvision_model(spec: str) -> Any:
    import torchvision

    try:
        return torchvision.models.get_model(_name(spec), weights=None)
    except ValueError as e:
        raise UsageError(f"torchvision has no model {_name(spec)!r} ({e}); list them with "
                         f"python -c 'import torchvision; print(torchvision.models.list_models())'") from e


def _timm_model(spec: str) -> Any:
    try:
        import timm
    except ImportError as e:
        raise UsageError("timm:NAME needs the timm package: pip install timm") from e
    if not timm.is_model(_name(spec)):
        raise UsageError(f"timm has no model {_name(spec)!r}; list them with python -c 'import timm; "
                         f"print(timm.list_models())'")
    return timm.create_model(_name(spec), pretrained=False)


def _timm_input_size(spec: str) -> tuple[int, ...] | None:
    try:
        import timm

        cfg = timm.get_pretrained_cfg(_name(spec))
    except Exception:  # noqa: BLE001 -- unknown names are reported by load_model
        return None
    return tuple(cfg.input_size) if cfg is not None and getattr(cfg, "input_size", None) else None


def _cifar_model(spec: str) -> Any:
    from fxprune.zoo import get_cifar_model

    try:
        return get_cifar_model(_name(spec))
    except ValueError as e:
        raise UsageError(str(e)) from e


def _is_saved_file(spec: str) -> bool:
    return Path(spec).is_file() or spec.lower().endswith(SAVED_SUFFIXES)


def _saved_model(spec: str) -> Any:
    """A whole nn.Module saved with torch.save: unpickled, so only for files the user trusts (their own)."""
    import torch

    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"model file {spec!r} does not exist; save one with torch.save(model, {spec!r})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 -- any unpickling failure: say what the file must be
        raise UsageError(f"cannot load {spec!r} with torch.load ({type(e).__name__}: {e}); a MODEL file must be "
                         f"a whole nn.Module saved with torch.save(model, PATH), and the classes it was saved "
                         f"with must be importable") from e
    if isinstance(obj, torch.jit.ScriptModule):
        raise UsageError(f"{spec!r} is a TorchScript archive; fxprune needs the Python module: save it with "
                         f"torch.save(model, PATH), or name its factory as package.module:function")
    if isinstance(obj, dict):
        raise UsageError(f"{spec!r} holds a dict ({len(obj)} entries, a state_dict or checkpoint), not a model; "
                         f"save the whole module with torch.save(model, PATH), or name a factory that builds "
                         f"the architecture as package.module:function")
    return _check_module(obj, spec)


def _import_module(name: str) -> Any:
    """Import `name`; when the module itself is not found, retry with the current directory importable."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        own = e.name is not None and (name == e.name or name.startswith(e.name + "."))
        if own and os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
            return _import_module(name)
        raise


def _factory_model(spec: str) -> Any:
    """`package.module:factory`: import the module, call the factory with no arguments."""
    module_name, _, attr = spec.partition(":")
    try:
        obj = _import_module(module_name)
    except ImportError as e:
        raise UsageError(f"cannot import module {module_name!r} named by MODEL {spec!r} ({type(e).__name__}: "
                         f"{e}); check the spelling and that it is installed or in the current directory") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(obj) if not n.startswith("_"))
            raise UsageError(f"{module_name!r} has no attribute {attr!r} (MODEL {spec!r}); it has "
                             f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{spec!r} names a {type(obj).__name__}, which cannot be called; name a function or "
                         f"class that builds the model")
    try:
        inspect.signature(obj).bind()
    except TypeError as e:
        raise UsageError(f"{spec!r} cannot be called without arguments ({e}); MODEL factories are called with "
                         f"none: wrap it, e.g. def build(): return {attr}(num_classes=10)") from e
    except ValueError:  # no signature (builtins): just call it
        pass
    return _check_module(obj(), spec)


def _check_module(obj: Any, spec: str) -> Any:
    from torch import nn

    if not isinstance(obj, nn.Module):
        raise UsageError(f"MODEL {spec!r} gave a {type(obj).__name__}, not a torch.nn.Module")
    return obj


MODEL_SOURCES: dict[str, ModelSource] = {  # tried in this order: the first whose matches() is true builds
    "file": ModelSource("PATH.pt / PATH.pth (a whole nn.Module saved with torch.save; it is unpickled, so "
                        "load only your own files)", _is_saved_file, _saved_model),
    "torchvision": ModelSource("torchvision:NAME (e.g. torchvision:resnet18; random weights)",
                               _prefixed("torchvision"), _torchvision_model,
                               lambda spec: INPUT_SIZE_OF.get(_name(spec))),
    "timm": ModelSource("timm:NAME (e.g. timm:convnext_tiny; input size from its pretrained_cfg)", _prefixed("timm"),
                        _timm_model, _timm_input_size),
    "cifar": ModelSource("cifar:NAME (fxprune.zoo: resnet20/32/56/110, vgg16_bn, mobilenet_v2; 3x32x32)",
                         _prefixed("cifar"), _cifar_model, lambda spec: CIFAR_INPUT_SIZE),
    "factory": ModelSource("package.module:factory (called with no arguments, e.g. torchvision.models:resnet18)",
                           lambda spec: bool(_FACTORY.match(spec)), _factory_model),
}
MODEL_FORMS = "; ".join(s.form for s in MODEL_SOURCES.values())


def source_of(spec: str) -> str | None:
    """The name of the MODEL_SOURCES entry that handles `spec` (None: no form fits)."""
    return next((name for name, s in MODEL_SOURCES.items() if s.matches(spec)), None)


def load_model(spec: str) -> Any:
    """Build the model a MODEL argument names, in eval mode (registry models have random weights)."""
    name = source_of(spec)
    if name is None:
        raise UsageError(f"unknown model spec {spec!r}; accepted forms: {MODEL_FORMS}")
    return MODEL_SOURCES[name].build(spec).eval()


def default_input_size(spec: str) -> tuple[int, ...]:
    name = source_of(spec)
    return (MODEL_SOURCES[name].input_size(spec) if name else None) or DEFAULT_INPUT_SIZE


def example_input(spec: str, input_size: tuple[int, ...] | None) -> Any:
    """A seeded random batch of one sample: `input_size` or the model's default (3,224,224 for most)."""
    import torch

    torch.manual_seed(0)
    return torch.randn(1, *(input_size or default_input_size(spec)))


def parse_input_size(text: str) -> tuple[int, ...]:
    """'3,224,224' or '3x224x224' -> (3, 224, 224): one sample's shape, without the batch dimension."""
    try:
        dims = tuple(int(p) for p in text.lower().replace("x", ",").split(",") if p.strip())
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"input size {text!r} is not like 3,224,224 (positive ints, no batch dim)")
    return dims


def add_model_args(p: argparse.ArgumentParser, metavar: str = "MODEL", what: str = "model to load") -> None:
    """The MODEL positional (dest `model`) and --input-size."""
    p.add_argument("model", metavar=metavar, help=f"{what}; MODEL forms are listed below")
    p.add_argument("--input-size", type=parse_input_size, default=None, metavar="C,H,W",
                   help="one sample's shape (batch 1 is added); default 3,224,224 (3,299,299 for inception_v3, "
                        "3,32,32 for cifar:NAME, a timm model's pretrained_cfg size)")


MODEL_FORMS_HELP = "MODEL forms (tried in this order):\n" + "\n".join(f"  {s.form}" for s in MODEL_SOURCES.values())
