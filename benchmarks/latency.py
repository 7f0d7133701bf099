"""Realised speedup of slim models (protocol B3): dense vs slim latency, fxprune and Torch-Pruning side by
side at the same MACs.

Efficiency = (dense ms / slim ms) / (dense MACs / slim MACs): 1.0 means the slim model delivers every MAC it
saved. Each variant of each model is optimised with `fxprune.optimize` (BN folded into the convolutions,
channels_last and bf16 on CUDA) and timed in every runtime it offers; the best time counts, for the dense
model as for the slim ones.

* GPU (`--device cuda`): bf16, channels_last; batch 512 at 32x32 for CIFAR ResNet-56, 64 at 224x224 for the
  ImageNet models; runtimes eager, CUDA-graph replay and torch.compile; median of 50 timed runs after 10
  warm-up runs, CUDA events.
* CPU (`--device cpu`): 2 threads, batch 1, float32; runtimes torch eager and ONNX Runtime (graph optimisation
  level ALL, 2 intra-op threads); median of 50 timed runs.

Variants (all from the same randomly initialised dense model):
* `tp`: Torch-Pruning 1.6.1, GroupMagnitudeImportance(p=2), 50% of every group's channels, classifier kept
  (the reference recipe of docs/benchmarks.md).
* `fxprune`: `fxprune.prune(method="l1", flops=<tp's MACs ratio>)`, global ranking (the default).
* `fxprune-hw`: the same with `round_to="auto"`: kept counts rounded up to the channel multiple measured to run
  well on the device.
* `fxprune-lat`: `fxprune.prune(method="l1", latency=<tp's measured latency ratio>, target=<device>)`: a
  latency budget through the per-layer latency model (measured in the target's default runtime: CUDA graphs
  on CUDA, eager on the CPU), i.e. "how many MACs can be kept at Torch-Pruning's speed"; its predicted latency
  ratio is recorded beside the measured one.
When Torch-Pruning fails on a model, the fxprune variants use `--fallback-flops` (0.26) and a latency budget
of 0.5.

Usage (results merge into benchmarks/results/latency-<device>.{json,md} by model and variant):
  python benchmarks/latency.py --device cuda --models resnet56,resnet50,mobilenet_v2
  python benchmarks/latency.py --device cpu --threads 2
  python benchmarks/latency.py --report-only --device cuda
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))  # the working tree's fxprune

import fxprune  # noqa: E402
from fxprune.deploy import optimize  # noqa: E402
from fxprune.deploy.timing import time_callable  # noqa: E402


@dataclass(frozen=True)
class Case:
    """One model of the protocol: how to build it and its input per device."""

    build: Callable[[], nn.Module]
    gpu_input: tuple[int, ...]
    cpu_input: tuple[int, ...]


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision
        return torchvision.models.get_model(name, weights=None)
    return build


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm
        return timm.create_model(name, pretrained=False)
    return build


def _cifar(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from fxprune.zoo import get_cifar_model
        return get_cifar_model(name)
    return build


CASES: dict[str, Case] = {
    "resnet56": Case(_cifar("resnet56"), (512, 3, 32, 32), (1, 3, 32, 32)),
    "resnet50": Case(_torchvision("resnet50"), (64, 3, 224, 224), (1, 3, 224, 224)),
    "mobilenet_v2": Case(_torchvision("mobilenet_v2"), (64, 3, 224, 224), (1, 3, 224, 224)),
    "convnext_tiny": Case(_torchvision("convnext_tiny"), (64, 3, 224, 224), (1, 3, 224, 224)),
    "vit_small": Case(_timm("vit_small_patch16_224"), (64, 3, 224, 224), (1, 3, 224, 224)),
}
RUNTIMES = {"cuda": ("eager", "cuda_graph", "compile"), "cpu": ("eager", "onnxruntime")}


@dataclass
class Record:
    model: str
    variant: str
    macs_ratio: float
    params_ratio: float
    times_ms: dict[str, float]  # runtime -> median ms
    best_runtime: str
    best_ms: float
    speedup: float | None = None  # dense best / this best
    efficiency: float | None = None
    prune_s: float | None = None
    predicted_latency_ratio: float | None = None  # fxprune-lat: the latency model's prediction
    round_to: int | None = None
    runtime_ratios: dict[str, float] = field(default_factory=dict)  # slim / dense ms, per runtime
    breakdown: dict[str, float] = field(default_factory=dict)  # --breakdown: GPU kernel ms by kind
    note: str = ""
    errors: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- pruning


def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    return [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == num_classes)
            or (isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == num_classes)]


def prune_tp(dense: nn.Module, x: torch.Tensor, _: dict) -> tuple[nn.Module, dict]:
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    out = model(x)
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.5, global_pruning=False,
                                  ignored_layers=classifier_layers(model, out.shape[-1]), round_to=None)
    pruner.step()
    model(x)  # TP's pruned ViTs fail here (see docs/benchmarks.md)
    return model, {}


def prune_fxprune(dense: nn.Module, x: torch.Tensor, ctx: dict) -> tuple[nn.Module, dict]:
    res = fxprune.prune(dense, x, method="l1", flops=ctx["flops"])
    return res.model, {"round_to": res.plan.round_to}


def prune_fxprune_hw(dense: nn.Module, x: torch.Tensor, ctx: dict) -> tuple[nn.Module, dict]:
    res = fxprune.prune(dense, x, method="l1", flops=ctx["flops"], round_to="auto", target=ctx["target"])
    return res.model, {"round_to": res.plan.round_to}


def prune_fxprune_lat(dense: nn.Module, x: torch.Tensor, ctx: dict) -> tuple[nn.Module, dict]:
    res = fxprune.prune(dense, x, method="l1", latency=ctx["latency"], target=ctx["target"])
    return res.model, {"predicted_latency_ratio": res.plan.achieved["latency_predicted"]}


VARIANTS: dict[str, Callable[[nn.Module, torch.Tensor, dict], tuple[nn.Module, dict]]] = {
    "tp": prune_tp, "fxprune": prune_fxprune, "fxprune-hw": prune_fxprune_hw, "fxprune-lat": prune_fxprune_lat}


# ----------------------------------------------------------------------------- timing


def time_runtimes(model: nn.Module, x: torch.Tensor, device: str, runtimes: tuple[str, ...], repeats: int,
                  threads: int | None) -> tuple[dict[str, float], dict[str, str]]:
    """Median ms of `model` on `x` in each runtime (optimised by fxprune.optimize, parity checked)."""
    times, errors = {}, {}
    for runtime in runtimes:
        try:
            opt = optimize(model, (x,), device=device, mode=runtime, ort_threads=threads or 2)
            xd = x.to(device)
            times[runtime] = time_callable(lambda: opt(xd), device, repeats=repeats, warmup=10)
        except Exception as err:  # a runtime failing on one model is a result, not a crash
            errors[runtime] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        finally:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return times, errors


KERNEL_KINDS = (  # kernel-name fragments -> where the GPU time goes (first match wins)
    ("matmul/conv", ("conv", "gemm", "xmma", "cutlass", "cudnn", "wgrad", "dgrad", "implicit", "sm90", "sm80")),
    ("layout/copy", ("copy", "transpose", "nchw", "nhwc", "permute", "cat")),
    ("elementwise/norm/pool", ("elementwise", "vectorized", "reduce", "pool", "norm", "softmax", "triton")))


def breakdown(model: nn.Module, x: torch.Tensor, device: str) -> dict[str, float]:
    """GPU kernel time (ms per forward) by kind and the kernel count, from torch.profiler over 10 eager
    forwards of the optimised (BN-folded, bf16, channels_last) model."""
    from torch.profiler import ProfilerActivity, profile

    opt = optimize(model, (x,), device=device, mode="eager", check=False)
    xd = x.to(device)
    for _ in range(3):
        opt(xd)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            opt(xd)
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    kernels = 0
    for evt in prof.key_averages():
        if evt.device_type != torch.autograd.DeviceType.CUDA or not evt.device_time_total:
            continue
        name = evt.key.lower()
        kind = next((k for k, parts in KERNEL_KINDS if any(p in name for p in parts)), "other")
        out[kind] = out.get(kind, 0.0) + evt.device_time_total / 1e3 / 10
        kernels += evt.count
    out["kernels_per_forward"] = kernels / 10
    out["gpu_busy_ms"] = sum(v for k, v in out.items() if k != "kernels_per_forward")
    return out


def measure(name: str, variant: str, model: nn.Module, x: torch.Tensor, args: argparse.Namespace,
            dense_macs: int, dense_params: int, extra: dict) -> Record:
    macs = fxprune.count_flops(model, x[:1])
    runtimes = tuple(args.runtimes.split(",")) if args.runtimes else RUNTIMES[args.device.split(":")[0]]
    times, errors = time_runtimes(model, x, args.device, runtimes, args.repeats, args.threads)
    best = min(times, key=times.get) if times else ""
    rec = Record(name, variant, macs / dense_macs, fxprune.count_params(model) / dense_params, times, best,
                 times.get(best, float("nan")), errors=errors, **extra)
    if args.breakdown and args.device.startswith("cuda"):
        try:
            rec.breakdown = breakdown(model, x, args.device)
        except Exception as err:
            rec.errors["breakdown"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    return rec


def run_case(name: str, args: argparse.Namespace, variants: list[str]) -> list[Record]:
    case = CASES[name]
    torch.manual_seed(0)
    dense = case.build().eval()
    cuda = args.device.startswith("cuda")
    x = torch.randn(case.gpu_input if cuda else case.cpu_input)
    x_small = x[:1]  # pruning and MACs at batch 1 (the graph is the same)
    dense_macs, dense_params = fxprune.count_flops(dense, x_small), fxprune.count_params(dense)
    records = [measure(name, "dense", dense, x, args, dense_macs, dense_params, {})]
    ctx = {"flops": args.fallback_flops, "latency": 0.5,
           "target": fxprune.Target(args.device, threads=args.threads) if not cuda else fxprune.Target(args.device)}
    for variant in variants:
        t0 = time.perf_counter()
        try:
            slim, extra = VARIANTS[variant](dense, x_small if variant != "fxprune-lat" else x, ctx)
        except Exception as err:
            traceback.print_exc()
            records.append(Record(name, variant, float("nan"), float("nan"), {}, "", float("nan"),
                                  note=f"pruning failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}"))
            continue
        rec = measure(name, variant, slim.eval(), x, args, dense_macs, dense_params,
                      {"prune_s": time.perf_counter() - t0, **extra})
        if variant == "tp":
            ctx["flops"] = rec.macs_ratio  # every fxprune variant prunes to TP's MACs...
            ctx["latency"] = min(1.0, rec.best_ms / records[0].best_ms)  # ...fxprune-lat to TP's latency
        records.append(rec)
        print(f"{name:14s} {variant:12s} macs {rec.macs_ratio:.3f} best {rec.best_runtime} {rec.best_ms:.3f} ms "
              f"{rec.times_ms} {rec.errors or ''}", flush=True)
    return records


# ----------------------------------------------------------------------------- results


def environment(args: argparse.Namespace) -> dict:
    cuda = args.device.startswith("cuda")
    return {"date": dt.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
            "threads": None if cuda else args.threads, "repeats": args.repeats,
            "command": "python benchmarks/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


def merge(path: Path, env: dict, records: list[Record]) -> dict:
    """Add `records` to the results file: a (model, variant) measured again keeps its other runtimes' times
    (so runtimes can be measured in separate runs), then best runtime, speedup and efficiency are redone."""
    data = json.loads(path.read_text()) if path.exists() else {"environments": [], "records": []}
    if env not in data["environments"]:
        data["environments"].append(env)
    old = {(r["model"], r["variant"]): r for r in data["records"]}
    for rec in records:
        prev = old.get((rec.model, rec.variant))
        if prev is not None and abs(prev["macs_ratio"] - rec.macs_ratio) < 1e-9:
            rec.times_ms = {**prev["times_ms"], **rec.times_ms}
            rec.errors = {k: v for k, v in {**prev["errors"], **rec.errors}.items() if k not in rec.times_ms}
            rec.breakdown = rec.breakdown or prev.get("breakdown", {})
        old[(rec.model, rec.variant)] = {**asdict(rec), "env": len(data["environments"]) - 1}
    data["records"] = list(old.values())
    for r in data["records"]:
        finish(r, old.get((r["model"], "dense")))
    return data


def finish(r: dict, dense: dict | None) -> None:
    """Best runtime, speedup and efficiency of one record against its model's dense record."""
    times = r["times_ms"]
    r["best_runtime"] = min(times, key=times.get) if times else ""
    r["best_ms"] = times.get(r["best_runtime"], float("nan"))
    if dense is None or not dense["times_ms"] or not times or r["macs_ratio"] != r["macs_ratio"]:
        return
    r["speedup"] = min(dense["times_ms"].values()) / r["best_ms"]
    r["efficiency"] = r["speedup"] * r["macs_ratio"]
    r["runtime_ratios"] = {k: t / dense["times_ms"][k] for k, t in times.items() if k in dense["times_ms"]}


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and value == value else "-"


def _note(r: dict) -> str:
    parts = [r["note"]] if r["note"] else []
    if r.get("round_to"):
        parts.append(f"round_to {r['round_to']}")
    if r.get("predicted_latency_ratio") is not None:
        parts.append(f"latency model: predicted {r['predicted_latency_ratio']:.3f}, measured "
                     + ", ".join(f"{k} {v:.3f}" for k, v in r.get("runtime_ratios", {}).items()))
    parts += [f"{k}: {v}" for k, v in r["errors"].items()]
    return "; ".join(parts)


def markdown(data: dict, device: str) -> str:
    lines = [f"# B3 realised speedup, {device}", "",
             "Efficiency = (dense ms / slim ms) / (dense MACs / slim MACs); best runtime of each model.", "",
             "| model | variant | MACs ratio | best runtime | ms | speedup | efficiency | runtimes (ms) | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in data["records"]:
        runtimes = ", ".join(f"{k} {v:.3f}" for k, v in r["times_ms"].items())
        lines.append(f"| {r['model']} | {r['variant']} | {_fmt(r['macs_ratio'], '.3f')} | "
                     f"{r['best_runtime'] or '-'} | {_fmt(r['best_ms'], '.3f')} | {_fmt(r['speedup'], '.2f')} | "
                     f"{_fmt(r['efficiency'], '.2f')} | {runtimes} | {_note(r)} |")
    profiled = [r for r in data["records"] if r.get("breakdown")]
    if profiled:
        kinds = [k for k, _ in KERNEL_KINDS] + ["other"]
        lines += ["", "Where the GPU time goes (eager, BN folded, bf16; kernel ms per forward; the gap between "
                  "the best runtime's ms and GPU busy is launch / idle time):", "",
                  "| model | variant | " + " | ".join(kinds) + " | GPU busy | kernels | best ms |",
                  "|---|---|" + "---|" * (len(kinds) + 3)]
        for r in profiled:
            b = r["breakdown"]
            lines.append(f"| {r['model']} | {r['variant']} | " + " | ".join(_fmt(b.get(k, 0.0), '.3f') for k in kinds)
                         + f" | {_fmt(b['gpu_busy_ms'], '.3f')} | {b['kernels_per_forward']:.0f} | "
                           f"{_fmt(r['best_ms'], '.3f')} |")
    lines += ["", "Environments:"] + [f"- {json.dumps(e)}" for e in data["environments"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default=",".join(CASES), help="comma-separated (default: %(default)s)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (CPU protocol: 2)")
    ap.add_argument("--runtimes", default=None, help="comma-separated subset of the device's runtimes "
                    "(default: all: cuda eager,cuda_graph,compile; cpu eager,onnxruntime)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--breakdown", action="store_true", help="CUDA: profile where the GPU time goes")
    ap.add_argument("--fallback-flops", type=float, default=0.26)
    ap.add_argument("--out", default=str(ROOT / "results"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    kind = args.device.split(":")[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"latency-{kind}.json"
    data = json.loads(path.read_text()) if path.exists() else {"environments": [], "records": []}
    if not args.report_only:
        if kind == "cpu":
            torch.set_num_threads(args.threads)
        env = environment(args)
        for name in args.models.split(","):
            data = merge(path, env, run_case(name, args, [v for v in args.variants.split(",") if v]))
            path.write_text(json.dumps(data, indent=1))
            (out / f"latency-{kind}.md").write_text(markdown(data, kind))
    (out / f"latency-{kind}.md").write_text(markdown(data, kind))
    print(markdown(data, kind))
    return data


if __name__ == "__main__":
    main()
