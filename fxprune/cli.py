"""The `fxprune` console script: analyse, prune, export, methods, demo.

Every subcommand is one entry of `COMMANDS` (name -> help, argument adder, runner). Exit codes: 0 ok,
1 when fxprune (or the model) refuses the request, 2 for bad usage (unknown model spec, bad input size).
Set FXPRUNE_DEBUG=1 to see the traceback of a refused request.

>>> parse_input_size("3,64,64")
(3, 64, 64)
>>> parse_input_size("3x299x299")
(3, 299, 299)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fxprune
from fxprune.errors import FxPruneError

EPILOG = """examples:
  fxprune demo
  fxprune methods
  fxprune analyse torchvision:resnet18
  fxprune prune cifar:resnet56 --method fpgm --flops 0.5 --out runs/r56
  fxprune prune cifar:resnet20 --method taylor --flops 0.5 --data cifar10 --epochs 2 --kd --out runs/r20
  fxprune analyse torchvision:inception_v3 --json
  fxprune prune torchvision:resnet50 --method l1 --flops 0.5 --round-to 8 --out runs/r50
  fxprune prune torchvision:mobilenet_v3_small --ratio 0.3 --input-size 3,160,160 --out runs/mnv3
  fxprune export torchvision:resnet50 --plan runs/r50/plan.json --format torchscript --out r50.pt

  fxprune prune timm:convnext_tiny --ratio 0.5 --out runs/cnx

MODEL forms: torchvision:NAME (torchvision.models.get_model(NAME, weights=None), random weights),
             timm:NAME (timm.create_model(NAME, pretrained=False), input size from its pretrained_cfg)
             cifar:NAME (fxprune.zoo CIFAR models: resnet20/32/56/110, vgg16_bn, mobilenet_v2; 3x32x32)
"""
MODEL_FORMS = ("torchvision:NAME (e.g. torchvision:resnet18), timm:NAME (e.g. timm:convnext_tiny) or cifar:NAME "
               "(fxprune.zoo: resnet20/32/56/110, vgg16_bn, mobilenet_v2)")
DEFAULT_INPUT_SIZE = (3, 224, 224)
INPUT_SIZE_OF = {"inception_v3": (3, 299, 299), "cifar": (3, 32, 32)}
FORMAT_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}
DEMO_MODEL = "torchvision:resnet18"


class UsageError(Exception):
    """Bad command-line usage: reported on stderr with exit code 2."""


# ----------------------------------------------------------------------------- helpers


def parse_input_size(text: str) -> tuple[int, ...]:
    """'3,224,224' or '3x224x224' -> (3, 224, 224): one sample's shape, without the batch dimension."""
    try:
        dims = tuple(int(p) for p in text.lower().replace("x", ",").split(",") if p.strip())
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"input size {text!r} is not like 3,224,224 (positive ints, no batch dim)")
    return dims


def _torchvision_model(name: str):
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None)
    except ValueError as e:
        raise UsageError(f"torchvision has no model {name!r} ({e}); list them with "
                         f"python -c 'import torchvision; print(torchvision.models.list_models())'") from e


def _timm_model(name: str):
    try:
        import timm
    except ImportError as e:
        raise UsageError("timm:NAME needs the timm package: pip install timm") from e
    if not timm.is_model(name):
        raise UsageError(f"timm has no model {name!r}; list them with python -c 'import timm; "
                         f"print(timm.list_models())'")
    return timm.create_model(name, pretrained=False)


def _timm_input_size(name: str) -> tuple[int, ...] | None:
    try:
        import timm

        cfg = timm.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 -- unknown names are reported by load_model
        return None
    return tuple(cfg.input_size) if cfg is not None and getattr(cfg, "input_size", None) else None


def _cifar_model(name: str):
    from fxprune.zoo import get_cifar_model

    try:
        return get_cifar_model(name)
    except ValueError as e:
        raise UsageError(str(e)) from e


MODEL_SOURCES = {"torchvision": _torchvision_model, "timm": _timm_model, "cifar": _cifar_model}  # prefix -> builder


def load_model(spec: str):
    """Build the model a MODEL argument names, in eval mode, with random weights (no downloads)."""
    kind, _, name = spec.partition(":")
    if kind not in MODEL_SOURCES or not name:
        raise UsageError(f"unknown model spec {spec!r}; accepted forms: {MODEL_FORMS}")
    return MODEL_SOURCES[kind](name).eval()


def example_input(spec: str, input_size: tuple[int, ...] | None):
    import torch

    kind, _, name = spec.partition(":")
    default = (_timm_input_size(name) if kind == "timm" else None) or INPUT_SIZE_OF.get(
        kind if kind == "cifar" else name, DEFAULT_INPUT_SIZE)
    size = input_size or default
    torch.manual_seed(0)
    return torch.randn(1, *size)


def model_and_input(args: argparse.Namespace):
    model = load_model(args.model)  # spec errors first: no tensor work for a typo
    return model, example_input(args.model, args.input_size)


def budget_of(args: argparse.Namespace) -> dict[str, float]:
    return {k: getattr(args, k) for k in ("flops", "params", "ratio") if getattr(args, k) is not None}


def write_outputs(res: Any, x: Any, out: Path) -> dict[str, Path]:
    """Save plan, report (text and JSON) and the parity-checked ONNX export of a PruneResult under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / n for k, n in
             (("plan", "plan.json"), ("report", "report.txt"), ("report_json", "report.json"), ("onnx", "slim.onnx"))}
    res.plan.save(paths["plan"])
    paths["report"].write_text(str(res.report) + "\n")
    paths["report_json"].write_text(json.dumps(res.report.to_dict(), indent=1) + "\n")
    fxprune.export(res.model.cpu(), x, paths["onnx"])
    return paths


def _cifar10_data(path: str):
    from fxprune.data import cifar10_loaders

    try:
        return cifar10_loaders(path or None, batch_size=128)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e


DATA_SOURCES = {"cifar10": _cifar10_data}  # --data NAME[:PATH] -> (train, test) loaders
DATA_INPUT_SIZE = {"cifar10": (3, 32, 32)}


def parse_data(text: str) -> tuple[str, str]:
    """'cifar10' (the vendored subset) or 'cifar10:PATH' (the full archive) -> (name, path)."""
    name, _, path = text.partition(":")
    if name not in DATA_SOURCES:
        raise argparse.ArgumentTypeError(f"unknown data {text!r}; use {', '.join(DATA_SOURCES)}[:PATH] (no PATH: "
                                         f"the vendored subset)")
    return name, path


def data_options(args: argparse.Namespace) -> dict[str, Any]:
    """prune() keyword arguments for --data / --epochs / --kd / --steps / --scope."""
    opts: dict[str, Any] = {} if args.scope is None else {"scope": args.scope}
    if args.data is None:
        if args.epochs or args.kd or args.steps > 1:
            raise UsageError("--epochs, --kd and --steps fine-tune: they need --data (e.g. --data cifar10)")
        return opts
    from fxprune.train import Finetune

    train, test = DATA_SOURCES[args.data[0]](args.data[1])
    opts.update(data=train, eval_data=test, steps=args.steps)
    if args.epochs or args.steps > 1:
        opts["finetune"] = Finetune(epochs=max(args.epochs, 1), kd=args.kd, progress=not args.json)
    return opts


def prune_and_write(model: Any, x: Any, out: Path, method: str, budget: dict, round_to: int, as_json: bool,
                    **options: Any) -> int:
    res = fxprune.prune(model, x, method=method, round_to=round_to, **budget, **options)
    paths = write_outputs(res, x, out)
    if as_json:
        print(json.dumps({"report": res.report.to_dict(), "files": {k: str(p) for k, p in paths.items()}}, indent=1))
    else:
        print(res.report)
        print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def group_rows(groups: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"id": g.id, "size": g.size, "frozen": len(g.frozen), "origin": g.origin,
             "why_frozen": sorted(set(g.frozen.values()))} for g in groups]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The groups, then why each partly or wholly frozen group keeps its channels."""
    head = f"{'id':>4} {'size':>6} {'#frozen':>8}  origin"
    lines = [head] + [f"{r['id']:>4} {r['size']:>6} {r['frozen']:>8}  {r['origin']}" for r in rows]
    lines += [f"frozen group {r['id']}: {'; '.join(r['why_frozen'])}" for r in rows if r["why_frozen"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- subcommands


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=f"model to load; accepted forms: {MODEL_FORMS}")
    p.add_argument("--input-size", type=parse_input_size, default=None, metavar="C,H,W",
                   help="one sample's shape (batch 1 is added); default 3,224,224 (3,299,299 for inception_v3)")


def add_analyse(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the groups as JSON")


def run_analyse(args: argparse.Namespace) -> int:
    model, x = model_and_input(args)
    groups = fxprune.analyse(model, x)
    if args.json:
        rows = [{**r, "frozen": {str(k): v for k, v in g.frozen.items()}, "members": [str(m) for m in g.members]}
                for r, g in zip(group_rows(groups), groups)]
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(group_rows(groups)))
        print(f"{len(groups)} channel groups")
    return 0


def add_prune(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--method", default="l1", help="scoring method (see `fxprune methods`); default l1")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--flops", type=float, help="keep this fraction of the FLOPs, e.g. 0.5")
    budget.add_argument("--params", type=float, help="keep this fraction of the parameters")
    budget.add_argument("--ratio", type=float, help="remove this fraction of each group's channels")
    p.add_argument("--round-to", type=int, default=1, metavar="N", help="kept widths are multiples of N")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="writes DIR/plan.json, report.txt, report.json, slim.onnx")
    p.add_argument("--scope", choices=("global", "local"), default=None,
                   help="global: one threshold over all groups; local: every group loses the same fraction")
    p.add_argument("--data", type=parse_data, default=None, metavar="cifar10[:PATH]",
                   help="training data for data-driven methods and fine-tuning (no PATH: the vendored subset)")
    p.add_argument("--epochs", type=int, default=0, help="fine-tune the slim model for N epochs (needs --data)")
    p.add_argument("--kd", action="store_true", help="distil from the dense model while fine-tuning")
    p.add_argument("--steps", type=int, default=1, help="iterative pruning in N prune / fine-tune rounds")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run_prune(args: argparse.Namespace) -> int:
    if args.data is not None and args.input_size is None:
        args.input_size = DATA_INPUT_SIZE[args.data[0]]
    options = data_options(args)
    model, x = model_and_input(args)
    return prune_and_write(model, x, args.out, args.method, budget_of(args), args.round_to, args.json, **options)


def add_export(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--plan", type=Path, required=True, help="plan.json written by `fxprune prune`")
    p.add_argument("--format", choices=sorted(FORMAT_SUFFIX), default=None,
                   help="default: from the suffix of --out (.onnx, .pt, .pt2)")
    p.add_argument("--out", type=Path, required=True, metavar="PATH", help="file to write")


def export_path(out: Path, fmt: str | None) -> Path:
    if fmt is None:
        if out.suffix not in FORMAT_SUFFIX.values():
            raise UsageError(f"cannot tell the format of {out}: give --format or a .onnx/.pt/.pt2 suffix")
        return out
    want = FORMAT_SUFFIX[fmt]
    if out.suffix and out.suffix != want:
        raise UsageError(f"--format {fmt} writes a {want} file, but --out is {out}")
    return out.with_suffix(want)


def run_export(args: argparse.Namespace) -> int:
    path = export_path(args.out, args.format)
    model, x = model_and_input(args)
    slim = fxprune.apply_plan(model, x, fxprune.PruningPlan.load(args.plan))
    path.parent.mkdir(parents=True, exist_ok=True)
    fxprune.export(slim, x, path)
    print(f"wrote {path}")
    return 0


def run_methods(args: argparse.Namespace) -> int:
    print("\n".join(fxprune.list_methods()))
    return 0


def add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR", help="default runs/demo")


def run_demo(args: argparse.Namespace) -> int:
    print(f"demo: {DEMO_MODEL} (random weights), input 1x3x224x224, method l1, keep 50% of FLOPs\n")
    model, x = load_model(DEMO_MODEL), example_input(DEMO_MODEL, DEFAULT_INPUT_SIZE)
    return prune_and_write(model, x, args.out, "l1", {"flops": 0.5}, 1, as_json=False)


@dataclass(frozen=True)
class Command:
    help: str
    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "analyse": Command("print the model's channel groups", add_analyse, run_analyse),
    "prune": Command("prune a model under a budget and write plan, report and slim.onnx", add_prune, run_prune),
    "export": Command("rebuild the slim model from a plan and export it", add_export, run_export),
    "methods": Command("list the registered scoring methods", lambda p: None, run_methods),
    "demo": Command("prune resnet18 to half its FLOPs (no downloads)", add_demo, run_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxprune", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Structured channel pruning of PyTorch models through torch.fx.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add(p)
        p.set_defaults(run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit code (0 ok, 1 refused by fxprune, 2 bad usage)."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except SystemExit as e:  # argparse: --help (0) and bad usage (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BrokenPipeError:  # `fxprune analyse ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except UsageError as e:
        print(f"error: {e}\n(see fxprune --help)", file=sys.stderr)
        return 2
    except (FxPruneError, ValueError, TypeError, OSError) as e:
        if os.environ.get("FXPRUNE_DEBUG"):
            raise
        print(f"error: {e}\n(set FXPRUNE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
