"""The `fxprune` console script: analyse, prune, export, bench, report, methods, demo.

Every subcommand is one entry of `COMMANDS` (name -> help, argument adder, runner, --help examples); MODEL
arguments are resolved by the registry in `fxprune.cli.models`, the run-directory commands (export, bench,
report) live in `fxprune.cli.runs`. Exit codes: 0 ok, 1 when fxprune (or the model) refuses the request or
fails at run time, 2 for bad usage (unknown model spec, bad input size). Set FXPRUNE_DEBUG=1 to see the
traceback of a refused request.

>>> parse_input_size("3,64,64")
(3, 64, 64)
>>> parse_input_size("3x299x299")
(3, 299, 299)
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fxprune
from fxprune.cli import models as cli_models
from fxprune.cli import runs as cli_runs
from fxprune.cli.models import (DEFAULT_INPUT_SIZE, INPUT_SIZE_OF, MODEL_FORMS, MODEL_FORMS_HELP, MODEL_SOURCES,
                                UsageError, add_model_args, example_input, load_model, parse_input_size)
from fxprune.cli.runs import FORMAT_SUFFIX, export_path
from fxprune.api import PRUNE_OPTIONS
from fxprune.errors import FxPruneError
from fxprune.report.run_dir import EXPORT_FILES, save_run

__all__ = ["COMMANDS", "DEFAULT_INPUT_SIZE", "FORMAT_SUFFIX", "INPUT_SIZE_OF", "MODEL_FORMS", "MODEL_SOURCES",
           "Command", "UsageError", "build_parser", "example_input", "export_path", "load_model", "main",
           "parse_input_size", "prune_and_write"]

EPILOG = """examples:
  fxprune demo
  fxprune methods
  fxprune analyse torchvision:resnet18
  fxprune prune cifar:resnet56 --method fpgm --flops 0.5 --out runs/r56
  fxprune prune cifar:resnet20 --method taylor --flops 0.5 --data cifar10 --epochs 2 --kd --out runs/r20
  fxprune analyse torchvision:inception_v3 --json
  fxprune prune torchvision:resnet50 --method l1 --flops 0.5 --round-to 8 --out runs/r50
  fxprune prune torchvision:mobilenet_v3_small --ratio 0.3 --input-size 3,160,160 --out runs/mnv3
  fxprune prune mypkg.models:build_net --flops 0.5 --input-size 3,128,128 --out runs/net
  fxprune export runs/r50 --format torchscript
  fxprune bench runs/r50 --device cuda
  fxprune report runs/r50
  fxprune export torchvision:resnet50 --plan runs/r50/plan.json --format torchscript --out r50.pt

  fxprune prune timm:convnext_tiny --ratio 0.5 --out runs/cnx

""" + MODEL_FORMS_HELP + """

A run directory (prune --out DIR) holds plan.json, report.txt, report.json, report.html, slim.safetensors,
run.json and the exports; rebuild its slim model in Python with fxprune.load(DIR, model).
"""
ANALYSE_EXAMPLES = """examples:
  fxprune analyse torchvision:resnet18
  fxprune analyse timm:convnext_tiny --input-size 3,64,64 --json
  fxprune analyse ./my_model.pt --input-size 3,128,128

""" + MODEL_FORMS_HELP
PRUNE_EXAMPLES = """examples:
  fxprune prune torchvision:resnet50 --flops 0.5 --round-to 8 --out runs/r50
  fxprune prune cifar:resnet20 --method taylor --flops 0.5 --data cifar10 --epochs 2 --kd --out runs/r20
  fxprune prune torchvision.models:mobilenet_v2 --ratio 0.3 --export onnx,pt2 --out runs/mnv2 --json
  fxprune prune fxprune.zoo:resnet56 --params 0.5 --input-size 3,32,32 --scope local --out runs/r56

writes DIR/plan.json, report.txt, report.json, report.html, slim.safetensors, run.json and the exports.

""" + MODEL_FORMS_HELP
METHODS_EXAMPLES = """examples:
  fxprune methods
  fxprune methods --json
"""
DEMO_EXAMPLES = """examples:
  fxprune demo                                   # ResNet-20, taylor, 50% FLOPs, runs/demo
  fxprune demo --method fpgm --flops 0.4 --out runs/demo-fpgm
  fxprune demo --data ../shared/data/cifar10-jpeg.tar.gz --device cuda --dense-epochs 30 --epochs 15
"""
EXPORT_FORMATS = tuple(EXPORT_FILES)  # prune --export NAMES


# ----------------------------------------------------------------------------- helpers


def model_and_input(args: argparse.Namespace):
    model = cli_models.load_model(args.model)  # spec errors first: no tensor work for a typo
    return model, example_input(args.model, args.input_size)


def parse_exports(text: str) -> tuple[str, ...]:
    """'onnx,pt2' -> ('onnx', 'pt2'); 'none' or '' -> ()."""
    names = tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")
    bad = [n for n in names if n not in EXPORT_FORMATS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown export format(s) {', '.join(bad)}; use a comma-separated list "
                                         f"of {', '.join(EXPORT_FORMATS)} (or none)")
    return names


def budget_of(args: argparse.Namespace) -> dict[str, float]:
    return {k: getattr(args, k) for k in ("flops", "params", "ratio", "latency") if getattr(args, k) is not None}


def parse_round_to(text: str) -> int | str:
    """'auto' or a positive int."""
    if text == "auto":
        return text
    try:
        return cli_runs.positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"--round-to takes a positive integer or 'auto', got {text!r}") from None


PRUNE_KEYWORDS = (frozenset(inspect.signature(fxprune.prune).parameters) - {"keywords", "options"}) | PRUNE_OPTIONS


def parse_option(text: str) -> tuple[str, Any]:
    """KEY=VALUE for a method option; VALUE is a Python literal (1, 0.5, "cosine", (5, 0.1), None) or else
    taken as a string."""
    import ast

    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE (e.g. jst_search_epochs=5), got {text!r}")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


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
    if args.target is not None:
        opts["target"] = args.target
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


def prune_and_write(model: Any, x: Any, out: Path, method: str, budget: dict, round_to: int | str,
                    as_json: bool, *,
                    model_spec: str | None = None, command: str | None = None,
                    exports: Sequence[str] = ("onnx",), **options: Any) -> int:
    """Prune, write the run directory `out` (fxprune.report.run_dir.save_run) and its HTML report, print the report."""
    res = fxprune.prune(model, x, method=method, round_to=round_to, **budget, **options)
    paths = save_run(res, x, out, model_spec=model_spec, command=command, exports=exports)
    paths["html"] = cli_runs.render_html(out)
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


def add_analyse(p: argparse.ArgumentParser) -> None:
    add_model_args(p, what="model to analyse")
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
    add_model_args(p, what="model to prune")
    p.add_argument("--method", default="l1", help="scoring method (see `fxprune methods`); default l1")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--flops", type=float, help="keep this fraction of the FLOPs, e.g. 0.5")
    budget.add_argument("--params", type=float, help="keep this fraction of the parameters")
    budget.add_argument("--ratio", type=float, help="remove this fraction of each group's channels")
    budget.add_argument("--latency", type=float, help="keep this fraction of the latency measured on --target")
    p.add_argument("--round-to", type=parse_round_to, default=1, metavar="N|auto",
                   help="kept widths are multiples of N; auto: the multiple measured to run well on --target")
    p.add_argument("--target", default=None, metavar="DEVICE",
                   help="device a --latency budget and --round-to auto measure on (cpu, cuda; default: CUDA "
                        "when available)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="the run directory to write (plan, reports, slim weights, exports)")
    p.add_argument("--export", type=parse_exports, default=("onnx",), metavar="FORMATS",
                   help=f"comma-separated exports of the slim model: {','.join(EXPORT_FORMATS)} or none "
                        f"(default onnx; each parity-checked)")
    p.add_argument("--scope", choices=("global", "local"), default=None,
                   help="global: one threshold over all groups; local: every group loses the same fraction")
    p.add_argument("--data", type=parse_data, default=None, metavar="cifar10[:PATH]",
                   help="training data for data-driven methods and fine-tuning (no PATH: the vendored subset)")
    p.add_argument("--epochs", type=int, default=0, help="fine-tune the slim model for N epochs (needs --data)")
    p.add_argument("--kd", action="store_true", help="distil from the dense model while fine-tuning")
    p.add_argument("--steps", type=int, default=1, help="iterative pruning in N prune / fine-tune rounds")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-o", "--option", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, repeatable (e.g. -o jst_search_epochs=5 -o seed=1; see docs/methods/)")


def run_prune(args: argparse.Namespace) -> int:
    if args.data is not None and args.input_size is None:
        args.input_size = DATA_INPUT_SIZE[args.data[0]]
    options = data_options(args)
    for key, value in args.option:
        if key in PRUNE_KEYWORDS:
            raise UsageError(f"-o {key}=...: {key} is an argument of prune itself; use its own flag "
                             f"(fxprune prune --help), not --option.")
        options[key] = value
    model, x = model_and_input(args)
    return prune_and_write(model, x, args.out, args.method, budget_of(args), args.round_to, args.json,
                           model_spec=args.model, command=getattr(args, "command_line", None), exports=args.export,
                           **options)


def add_methods(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print {name: summary} as JSON")


def run_methods(args: argparse.Namespace) -> int:
    summaries = fxprune.methods.method_summaries()
    width = max(map(len, summaries), default=0)
    return cli_runs.print_result(args, summaries, "\n".join(f"{k:<{width}}  {v}" for k, v in summaries.items()))


def add_demo(p: argparse.ArgumentParser) -> None:
    from fxprune.cli import demo

    demo.add_arguments(p)


def run_demo(args: argparse.Namespace) -> int:
    from fxprune.cli import demo

    return demo.run(args)


@dataclass(frozen=True)
class Command:
    help: str
    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    examples: str = ""  # the subcommand's --help epilog


COMMANDS: dict[str, Command] = {
    "analyse": Command("print the model's channel groups", add_analyse, run_analyse, ANALYSE_EXAMPLES),
    "prune": Command("prune a model under a budget and write a run directory (plan, report, weights, exports)",
                     add_prune, run_prune, PRUNE_EXAMPLES),
    "export": Command("export the slim model of a run directory (or of MODEL + plan.json)", cli_runs.add_export,
                      cli_runs.run_export, cli_runs.EXPORT_EXAMPLES + "\n" + MODEL_FORMS_HELP),
    "bench": Command("time the slim model against the dense one (median latency)", cli_runs.add_bench,
                     cli_runs.run_bench, cli_runs.BENCH_EXAMPLES),
    "report": Command("(re)render a run directory's HTML report", cli_runs.add_report, cli_runs.run_report,
                      cli_runs.REPORT_EXAMPLES),
    "methods": Command("list the registered scoring methods", add_methods, run_methods, METHODS_EXAMPLES),
    "demo": Command("train a CIFAR ResNet-20 on the bundled CIFAR-10 subset, prune it to half its FLOPs, "
                    "fine-tune, report (CPU, a few minutes)", add_demo, run_demo, DEMO_EXAMPLES),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxprune", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Structured channel pruning of PyTorch models through torch.fx.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, epilog=cmd.examples or EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add(p)
        p.set_defaults(run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit code (0 ok, 1 refused by fxprune, 2 bad usage)."""
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(argv)
        args.command_line = shlex.join(["fxprune", *argv])
        return args.run(args)
    except SystemExit as e:  # argparse: --help (0) and bad usage (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BrokenPipeError:  # `fxprune analyse ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except UsageError as e:
        print(f"error: {e}\n(see fxprune --help)", file=sys.stderr)
        return 2
    except (FxPruneError, ValueError, TypeError, OSError, RuntimeError) as e:
        if os.environ.get("FXPRUNE_DEBUG"):
            raise
        print(f"error: {e}\n(set FXPRUNE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
