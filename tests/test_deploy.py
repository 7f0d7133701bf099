"""fxprune.deploy: BatchNorm folding, optimize() runtimes and their parity checks, the ONNX Runtime path."""
from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

import fxprune
from fxprune.deploy import Optimized, OrtModule, fold_batchnorm, optimize, ort_session
from fxprune.errors import DeployParityError, ExportParityError, TraceError

from helpers import assert_unchanged, rel_err, run, state_snapshot

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters in every BatchNorm (fresh ones are identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def n_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def assert_folds_to_same(model: nn.Module, x: torch.Tensor, remaining: int = 0, tol: float = 1e-5,
                         **kwargs) -> nn.Module:
    """fold_batchnorm(model) computes what model computes, leaves `remaining` BNs and leaves model untouched."""
    snap = state_snapshot(model)
    folded = fold_batchnorm(model, **kwargs)
    assert n_batchnorms(folded) == remaining
    assert rel_err(run(folded, x), run(model, x)) <= tol
    assert_unchanged(model, snap, x)
    return folded


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class SharedConv(nn.Module):
    """One conv called at two places, each followed by its own BN: folding either would corrupt the other."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv(torch.relu(self.bn1(self.conv(x)))))


class ConvOutputReused(nn.Module):
    """The conv output feeds the BN and a residual add: the BN cannot be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class DictOut(TinyNet):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return {"logits": self.head(feats), "features": feats}


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.bn(self.conv(x))
        return self.conv(x)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return randomise_bn(torchvision.models.resnet18(weights=None)).eval()


@pytest.fixture(scope="module")
def slim_mobilenet() -> nn.Module:
    model = randomise_bn(torchvision.models.mobilenet_v2(weights=None)).eval()
    return fxprune.prune(model, torch.randn(1, 3, 64, 64), flops=0.5).model


def tiny() -> nn.Module:
    return randomise_bn(TinyNet()).eval()


X64 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
X16 = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))


# --------------------------------------------------------------------------------------------- folding


def test_fold_resnet18_with_random_statistics(resnet18: nn.Module) -> None:
    assert n_batchnorms(resnet18) == 20
    folded = assert_folds_to_same(resnet18, X64)
    assert isinstance(folded, torch.fx.GraphModule)
    assert all(m.bias is not None for m in folded.modules() if isinstance(m, nn.Conv2d))


def test_fold_pruned_mobilenet(slim_mobilenet: nn.Module) -> None:
    assert isinstance(slim_mobilenet, torch.fx.GraphModule) and n_batchnorms(slim_mobilenet) == 52
    assert_folds_to_same(slim_mobilenet, X64)
    assert n_batchnorms(slim_mobilenet) == 52  # the slim model keeps its BNs


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_fold_conv_without_bias(dims: int) -> None:
    conv, bn = getattr(nn, f"Conv{dims}d"), getattr(nn, f"BatchNorm{dims}d")
    model = randomise_bn(nn.Sequential(conv(3, 6, 3, bias=False), bn(6), nn.ReLU())).eval()
    folded = assert_folds_to_same(model, torch.randn(2, 3, *[7] * dims))
    assert folded.get_submodule("0").bias is not None


def test_fold_batchnorm_without_affine() -> None:
    model = randomise_bn(nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, affine=False))).eval()
    assert_folds_to_same(model, torch.randn(2, 3, 8, 8))


def test_fold_shared_conv_is_not_folded() -> None:
    model = randomise_bn(SharedConv()).eval()
    folded = assert_folds_to_same(model, torch.randn(1, 4, 8, 8), remaining=2, tol=0.0)
    assert torch.equal(folded.conv.weight, model.conv.weight)


def test_fold_needs_the_conv_output_to_feed_only_the_bn() -> None:
    assert_folds_to_same(randomise_bn(ConvOutputReused()).eval(), torch.randn(1, 4, 8, 8), remaining=1, tol=0.0)


def test_fold_linear_batchnorm1d() -> None:
    model = randomise_bn(nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))).eval()
    x = torch.randn(4, 5)
    assert_folds_to_same(model, x, remaining=1)  # the rank of the linear output is unknown: not folded
    assert_folds_to_same(model, x, example_inputs=x)  # known to be 2-D: folded


def test_fold_linear_on_3d_input_is_not_folded() -> None:
    """BatchNorm1d normalises dim 1 of (N, C, L), a linear layer writes dim 2: with C == L folding is wrong."""
    model = randomise_bn(nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6))).eval()
    assert_folds_to_same(model, torch.randn(2, 6, 6), remaining=1, tol=0.0, example_inputs=torch.randn(2, 6, 6))


def test_fold_conv_transpose() -> None:
    model = randomise_bn(nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2), nn.BatchNorm2d(6))).eval()
    assert_folds_to_same(model, torch.randn(2, 4, 5, 5))
    grouped = randomise_bn(nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6))).eval()
    assert_folds_to_same(grouped, torch.randn(2, 4, 5, 5), remaining=1, tol=0.0)  # left alone


def test_fold_leaves_train_mode_and_batch_statistics_alone() -> None:
    train = randomise_bn(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    assert n_batchnorms(fold_batchnorm(train)) == 1
    batch_stats = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert_folds_to_same(batch_stats, torch.randn(2, 3, 4, 4), remaining=1, tol=0.0)


def test_fold_untraceable_module_names_it() -> None:
    with pytest.raises(TraceError, match="Untraceable.*fold_bn=False"):
        fold_batchnorm(Untraceable().eval())


# -------------------------------------------------------------------------------------------- optimize


def test_optimize_eager_cpu(resnet18: nn.Module) -> None:
    snap, x = state_snapshot(resnet18), X64.clone()
    fast = optimize(resnet18, x, "cpu", mode="eager")
    assert isinstance(fast, Optimized) and fast.mode == "eager"
    assert fast.dtype == torch.float32 and fast.device == torch.device("cpu") and not fast.channels_last
    assert n_batchnorms(fast.module) == 0 and fast.timings_ms == {} and fast.errors == {}
    assert fast.parity.relative_error < 1e-5
    assert rel_err(fast(X64), run(resnet18, X64)) < 1e-5
    x3 = torch.randn(3, 3, 64, 64)
    assert rel_err(fast(x3), run(resnet18, x3)) < 1e-5  # eager mode takes other batch sizes too
    assert_unchanged(resnet18, snap, X64)
    assert torch.equal(x, X64)


def test_optimize_channels_last_cpu(slim_mobilenet: nn.Module) -> None:
    fast = optimize(slim_mobilenet, X64, "cpu", mode="eager", channels_last=True)
    assert fast.channels_last
    conv = next(m for m in fast.module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.parity.relative_error < 1e-5
    assert rel_err(fast(X64), run(slim_mobilenet, X64)) < 1e-5


def test_optimize_bfloat16_cpu() -> None:
    model = tiny()
    fast = optimize(model, X16, "cpu", torch.bfloat16, mode="eager")
    out = fast(X16)
    assert out.dtype == torch.bfloat16 and fast.module.head.weight.dtype == torch.bfloat16
    assert fast.parity.relative_error < 2e-2
    assert rel_err(out.float(), run(model, X16)) < 2e-2


def test_optimize_compile_and_auto_cpu() -> None:
    """torch.compile on a tiny model (a larger one takes minutes to compile on two cores)."""
    model = tiny()
    fast = optimize(model, X16, "cpu", mode="auto", warmup=1, repeats=3)
    assert set(fast.timings_ms) == {"eager", "compile"}, fast.errors
    assert fast.mode == min(fast.timings_ms, key=fast.timings_ms.get)
    assert fast.parity.relative_error < 1e-4
    assert rel_err(fast(X16), run(model, X16)) < 1e-4
    compiled = optimize(model, X16, "cpu", mode="compile")
    assert compiled.mode == "compile" and compiled.errors == {}
    assert rel_err(compiled(X16), run(model, X16)) < 1e-4


def test_compile_failure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    model = tiny()
    with pytest.warns(RuntimeWarning, match="'compile' could not be built"):
        fast = optimize(model, X16, "cpu", mode="compile")
    assert fast.mode == "eager" and "no compiler here" in fast.errors["compile"]
    assert rel_err(fast(X16), run(model, X16)) < 1e-5
    auto = optimize(model, X16, "cpu", warmup=0, repeats=1)
    assert auto.mode == "eager" and set(auto.timings_ms) == {"eager"} and "compile" in auto.errors


def test_parity_failure_raises_and_leaves_model_untouched() -> None:
    model = tiny()
    snap = state_snapshot(model)
    with pytest.raises(DeployParityError, match="mode 'eager'.*relative error"):
        optimize(model, X16, "cpu", torch.bfloat16, mode="eager", rtol=0.0, atol=0.0)
    assert_unchanged(model, snap, X16)
    assert issubclass(DeployParityError, ExportParityError)


def test_nested_outputs_and_no_check() -> None:
    model = randomise_bn(DictOut()).eval()
    fast = optimize(model, X16, "cpu", mode="eager", check=False)
    assert fast.parity is None
    out, ref = fast(X16), run(model, X16)
    assert set(out) == {"logits", "features"} and rel_err(out, ref) < 1e-5


def test_bad_arguments() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="unknown mode 'fast'.*'auto', 'eager', 'cuda_graph', 'compile'"):
        optimize(model, X16, "cpu", mode="fast")
    with pytest.raises(ValueError, match="unknown runtime"):
        optimize(model, X16, "cpu", runtime="tensorrt")
    with pytest.raises(ValueError, match="'cuda_graph' runs on cuda only"):
        optimize(model, X16, "cpu", mode="cuda_graph")
    with pytest.raises(ValueError, match="floating"):
        optimize(model, X16, "cpu", torch.int8)
    with pytest.raises(ValueError, match="float32 models only"):
        optimize(model, X16, "cpu", torch.bfloat16, runtime="onnxruntime")
    with pytest.raises(ValueError, match="repeats"):
        optimize(model, X16, "cpu", repeats=0)
    with pytest.raises(TraceError, match="fold_bn=False"):
        optimize(Untraceable().eval(), X16, "cpu", mode="eager")
    assert optimize(Untraceable().eval(), X16, "cpu", mode="eager", fold_bn=False).parity.relative_error == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        optimize(tiny(), X16, "cuda")


# ----------------------------------------------------------------------------------------- onnxruntime


def test_onnxruntime_path(slim_mobilenet: nn.Module) -> None:
    snap = state_snapshot(slim_mobilenet)
    fast = optimize(slim_mobilenet, X64, "cpu", runtime="onnxruntime")
    assert fast.mode == "onnxruntime" and isinstance(fast.module, OrtModule)
    assert fast.parity.relative_error < 1e-4
    out = fast(X64)
    assert isinstance(out, torch.Tensor) and rel_err(out, run(slim_mobilenet, X64)) < 1e-4
    with pytest.raises(ValueError, match="exported for input shapes"):
        fast(torch.randn(2, 3, 64, 64))
    assert_unchanged(slim_mobilenet, snap, X64)


def test_ort_session_options_and_nested_outputs(tmp_path) -> None:
    model = randomise_bn(DictOut()).eval()
    session = ort_session(model, X16, threads=1, path=tmp_path / "m.onnx")
    options = session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_ALL")
    assert (tmp_path / "m.onnx").exists()
    ort_model = OrtModule.from_module(model, X16, threads=1)
    out = ort_model(X16.double())  # floating inputs are cast to what the session wants
    assert set(out) == {"logits", "features"} and rel_err(out, run(model, X16)) < 1e-5


# ------------------------------------------------------------------------------------------------ CUDA


@needs_cuda
def test_cuda_graph_parity_and_fixed_shapes() -> None:
    model = tiny()
    fast = optimize(model, X16, "cuda", mode="cuda_graph")
    assert fast.mode == "cuda_graph" and fast.dtype == torch.bfloat16 and fast.channels_last
    first = fast(X16)
    second = fast(X16 * 2)
    assert first.device.type == "cuda" and first.dtype == torch.bfloat16
    assert rel_err(first.float().cpu(), run(model, X16)) < 2e-2  # not overwritten by the second replay
    assert rel_err(second.float().cpu(), run(model, X16 * 2)) < 2e-2
    with pytest.raises(ValueError, match="captured for inputs"):
        fast(torch.randn(3, 3, 16, 16))


@needs_cuda
def test_cuda_auto_and_float32(resnet18: nn.Module) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = optimize(resnet18, X64, "cuda", warmup=2, repeats=5)
    assert {"eager", "cuda_graph"} <= set(fast.timings_ms), fast.errors
    assert fast.mode == min(fast.timings_ms, key=fast.timings_ms.get)
    assert rel_err(fast(X64).float().cpu(), run(resnet18, X64)) < 2e-2
    full = optimize(resnet18, X64, "cuda", torch.float32, mode="cuda_graph")
    assert full.parity.relative_error < 5e-3
    assert rel_err(full(X64).cpu(), run(resnet18, X64)) < 5e-3


def test_cudnn_benchmark_flag_is_set_inside_calls_and_restored():
    from fxprune.deploy.modes import Setup

    before = torch.backends.cudnn.benchmark
    setup = Setup(torch.device("cpu"), torch.float32, False, cudnn_benchmark=not before)
    with setup.cudnn():
        assert torch.backends.cudnn.benchmark is (not before)
    assert torch.backends.cudnn.benchmark is before
    optimize(nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 8, 8), "cpu", mode="eager")
    assert torch.backends.cudnn.benchmark is before


def test_timing_step_runs_the_same_computation_without_per_call_input_handling():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    x = torch.randn(2, 3, 16, 16)
    for mode in ("eager", "onnxruntime"):
        fast = optimize(net, x, "cpu", mode=mode)
        assert torch.allclose(fast.timing_step(x)(), net(x), atol=1e-5), mode
