"""The `fxprune` console script: parsing, error paths and exit codes (fakes), plus one real end-to-end run."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import fxprune
from fxprune.cli import commands as cli
from fxprune.cli import models as cli_models
from fxprune.cli import runs as cli_runs
from fxprune.report import run_dir as run_dir_module
from fxprune.errors import FxPruneError


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tiny_model(monkeypatch):
    """Make every torchvision:NAME load a tiny module (the spec is still checked), so faked commands run fast."""
    real = cli_models.load_model
    loaded = []

    def fake_load(spec):
        kind, _, name = spec.partition(":")
        if kind != "torchvision" or not name:
            return real(spec)
        loaded.append(spec)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()

    monkeypatch.setattr(cli, "load_model", fake_load)
    monkeypatch.setattr(cli_models, "load_model", fake_load)
    return loaded


class FakePlan:
    def __init__(self):
        self.saved = []

    def save(self, path):
        Path(path).write_text(json.dumps({"groups": []}))
        self.saved.append(Path(path))


class FakeReport:
    flops_ratio = 0.5
    params_ratio = 0.6

    def __str__(self):
        return "FAKE REPORT"

    def to_dict(self):
        return {"flops_ratio": self.flops_ratio, "params_ratio": self.params_ratio}


@pytest.fixture
def fake_api(monkeypatch):
    calls = {}

    def prune(model, x, **kw):
        calls["prune"] = (model, tuple(x.shape), kw)
        return SimpleNamespace(model=model, plan=FakePlan(), report=FakeReport())

    def export(module, x, path):
        calls.setdefault("export", []).append(Path(path))
        Path(path).write_bytes(b"fake")

    def apply_plan(model, x, plan):
        calls["apply_plan"] = (model, tuple(x.shape), plan)
        return model

    monkeypatch.setattr(fxprune, "prune", prune, raising=False)
    monkeypatch.setattr(fxprune, "export", export, raising=False)
    monkeypatch.setattr(run_dir_module, "export", export)  # run directories export through their own import
    monkeypatch.setattr(fxprune, "apply_plan", apply_plan, raising=False)
    monkeypatch.setattr(fxprune, "PruningPlan", SimpleNamespace(load=lambda p: ("plan", str(p))), raising=False)
    monkeypatch.setattr(fxprune, "list_methods", lambda: ["l1", "random"], raising=False)
    monkeypatch.setattr(cli_runs, "render_html", fake_render)
    return calls


def fake_render(run_dir):
    (Path(run_dir) / "report.html").write_text("<html>fake</html>")
    return Path(run_dir) / "report.html"


# ----------------------------------------------------------------------------- usage and help


def test_help_exits_0_and_shows_examples(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    assert "examples:" in out and "fxprune prune torchvision:resnet50" in out
    for name in cli.COMMANDS:
        assert name in out


def test_subcommand_help_shows_examples(capsys):
    code, out, _ = run_cli(capsys, "prune", "--help")
    assert code == 0
    assert "--flops" in out and "--round-to" in out and "examples:" in out


def test_no_command_is_usage_error(capsys):
    code, _, err = run_cli(capsys)
    assert code == 2
    assert "COMMAND" in err or "required" in err


@pytest.mark.parametrize("spec", ["resnet18", "timm:", "torchvision:", "hub:foo/bar"])
def test_unknown_model_spec_exits_2_naming_accepted_forms(capsys, spec):
    code, out, err = run_cli(capsys, "analyse", spec)
    assert code == 2
    assert repr(spec) in err and "torchvision:NAME" in err and "timm:NAME" in err
    assert out == ""


def test_unknown_timm_name_exits_2(capsys):
    code, _, err = run_cli(capsys, "analyse", "timm:no_such_net")
    assert code == 2
    assert "no_such_net" in err and "list_models" in err


def test_timm_model_prunes_at_its_pretrained_cfg_input_size(capsys, tmp_path):
    assert cli.example_input("timm:mobilevit_xxs", None).shape == (1, 3, 256, 256)
    code, out, err = run_cli(capsys, "prune", "timm:mobilenetv3_small_050", "--ratio", "0.5", "--input-size",
                             "3,64,64", "--out", str(tmp_path), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["report"]["flops_ratio"] <= 0.6
    assert (tmp_path / "plan.json").exists()


def test_unknown_torchvision_name_exits_2(capsys):
    code, _, err = run_cli(capsys, "analyse", "torchvision:no_such_net")
    assert code == 2
    assert "no_such_net" in err and "list_models" in err


@pytest.mark.parametrize("size", ["3,a,224", "0,224,224", "", "x"])
def test_bad_input_size_exits_2(capsys, size):
    code, _, err = run_cli(capsys, "analyse", "torchvision:resnet18", "--input-size", size)
    assert code == 2
    assert "input size" in err


def test_parse_input_size_forms():
    assert cli.parse_input_size("3,64,64") == (3, 64, 64)
    assert cli.parse_input_size("3x64x48") == (3, 64, 48)
    assert cli.parse_input_size("16") == (16,)


def test_prune_requires_exactly_one_budget(capsys, tmp_path):
    assert run_cli(capsys, "prune", "torchvision:resnet18", "--out", str(tmp_path))[0] == 2
    code, _, err = run_cli(capsys, "prune", "torchvision:resnet18", "--flops", "0.5", "--params", "0.5",
                           "--out", str(tmp_path))
    assert code == 2 and "not allowed with" in err


def test_prune_requires_out(capsys):
    code, _, err = run_cli(capsys, "prune", "torchvision:resnet18", "--flops", "0.5")
    assert code == 2 and "--out" in err


def test_default_input_sizes():
    assert cli.example_input("torchvision:resnet18", None).shape == (1, 3, 224, 224)
    assert cli.example_input("torchvision:inception_v3", None).shape == (1, 3, 299, 299)
    assert cli.example_input("torchvision:inception_v3", (3, 64, 64)).shape == (1, 3, 64, 64)


def test_commands_registry_is_complete():
    assert set(cli.COMMANDS) == {"analyse", "prune", "export", "bench", "report", "methods", "demo"}


# ----------------------------------------------------------------------------- commands against a faked API


def test_analyse_prints_table_and_json(capsys, monkeypatch, tiny_model):
    groups = [SimpleNamespace(id=0, size=64, frozen={}, origin="conv1", members=["a", "b"]),
              SimpleNamespace(id=1, size=1000, frozen={i: "model output" for i in range(1000)}, origin="fc",
                              members=["c"])]
    seen = {}

    def analyse(model, x, **kw):
        seen["shape"] = tuple(x.shape)
        return groups

    monkeypatch.setattr(fxprune, "analyse", analyse, raising=False)
    code, out, _ = run_cli(capsys, "analyse", "torchvision:resnet18", "--input-size", "3,32,32")
    assert code == 0 and seen["shape"] == (1, 3, 32, 32)
    lines = out.splitlines()
    assert lines[0].split() == ["id", "size", "#frozen", "origin"]
    assert lines[1].split() == ["0", "64", "0", "conv1"]
    assert lines[2].split() == ["1", "1000", "1000", "fc"]
    assert "2 channel groups" in out

    code, out, _ = run_cli(capsys, "analyse", "torchvision:resnet18", "--json")
    rows = json.loads(out)
    assert code == 0 and rows[1]["size"] == 1000 and rows[1]["frozen"]["0"] == "model output"
    assert rows[0]["members"] == ["a", "b"]


def test_prune_writes_files_and_passes_budget(capsys, tmp_path, fake_api, tiny_model):
    out_dir = tmp_path / "r"
    code, out, _ = run_cli(capsys, "prune", "torchvision:resnet18", "--method", "random", "--params", "0.4",
                           "--round-to", "8", "--input-size", "3,32,32", "--out", str(out_dir))
    assert code == 0
    _, shape, kw = fake_api["prune"]
    assert shape == (1, 3, 32, 32)
    assert kw == {"method": "random", "round_to": 8, "params": 0.4}
    for name in ("plan.json", "report.txt", "report.json", "slim.onnx"):
        assert (out_dir / name).exists(), name
    assert (out_dir / "report.txt").read_text().strip() == "FAKE REPORT"
    assert json.loads((out_dir / "report.json").read_text())["flops_ratio"] == 0.5
    assert "FAKE REPORT" in out and "slim.onnx" in out


def test_prune_passes_latency_budget_target_and_auto_rounding(capsys, tmp_path, fake_api, tiny_model):
    code, _, _ = run_cli(capsys, "prune", "torchvision:resnet18", "--latency", "0.6", "--target", "cpu",
                         "--round-to", "auto", "--input-size", "3,32,32", "--out", str(tmp_path / "r"))
    assert code == 0
    assert fake_api["prune"][2] == {"method": "l1", "round_to": "auto", "latency": 0.6, "target": "cpu"}


def test_prune_passes_method_options(capsys, tmp_path, fake_api, tiny_model):
    code, _, _ = run_cli(capsys, "prune", "torchvision:resnet18", "--method", "jst", "--flops", "0.5",
                         "-o", "jst_search_epochs=3", "--option", "jst_tau=(5, 0.1)", "-o", "jst_init=scratch",
                         "-o", "jst_val_data=None", "--out", str(tmp_path / "r"))
    assert code == 0
    assert fake_api["prune"][2] == {"method": "jst", "round_to": 1, "flops": 0.5, "jst_search_epochs": 3,
                                    "jst_tau": (5, 0.1), "jst_init": "scratch", "jst_val_data": None}
    code, _, err = run_cli(capsys, "prune", "torchvision:resnet18", "--flops", "0.5", "-o", "nokey",
                           "--out", str(tmp_path))
    assert code == 2 and "--option takes KEY=VALUE" in err
    code, _, err = run_cli(capsys, "prune", "torchvision:resnet18", "--flops", "0.5", "-o", "steps=3",
                           "--out", str(tmp_path / "r2"))
    assert code == 2 and "steps is an argument of prune itself" in err


def test_a_misspelled_method_option_exits_1_naming_the_valid_ones(capsys, tmp_path, tiny_model):
    out_dir = tmp_path / "r"
    code, _, err = run_cli(capsys, "prune", "torchvision:resnet18", "--method", "tas", "--flops", "0.5",
                           "--input-size", "3,8,8", "-o", "tas_epoch=2", "--out", str(out_dir))
    assert code == 1 and "Traceback" not in err
    assert err.startswith("error: method 'tas' has no option 'tas_epoch' (did you mean 'tas_epochs'?)")
    assert "Its options: progress, seed, tas_arch_lr" in err
    assert not (out_dir / "plan.json").exists()


@pytest.mark.parametrize("value", ["0", "-2", "fast"])
def test_bad_round_to_exits_2(capsys, tmp_path, value):
    code, _, err = run_cli(capsys, "prune", "torchvision:resnet18", "--flops", "0.5", "--round-to", value,
                           "--out", str(tmp_path))
    assert code == 2 and "--round-to takes a positive integer or 'auto'" in err


def test_prune_json_output(capsys, tmp_path, fake_api, tiny_model):
    code, out, _ = run_cli(capsys, "prune", "torchvision:resnet18", "--flops", "0.5", "--out", str(tmp_path),
                           "--json")
    data = json.loads(out)
    assert code == 0 and data["report"]["flops_ratio"] == 0.5 and data["files"]["plan"].endswith("plan.json")


def test_fxprune_errors_exit_1_with_message(capsys, monkeypatch, tmp_path, fake_api, tiny_model):
    def refuse(*a, **kw):
        raise FxPruneError("group #3 cannot be pruned: because reasons")

    monkeypatch.setattr(fxprune, "prune", refuse)
    code, out, err = run_cli(capsys, "prune", "torchvision:resnet18", "--flops", "0.5", "--out", str(tmp_path))
    assert code == 1
    assert err.startswith("error: group #3 cannot be pruned")
    assert "Traceback" not in err


@pytest.mark.parametrize("exc", [ValueError("flops must be in (0, 1]"), TypeError("bad input")])
def test_value_and_type_errors_exit_1(capsys, monkeypatch, tmp_path, fake_api, tiny_model, exc):
    def refuse(*a, **kw):
        raise exc

    monkeypatch.setattr(fxprune, "prune", refuse)
    code, _, err = run_cli(capsys, "prune", "torchvision:resnet18", "--flops", "2", "--out", str(tmp_path))
    assert code == 1 and err.startswith("error: ") and str(exc) in err


def test_export_rebuilds_from_plan(capsys, tmp_path, fake_api, tiny_model):
    plan = tmp_path / "plan.json"
    code, out, _ = run_cli(capsys, "export", "torchvision:resnet18", "--plan", str(plan), "--format", "pt2",
                           "--out", str(tmp_path / "slim"))
    assert code == 0
    assert fake_api["apply_plan"][2] == ("plan", str(plan))
    assert fake_api["export"] == [tmp_path / "slim.pt2"]
    assert "slim.pt2" in out


def test_export_format_from_suffix_and_mismatch(capsys, tmp_path, fake_api, tiny_model):
    plan = str(tmp_path / "plan.json")
    assert run_cli(capsys, "export", "torchvision:resnet18", "--plan", plan, "--out", str(tmp_path / "m.onnx"))[0] == 0
    assert fake_api["export"][-1] == tmp_path / "m.onnx"
    code, _, err = run_cli(capsys, "export", "torchvision:resnet18", "--plan", plan, "--format", "onnx",
                           "--out", str(tmp_path / "m.pt"))
    assert code == 2 and "--format onnx" in err
    code, _, err = run_cli(capsys, "export", "torchvision:resnet18", "--plan", plan, "--out", str(tmp_path / "m"))
    assert code == 2 and "--format" in err
    assert run_cli(capsys, "export", "torchvision:resnet18", "--plan", plan, "--format", "bogus",
                   "--out", str(tmp_path / "m.onnx"))[0] == 2


def test_methods_lists_names_and_summaries(capsys):
    summaries = fxprune.methods.method_summaries()
    code, out, _ = run_cli(capsys, "methods")
    lines = out.splitlines()
    assert code == 0 and [line.split()[0] for line in lines] == list(summaries)
    assert all(line.endswith(summaries[line.split()[0]]) for line in lines)
    code, out, _ = run_cli(capsys, "methods", "--json")
    assert code == 0 and json.loads(out) == summaries


def test_methods_lists_the_search_methods_too(capsys):
    code, out, _ = run_cli(capsys, "methods", "--json")
    listed = json.loads(out)
    assert code == 0 and {"tas", "dcp", "jst", "metapruning", "l1", "uniform"} <= set(listed)
    assert "Transformable Architecture Search" in listed["tas"]


def test_demo_trains_prunes_finetunes_and_writes_a_run(capsys, tmp_path):
    out_dir = tmp_path / "demo"
    code, out, _ = run_cli(capsys, "demo", "--dense-epochs", "1", "--epochs", "1", "--quiet", "--out", str(out_dir))
    assert code == 0
    for row in ("accuracy (%)", "FLOPs (M)", "params (K)", "latency (ms)"):
        assert row in out, row
    report = json.loads((out_dir / "report.json").read_text())
    assert report["flops_ratio"] <= 0.5 and set(report["accuracy"]) == {"dense", "pruned", "finetuned"}
    for name in ("plan.json", "slim.safetensors", "slim.onnx", "report.html", "run.json"):
        assert (out_dir / name).exists(), name
    assert json.loads((out_dir / "run.json").read_text())["latency"]["slim_ms"] > 0
    slim = fxprune.load(out_dir, cli.load_model("cifar:resnet20"))
    assert slim(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_fxprune_debug_reraises(capsys, monkeypatch, tmp_path, fake_api, tiny_model):
    def refuse(*a, **kw):
        raise FxPruneError("nope")

    monkeypatch.setattr(fxprune, "prune", refuse)
    monkeypatch.setenv("FXPRUNE_DEBUG", "1")
    with pytest.raises(FxPruneError, match="nope"):
        cli.main(["prune", "torchvision:resnet18", "--flops", "0.5", "--out", str(tmp_path)])


# ----------------------------------------------------------------------------- real end to end


def test_prune_resnet18_end_to_end(capsys, tmp_path):
    torch.manual_seed(0)
    code, out, err = run_cli(capsys, "prune", "torchvision:resnet18", "--flops", "0.5", "--input-size", "3,64,64",
                             "--out", str(tmp_path), "--json")
    assert code == 0, err
    assert (tmp_path / "plan.json").exists() and (tmp_path / "slim.onnx").exists()
    assert (tmp_path / "report.txt").exists()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["flops_ratio"] <= 0.5
    assert json.loads(out)["report"]["flops_ratio"] == report["flops_ratio"]
    plan = fxprune.PruningPlan.load(tmp_path / "plan.json")
    assert plan.groups


def test_analyse_says_why_groups_are_frozen(capsys):
    code, out, _ = run_cli(capsys, "analyse", "torchvision:resnet18", "--input-size", "3,32,32")
    assert code == 0
    assert "frozen group" in out and "reaches the network output" in out


# ----------------------------------------------------------------------------- data, fine-tuning


def test_prune_with_data_fine_tunes_and_reports_accuracy(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "prune", "cifar:resnet20", "--method", "taylor", "--flops", "0.5", "--data",
                           "cifar10", "--epochs", "1", "--kd", "--out", str(tmp_path / "r"), "--json")
    assert code == 0
    report = json.loads(out)["report"]
    assert set(report["accuracy"]) == {"dense", "pruned", "finetuned"} and report["flops_ratio"] <= 0.5


def test_fine_tune_options_without_data_are_usage_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "prune", "cifar:resnet20", "--flops", "0.5", "--epochs", "2",
                           "--out", str(tmp_path))
    assert code == 2 and "--data" in err
    code, _, err = run_cli(capsys, "prune", "cifar:resnet20", "--flops", "0.5", "--data", "imagenet",
                           "--out", str(tmp_path))
    assert code == 2 and "cifar10" in err


def test_cifar_models_load_at_32x32(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "prune", "cifar:resnet20", "--ratio", "0.5", "--out", str(tmp_path), "--json")
    assert code == 0 and json.loads(out)["report"]["flops_ratio"] < 0.5
    code, _, err = run_cli(capsys, "analyse", "cifar:resnet18")
    assert code == 2 and "resnet56" in err


# ----------------------------------------------------------------------------- MODEL forms, run directories

NETS = '''
from torch import nn

NOT_CALLABLE = 3


def tiny():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10))


def needs_args(width):
    return nn.Linear(width, 2)


def not_a_module():
    return 42
'''


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """An importable module `fxprune_test_nets` with model factories (and broken ones)."""
    import sys

    root = tmp_path_factory.mktemp("nets")
    (root / "fxprune_test_nets.py").write_text(NETS)
    sys.path.insert(0, str(root))
    yield "fxprune_test_nets"
    sys.path.remove(str(root))
    sys.modules.pop("fxprune_test_nets", None)


@pytest.fixture(scope="module")
def run_dir(nets, tmp_path_factory):
    """`fxprune prune fxprune_test_nets:tiny ... --export onnx,torchscript,pt2 --out DIR`, run once."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    code = cli.main(["prune", f"{nets}:tiny", "--ratio", "0.5", "--input-size", "3,16,16", "--export",
                     "onnx,torchscript,pt2", "--out", str(out), "--json"])
    assert code == 0
    return out


def test_factory_specs_build_models(capsys, nets):
    assert cli_models.source_of("torchvision.models:resnet18") == "factory"
    code, out, err = run_cli(capsys, "analyse", "torchvision.models:resnet18", "--input-size", "3,32,32")
    assert code == 0 and "channel groups" in out, err
    code, out, err = run_cli(capsys, "analyse", f"{nets}:tiny", "--input-size", "3,16,16", "--json")
    assert code == 0 and json.loads(out)[0]["size"] == 16, err


@pytest.mark.parametrize("attr, message", [
    ("missing", "has no attribute 'missing'"), ("NOT_CALLABLE", "names a int, which cannot be called"),
    ("needs_args", "cannot be called without arguments"), ("not_a_module", "gave a int, not a torch.nn.Module")])
def test_factory_spec_errors_exit_2(capsys, nets, attr, message):
    code, out, err = run_cli(capsys, "analyse", f"{nets}:{attr}")
    assert code == 2 and message in err and out == ""


def test_factory_spec_unknown_module_exits_2(capsys):
    code, _, err = run_cli(capsys, "analyse", "no_such_pkg_xyz.models:build")
    assert code == 2 and "cannot import module 'no_such_pkg_xyz.models'" in err


def test_factory_module_in_the_current_directory(capsys, monkeypatch, tmp_path):
    import sys

    (tmp_path / "fxprune_cwd_nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert run_cli(capsys, "analyse", "fxprune_cwd_nets:tiny", "--input-size", "3,8,8")[0] == 0
    finally:
        sys.modules.pop("fxprune_cwd_nets", None)


def test_saved_model_files(capsys, nets, tmp_path):
    import importlib

    model = importlib.import_module(nets).tiny()
    torch.save(model, tmp_path / "tiny.pt")
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    assert cli_models.source_of(str(tmp_path / "tiny.pt")) == "file"
    code, out, err = run_cli(capsys, "analyse", str(tmp_path / "tiny.pt"), "--input-size", "3,16,16")
    assert code == 0 and "channel groups" in out, err
    code, _, err = run_cli(capsys, "analyse", str(tmp_path / "weights.pth"))
    assert code == 2 and "state_dict" in err and "torch.save(model, PATH)" in err
    code, _, err = run_cli(capsys, "analyse", str(tmp_path / "nope.pt"))
    assert code == 2 and "does not exist" in err
    assert "unpickled" in run_cli(capsys, "analyse", "--help")[1]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_prune_writes_a_loadable_run_dir(nets, run_dir):
    import importlib

    for name in ("plan.json", "report.txt", "report.json", "report.html", "slim.safetensors", "run.json",
                 "slim.onnx", "slim.pt", "slim.pt2"):
        assert (run_dir / name).is_file(), name
    info = fxprune.load_run_info(run_dir)
    assert info["model"] == f"{nets}:tiny" and info["input_size"] == [3, 16, 16]
    assert info["command"].startswith(f"fxprune prune {nets}:tiny --ratio 0.5") and info["command"].endswith("--json")
    slim = fxprune.load(run_dir, importlib.import_module(nets).tiny()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # the TorchScript export was made from the same slim weights
        torch.testing.assert_close(slim(x), torch.jit.load(str(run_dir / "slim.pt"))(x))


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt"), ("pt2", ".pt2")])
def test_export_from_a_run_dir(capsys, run_dir, tmp_path, fmt, suffix):
    code, out, err = run_cli(capsys, "export", str(run_dir), "--format", fmt, "--out", str(tmp_path / "m"),
                             "--json")
    assert code == 0, err
    assert json.loads(out) == {"path": str(tmp_path / f"m{suffix}")} and (tmp_path / f"m{suffix}").is_file()


def test_export_run_dir_defaults_and_errors(capsys, run_dir, tmp_path):
    (run_dir / "slim.onnx").unlink()
    code, out, _ = run_cli(capsys, "export", str(run_dir))
    assert code == 0 and out.strip() == f"wrote {run_dir / 'slim.onnx'}" and (run_dir / "slim.onnx").is_file()
    code, _, err = run_cli(capsys, "export", str(run_dir), "--plan", "plan.json")
    assert code == 2 and "drop --plan" in err
    code, _, err = run_cli(capsys, "export", "torchvision:resnet18", "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and "--plan" in err
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("plan.json", "slim.safetensors"):
        (bare / name).write_bytes((run_dir / name).read_bytes())
    code, _, err = run_cli(capsys, "export", str(bare))
    assert code == 2 and "--model SPEC" in err
    code, _, err = run_cli(capsys, "export", str(tmp_path))
    assert code == 1 and "plan.json and slim.safetensors are missing" in err


def test_bench_on_cpu_writes_latency(capsys, run_dir):
    code, out, err = run_cli(capsys, "bench", str(run_dir), "--device", "cpu", "--repeats", "3", "--warmup", "1",
                             "--batch", "2", "--json")
    assert code == 0, err
    record = json.loads(out)["latency"]
    assert record["device"] == "cpu" and record["batch"] == 2 and record["dense_ms"] > 0 and record["slim_ms"] > 0
    assert record["macs_ratio"] == json.loads((run_dir / "report.json").read_text())["flops_ratio"]
    assert fxprune.load_run_info(run_dir)["latency"] == record
    code, out, _ = run_cli(capsys, "bench", str(run_dir), "--device", "cpu", "--repeats", "2")
    assert code == 0 and "speedup" in out and out.splitlines()[2].startswith("dense")


def test_bench_cuda_without_cuda_exits_1(capsys, monkeypatch, run_dir):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli(capsys, "bench", str(run_dir), "--device", "cuda")
    assert code == 1 and "CUDA is not available" in err and "--device cpu" in err and out == ""
    assert run_cli(capsys, "bench", str(run_dir), "--repeats", "0")[0] == 2


def test_report_rerenders(capsys, run_dir, tmp_path):
    (run_dir / "report.html").unlink()
    code, out, _ = run_cli(capsys, "report", str(run_dir))
    assert code == 0 and out.strip() == f"wrote {run_dir / 'report.html'}" and (run_dir / "report.html").is_file()
    code, out, _ = run_cli(capsys, "report", str(run_dir), "--json")
    assert code == 0 and json.loads(out) == {"path": str(run_dir / "report.html")}
    assert run_cli(capsys, "report", str(tmp_path / "nope"))[0] == 2
    code, _, err = run_cli(capsys, "report", str(tmp_path))
    assert code == 1 and "plan.json and report.json are missing" in err


def test_prune_export_option(capsys, tmp_path, fake_api, tiny_model):
    code, out, _ = run_cli(capsys, "prune", "torchvision:resnet18", "--ratio", "0.5", "--export", "pt2,torchscript",
                           "--out", str(tmp_path), "--json")
    assert code == 0 and fake_api["export"] == [tmp_path / "slim.pt2", tmp_path / "slim.pt"]
    assert set(json.loads(out)["files"]) >= {"pt2", "torchscript", "weights", "run", "html"}
    assert run_cli(capsys, "prune", "torchvision:resnet18", "--ratio", "0.5", "--export", "none",
                   "--out", str(tmp_path / "n"))[0] == 0
    assert len(fake_api["export"]) == 2
    code, _, err = run_cli(capsys, "prune", "torchvision:resnet18", "--ratio", "0.5", "--export", "tflite",
                           "--out", str(tmp_path))
    assert code == 2 and "tflite" in err


@pytest.mark.parametrize("command", [c for c in cli.COMMANDS if c != "demo"])
def test_every_subcommand_help_has_its_examples(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0 and "examples:" in out and f"fxprune {command}" in out.split("examples:")[1]
