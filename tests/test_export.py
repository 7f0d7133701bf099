"""fxprune.export: ONNX / TorchScript / torch.export files that compute what the torch module computes."""
from __future__ import annotations

import collections
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_flatten

from fxprune.errors import ExportParityError
from fxprune.deploy.export import export, onnx_session_outputs

# the submodule itself: `import fxprune.export as m` would give the function once fxprune re-exports it
fx_export = importlib.import_module("fxprune.deploy.export")

FORMATS = [".onnx", ".pt", ".pt2"]
Pair = collections.namedtuple("Pair", "logits features")


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class DictNet(ConvNet):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(x)
        return {"logits": self.head(feats), "features": feats}


class NamedTupleNet(ConvNet):
    def forward(self, x: torch.Tensor) -> Pair:
        feats = self.body(x)
        return Pair(self.head(feats), feats)


class TupleNet(ConvNet):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.body(x)
        return self.head(feats), [feats * y, feats.sum(1)]


class CallCounter(nn.Module):
    """Python-side state: every call scales by the call count, so the exporter's own forward pass (the 2nd
    call) bakes in a different constant than the reference pass (the 1st) -- a genuine parity failure."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lin(x) * self.calls


def _resnet18_gm() -> fx.GraphModule:
    torchvision = pytest.importorskip("torchvision")
    return fx.symbolic_trace(torchvision.models.resnet18(weights=None))


def _img(size: int = 16) -> torch.Tensor:
    return torch.randn(2, 3, size, size)


MODELS = {
    "convnet": (ConvNet, lambda: (_img(),)),
    "resnet18_gm": (_resnet18_gm, lambda: (torch.randn(1, 3, 64, 64),)),
    "dict": (DictNet, lambda: (_img(),)),
    "namedtuple": (NamedTupleNet, lambda: (_img(),)),
    "tuple_two_inputs": (TupleNet, lambda: (_img(), torch.randn(1, 8))),
}


def _reload(path: Path, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """Run the saved file with its own runtime, independently of fxprune.export's checker."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)}
        return list(sess.run(None, feeds))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated on torch >= 2.9
        if path.suffix == ".pt":
            out = torch.jit.load(str(path))(*inputs)
        else:
            out = torch.export.load(str(path)).module()(*inputs)
    return [t.numpy() for t in tree_flatten(out)[0]]


def _torch_leaves(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in tree_flatten(model.eval()(*inputs))[0]]


@pytest.fixture(scope="module")
def resnet_gm() -> fx.GraphModule:
    return _resnet18_gm()


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("name", list(MODELS))
def test_export_round_trip(tmp_path: Path, suffix: str, name: str, resnet_gm: fx.GraphModule) -> None:
    torch.manual_seed(0)
    make, make_inputs = MODELS[name]
    model = resnet_gm if name == "resnet18_gm" else make()
    inputs = make_inputs()
    saved = export(model, inputs if len(inputs) > 1 else inputs[0], tmp_path / f"{name}{suffix}")
    assert saved == tmp_path / f"{name}{suffix}" and saved.is_file()
    got, want = _reload(saved, inputs), _torch_leaves(model, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4)


def test_onnx_is_one_valid_file_with_requested_opset(tmp_path: Path) -> None:
    import onnx

    saved = export(ConvNet(), _img(), str(tmp_path / "sub" / "net.onnx"), opset=13)
    assert isinstance(saved, Path) and sorted(p.name for p in saved.parent.iterdir()) == ["net.onnx"]
    proto = onnx.load(str(saved))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [13]


def test_onnx_dynamo_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("TorchScript exporter unavailable")

    monkeypatch.setattr(fx_export, "_onnx_torchscript", broken)
    model, x = DictNet(), _img()
    saved = export(model, x, tmp_path / "net.onnx")
    for g, w in zip(onnx_session_outputs(saved, x), _torch_leaves(model, (x,))):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4)


def test_onnx_both_exporters_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("nope")

    monkeypatch.setattr(fx_export, "_onnx_torchscript", broken)
    monkeypatch.setattr(fx_export, "_onnx_dynamo", broken)
    with pytest.raises(RuntimeError, match="failed with both exporters"):
        export(ConvNet(), _img(), tmp_path / "net.onnx")


@pytest.mark.parametrize("suffix", FORMATS)
def test_stateful_module_fails_parity(tmp_path: Path, suffix: str) -> None:
    model = CallCounter()
    with pytest.raises(ExportParityError, match=r"output 0 .*relative error .*check=False"):
        export(model, torch.randn(3, 4), tmp_path / f"m{suffix}")
    assert model.calls == 0  # exported from a copy
    export(model, torch.randn(3, 4), tmp_path / f"unchecked{suffix}", check=False)


@pytest.mark.parametrize("suffix", FORMATS)
def test_perturbed_outputs_fail_parity(tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = fx_export._FORMATS[suffix]

    def perturbed(path: Path, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        outs = [np.asarray(t) for t in tree_flatten(fmt.run(path, inputs))[0]]
        outs[1] = outs[1] * 1.01
        return outs

    monkeypatch.setitem(fx_export._FORMATS, suffix, fmt._replace(run=perturbed))
    with pytest.raises(ExportParityError) as info:
        export(DictNet(), _img(), tmp_path / f"m{suffix}")
    assert fmt.name in str(info.value) and "output 1" in str(info.value) and "0.01" in str(info.value)
    # within tolerance: no error
    export(DictNet(), _img(), tmp_path / f"ok{suffix}", rtol=0.02)


def test_output_count_and_shape_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = fx_export._FORMATS[".pt"]
    monkeypatch.setitem(fx_export._FORMATS, ".pt", fmt._replace(run=lambda p, i: [np.zeros((2, 5))]))
    with pytest.raises(ExportParityError, match="1 output tensors but the torch module returns 2"):
        export(DictNet(), _img(), tmp_path / "a.pt")
    monkeypatch.setitem(fx_export._FORMATS, ".pt", fmt._replace(run=lambda p, i: [np.zeros((2, 4))]))
    with pytest.raises(ExportParityError, match=r"output 0 has shape \(2, 4\).*\(2, 5\)"):
        export(ConvNet(), _img(), tmp_path / "b.pt")


def test_zero_outputs_within_atol_pass() -> None:
    zero = np.zeros(3)
    fx_export._check_parity("ONNX", Path("x.onnx"), [torch.zeros(3)], [zero + 1e-7], 1e-3, 1e-5)
    with pytest.raises(ExportParityError):
        fx_export._check_parity("ONNX", Path("x.onnx"), [torch.zeros(3)], [zero + 1e-3], 1e-3, 1e-5)
    with pytest.raises(ExportParityError):
        fx_export._check_parity("ONNX", Path("x.onnx"), [torch.ones(3)], [zero + np.nan], 1e-3, 1e-5)


@pytest.mark.parametrize("suffix", [".onnx2", ".pth", ".ts", ""])
def test_unknown_suffix(tmp_path: Path, suffix: str) -> None:
    with pytest.raises(ValueError, match=r"\.onnx, \.pt, \.pt2"):
        export(ConvNet(), _img(), tmp_path / f"net{suffix}")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad", [[torch.randn(1, 3, 8, 8)], np.zeros((1, 3, 8, 8)), 3, None,
                                 (torch.randn(1, 3, 8, 8), 2), {"x": torch.randn(1)}])
def test_non_tensor_inputs(tmp_path: Path, bad: object) -> None:
    with pytest.raises(TypeError, match="torch.Tensor or a tuple of torch.Tensors, got"):
        export(ConvNet(), bad, tmp_path / "net.onnx")


@pytest.mark.parametrize("suffix", FORMATS)
def test_caller_module_unchanged(tmp_path: Path, suffix: str) -> None:
    model = ConvNet().train()
    model.head.eval()  # a mixed-mode module: every flag must come back as it was
    flags = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export(model, _img(), tmp_path / f"net{suffix}")
    assert {name: m.training for name, m in model.named_modules()} == flags
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_import_does_not_import_onnx() -> None:
    code = "import sys, fxprune, fxprune.deploy.export; sys.exit(bool({'onnx', 'onnxruntime'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
