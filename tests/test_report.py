"""The HTML report of a run directory (fxprune/report): content, escaping, figures, errors, and a real
headless-Chromium render of the page.

The run directory is built here without the CLI: prune a tiny CNN, save the plan and report, and write a
run.json with a fake two-round fine-tune history and a latency measurement.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fxprune
from fxprune.report import render_report
from fxprune.report.figures import SLIM

ROOT = Path(__file__).resolve().parents[1]
ACCURACY = {"dense": 91.25, "pruned": 63.5, "finetuned": 90.75}


def _record(epoch: int, acc: float) -> dict:
    return {"epoch": epoch, "lr": 0.01, "train_loss": 1.0 - acc / 200, "train_acc": acc - 3.0,
            "eval_loss": 0.9 - acc / 200, "eval_acc": acc, "seconds": 2.5, "images_per_s": 950.0}


RUN_JSON = {
    "model": "cifar:tiny", "input_size": [3, 16, 16], "created": "2025-01-02T03:04:05", "fxprune": "0.1.0",
    "command": "fxprune prune cifar:tiny --flops 0.5 --out run",
    "history": [{"records": [_record(0, 80.0), _record(1, 85.5)]}, {"records": [_record(0, 88.0)]}],
    "latency": {"device": "cpu", "batch": 1, "dense_ms": 2.0, "slim_ms": 1.2},
}


@pytest.fixture(scope="module")
def pruned() -> fxprune.PruneResult:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    return fxprune.prune(model, torch.randn(1, 3, 16, 16), method="l1", flops=0.5)


def make_run(root: Path, res: fxprune.PruneResult, run_json: dict | None = RUN_JSON, origin: str = "") -> Path:
    """A run directory as `fxprune prune --out DIR` writes it (plus a fake slim.onnx)."""
    root.mkdir(parents=True)
    res.plan.save(root / "plan.json")
    report = {**res.report.to_dict(), "accuracy": ACCURACY}
    if origin:
        report["widths"] = [[gid, size, kept, origin] for gid, size, kept, _ in report["widths"]]
    (root / "report.json").write_text(json.dumps(report))
    if run_json is not None:
        (root / "run.json").write_text(json.dumps(run_json))
    (root / "slim.onnx").write_bytes(b"\0" * 2048)
    return root


@pytest.fixture(scope="module")
def rendered(pruned, tmp_path_factory) -> Path:
    return render_report(make_run(tmp_path_factory.mktemp("report") / "run", pruned))


def _assert_png(path: Path, min_colours: int = 5) -> None:
    assert path.is_file(), f"{path} was not written"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 300 and im.height >= 200, (im.format, im.size)
        colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) >= min_colours, f"{path.name} has only {len(colours)} colours"


def test_report_html_has_the_run(rendered, pruned):
    assert rendered.name == "report.html" and rendered.parent.name == "run"
    page = rendered.read_text()
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert "l1" in page and "cifar:tiny" in page and "keep 0.5 of the dense FLOPs" in page
    for _, _, _, origin in pruned.report.widths:
        assert origin and f"<td>{origin}</td>" in page, origin
    for value in ("91.25 %", "63.50 %", "90.75 %", "-0.50 pp", "2.000 ms", "1.200 ms", "0.600"):
        assert value in page, value
    assert f"{pruned.report.flops_ratio:.3f}" in page
    assert "Fine-tune history" in page and "85.50" in page and "88.00" in page
    assert "slim.onnx" in page and "2.05 kB" in page
    for name in ("widths", "accuracy", "budget"):
        assert f'src="figures/{name}.png"' in page, name


def test_report_figures_are_real_pngs(rendered):
    for name in ("widths", "accuracy", "budget"):
        _assert_png(rendered.parent / "figures" / f"{name}.png")


def test_report_shows_the_search_cost_and_a_tas_search_figure(pruned, tmp_path):
    import copy

    res = copy.deepcopy(pruned)
    groups = [d.id for d in res.plan.groups if len(d.keep) < d.size]
    res.plan.method = "tas"
    res.plan.search = {"searched_fractions": [[g, 0.6] for g in groups],
                       "log": [[1, 1.4], [2, 1.1], [3, 0.98]]}
    res.report.search = {"seconds": 90.0, "device": "cuda:0", "gpu_minutes": 1.5}
    page = render_report(make_run(tmp_path / "run", res)).read_text()
    assert "90.00 s on cuda:0 (1.500 GPU-minutes)" in page
    assert 'src="figures/search.png"' in page
    _assert_png(tmp_path / "run" / "figures" / "search.png")
    assert not (tmp_path / "other").exists()
    assert "search.png" not in render_report(make_run(tmp_path / "other", pruned)).read_text()


@pytest.mark.parametrize("method, widths, curve", [
    ("jst", "searched_fractions", "log"), ("metapruning", "searched_fractions", "log")])
def test_every_width_search_gets_a_search_figure(pruned, tmp_path, method, widths, curve):
    import copy

    res = copy.deepcopy(pruned)
    res.plan.method = method
    res.plan.search = {widths: [[d.id, 0.5] for d in res.plan.groups], curve: [[1, -2.1], [2, -1.7]]}
    assert 'src="figures/search.png"' in render_report(make_run(tmp_path / "run", res)).read_text()
    _assert_png(tmp_path / "run" / "figures" / "search.png")


def test_a_plan_saved_before_plan_search_loads_with_its_search_record(pruned, tmp_path):
    import copy

    from fxprune.report.load import load_run
    from fxprune.types import LEGACY_SEARCH_KEYS

    res = copy.deepcopy(pruned)
    groups = [d.id for d in res.plan.groups if len(d.keep) < d.size]
    root = make_run(tmp_path / "old", res)
    old = json.loads((root / "plan.json").read_text())  # format 1: the search's record among the options
    del old["search"]
    old.update(method="tas", format=1, method_options={
        "tas_epochs": 3, "tas_searched_fractions": [[g, 0.6] for g in groups], "tas_log": [[1, 1.2], [2, 0.97]],
        "tas_searched_depths": [["add", 2, 3]], "tas_search_s": 12.5})
    (root / "plan.json").write_text(json.dumps(old))
    run = load_run(root)
    assert run.plan.method_options == {"tas_epochs": 3}
    assert run.search == run.plan.search == {"searched_fractions": [[g, 0.6] for g in groups],
                                             "log": [[1, 1.2], [2, 0.97]], "searched_depths": [["add", 2, 3]],
                                             "search_s": 12.5}
    assert fxprune.PruningPlan.from_json(run.plan.to_json()) == run.plan  # saved again: the new format
    assert LEGACY_SEARCH_KEYS["jst_cost_ratio"] == "cost_ratio" and LEGACY_SEARCH_KEYS["dcp_points"] == "points"
    page = render_report(root).read_text()
    assert 'src="figures/search.png"' in page and "12.5" in page
    _assert_png(root / "figures" / "search.png")


def test_report_escapes_strings(pruned, tmp_path):
    evil = "<script>alert('x')</script>"
    run = make_run(tmp_path / "run", pruned, {**RUN_JSON, "model": evil, "command": '"><img src=x>'}, evil)
    page = render_report(run).read_text()
    assert "<script" not in page and "<img src=x>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_report_without_run_json(pruned, tmp_path):
    run = make_run(tmp_path / "run", pruned, run_json=None)
    page = render_report(run).read_text()
    assert "Fine-tune history" not in page and "latency" not in page
    assert not (run / "figures" / "accuracy.png").exists()
    _assert_png(run / "figures" / "widths.png")
    _assert_png(run / "figures" / "budget.png")
    assert "90.75 %" in page and "l1" in page


def test_report_rerender_drops_stale_accuracy_figure(pruned, tmp_path):
    run = make_run(tmp_path / "run", pruned)
    render_report(run)
    assert (run / "figures" / "accuracy.png").is_file()
    (run / "run.json").unlink()
    page = render_report(run).read_text()
    assert not (run / "figures" / "accuracy.png").exists() and "accuracy.png" not in page
    assert "report.html" not in page.split("Files in the run directory")[1]  # own outputs not listed


def test_report_missing_plan_is_a_clear_error(pruned, tmp_path):
    run = make_run(tmp_path / "run", pruned)
    (run / "plan.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"run has no plan\.json: it must be a run directory written "
                                                r"by `fxprune prune --out DIR`"):
        render_report(run)
    with pytest.raises(FileNotFoundError, match="no plan.json"):
        render_report(tmp_path / "nowhere")


def test_report_bad_json_names_the_file(pruned, tmp_path):
    run = make_run(tmp_path / "run", pruned)
    (run / "report.json").write_text("{")
    with pytest.raises(ValueError, match=r"report\.json is not valid JSON"):
        render_report(run)


# --- a real browser ------------------------------------------------------------------------------------
def _which_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless Chromium binary; installs it with scripts/chromium.sh when missing; fails (never
    skips) when it still cannot be found."""
    found = _which_chromium()
    if found:
        return found
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "chromium.sh")], capture_output=True, text=True,
                          timeout=1800)
    found = _which_chromium()
    if not found:
        pytest.fail(f"the report's browser test needs Chromium and scripts/chromium.sh could not install it "
                    f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False)
    return found


def test_report_renders_in_headless_chromium(rendered, chromium, tmp_path):
    shot = tmp_path / "page.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,1600", rendered.as_uri()]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    seconds = time.perf_counter() - start
    print(f"chromium screenshot took {seconds:.1f}s")
    assert proc.returncode == 0 and shot.is_file(), f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB")).astype(np.int16)
    assert pixels.shape[:2] == (1600, 1200), pixels.shape
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    white = (pixels >= 250).all(axis=2).mean()
    assert colours > 200, f"only {colours} distinct colours: the page rendered (nearly) blank"
    assert pixels.std() > 30, f"pixel std-dev {pixels.std():.1f}: the page rendered (nearly) blank"
    assert white < 0.97, f"{white:.1%} of the screenshot is white"
    # the header's dark band (CSS) and the figures' bar colour (only in the PNGs: the images loaded)
    header = np.abs(pixels - np.array([0x24, 0x36, 0x4B])).max(axis=2) <= 4
    bars = np.abs(pixels - np.array([int(SLIM[i:i + 2], 16) for i in (1, 3, 5)])).max(axis=2) <= 6
    assert header.sum() > 10_000, f"the header band is missing ({header.sum()} px): CSS not applied?"
    assert bars.sum() > 2_000, f"only {bars.sum()} px of the figures' bar colour: figures not loaded?"
