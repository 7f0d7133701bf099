"""Run directories: save_run writes them, fxprune.load rebuilds the slim model from JSON + safetensors only."""
from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

import fxprune
from fxprune.errors import PlanMismatchError, RunDirError
from fxprune.deploy.measure import measure_latency
from fxprune.report.run_dir import _save_weights, load_run_info, run_inputs, save_run, update_run_info
from fxprune.train.history import EpochRecord, TrainHistory

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """resnet18 pruned to half its FLOPs, its slim weights perturbed (as fine-tuning would), saved once."""
    torch.manual_seed(0)
    res = fxprune.prune(resnet18(), X, flops=0.5)
    with torch.no_grad():
        for t in [*res.model.parameters(), *(b for b in res.model.buffers() if b.is_floating_point())]:
            t.add_(torch.rand_like(t) * 0.1)
    res.model.eval()
    out = tmp_path_factory.mktemp("run")
    files = save_run(res, X, out, model_spec="torchvision:resnet18", command="fxprune prune ...")
    return res, out, files


def test_files_and_run_info(saved):
    res, out, files = saved
    assert set(files) == {"plan", "report", "report_json", "weights", "run", "onnx"}
    assert all(p.is_file() and p.parent == out for p in files.values())
    info = load_run_info(out)
    assert info["model"] == "torchvision:resnet18" and info["input_size"] == [3, 64, 64]
    assert info["format"] == 1 and info["fxprune"] == fxprune.__version__ and info["history"] == []
    assert info["command"] == "fxprune prune ..." and info["created"][:2] == "20"
    assert json.loads((out / "report.json").read_text())["flops_ratio"] == res.report.flops_ratio
    assert fxprune.PruningPlan.load(out / "plan.json") == res.plan
    assert set(load_file(str(out / "slim.safetensors"))) == set(res.model.state_dict())


def test_load_equals_the_saved_slim_model_exactly(saved):
    res, out, _ = saved
    fresh = resnet18()
    slim = fxprune.load(out, fresh).eval()
    with torch.no_grad():
        assert torch.equal(slim(X), res.model(X))
        # the weights come from the file: the fresh model's own (sliced) weights give something else
        assert not torch.equal(fxprune.apply_plan(resnet18(), X, res.plan).eval()(X), res.model(X))
    assert sum(p.numel() for p in slim.parameters()) == res.report.params_after


def test_load_unpickles_nothing(saved, monkeypatch):
    res, out, _ = saved

    def refuse(*args, **kwargs):
        raise AssertionError("fxprune.load must not unpickle")

    for mod, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"),
                      (torch.serialization, "load")]:
        monkeypatch.setattr(mod, name, refuse)
    slim = fxprune.load(out, resnet18(), X).eval()
    with torch.no_grad():
        assert torch.equal(slim(X), res.model(X))


def test_plan_for_another_architecture(saved):
    _, out, _ = saved
    with pytest.raises(PlanMismatchError, match="different graph"):
        fxprune.load(out, torchvision.models.resnet34(weights=None))


def test_not_a_run_dir_names_the_missing_file(tmp_path, saved):
    with pytest.raises(RunDirError, match="no such directory"):
        fxprune.load(tmp_path / "nope", resnet18())
    with pytest.raises(RunDirError, match="plan.json and slim.safetensors are missing"):
        fxprune.load(tmp_path, resnet18())
    (tmp_path / "plan.json").write_text((saved[1] / "plan.json").read_text())
    with pytest.raises(RunDirError, match="slim.safetensors is missing"):
        fxprune.load(tmp_path, resnet18(), X)


def test_corrupted_weights_give_a_clear_error(tmp_path, saved):
    _, out, _ = saved
    for name in ("plan.json", "run.json"):
        (tmp_path / name).write_text((out / name).read_text())
    (tmp_path / "slim.safetensors").write_bytes((out / "slim.safetensors").read_bytes()[:1000])
    with pytest.raises(RunDirError, match="cannot be read as safetensors.*truncated"):
        fxprune.load(tmp_path, resnet18())


def test_weights_that_do_not_fit_name_keys_and_shapes(tmp_path, saved):
    _, out, _ = saved
    for name in ("plan.json", "run.json"):
        (tmp_path / name).write_text((out / name).read_text())
    state = load_file(str(out / "slim.safetensors"))
    state["conv1.weight"] = torch.zeros(1, 3, 7, 7)
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "slim.safetensors"))
    with pytest.raises(RunDirError) as info:
        fxprune.load(tmp_path, resnet18())
    msg = str(info.value)
    assert "missing keys fc.bias" in msg and "unexpected keys extra.weight" in msg
    assert "conv1.weight: file (1, 3, 7, 7) vs model (" in msg


def test_history_and_other_exports(tmp_path, saved):
    res, _, _ = saved
    history = [TrainHistory([EpochRecord(0, 0.1, 2.0, 10.0, 1.9, 12.0, 1.0, 100.0)])]
    files = save_run(dataclasses.replace(res, history=history), X, tmp_path, exports=("torchscript", "pt2"))
    assert {"torchscript", "pt2"} <= set(files) and "onnx" not in files
    assert (tmp_path / "slim.pt").is_file() and (tmp_path / "slim.pt2").is_file()
    info = load_run_info(tmp_path)
    assert [TrainHistory.from_dict(h) for h in info["history"]] == history and info["model"] is None
    with pytest.raises(ValueError, match="unknown export format"):
        save_run(res, X, tmp_path, exports=("tflite",))


def test_tied_weights_are_saved_under_every_name(tmp_path):
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    net[1].weight = net[0].weight
    _save_weights(net, tmp_path / "w.safetensors")
    state = load_file(str(tmp_path / "w.safetensors"))
    assert torch.equal(state["0.weight"], state["1.weight"])
    net2 = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    net2.load_state_dict(state, strict=True)


def test_run_info_helpers(tmp_path):
    assert load_run_info(tmp_path) == {}
    with pytest.raises(RunDirError, match="input_size"):
        run_inputs(tmp_path)
    update_run_info(tmp_path, input_size=[3, 8, 8], model="m")
    assert update_run_info(tmp_path, latency={"slim_ms": 1.0}) == {"input_size": [3, 8, 8], "model": "m",
                                                                   "latency": {"slim_ms": 1.0}}
    assert run_inputs(tmp_path, batch=4).shape == (4, 3, 8, 8)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        load_run_info(tmp_path)


def test_measure_latency_on_cpu():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).train()
    ms = measure_latency(net, torch.randn(2, 3, 16, 16), "cpu", repeats=3, warmup=1)
    assert ms > 0 and net.training  # the caller's model is not switched to eval
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(net, torch.randn(1, 3, 8, 8), "cpu", repeats=0)


def test_measure_latency_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        measure_latency(nn.Linear(2, 2), torch.randn(1, 2), "cuda")
