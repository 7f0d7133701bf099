"""Console-script commands that work on run directories: export, bench, report.

A run directory (written by `fxprune prune --out DIR`) records the MODEL spec it was made from, so these
commands rebuild the dense model from that spec and the slim one with `fxprune.load` (plan.json +
slim.safetensors). `--model SPEC` overrides the recorded spec.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import fxprune
from fxprune.cli import models as cli_models
from fxprune.cli.models import UsageError, add_model_args, example_input
from fxprune.report.run_dir import EXPORT_FILES, FILES, check_run_dir, load_run_info, run_inputs, update_run_info

FORMAT_SUFFIX = {name: Path(file).suffix for name, file in EXPORT_FILES.items()}  # onnx -> .onnx, ...

EXPORT_EXAMPLES = """examples:
  fxprune export runs/r50 --format onnx          # the slim model of a run (its weights): runs/r50/slim.onnx
  fxprune export runs/r50 --format pt2 --out r50.pt2
  fxprune export runs/r50 --format torchscript --model mypkg.models:build_resnet50 --json
  fxprune export torchvision:resnet50 --plan runs/r50/plan.json --out r50.pt   # plan on fresh (random) weights
"""
BENCH_EXAMPLES = """examples:
  fxprune bench runs/r50 --device cuda           # bf16 autocast, channels_last, CUDA events
  fxprune bench runs/r20 --device cpu --batch 8 --repeats 50
  fxprune bench runs/r20 --json                  # also written to runs/r20/run.json under "latency"
"""
REPORT_EXAMPLES = """examples:
  fxprune report runs/r50                        # (re)writes runs/r50/report.html
  fxprune report runs/r50 --json
"""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def render_html(run_dir: Path) -> Path:
    """Render the run's HTML report (fxprune.report, imported only when a report is asked for)."""
    from fxprune.report import render_report

    return Path(render_report(run_dir))


def rebuild(run_dir: Path, spec: str | None, input_size: tuple[int, ...] | None = None) -> tuple[Any, Any, Any]:
    """(dense model, slim model, example inputs) of a run: the model from `spec` or the one run.json names."""
    check_run_dir(run_dir, "plan", "weights")
    spec = spec or load_run_info(run_dir).get("model")
    if not spec:
        raise UsageError(f"{run_dir / FILES['run']} does not record the model spec (the run was saved from Python "
                         f"without model_spec=); give it with --model SPEC, e.g. --model torchvision:resnet18")
    dense = cli_models.load_model(spec)
    x = example_input(spec, input_size) if input_size else run_inputs(run_dir)
    return dense, fxprune.load(run_dir, dense, x), x


def print_result(args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    print(json.dumps(data, indent=1) if args.json else text)
    return 0


# ----------------------------------------------------------------------------- export


def add_export(p: argparse.ArgumentParser) -> None:
    add_model_args(p, "RUN|MODEL", "a run directory (written by `fxprune prune --out`), or a MODEL with --plan")
    p.add_argument("--model", dest="spec", metavar="SPEC", help="with RUN: the MODEL to rebuild (default: the "
                   "spec run.json records)")
    p.add_argument("--plan", type=Path, help="with MODEL: plan.json written by `fxprune prune`")
    p.add_argument("--format", choices=sorted(FORMAT_SUFFIX), default=None,
                   help="default: from the suffix of --out (.onnx, .pt, .pt2); onnx for a RUN without --out")
    p.add_argument("--out", type=Path, metavar="PATH", help="file to write (default for a RUN: RUN/slim.SUFFIX)")
    p.add_argument("--json", action="store_true", help='print {"path": ...}')


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
    run_dir = Path(args.model)
    if run_dir.is_dir():
        if args.plan is not None:
            raise UsageError(f"{run_dir} is a run directory with its own plan.json: drop --plan (it is for "
                             f"`fxprune export MODEL --plan plan.json --out PATH`)")
        fmt = args.format or (None if args.out else "onnx")
        path = export_path(args.out or run_dir / EXPORT_FILES[fmt], fmt)
        _, slim, x = rebuild(run_dir, args.spec, args.input_size)
    else:
        if args.plan is None or args.out is None:
            raise UsageError(f"{args.model!r} is not a run directory, so it is a MODEL: give --plan plan.json and "
                             f"--out PATH (or pass the run directory `fxprune prune --out` wrote)")
        path = export_path(args.out, args.format)
        model = cli_models.load_model(args.model)
        x = example_input(args.model, args.input_size)
        slim = fxprune.apply_plan(model, x, fxprune.PruningPlan.load(args.plan))
    path.parent.mkdir(parents=True, exist_ok=True)
    fxprune.export(slim, x, path)
    return print_result(args, {"path": str(path)}, f"wrote {path}")


# ----------------------------------------------------------------------------- bench


def add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory written by `fxprune prune --out`")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--batch", type=positive_int, default=1, metavar="N", help="batch size (default 1)")
    p.add_argument("--repeats", type=positive_int, default=20, metavar="N", help="timed runs (default 20)")
    p.add_argument("--warmup", type=int, default=5, metavar="N", help="untimed runs first (default 5)")
    p.add_argument("--model", dest="spec", metavar="SPEC", help="the MODEL to rebuild (default: run.json's spec)")
    p.add_argument("--json", action="store_true", help="print the latency record as JSON")


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from fxprune.deploy.measure import measure_latency
    from fxprune.deploy.timing import check_device

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)  # before any model is built: --device cuda without CUDA fails at once
    dense, slim, _ = rebuild(args.run_dir, args.spec)
    x = run_inputs(args.run_dir, batch=args.batch)
    dense_ms, slim_ms = (measure_latency(m, x, device, args.repeats, args.warmup) for m in (dense, slim))
    record = {"device": device, "device_name": _device_name(device), "batch": args.batch, "repeats": args.repeats,
              "warmup": args.warmup, "input_size": list((x[0] if isinstance(x, tuple) else x).shape[1:]),
              "precision": "bf16 autocast, channels_last" if device == "cuda" else "fp32",
              "dense_ms": dense_ms, "slim_ms": slim_ms, "speedup": dense_ms / max(slim_ms, 1e-9),
              "macs_ratio": _flops_ratio(args.run_dir), "torch": torch.__version__}
    update_run_info(args.run_dir, latency=record)
    return print_result(args, {"latency": record}, bench_table(record))


def bench_table(r: dict[str, Any]) -> str:
    """The latency record as a small table.

    >>> print(bench_table({"device": "cpu", "device_name": "x86", "batch": 1, "repeats": 5, "precision": "fp32",
    ...                    "dense_ms": 2.0, "slim_ms": 1.0, "speedup": 2.0, "macs_ratio": 0.5}))
    device cpu (x86), batch 1, fp32, median of 5 runs
    model    latency ms
    dense         2.000
    slim          1.000
    speedup 2.00x, MACs ratio 0.500
    """
    macs = "-" if r.get("macs_ratio") is None else f"{r['macs_ratio']:.3f}"
    head = f"device {r['device']} ({r['device_name']}), batch {r['batch']}, {r['precision']}, "
    rows = [f"{'model':<5} {'latency ms':>13}", *(f"{k:<5} {r[k + '_ms']:>13.3f}" for k in ("dense", "slim"))]
    tail = f"speedup {r['speedup']:.2f}x, MACs ratio {macs}"
    return "\n".join([head + f"median of {r['repeats']} runs", *rows, tail])


def _flops_ratio(run_dir: Path) -> float | None:
    """The run's slim / dense FLOPs (= MACs) ratio from report.json, None without one."""
    path = run_dir / FILES["report_json"]
    return json.loads(path.read_text()).get("flops_ratio") if path.is_file() else None


def _device_name(device: str) -> str:
    import platform

    import torch

    return torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())


# ----------------------------------------------------------------------------- report


def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory written by `fxprune prune --out`")
    p.add_argument("--json", action="store_true", help='print {"path": ...}')


def run_report(args: argparse.Namespace) -> int:
    if not args.run_dir.is_dir():
        raise UsageError(f"{args.run_dir} is not a directory; give a run directory written by `fxprune prune --out`")
    check_run_dir(args.run_dir, "plan", "report_json")
    path = render_html(args.run_dir)
    return print_result(args, {"path": str(path)}, f"wrote {path}")
