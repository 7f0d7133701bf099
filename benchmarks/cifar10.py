"""Accuracy at a FLOPs budget on CIFAR-10 (protocol B2, "r56-e60"), fxprune and Torch-Pruning side by side.

Protocol (docs/benchmarks.md; shared copy /work/shared/docs/benchmarks.md): train a dense CIFAR ResNet-56 for
60 epochs (batch 512, SGD nesterov momentum 0.9, wd 5e-4, OneCycle max lr 0.2 with 15% warm-up, bf16
autocast, channels_last, seed 0, 4-pixel reflect-pad crop + flip done on the GPU); prune it to <= 50% of
the dense FLOPs with each method; fine-tune 60 epochs with the same recipe at max lr 0.05. Runs:

  fxprune methods  l1, l2, fpgm, taylor, slimming, random, tas, dcp, metapruning, jst (append "+kd" to distil
                   from the dense model; jst re-initialises the model: coarse + search + fine-tune epochs
                   add up to uniform-scratch's)
  tp-l1            Torch-Pruning GroupMagnitudeImportance(p=1), MetaPruner, local, channel ratio bisected
                   to the budget, classifier ignored; fine-tuned with the same harness and recipe
  uniform-scratch  fxprune "uniform" (every group keeps the same fraction, bisected to the budget),
                   re-initialised and trained from scratch for `scratch_epochs` (120: the same total
                   epochs as dense + fine-tune) with the dense recipe
  metapruning-scratch  MetaPruning's searched architecture, re-initialised and trained like uniform-scratch
                   (the paper's protocol: searched vs uniform widths, everything else equal)

Profiles: `r56-e60` (the protocol, GPU), `cpu-r20` (ResNet-20 on 10k training images, a protocol that fits
this 2-core CPU: it ranks methods, it does not reproduce the GPU figures), `smoke` (ResNet-20 on the
vendored 2,000-image subset, 1 epoch each: the tests run it to keep the script honest; accuracy meaningless).

Usage:
  python benchmarks/cifar10.py --profile r56-e60 --data /path/to/cifar10-jpeg.tar.gz [--runs l1,tp-l1]
  python benchmarks/cifar10.py --profile cpu-r20 --data ../shared/data/cifar10-jpeg.tar.gz
  python benchmarks/cifar10.py --profile smoke --out /tmp/b2
  python benchmarks/cifar10.py --report-only --profile r56-e60
Results: <out>/cifar10-<profile>.{json,md,png}; records are merged by run name, so runs can be made in
separate invocations (one method per device call). The dense model is trained once per profile and kept
in <out>/../cache/ (git-ignored) unless --retrain-dense.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import fxprune
from fxprune.data import cifar10_loaders
from fxprune.deploy.measure import measure_latency
from fxprune.train import Finetune, Trainer, evaluate
from fxprune.zoo import get_cifar_model

ROOT = Path(__file__).resolve().parent
REFERENCE = {  # docs/benchmarks.md B2, one H100, torch 2.11, r56-e60
    "dense": (1.0, 89.17), "tp-l1": (0.482, 88.46), "uniform-scratch": (0.482, 88.71)}


@dataclass(frozen=True)
class Profile:
    model: str
    dense_epochs: int
    finetune_epochs: int
    scratch_epochs: int
    batch_size: int = 512
    dense_lr: float = 0.2
    finetune_lr: float = 0.05
    sparsity_epochs: int = 10
    train_limit: int | None = None
    shared_data: bool = True
    flops: float = 0.5
    latency_batch: int = 512
    quick: bool = False  # cheaper search settings (smoke profile: proves the code runs, not the method)


PROFILES: dict[str, Profile] = {
    "r56-e60": Profile("resnet56", 60, 60, 120),
    "cpu-r20": Profile("resnet20", 10, 5, 15, batch_size=128, dense_lr=0.1, finetune_lr=0.02, sparsity_epochs=2,
                       train_limit=10_000, latency_batch=64),
    "smoke": Profile("resnet20", 1, 1, 1, batch_size=128, dense_lr=0.05, finetune_lr=0.01, sparsity_epochs=1,
                     shared_data=False, latency_batch=8, quick=True),
}
DEFAULT_RUNS = ("l1", "fpgm", "taylor", "slimming", "tp-l1", "uniform-scratch")


@dataclass
class Record:
    run: str
    flops_ratio: float
    params_ratio: float
    acc_pruned: float | None
    acc_finetuned: float
    acc_best: float
    epochs: int
    prune_s: float
    train_s: float
    latency_ratio: float | None
    history: list[dict] = field(default_factory=list)
    note: str = ""


@dataclass
class Bench:
    profile: Profile
    name: str
    device: torch.device
    train: object
    test: object
    x: torch.Tensor
    quiet: bool
    cache: Path | None = None  # dense models and search checkpoints

    def recipe(self, epochs: int, lr: float, **extra) -> Finetune:
        return Finetune(epochs=epochs, lr=lr, schedule="onecycle", warmup=0.15, momentum=0.9, nesterov=True,
                        weight_decay=5e-4, amp="bf16", channels_last=True, seed=0, progress=not self.quiet,
                        **extra)


# ----------------------------------------------------------------------------- runs


METHOD_OPTIONS: dict[str, Callable[[Bench], dict]] = {  # protocol settings of methods that have options
    "slimming": lambda b: {"sparsity_epochs": b.profile.sparsity_epochs, "sparsity": 1e-4,
                           "sparsity_train": b.recipe(b.profile.sparsity_epochs, b.profile.finetune_lr)},
    "tas": lambda b: {"tas_progress": not b.quiet,  # search epochs: a third of the fine-tune (20 for r56-e60)
                      "tas_epochs": max(1, b.profile.finetune_epochs // 3)},
    "dcp": lambda b: {"progress": not b.quiet, **({"dcp_batches": 2, "dcp_chunk": 4} if b.profile.quick else {})},
    "metapruning": lambda b: {"progress": not b.quiet, "metapruning_epochs": max(1, b.profile.finetune_epochs // 3),
                              "metapruning_lr": b.profile.finetune_lr,  # the PruningNet starts at the dense model
                              **({"metapruning_checkpoint": str(b.cache / f"cifar10-{b.name}-metapruning.pt")}
                                 if b.cache else {}),  # metapruning and metapruning-scratch share one search
                              **({"metapruning_population": 6, "metapruning_parents": 2, "metapruning_mutations": 3,
                                  "metapruning_crossovers": 3, "metapruning_iterations": 2,
                                  "metapruning_calib_batches": 2, "metapruning_val_batches": 2}
                                 if b.profile.quick else {})},
    "jst": lambda b: {"progress": not b.quiet, "jst_init": "scratch", "jst_lr": b.profile.dense_lr, **jst_epochs(b.profile),
                      **({"jst_train_batches": 2, "jst_val_batches": 1, "jst_samples": 2, "jst_candidates": 2,
                          "jst_calib_batches": 1, "jst_eval_batches": 1} if b.profile.quick else {})},
}
NOTES: dict[str, Callable[[Profile], str]] = {
    "slimming": lambda p: f"sparsity phase {p.sparsity_epochs} epochs (lambda 1e-4) included in prune_s",
    "metapruning-scratch": lambda p: f"searched architecture re-initialised, trained {p.scratch_epochs} epochs with the "
                                     f"dense recipe (as uniform-scratch); the search is resumed from the metapruning "
                                     f"run's checkpoint when that ran first",
    "jst": lambda p: "re-initialised (no pre-trained model): coarse {jst_coarse_epochs} + search {jst_search_epochs} "
                     "epochs in prune_s, + {ft} fine-tune epochs".format(ft=p.finetune_epochs, **jst_epochs(p)),
}


def jst_epochs(p: Profile) -> dict:
    """JST trains from scratch: coarse + search + fine-tune epochs add up to uniform-scratch's epochs."""
    search = max(1, p.scratch_epochs // 6)
    return {"jst_search_epochs": search, "jst_coarse_epochs": max(0, p.scratch_epochs - p.finetune_epochs - search)}


def run_fxprune(bench: Bench, dense: nn.Module, method: str, kd: bool, name: str | None = None,
                recipe: Finetune | None = None, **extra) -> Record:
    p = bench.profile
    options = {**METHOD_OPTIONS.get(method, lambda b: {})(bench), **extra}
    recipe = recipe or bench.recipe(p.finetune_epochs, p.finetune_lr, kd=kd)
    t0 = time.perf_counter()
    res = fxprune.prune(copy.deepcopy(dense).cpu().eval(), bench.x, method=method, flops=p.flops, data=bench.train,
                        eval_data=bench.test, finetune=recipe, device=bench.device, **options)
    total = time.perf_counter() - t0
    hist = res.history[-1]
    train_s = sum(r.seconds for r in hist.records)
    name = name or method + ("+kd" if kd else "")
    return Record(name, res.report.flops_ratio, res.report.params_ratio,
                  res.report.accuracy.get("pruned"), res.report.accuracy["finetuned"], hist.best_acc(),
                  recipe.epochs, total - train_s, train_s, latency_ratio(bench, dense, res.model),
                  [dataclasses.asdict(r) for r in hist.records], NOTES.get(name, lambda p: "")(p))


def run_metapruning_scratch(bench: Bench, dense: nn.Module) -> Record:
    """The paper's protocol: the searched architecture re-initialised and trained with uniform-scratch's
    recipe -- searched widths vs uniform widths, everything else equal."""
    p = bench.profile
    return run_fxprune(bench, dense, "metapruning", False, "metapruning-scratch",
                       bench.recipe(p.scratch_epochs, p.dense_lr, from_scratch=True), metapruning_init="scratch")


def run_uniform_scratch(bench: Bench, dense: nn.Module) -> Record:
    p = bench.profile
    t0 = time.perf_counter()
    res = fxprune.prune(copy.deepcopy(dense).cpu().eval(), bench.x, method="uniform", flops=p.flops, data=bench.train,
                        eval_data=bench.test, device=bench.device,
                        finetune=bench.recipe(p.scratch_epochs, p.dense_lr, from_scratch=True))
    hist = res.history[-1]
    train_s = sum(r.seconds for r in hist.records)
    return Record("uniform-scratch", res.report.flops_ratio, res.report.params_ratio, None,
                  res.report.accuracy["finetuned"], hist.best_acc(), p.scratch_epochs,
                  time.perf_counter() - t0 - train_s, train_s, latency_ratio(bench, dense, res.model),
                  [dataclasses.asdict(r) for r in hist.records], "re-initialised, dense recipe")


def tp_prune(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(model).cpu().eval()
    pruner = tp.pruner.MetaPruner(model, x.cpu(), importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, global_pruning=False, ignored_layers=[model.fc],
                                  round_to=None)
    pruner.step()
    return model


def run_tp_l1(bench: Bench, dense: nn.Module) -> Record:
    """Torch-Pruning L1, the channel ratio bisected (12 steps) to the largest model within the budget."""
    p = bench.profile
    t0 = time.perf_counter()
    dense_flops = fxprune.count_flops(dense.cpu(), bench.x.cpu())
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        mid = (lo + hi) / 2
        cand = tp_prune(dense, bench.x, mid)
        if fxprune.count_flops(cand, bench.x.cpu()) <= p.flops * dense_flops:
            hi, best = mid, cand
        else:
            lo = mid
    slim = best if best is not None else tp_prune(dense, bench.x, hi)
    prune_s = time.perf_counter() - t0
    ratio_f = fxprune.count_flops(slim, bench.x.cpu()) / dense_flops
    params_r = fxprune.count_params(slim) / fxprune.count_params(dense)
    slim.to(bench.device)
    acc_pruned = evaluate(slim, bench.test)[1]
    hist = Trainer(slim, bench.recipe(p.finetune_epochs, p.finetune_lr), bench.train, bench.test).fit()
    return Record("tp-l1", ratio_f, params_r, acc_pruned, hist.last_acc(), hist.best_acc(), p.finetune_epochs,
                  prune_s, sum(r.seconds for r in hist.records), latency_ratio(bench, dense, slim),
                  [dataclasses.asdict(r) for r in hist.records], f"channel ratio {hi:.4f}")


# ----------------------------------------------------------------------------- measurements


def latency_ms(model: nn.Module, bench: Bench, repeats: int = 30) -> float:
    """Median forward latency at the profile's batch: fxprune.deploy.measure.measure_latency (BN folded; bf16 +
    channels_last on CUDA, fp32 on the CPU), the regime of `fxprune bench` and fxprune.Target."""
    x = torch.randn(bench.profile.latency_batch, *bench.x.shape[1:])
    return measure_latency(model, x, bench.device, repeats=repeats, warmup=5)


def latency_ratio(bench: Bench, dense: nn.Module, slim: nn.Module) -> float:
    return latency_ms(slim, bench) / latency_ms(dense, bench)


def dense_model(bench: Bench, cache: Path, retrain: bool) -> tuple[nn.Module, Record]:
    p = bench.profile
    model = get_cifar_model(p.model).to(bench.device)
    path = cache / f"cifar10-{bench.name}-dense.pt"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists() and not retrain:
        model.load_state_dict(torch.load(path, map_location=bench.device, weights_only=True))
        return model, Record(**json.loads(meta_path.read_text()))
    recipe = dataclasses.replace(bench.recipe(p.dense_epochs, p.dense_lr), checkpoint_dir=str(cache / f"{bench.name}-dense"))
    hist = Trainer(model, recipe, bench.train, bench.test).fit()
    rec = Record("dense", 1.0, 1.0, None, hist.last_acc(), hist.best_acc(), p.dense_epochs, 0.0,
                 sum(r.seconds for r in hist.records), 1.0, [dataclasses.asdict(r) for r in hist.records])
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    meta_path.write_text(json.dumps(dataclasses.asdict(rec)))
    return model, rec


RUNS: dict[str, Callable[[Bench, nn.Module], Record]] = {
    "tp-l1": run_tp_l1,
    "uniform-scratch": run_uniform_scratch,
    "metapruning-scratch": run_metapruning_scratch,
}


def run_named(bench: Bench, dense: nn.Module, name: str) -> Record:
    if name in RUNS:
        return RUNS[name](bench, dense)
    method, kd = (name[:-3], True) if name.endswith("+kd") else (name, False)
    if method not in fxprune.list_methods():
        raise SystemExit(f"unknown run {name!r}: use {', '.join(RUNS)} or an fxprune method "
                         f"({', '.join(fxprune.list_methods())}), optionally with '+kd'.")
    return run_fxprune(bench, dense, method, kd)


# ----------------------------------------------------------------------------- results


def environment(bench: Bench) -> dict:
    from importlib.metadata import version

    gpu = torch.cuda.get_device_name(bench.device) if bench.device.type == "cuda" else None
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "torch_pruning": version("torch-pruning"), "device": str(bench.device), "gpu": gpu,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "profile": dataclasses.asdict(bench.profile)}


def merge(path: Path, env: dict, records: list[Record]) -> dict:
    old = json.loads(path.read_text()) if path.exists() else {"records": []}
    by_run = {r["run"]: r for r in old["records"]}
    for r in records:
        by_run[r.run] = {**dataclasses.asdict(r), "environment": env}
    data = {"protocol": "B2", "records": sorted(by_run.values(), key=lambda r: (r["run"] != "dense", r["run"]))}
    path.write_text(json.dumps(data, indent=1))
    return data


def markdown(name: str, data: dict) -> str:
    rows = ["| run | FLOPs ratio | params ratio | acc pruned | acc fine-tuned (last) | best | latency ratio | "
            "epochs | prune s | train s | device |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, s: "-" if v is None else format(v, s)  # noqa: E731
    for r in data["records"]:
        env = r.get("environment", {})
        rows.append(f"| {r['run']} | {r['flops_ratio']:.3f} | {r['params_ratio']:.3f} | {fmt(r['acc_pruned'], '.2f')} "
                    f"| {r['acc_finetuned']:.2f} | {r['acc_best']:.2f} | {fmt(r['latency_ratio'], '.3f')} | "
                    f"{r['epochs']} | {r['prune_s']:.1f} | {r['train_s']:.1f} | {env.get('gpu') or env.get('device')} |")
    notes = [f"- {r['run']}: {r['note']}" for r in data["records"] if r.get("note")]
    return (f"# CIFAR-10 accuracy at a FLOPs budget (B2), profile `{name}`\n\n" + "\n".join(rows) + "\n\n"
            + "\n".join(notes) + "\n")


def plot(name: str, data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    for r in data["records"]:
        if r["run"] == "dense":
            ax.axhline(r["acc_finetuned"], color="gray", ls="--", label=f"dense {r['acc_finetuned']:.2f}")
            continue
        ax.scatter(r["flops_ratio"], r["acc_finetuned"], label=r["run"], zorder=3)
    if name == "r56-e60":
        for run, (f, acc) in REFERENCE.items():
            ax.scatter(f, acc, marker="x", color="black", zorder=2)
            ax.annotate(f"ref {run}", (f, acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("FLOPs (MACs) ratio, slim / dense")
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    ax.set_title(f"CIFAR-10, profile {name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(name: str, data: dict, out: Path) -> None:
    (out / f"cifar10-{name}.md").write_text(markdown(name, data))
    plot(name, data, out / f"cifar10-{name}.png")


# ----------------------------------------------------------------------------- main


def make_bench(name: str, data_path: str | None, device: str | None, quiet: bool) -> Bench:
    p = PROFILES[name]
    if p.shared_data and data_path is None:
        raise SystemExit(f"profile {name} needs the full CIFAR-10 archive: --data PATH/cifar10-jpeg.tar.gz")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train, test = cifar10_loaders(data_path if p.shared_data else None, batch_size=p.batch_size,
                                  eval_batch_size=1024, device=dev, train_limit=p.train_limit, seed=0,
                                  channels_last=dev.type == "cuda")
    return Bench(p, name, dev, train, test, torch.randn(1, 3, 32, 32), quiet)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="r56-e60")
    ap.add_argument("--data", help="path of cifar10-jpeg.tar.gz (profiles r56-e60, cpu-r20)")
    ap.add_argument("--runs", default=",".join(DEFAULT_RUNS), help="comma-separated runs (default: %(default)s)")
    ap.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--out", default=str(ROOT / "results"))
    ap.add_argument("--cache", help="where the dense model and search checkpoints are kept (default: <out>/../cache)")
    ap.add_argument("--retrain-dense", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="rebuild .md and .png from the .json")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cifar10-{args.profile}.json"
    if args.report_only:
        data = json.loads(path.read_text())
        write_results(args.profile, data, out)
        return data
    bench = make_bench(args.profile, args.data, args.device, args.quiet)
    cache = Path(args.cache) if args.cache else out.parent / "cache"
    bench.cache = cache
    dense, dense_rec = dense_model(bench, cache, args.retrain_dense)
    env = environment(bench)
    data = merge(path, env, [dense_rec])
    for name in [r for r in args.runs.split(",") if r]:
        print(f"== {name}", file=sys.stderr)
        data = merge(path, env, [run_named(bench, dense, name)])
        write_results(args.profile, data, out)
    write_results(args.profile, data, out)
    print(markdown(args.profile, data))
    return data


if __name__ == "__main__":
    main()
