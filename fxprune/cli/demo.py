"""`fxprune demo`: the whole pipeline on real data, on a CPU, in a few minutes.

Trains a CIFAR ResNet-20 on the CIFAR-10 subset that ships with the package (2,000 training / 1,000 test
images), prunes it to half its FLOPs with first-order Taylor scores, fine-tunes the slim model with
knowledge distillation from the dense one, prints a before / after table (accuracy, FLOPs, params,
latency) and writes a run directory: plan, slim weights, ONNX export and an HTML report. Everything is
local: no downloads. `--data cifar10:PATH` uses the full archive instead.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEMO_SPEC = "cifar:resnet20"


@dataclass(frozen=True)
class DemoSettings:
    out: Path
    method: str = "taylor"
    flops: float = 0.5
    dense_epochs: int = 15
    epochs: int = 8
    data_path: str | None = None
    device: str = "cpu"
    progress: bool = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR", help="run directory (runs/demo)")
    p.add_argument("--method", default="taylor", help="pruning method (taylor)")
    p.add_argument("--flops", type=float, default=0.5, help="fraction of the dense FLOPs to keep (0.5)")
    p.add_argument("--dense-epochs", type=int, default=15, help="epochs to train the dense model (15)")
    p.add_argument("--epochs", type=int, default=8, help="fine-tune epochs after pruning (8)")
    p.add_argument("--data", default=None, metavar="PATH", help="full cifar10-jpeg.tar.gz (default: the subset)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """The console entry: settings from the parsed arguments, then `demo`."""
    settings = DemoSettings(args.out, args.method, args.flops, args.dense_epochs, args.epochs, args.data,
                            args.device, not args.quiet)
    demo(settings)
    return 0


def demo(s: DemoSettings) -> dict[str, Any]:
    """Train, prune, fine-tune, measure, write the run directory; returns the numbers it printed."""
    import fxprune
    from fxprune.data import cifar10_loaders
    from fxprune.deploy.measure import measure_latency
    from fxprune.report import render_report
    from fxprune.report.run_dir import save_run, update_run_info
    from fxprune.train import Finetune, TrainConfig, Trainer
    from fxprune.zoo import resnet20

    torch.manual_seed(0)
    _say(f"fxprune demo: {DEMO_SPEC} on CIFAR-10 ({'subset shipped with fxprune' if s.data_path is None else s.data_path})"
         f", {s.method} to {s.flops:.0%} of the FLOPs, {s.device}\n", s)
    train, test = cifar10_loaders(s.data_path, batch_size=128, device=s.device)
    x = torch.randn(1, 3, 32, 32)
    dense = resnet20()
    _say(f"1/3 training the dense model for {s.dense_epochs} epochs", s)
    Trainer(dense, TrainConfig(epochs=s.dense_epochs, lr=0.1, progress=s.progress), train, test,
            device=s.device).fit()
    _say(f"2/3 pruning with {s.method} and fine-tuning {s.epochs} epochs with distillation", s)
    res = fxprune.prune(copy.deepcopy(dense).cpu().eval(), x, method=s.method, flops=s.flops, data=train,
                        eval_data=test, device=s.device,
                        finetune=Finetune(epochs=s.epochs, lr=0.02, kd=True, progress=s.progress))
    _say("3/3 measuring latency (CPU, batch 1) and writing the run directory", s)
    dense_ms = measure_latency(dense.cpu().eval(), x, "cpu")
    slim_ms = measure_latency(res.model.cpu().eval(), x, "cpu")
    paths = save_run(res, x, s.out, model_spec=DEMO_SPEC, command="fxprune demo")
    update_run_info(s.out, latency={"device": "cpu", "batch": 1, "dense_ms": dense_ms, "slim_ms": slim_ms,
                                    "speedup": dense_ms / slim_ms})
    html = render_report(s.out)
    numbers = {"accuracy": res.report.accuracy, "flops": (res.report.flops_before, res.report.flops_after),
               "params": (res.report.params_before, res.report.params_after), "latency_ms": (dense_ms, slim_ms)}
    print(summary_table(numbers))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}, {html}")
    return numbers


def summary_table(n: dict[str, Any]) -> str:
    """The before / after table.

    >>> print(summary_table({"accuracy": {"dense": 50.0, "finetuned": 48.5}, "flops": (80e6, 40e6),
    ...                      "params": (270e3, 150e3), "latency_ms": (2.0, 1.2)}))
    metric              dense       slim      ratio
    accuracy (%)        50.00      48.50          -
    FLOPs (M)           80.00      40.00      0.500
    params (K)         270.00     150.00      0.556
    latency (ms)         2.00       1.20      0.600
    """
    acc = n["accuracy"]
    rows = [("accuracy (%)", acc.get("dense"), acc.get("finetuned", acc.get("pruned")), None),
            ("FLOPs (M)", n["flops"][0] / 1e6, n["flops"][1] / 1e6, n["flops"][1] / n["flops"][0]),
            ("params (K)", n["params"][0] / 1e3, n["params"][1] / 1e3, n["params"][1] / n["params"][0]),
            ("latency (ms)", *n["latency_ms"], n["latency_ms"][1] / n["latency_ms"][0])]
    fmt = lambda v, spec: f"{'-':>10}" if v is None else format(v, spec)  # noqa: E731
    lines = [f"{'metric':<14} {'dense':>10} {'slim':>10} {'ratio':>10}"]
    lines += [f"{name:<14} {fmt(a, '10.2f')} {fmt(b, '10.2f')} {fmt(r, '10.3f')}" for name, a, b, r in rows]
    return "\n".join(lines)


def _say(text: str, s: DemoSettings) -> None:
    if s.progress:
        print(text, flush=True)
