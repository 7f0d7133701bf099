"""Zoo coverage (protocol B1) and analysis time (protocol B4), fxprune and Torch-Pruning side by side.

See docs/benchmarks.md (shared copy: /work/shared/docs/benchmarks.md). For every model of a model set
(`torchvision`: every torchvision classification model up to 30 GMACs; `timm`: the 40 timm models of
issue 3; `timm-extra`: 69 further timm models we picked to cover other families; `torchvision-tasks`: every
torchvision segmentation, video, optical-flow and detection model, see `torchvision_task_models`) at its default
input size, with random weights (all-zero weights, e.g. zero-initialised classifiers, re-drawn from N(0, 0.02) so
that parity checks are not vacuous), eval mode, batch 1, each library runs in its own subprocess under a
wall-clock and a memory limit,
so a hang or a memory blow-up is recorded as a failure of that model instead of killing the sweep.

fxprune checks (a model passes only if all five hold):
  runs            slim model runs, every output tensor has the dense output's shape and is finite
  flops           FLOPs (torch.utils.flop_counter) slim / dense <= 0.6
  masked_eq_slim  ||masked(x) - slim(x)|| / ||slim(x)|| <= 1e-4 (fp32)
  onnx            fxprune.export -> onnxruntime agrees with the slim torch model, rel. err <= 1e-3
  caller_untouched the caller's model has the same state dict and the same output as before
B4: best of 3 `fxprune.analyse(model, x)` (trace + analysis).

Torch-Pruning 1.6.1 (recipe of docs/benchmarks.md): GroupMagnitudeImportance(p=2), MetaPruner,
pruning_ratio=0.5, local selection, classifier ignored (task models: every Linear / conv with the head's
channel count -- 21 segmentation classes, 400 video classes, RAFT's 2 flow channels, 91 detection classes --
as its torchvision script ignores the heads), round_to=None. Checks: graph_build, forward
(pruned model runs with the original output shape -- TP's "pass"), onnx (torch.onnx.export -> onnxruntime,
rel. err <= 1e-3). B4: best of 3 `tp.DependencyGraph().build_dependency(model, example_inputs=x)`.

Usage:
  python benchmarks/zoo_coverage.py [--set torchvision|timm|timm-extra|torchvision-tasks] [--models a,b,c]
                                    [--lib fxprune,tp]
                                    [--timeout 120] [--mem-gb 14] [--max-gmacs 30] [--out benchmarks/results]
  python benchmarks/zoo_coverage.py --report-only          # rebuild the .md from the .json
Results: <out>/zoo_coverage.json (records merged by (set, model, lib): running one library keeps the other
library's records) and <out>/zoo_coverage.md.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib
import importlib.metadata as md
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # import the working tree's fxprune

RATIO = 0.5  # fraction of the channels of every prunable group removed
MAX_FLOPS_RATIO = 0.6
MASKED_TOL = 1e-4
ONNX_TOL = 1e-3
TIMING_REPEATS = 3
TIMING_BUDGET_S = 20.0  # stop repeating a timed call once this much time has been spent on it

FX_CHECKS = ("runs", "flops", "masked_eq_slim", "onnx", "caller_untouched")
TP_CHECKS = ("graph_build", "forward", "onnx")
LIB_CHECKS = {"fxprune": FX_CHECKS, "tp": TP_CHECKS}
PASS_CHECKS = {"fxprune": FX_CHECKS, "tp": ("forward",)}  # TP's "pass" as in the reference table


# ----------------------------------------------------------------------------------------------- model sets
@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], Any]  # returns an nn.Module with random weights
    input_size: int  # square H = W
    shape: tuple[int, ...] = ()  # the input tensor's shape (default: 1 x 3 x input_size x input_size)
    n_inputs: int = 1  # positional inputs of that shape (RAFT: two frames)
    kwargs: tuple[tuple[str, Any], ...] = ()  # keyword inputs (RAFT: num_flow_updates)
    image_list: bool = False  # the inputs go in as one list of images (detection models)
    head_channels: int = 0  # output channels of the head layers TP is told to ignore (0: the logits' count)

    def inputs(self, device: str | None = None) -> tuple:
        import torch

        shape = self.shape or (1, 3, self.input_size, self.input_size)
        xs = [torch.randn(*shape) if device is None else torch.empty(*shape, device=device)
              for _ in range(self.n_inputs)]
        return ([x[0] for x in xs],) if self.image_list else tuple(xs)

    def call_kwargs(self) -> dict[str, Any]:
        return dict(self.kwargs)


def torchvision_models() -> list[ModelSpec]:
    """Every torchvision classification model, random weights (nothing is downloaded).

    Input size: 299 for inception_v3, 224 for every other model (the size the architectures are defined
    and documented at; ViT and Swin need 224). The EfficientNet weights' larger evaluation crops (240-600)
    are deliberately not used, so every CNN is measured at the same resolution.
    """
    import torchvision.models as tvm

    def builder(name: str) -> Callable[[], Any]:
        return lambda: tvm.get_model(name, weights=None)

    return [ModelSpec(n, builder(n), 299 if n == "inception_v3" else 224) for n in tvm.list_models(module=tvm)]


TIMM_MODELS = (
    "resnet50 resnet18d seresnext26d_32x4d res2net50_26w_4s resnest14d skresnet18 densenet121 dla34 dpn68 "
    "cspresnet50 cspdarknet53 regnety_016 efficientnet_b0 efficientnetv2_rw_t mobilenetv3_large_100 "
    "mobilenetv4_conv_small mixnet_s ghostnet_100 rexnet_100 hrnet_w18_small inception_v3 xception41 "
    "convnext_tiny convnextv2_atto vit_small_patch16_224 deit_small_patch16_224 swin_tiny_patch4_window7_224 "
    "levit_128 poolformer_s12 mobilevit_s edgenext_x_small fastvit_t8 repvgg_a0 efficientformer_l1 "
    "coat_lite_tiny maxvit_nano_rw_256 tiny_vit_5m_224 beit_base_patch16_224 eva02_tiny_patch14_224 nfnet_l0"
).split()


# A second timm sample, chosen by us to cover families the list above does not (MLP mixers, pooling and
# multi-scale transformers, class attention, XCA, GPSA, LSTMs, halo / lambda / bottleneck attention, ...),
# to check that the mechanisms are general rather than tuned to the list.
TIMM_EXTRA_MODELS = (
    "resnetv2_50 regnetx_002 regnetz_b16 ecaresnet26t gernet_s hardcorenas_a lcnet_050 tinynet_a fbnetc_100 "
    "mnasnet_100 semnasnet_050 efficientnet_lite0 tf_efficientnet_b0 ese_vovnet19b_dw selecsls42b dla46_c "
    "hrnet_w18_small_v2 cs3darknet_s pit_ti_224 crossvit_tiny_240 cait_xxs24_224 xcit_nano_12_p16_224 "
    "convit_tiny twins_svt_small pvt_v2_b0 mvitv2_tiny focalnet_tiny_srf nest_tiny sequencer2d_s mixer_b16_224 "
    "resmlp_12_224 gmlp_ti16_224 visformer_tiny volo_d1_224 efficientvit_b0 efficientvit_m0 fastvit_sa12 "
    "repvit_m0_9 hgnet_tiny inception_next_tiny rdnet_tiny ghostnetv2_100 mobileone_s0 davit_tiny "
    "coatnet_0_rw_224 gcvit_xxtiny hiera_tiny_224 vit_small_patch14_reg4_dinov2 flexivit_small caformer_s18 "
    "starnet_s1 tresnet_m lambda_resnet26t halonet26t botnet26t_256 nf_resnet26 dm_nfnet_f0 resnest26d "
    "mobilenetv5_300m vit_medium_patch16_rope_reg1_gap_256 efficientformerv2_s0 swinv2_cr_tiny_ns_224 "
    "swinv2_tiny_window8_256 convmixer_768_32 cspresnext50 sebotnet33ts_256 eca_halonext26ts nextvit_small "
    "fasternet_t0 shvit_s1 mambaout_femto"
).split()


def _timm_specs(names: list[str]) -> list[ModelSpec]:
    """timm models with random weights, at each model's default input size (`pretrained_cfg`)."""
    import timm

    def builder(name: str) -> Callable[[], Any]:
        return lambda: timm.create_model(name, pretrained=False)

    def size(name: str) -> int:
        cfg = timm.get_pretrained_cfg(name)
        return int(cfg.input_size[-1]) if cfg is not None else 224

    return [ModelSpec(n, builder(n), size(n)) for n in names]


def torchvision_task_models() -> list[ModelSpec]:
    """Every torchvision model that is not a classifier: segmentation (21 classes), video (400 classes),
    optical flow (RAFT, two 128x128 frames, 3 flow updates) and detection (two 320x320 images in a list, as
    torchvision's detection models take them). Random weights, no backbone weights."""
    import torchvision.models as tvm

    def build(name: str, **kw: Any) -> Callable[[], Any]:
        return lambda: tvm.get_model(name, weights=None, weights_backbone=None, **kw)

    specs = [ModelSpec(n, build(n, num_classes=21), 224, head_channels=21)
             for n in tvm.list_models(module=tvm.segmentation)]
    for n in tvm.list_models(module=tvm.video):
        size = (1, 3, 16, 224, 224) if n.startswith(("mvit", "s3d")) else (1, 3, 8, 112, 112)
        specs.append(ModelSpec(n, lambda n=n: tvm.get_model(n, weights=None), size[-1], shape=size, head_channels=400))
    for n in tvm.list_models(module=tvm.optical_flow):
        specs.append(ModelSpec(n, lambda n=n: tvm.get_model(n, weights=None), 128, n_inputs=2, head_channels=2,
                               kwargs=(("num_flow_updates", 3),)))
    for n in tvm.list_models(module=tvm.detection):
        specs.append(ModelSpec(n, build(n, num_classes=91) if "keypoint" not in n else build(n), 320, n_inputs=2,
                               image_list=True, head_channels=91))
    return specs


MODEL_SETS: dict[str, Callable[[], list[ModelSpec]]] = {
    "torchvision": torchvision_models,
    "torchvision-tasks": torchvision_task_models,
    "timm": lambda: _timm_specs(TIMM_MODELS),  # the list of issue 3
    "timm-extra": lambda: _timm_specs(TIMM_EXTRA_MODELS),
}


def get_spec(set_name: str, model: str) -> ModelSpec:
    specs = {s.name: s for s in MODEL_SETS[set_name]()}
    if model not in specs:
        raise SystemExit(f"unknown model {model!r} in set {set_name!r}")
    return specs[model]


# --------------------------------------------------------------------------------------------------- records
@dataclass
class Check:
    ok: bool = False
    value: float | None = None  # the measured quantity the check compares with its threshold
    note: str = ""


@dataclass
class Record:
    set: str
    model: str
    lib: str
    input_size: int
    status: str = "pending"  # pass | fail | timeout | memory | crash
    stage: str = ""  # last stage entered (tells where a timeout hit)
    passed: bool = False
    checks: dict[str, Check] = field(default_factory=dict)
    dense_gmacs: float | None = None
    dense_params_m: float | None = None
    flops_ratio: float | None = None
    params_ratio: float | None = None
    analysis_s: float | None = None  # B4: best wall time of 3 (fxprune.analyse / TP build_dependency)
    analysis_cpu_s: float | None = None  # best process CPU time of the same calls (robust to contention)
    analysis_runs: int = 0
    prune_s: float | None = None
    wall_s: float | None = None  # inside the subprocess, after imports
    process_s: float | None = None  # the whole subprocess, as the parent saw it
    peak_rss_mb: float | None = None
    threads: int | None = None  # torch intra-op threads in the subprocess
    loadavg_1m: float | None = None  # machine load when the subprocess finished (other users inflate timings)
    errors: dict[str, str] = field(default_factory=dict)  # stage -> first line of the exception
    date: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.set, self.model, self.lib)

    @property
    def error(self) -> str:
        return next((f"{k}: {v}" for k, v in self.errors.items()), "")

    def finish(self) -> None:
        self.passed = all(self.checks.get(c, Check()).ok for c in PASS_CHECKS[self.lib])
        self.status = "pass" if self.passed else "fail"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error": self.error}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["checks"] = {k: Check(**v) for k, v in d.get("checks", {}).items()}
        return cls(**d)


class Skipped(Exception):
    """A check could not run because a step it needs failed."""


def first_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]


class Runner:
    """Runs steps and checks for one record, catching their errors and saving progress after each."""

    def __init__(self, rec: Record, sink: Path | None):
        self.rec, self.sink = rec, sink

    def save(self) -> None:
        if self.sink is not None:
            tmp = self.sink.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.rec.to_dict()))
            tmp.replace(self.sink)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.rec.stage = name
        self.save()
        yield

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run fn; on error record it and return None."""
        with self.stage(name):
            try:
                return fn()
            except Skipped:  # the step it needs failed; that error is already recorded
                return None
            except Exception as exc:  # noqa: BLE001 -- every failure is a result here
                self.rec.errors.setdefault(name, first_line(exc))
                _debug_traceback()
                return None

    def check(self, name: str, fn: Callable[[], tuple[bool, float | None, str]]) -> None:
        with self.stage(name):
            try:
                ok, value, note = fn()
                self.rec.checks[name] = Check(bool(ok), _num(value), note)
            except Skipped as exc:
                self.rec.checks[name] = Check(False, None, f"skipped: {exc}")
            except Exception as exc:  # noqa: BLE001
                self.rec.checks[name] = Check(False, None, first_line(exc))
                self.rec.errors.setdefault(name, first_line(exc))
                _debug_traceback()


def _debug_traceback() -> None:
    if os.environ.get("ZOO_DEBUG"):
        traceback.print_exc()


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def need(value: Any, what: str) -> Any:
    if value is None:
        raise Skipped(f"{what} failed")
    return value


# ------------------------------------------------------------------------------------------ measurements
def leaves(out: Any) -> list:
    """Every tensor of a model output (nested tuples, lists, dicts), in order."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in leaves(o)] if isinstance(out, (tuple, list)) else []


def forward(model, inputs, kwargs=None) -> list:
    """The output tensors of `model(*inputs, **kwargs)` (a tensor is a one-tuple of inputs)."""
    import torch

    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    with torch.no_grad():
        out = leaves(model(*inputs, **(kwargs or {})))
    if not out:
        raise TypeError("model output holds no tensor")
    return out


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| over all output tensors (lists of equal length and shapes)."""
    import torch

    a, b = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    num = sum(float((x.detach().double() - y.detach().double()).pow(2).sum()) for x, y in zip(a, b))
    den = sum(float(y.detach().double().pow(2).sum()) for y in b)
    return float(torch.tensor(num).sqrt() / max(den ** 0.5, 1e-30))


def count_flops(model, x, kwargs=None) -> int:
    """torch's FLOP formulas (fxprune.tracing.flops.FlopCounter: FlopCounterMode without the module tracker that
    crashes on some timm models), used for both libraries."""
    import torch

    from fxprune.tracing.flops import FlopCounter

    with torch.no_grad(), FlopCounter() as counter:
        model(*(x if isinstance(x, tuple) else (x,)), **(kwargs or {}))
    return counter.get_total_flops()


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def time_analysis(rec: Record, fn: Callable[[], Any], repeats: int = TIMING_REPEATS) -> None:
    """B4: best wall and best CPU time of up to `repeats` calls (fewer once TIMING_BUDGET_S is spent)."""
    walls: list[float] = []
    cpus: list[float] = []
    while len(walls) < repeats and sum(walls) < TIMING_BUDGET_S:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    rec.analysis_s, rec.analysis_cpu_s, rec.analysis_runs = min(walls), min(cpus), len(walls)


def onnxruntime_output(path: Path, x):
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    xs = x if isinstance(x, tuple) else (x,)
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), xs)}
    return [torch.from_numpy(o) for o in sess.run(None, feeds)]


def same_state(a, b) -> tuple[bool, str]:
    """torch.equal on every tensor of two state dicts with the same keys."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    if list(sa) != list(sb):
        return False, f"state_dict keys differ ({len(sa)} vs {len(sb)})"
    for k in sa:
        if sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k]):
            return False, f"state_dict[{k!r}] changed"
    return True, ""


def output_check(out, dense_out) -> tuple[bool, float | None, str]:
    """Every output tensor has its original shape and is finite; value = 1.0 if finite else 0.0."""
    import torch

    finite = all(bool(torch.isfinite(t).all()) for t in out)
    shapes, dense = [tuple(t.shape) for t in out], [tuple(t.shape) for t in dense_out]
    shape_ok = shapes == dense
    note = "" if shape_ok else f"shapes {shapes[:3]} != {dense[:3]}"
    note += "" if finite else (" " if note else "") + "non-finite output"
    return shape_ok and finite, float(finite), note


# ---------------------------------------------------------------------------------------- library runners
def prepare(spec: ModelSpec, rec: Record) -> SimpleNamespace:
    """The caller's model, the input, the dense output, FLOPs and params."""
    import torch

    torch.manual_seed(0)
    model = randomise_zero_weights(spec.build().eval())
    x, kw = spec.inputs(), spec.call_kwargs()
    dense_out = forward(model, x, kw)
    ctx = SimpleNamespace(model=model, x=x, kw=kw, dense_out=dense_out, dense_flops=count_flops(model, x, kw),
                          dense_params=count_params(model), head_channels=spec.head_channels)
    rec.dense_gmacs = ctx.dense_flops / 2e9
    rec.dense_params_m = ctx.dense_params / 1e6
    return ctx


def randomise_zero_weights(model):
    """Some models zero-initialise their classifier (timm's sequencer, mixers, ...): their output is then 0
    and every parity check would pass vacuously. Such all-zero weights get N(0, 0.02) values."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            w = getattr(m, "weight", None)
            if isinstance(w, torch.nn.Parameter) and w.dim() >= 2 and not w.any():
                torch.nn.init.normal_(w, std=0.02)
    return model


def shrink_ratios(rec: Record, ctx: SimpleNamespace, slim) -> None:
    rec.flops_ratio = count_flops(slim, ctx.x, ctx.kw) / max(ctx.dense_flops, 1)
    rec.params_ratio = count_params(slim) / max(ctx.dense_params, 1)


def run_fxprune(spec: ModelSpec, rec: Record, run: Runner, tmp: Path) -> None:
    ctx = prepare(spec, rec)
    before = copy.deepcopy(ctx.model)
    fx = run.step("import", lambda: importlib.import_module("fxprune"))

    def analyse() -> None:
        time_analysis(rec, lambda: need(fx, "import").analyse(ctx.model, ctx.x, example_kwargs=ctx.kw or None))

    def prune():
        t0 = time.perf_counter()
        res = need(fx, "import").prune(ctx.model, ctx.x, method="l1", ratio=RATIO, example_kwargs=ctx.kw or None)
        rec.prune_s = time.perf_counter() - t0
        return res

    run.step("analyse", analyse)
    res = run.step("prune", prune)
    slim_out = run.step("slim_forward", lambda: forward(need(res, "prune").model, ctx.x, ctx.kw))

    def check_runs():
        return output_check(need(slim_out, "slim forward"), ctx.dense_out)

    def check_flops():
        shrink_ratios(rec, ctx, need(res, "prune").model)
        return rec.flops_ratio <= MAX_FLOPS_RATIO, rec.flops_ratio, ""

    def check_masked():
        masked = need(fx, "import").apply_masks(ctx.model, ctx.x, need(res, "prune").plan, example_kwargs=ctx.kw or None)
        err = rel_err(forward(masked, ctx.x, ctx.kw), need(slim_out, "slim forward"))
        return err <= MASKED_TOL, err, ""

    def check_onnx():
        path = tmp / "m.onnx"
        need(fx, "import").export(need(res, "prune").model, ctx.x if len(ctx.x) > 1 else ctx.x[0], path, check=False)
        err = rel_err(onnxruntime_output(path, ctx.x), need(slim_out, "slim forward"))
        return err <= ONNX_TOL, err, ""

    def check_caller():
        same, note = same_state(ctx.model, before)
        diff = rel_err(forward(ctx.model, ctx.x, ctx.kw), ctx.dense_out)
        if diff != 0.0:
            note = (note + "; " if note else "") + "output changed"
        return same and diff == 0.0, diff, note

    run.check("runs", check_runs)
    run.check("flops", check_flops)
    run.check("masked_eq_slim", check_masked)
    run.check("onnx", check_onnx)
    run.check("caller_untouched", check_caller)  # last: covers analyse, prune and apply_masks


def classifier_layers(model, num_classes: int) -> list:
    """Layers whose outputs are the logits: Linear / Conv with num_classes outputs (squeezenet's is a conv)."""
    from torch import nn

    def is_head(m) -> bool:
        return (isinstance(m, nn.Linear) and m.out_features == num_classes) or (
            isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == num_classes)

    return [m for m in model.modules() if is_head(m)]


def run_tp(spec: ModelSpec, rec: Record, run: Runner, tmp: Path) -> None:
    import torch

    ctx = prepare(spec, rec)
    model = copy.deepcopy(ctx.model)  # TP gets a copy
    # one tensor; a list of images as one positional argument (detection); RAFT's frames and kwargs by name
    tp_inputs = ctx.x if isinstance(ctx.x[0], list) else ctx.x[0] if len(ctx.x) == 1 else {
        **dict(zip(("image1", "image2"), ctx.x)), **ctx.kw}
    tp = run.step("import", lambda: importlib.import_module("torch_pruning"))

    def check_build():
        time_analysis(rec, lambda: need(tp, "import").DependencyGraph().build_dependency(model, example_inputs=tp_inputs))
        return True, rec.analysis_s, ""

    def prune():
        tp_ = need(tp, "import")
        t0 = time.perf_counter()
        pruner = tp_.pruner.MetaPruner(
            model, tp_inputs, importance=tp_.importance.GroupMagnitudeImportance(p=2), pruning_ratio=RATIO,
            global_pruning=False, ignored_layers=classifier_layers(model, ctx.head_channels or ctx.dense_out[0].shape[-1]),
            round_to=None)
        pruner.step()
        rec.prune_s = time.perf_counter() - t0
        return model

    def check_forward():
        out = forward(need(pruned, "prune"), ctx.x, ctx.kw)
        _, finite, note = output_check(out, ctx.dense_out)
        return [t.shape for t in out] == [t.shape for t in ctx.dense_out], finite, note  # TP's pass: shape only

    def check_onnx():
        slim = need(pruned, "prune")
        slim_out = forward(slim, ctx.x, ctx.kw)
        path = tmp / "m.onnx"
        torch.onnx.export(slim, ctx.x, str(path), kwargs=ctx.kw or None)
        err = rel_err(onnxruntime_output(path, ctx.x), slim_out)
        return err <= ONNX_TOL, err, ""

    run.check("graph_build", check_build)
    pruned = run.step("prune", prune)
    run.check("forward", check_forward)
    run.step("ratios", lambda: shrink_ratios(rec, ctx, need(pruned, "prune")))
    run.check("onnx", check_onnx)


LIB_RUNNERS: dict[str, Callable[[ModelSpec, Record, Runner, Path], None]] = {
    "fxprune": run_fxprune,
    "tp": run_tp,
}


def run_one(set_name: str, model: str, lib: str, sink: Path | None) -> Record:
    """Child side: run one library on one model, writing the record to `sink` as it goes."""
    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    spec = get_spec(set_name, model)
    rec = Record(set_name, model, lib, spec.input_size, date=dt.datetime.now().isoformat(timespec="seconds"),
                 threads=torch.get_num_threads())
    run = Runner(rec, sink)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zoo_") as tmp:
        try:
            LIB_RUNNERS[lib](spec, rec, run, Path(tmp))
        except Exception as exc:  # noqa: BLE001 -- e.g. the dense model itself fails to build or run
            rec.errors.setdefault(rec.stage or "setup", first_line(exc))
            _debug_traceback()
    rec.wall_s = time.perf_counter() - t0
    rec.peak_rss_mb = peak_rss_mb("self")  # VmHWM; ru_maxrss would carry the parent's peak over exec
    rec.loadavg_1m = os.getloadavg()[0]
    rec.finish()
    rec.stage = "done"
    run.save()
    return rec


# --------------------------------------------------------------------------------------- parent: selection
def measure_gmacs(spec: ModelSpec) -> float:
    """Dense MACs (torch flop-counter FLOPs / 2) of one forward pass on the meta device (no real memory)."""
    import torch

    warnings.filterwarnings("ignore")
    try:
        with torch.device("meta"):
            model = spec.build().eval()
    except Exception:  # noqa: BLE001 -- e.g. regnet computes its widths with tensor ops at build time
        model = spec.build().eval().to("meta")
    return count_flops(model, spec.inputs(device="meta"), spec.call_kwargs()) / 2e9


def _gmacs_or_unknown(spec: ModelSpec) -> float:
    """Dense GMACs, or -1 when counting them fails (the model is then swept, and fails or passes there)."""
    try:
        return round(measure_gmacs(spec), 3)
    except Exception:  # noqa: BLE001 -- e.g. a model that cannot run on meta tensors or needs other inputs
        return -1.0


def gmacs_key(spec: ModelSpec) -> str:
    return f"{spec.name}@{spec.input_size}"


def measure_gmacs_subprocess(set_name: str, names: list[str]) -> dict[str, float]:
    """Run measure_gmacs in a child (some models must be built for real: keep that memory out of the parent)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--set", set_name, "--gmacs-of", ",".join(names)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def select_models(set_name: str, max_gmacs: float, cache: dict[str, float]) -> tuple[list, list]:
    """Split the set into (kept specs, excluded [{model, gmacs}]); GMACs are measured once and cached."""
    specs = MODEL_SETS[set_name]()
    missing = [s.name for s in specs if gmacs_key(s) not in cache]
    if missing:
        print(f"measuring dense GMACs of {len(missing)} models on the meta device ...", flush=True)
        cache.update(measure_gmacs_subprocess(set_name, missing))
    kept, excluded = [], []
    for spec in specs:
        key = gmacs_key(spec)
        if cache[key] <= max_gmacs:
            kept.append(spec)
        else:
            excluded.append({"model": spec.name, "input_size": spec.input_size, "gmacs": cache[key]})
    return kept, excluded


# ------------------------------------------------------------------------------------ parent: subprocesses
def rss_mb(pid: int | str, field_name: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb(pid: int | str) -> float:
    return rss_mb(pid, "VmHWM")


def supervise(set_name: str, model: str, lib: str, timeout: float, mem_gb: float, threads: int,
              logdir: Path) -> Record:
    """Run `--one` in a subprocess; kill it on timeout or memory limit; return its (partial) record."""
    sink = logdir / f"{model}.{lib}.json"
    log = logdir / f"{model}.{lib}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", model, "--lib", lib, "--set", set_name,
           "--record-to", str(sink)]
    t0 = time.perf_counter()
    with open(log, "wb") as logf:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        verdict, peak = "", 0.0
        while proc.poll() is None:
            peak = max(peak, rss_mb(proc.pid))
            if time.perf_counter() - t0 > timeout:
                verdict = "timeout"
            elif peak > mem_gb * 1024:
                verdict = "memory"
            if verdict:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    rec = load_partial(sink, set_name, model, lib)
    rec.process_s = wall
    if verdict or rec.stage != "done":
        rec.passed = False
        rec.status = verdict or "crash"
        rec.wall_s, rec.peak_rss_mb = wall, max(peak, rec.peak_rss_mb or 0.0)
        rec.errors.setdefault(rec.stage or "startup", crash_message(verdict, rec, timeout, mem_gb, proc, log))
        rec.loadavg_1m = os.getloadavg()[0]
        for name in LIB_CHECKS[lib]:
            rec.checks.setdefault(name, Check(False, None, f"not reached ({rec.status})"))
    return rec


def load_partial(sink: Path, set_name: str, model: str, lib: str) -> Record:
    try:
        return Record.from_dict(json.loads(sink.read_text()))
    except (OSError, ValueError):
        return Record(set_name, model, lib, input_size=0, date=dt.datetime.now().isoformat(timespec="seconds"))


def crash_message(verdict: str, rec: Record, timeout: float, mem_gb: float, proc, log: Path) -> str:
    where = f" in stage {rec.stage!r}" if rec.stage else ""
    if verdict == "timeout":
        return f"timeout after {timeout:.0f} s{where}"
    if verdict == "memory":
        return f"killed: RSS above {mem_gb:.0f} GiB{where}"
    tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] if log.exists() else []
    return f"process exited with code {proc.returncode}{where}" + (f": {tail[0][:200]}" if tail else "")


# ------------------------------------------------------------------------------------------ results file
def load_results(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"environment": {}, "sets": {}, "records": []}


def save_results(path: Path, data: dict[str, Any]) -> None:
    data["records"].sort(key=lambda r: (r["set"], r["model"], r["lib"]))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def merge_record(data: dict[str, Any], rec: Record) -> None:
    data["records"] = [r for r in data["records"] if (r["set"], r["model"], r["lib"]) != rec.key]
    data["records"].append(rec.to_dict())


def version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, Any]:
    import torch

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads_default": torch.get_num_threads(),
        "torch": version("torch"),
        "torchvision": version("torchvision"),
        "torch_pruning": version("torch-pruning"),
        "onnx": version("onnx"),
        "onnxruntime": version("onnxruntime"),
        "onnxscript": version("onnxscript"),
        "fxprune": version("fxprune"),
        "git_commit": commit,
    }


# ---------------------------------------------------------------------------------------------- report
def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _mark(rec: dict | None, check: str) -> str:
    if rec is None:
        return ""
    c = rec["checks"].get(check)
    return "-" if c is None else ("ok" if c["ok"] else "FAIL")


def _median_max(recs: list[dict], key: str = "analysis_s") -> tuple[float | None, float | None, str]:
    times = [(r[key], r["model"]) for r in recs if r.get(key) is not None]
    if not times:
        return None, None, ""
    worst = max(times)
    return statistics.median(t for t, _ in times), worst[0], worst[1]


def summary_lines(recs: dict[str, dict[str, dict]], n_models: int, envs: dict[str, dict]) -> list[str]:
    out = [f"Models run: fxprune {len(recs['fxprune'])}, TP {len(recs['tp'])} (of {n_models} selected).", ""]
    fx, tp = list(recs["fxprune"].values()), list(recs["tp"].values())
    if fx:
        out += ["### fxprune (B1)", "", "| check | pass | of |", "|---|---|---|"]
        out += [f"| {c} | {sum(_mark(r, c) == 'ok' for r in fx)} | {len(fx)} |" for c in FX_CHECKS]
        out += [f"| **all five** | **{sum(r['passed'] for r in fx)}** | {len(fx)} |", ""]
    if tp:
        out += ["### Torch-Pruning 1.6.1 (B1)", "", "| check | pass | of |", "|---|---|---|"]
        out += [f"| {c} | {sum(_mark(r, c) == 'ok' for r in tp)} | {len(tp)} |" for c in TP_CHECKS]
        out += [""]
    out += ["### Analysis time (B4), best of 3, seconds", "",
            "| lib | models timed | median wall | max wall (model) | median CPU | max CPU (model) |",
            "|---|---|---|---|---|---|"]
    for lib, rs in (("fxprune analyse", fx), ("TP build_dependency", tp)):
        med, mx, who = _median_max(rs)
        cmed, cmx, cwho = _median_max(rs, "analysis_cpu_s")
        n = sum(r.get("analysis_s") is not None for r in rs)
        out.append(f"| {lib} | {n} | {_fmt(med)} | {_fmt(mx)} ({who}) | {_fmt(cmed)} | {_fmt(cmx)} ({cwho}) |")
    loads = [r["loadavg_1m"] for r in fx + tp if r.get("loadavg_1m") is not None]
    if loads:
        out += ["", f"Machine load (1-min average) as the subprocesses finished: median {statistics.median(loads):.2f}, "
                    f"max {max(loads):.2f} on {os.cpu_count()} CPUs; other users' jobs inflate wall times."]
    started = {lib: envs.get(lib, {}).get("date", "?") for lib in recs}
    if fx and tp and started["fxprune"] != started["tp"]:
        out += ["", f"The fxprune records come from the run started {started['fxprune']}, TP's from the run started "
                    f"{started['tp']}: the time ratio below mixes two runs. For B4, run `--lib fxprune,tp` "
                    "(both libraries interleaved per model in one run)."]
    both = [m for m in recs["fxprune"] if m in recs["tp"] and recs["fxprune"][m].get("analysis_s")
            and recs["tp"][m].get("analysis_s")]
    if both:
        ratios = sorted(recs["fxprune"][m]["analysis_s"] / recs["tp"][m]["analysis_s"] for m in both)
        med_fx, _, _ = _median_max([recs["fxprune"][m] for m in both])
        med_tp, _, _ = _median_max([recs["tp"][m] for m in both])
        out += ["", f"fxprune / TP on the {len(both)} models both timed: median of per-model ratios "
                    f"{statistics.median(ratios):.2f}, ratio of medians {med_fx / med_tp:.2f}."]
    return out + [""]


def table_lines(recs: dict[str, dict[str, dict]], gmacs: dict[str, float], models: list[tuple[str, int]]) -> list[str]:
    head = ("| model | GMACs | fx runs | fx flops | fx masked | fx onnx | fx caller | fx FLOPs ratio | fx analyse s "
            "| TP build | TP fwd | TP onnx | TP FLOPs ratio | TP build s | fxprune error | TP error |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, size in models:
        f, t = recs["fxprune"].get(name), recs["tp"].get(name)
        row = [name, _fmt(gmacs.get(f"{name}@{size}"), ".2f")]
        row += [_mark(f, c) for c in FX_CHECKS]
        row += [_fmt(f and f.get("flops_ratio")), _fmt(f and f.get("analysis_s"))]
        row += [_mark(t, c) for c in TP_CHECKS]
        row += [_fmt(t and t.get("flops_ratio")), _fmt(t and t.get("analysis_s"))]
        row += [_short_error(f), _short_error(t)]
        out.append("| " + " | ".join(row) + " |")
    return out


def _short_error(rec: dict | None) -> str:
    if rec is None or rec["passed"] and not rec.get("error"):
        return ""
    return rec.get("error", "")[:110].replace("|", "\\|")


def write_report(path: Path, data: dict[str, Any]) -> None:
    lines = ["# Zoo coverage (B1) and analysis time (B4): fxprune vs Torch-Pruning", "",
             "Generated by `benchmarks/zoo_coverage.py` from `zoo_coverage.json`; protocol in docs/benchmarks.md.",
             f"Random weights, eval mode, batch 1, {RATIO:.0%} of the channels of every group removed (L1 / "
             "GroupMagnitude p=2), classifier kept. Each model and library ran in its own subprocess.", ""]
    for lib, env in sorted(data["environment"].items()):
        keys = ("date", "torch", "torchvision", "torch_pruning", "onnxruntime", "cpu_count", "threads",
                "git_commit", "timeout_s", "mem_gb", "sweep_wall_s")
        lines.append(f"- environment of the last `{lib}` run: " + ", ".join(f"{k} {env.get(k)}" for k in keys))
    lines.append("")
    for set_name, info in data["sets"].items():
        recs = {lib: {r["model"]: r for r in data["records"] if r["set"] == set_name and r["lib"] == lib}
                for lib in LIB_RUNNERS}
        models = [(m, s) for m, s in info["models"]]
        ran = [(m, s) for m, s in models if any(m in recs[lib] for lib in recs)]
        excl = ", ".join(f"{e['model']} ({e['gmacs']:.1f})" for e in info["excluded"])
        lines += [f"## Set `{set_name}`: {len(models)} models <= {info['max_gmacs']} GMACs", "",
                  f"Excluded (GMACs at the default input size, torch flop-counter FLOPs / 2): {excl or 'none'}.", ""]
        lines += summary_lines(recs, len(models), data["environment"])
        lines += ["### Per model", "", f"{len(ran)} of {len(models)} selected models have results.", ""]
        lines += table_lines(recs, info["gmacs"], ran) + [""]
    path.write_text("\n".join(lines))


# -------------------------------------------------------------------------------------------------- CLI
def sweep(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "zoo_coverage.json"
    data = load_results(json_path)
    info = data["sets"].setdefault(args.set, {"gmacs": {}})
    kept, excluded = select_models(args.set, args.max_gmacs, info["gmacs"])
    info.update(max_gmacs=args.max_gmacs, excluded=excluded, models=[(s.name, s.input_size) for s in kept])
    save_results(json_path, data)
    print(f"{args.set}: {len(kept)} models <= {args.max_gmacs} GMACs; excluded: "
          + ", ".join(f"{e['model']} ({e['gmacs']:.1f})" for e in excluded), flush=True)

    wanted = args.models.split(",") if args.models else [s.name for s in kept]
    unknown = set(wanted) - {s.name for s in kept}
    if unknown:
        raise SystemExit(f"not in the selected set: {sorted(unknown)}")
    libs = args.lib.split(",")
    envs = {lib: {**environment(), "timeout_s": args.timeout, "mem_gb": args.mem_gb, "threads": args.threads}
            for lib in libs}
    spent = dict.fromkeys(libs, 0.0)
    t_sweep = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zoo_sweep_") as logdir:
        for i, name in enumerate(wanted, 1):
            for lib in libs:
                rec = supervise(args.set, name, lib, args.timeout, args.mem_gb, args.threads, Path(logdir))
                spent[lib] += rec.process_s or 0.0
                merge_record(data, rec)
                save_results(json_path, data)
                print(f"[{i}/{len(wanted)}] {name:22s} {lib:8s} {rec.status:8s} {rec.process_s or 0:6.1f}s "
                      f"B4 {_fmt(rec.analysis_s)}s flops {_fmt(rec.flops_ratio)}  {rec.error[:90]}", flush=True)
    for lib in libs:
        envs[lib].update(models_run=len(wanted), sweep_wall_s=round(spent[lib], 1))
        data["environment"][lib] = envs[lib]
    save_results(json_path, data)
    write_report(out / "zoo_coverage.md", data)
    print(f"sweep wall time {time.perf_counter() - t_sweep:.0f} s; wrote {json_path} and zoo_coverage.md")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", default="torchvision", choices=sorted(MODEL_SETS))
    p.add_argument("--models", default="", help="comma-separated subset of the set (default: all selected)")
    p.add_argument("--lib", default="fxprune,tp", help="comma-separated: fxprune, tp")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per model per library")
    p.add_argument("--mem-gb", type=float, default=14.0, help="kill a model's subprocess above this RSS")
    p.add_argument("--threads", type=int, default=1,
                   help="torch/OMP threads per subprocess (default 1: 2 threads on a shared 2-core machine make "
                        "timings swing ~10x)")
    p.add_argument("--max-gmacs", type=float, default=30.0, help="skip models above this many GMACs")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--report-only", action="store_true", help="rewrite the .md from the existing .json")
    p.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one model, one library
    p.add_argument("--record-to", help=argparse.SUPPRESS)
    p.add_argument("--gmacs-of", help=argparse.SUPPRESS)  # child mode: print {name@size: GMACs} as JSON
    args = p.parse_args(argv)
    bad = set(args.lib.split(",")) - set(LIB_RUNNERS)
    if bad:
        p.error(f"unknown --lib {sorted(bad)}; choose from {sorted(LIB_RUNNERS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        rec = run_one(args.set, args.one, args.lib, Path(args.record_to) if args.record_to else None)
        if not args.record_to:
            print(json.dumps(rec.to_dict(), indent=1))
    elif args.gmacs_of:
        specs = {s.name: s for s in MODEL_SETS[args.set]()}
        print(json.dumps({gmacs_key(specs[n]): _gmacs_or_unknown(specs[n]) for n in args.gmacs_of.split(",")}))
    elif args.report_only:
        out = Path(args.out)
        write_report(out / "zoo_coverage.md", load_results(out / "zoo_coverage.json"))
    else:
        sweep(args)


if __name__ == "__main__":
    main()
