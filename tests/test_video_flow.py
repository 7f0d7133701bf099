"""torchvision's video and optical-flow models: B1's checks (the slim model runs with the dense output shapes,
FLOPs <= 0.6 at ratio 0.5, slim == masked on every output, the caller untouched, ONNX parity)."""
from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision

import fxprune

from helpers import assert_unchanged, rel_err, state_snapshot

SMALL, NATIVE = (1, 3, 8, 64, 64), (1, 3, 16, 224, 224)  # MViT's positional tables and S3D's kernels need 16x224
# (model, input shape, ONNX parity checked); MViT's dense model already fails in onnxruntime ("Loop subgraph input
# has unknown shape"), so it is not exported here
VIDEO = [("r3d_18", SMALL, True), ("mc3_18", SMALL, False), ("r2plus1d_18", SMALL, False), ("s3d", NATIVE, True),
         ("swin3d_t", SMALL, True), ("swin3d_s", SMALL, False), ("swin3d_b", SMALL, False),
         ("mvit_v1_b", NATIVE, False), ("mvit_v2_s", NATIVE, False)]
FAST = {"r3d_18", "s3d", "swin3d_t", "raft_small"}


def _flat(out: Any) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [t for o in out for t in _flat(o)]


def b1_checks(model: torch.nn.Module, inputs: tuple, kwargs: dict, onnx_path=None) -> fxprune.PruneResult:
    snap = state_snapshot(model)
    with torch.no_grad():
        dense = _flat(model(*inputs, **kwargs))
        res = fxprune.prune(model, inputs, ratio=0.5, example_kwargs=kwargs or None)
        slim = _flat(res.model(*inputs, **kwargs))
        masked = _flat(fxprune.apply_masks(model, inputs, res.plan, example_kwargs=kwargs or None)(*inputs, **kwargs))
    assert [t.shape for t in slim] == [t.shape for t in dense] and all(torch.isfinite(t).all() for t in slim)
    assert res.report.flops_ratio <= 0.6
    assert fxprune.count_flops(res.model, inputs) <= 0.6 * fxprune.count_flops(model, inputs)
    assert all(rel_err(s, m) <= 1e-4 for s, m in zip(slim, masked))
    assert_unchanged(model, snap, inputs[0] if len(inputs) == 1 else inputs)
    if onnx_path is not None:
        fxprune.export(res.model, inputs[0] if len(inputs) == 1 else inputs, onnx_path)  # checks parity itself
    return res


def _marks(name: str) -> tuple:
    return () if name in FAST else (pytest.mark.slow,)


@pytest.mark.parametrize("name,shape,onnx", [pytest.param(*v, marks=_marks(v[0])) for v in VIDEO],
                         ids=[v[0] for v in VIDEO])
def test_video_model(name, shape, onnx, tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    b1_checks(model, (torch.randn(*shape),), {}, tmp_path / "m.onnx" if onnx else None)


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in ("raft_small", "raft_large")])
def test_optical_flow_model(name, tmp_path):
    """RAFT: every flow prediction of its output list compared; `num_flow_updates` is baked into the graph."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    a, b = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)
    res = b1_checks(model, (a, b), {"num_flow_updates": 3}, tmp_path / "m.onnx" if name in FAST else None)
    with torch.no_grad():
        assert len(res.model(a, b)) == 3  # the traced value is the default of the slim module
    with pytest.raises(AssertionError, match="num_flow_updates"):
        res.model(a, b, num_flow_updates=5)
