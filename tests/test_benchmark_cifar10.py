"""The CPU smoke profile of benchmarks/cifar10.py (protocol B2): every run of the GPU protocol goes through
the same code on ResNet-20 and the vendored subset for one epoch. It proves the pipeline runs and writes
its results; the accuracies mean nothing at this size."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_cifar10", ROOT / "benchmarks" / "cifar10.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


SMOKE_RUNS = ("l1", "l2", "fpgm", "taylor", "slimming", "random", "tas", "dcp", "metapruning", "jst", "l1+kd",
              "tp-l1", "uniform-scratch", "metapruning-scratch")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("b2") / "results"
    bench = _bench_module()
    data = bench.main(["--profile", "smoke", "--out", str(out), "--quiet", "--runs", ",".join(SMOKE_RUNS)])
    return bench, out, data


def test_every_run_meets_the_budget_and_reports_accuracy(smoke):
    bench, _, data = smoke
    runs = {r["run"]: r for r in data["records"]}
    assert set(runs) == {"dense", *SMOKE_RUNS} and set(bench.DEFAULT_RUNS) <= set(SMOKE_RUNS)
    assert set(bench.fxprune.list_methods()) - {"uniform"} <= set(SMOKE_RUNS)  # every method, uniform as scratch
    for name, r in runs.items():
        assert 0.0 <= r["acc_finetuned"] <= 100.0 and r["history"], name
        if name != "dense":
            assert r["flops_ratio"] <= 0.5 + 1e-9, (name, r["flops_ratio"])
            assert 0 < r["params_ratio"] < 1 and r["latency_ratio"] > 0, name
    assert runs["uniform-scratch"]["acc_pruned"] is None  # re-initialised: nothing to measure before training
    assert runs["metapruning-scratch"]["epochs"] == runs["uniform-scratch"]["epochs"]  # the same recipe


def test_results_files_are_written_and_rebuilt_from_json(smoke):
    bench, out, data = smoke
    md, png = out / "cifar10-smoke.md", out / "cifar10-smoke.png"
    assert png.stat().st_size > 5_000 and png.read_bytes()[:4] == b"\x89PNG"
    text = md.read_text()
    assert all(f"| {r['run']} |" in text for r in data["records"])
    md.unlink()
    bench.main(["--profile", "smoke", "--out", str(out), "--report-only"])
    assert md.read_text() == text
    assert json.loads((out / "cifar10-smoke.json").read_text()) == data


def test_unknown_run_names_the_valid_ones(smoke):
    bench, out, _ = smoke
    with pytest.raises(SystemExit, match="tp-l1"):
        bench.main(["--profile", "smoke", "--out", str(out), "--runs", "magic", "--quiet"])
