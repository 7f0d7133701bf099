"""Reading a run directory (written by `fxprune prune --out DIR`) into one `RunData` record.

>>> load_run("/no/such/run")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
FileNotFoundError: /no/such/run has no plan.json: it must be a run directory written by `fxprune prune --out DIR`...
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fxprune.train.history import TrainHistory
from fxprune.types import PruningPlan, Report

REQUIRED = ("plan.json", "report.json")
OUTPUTS = ("report.html", "figures")  # what render_report writes: not listed as run files
MAX_FILES = 500


@dataclass
class RunData:
    """Everything a report shows: the plan, the report, run.json's extras ({} when absent) and the files."""

    dir: Path
    plan: PruningPlan
    report: Report
    run: dict[str, Any] = field(default_factory=dict)
    files: list[tuple[str, int]] = field(default_factory=list)  # (path relative to dir, bytes)

    @property
    def history(self) -> list[TrainHistory]:
        """One TrainHistory per fine-tune round (empty list without run.json or without fine-tuning)."""
        return [TrainHistory.from_dict(h) for h in self.run.get("history") or []]

    @property
    def search(self) -> dict[str, Any]:
        """A searching method's record: searched widths, curves, `search_s`, ... ({} for a scoring method).
        Plans written before `PruningPlan.search` existed load with it moved out of the method options."""
        return self.plan.search

    @property
    def latency(self) -> dict[str, Any]:
        """{"device", "batch", "dense_ms", "slim_ms"} or {} when the run did not time the models."""
        lat = self.run.get("latency") or {}
        return lat if lat.get("dense_ms") and lat.get("slim_ms") is not None else {}

    @property
    def frozen(self) -> dict[int, str]:
        """Group id -> why all its channels are kept."""
        return {int(gid): str(reason) for gid, reason in self.report.frozen}

    @property
    def version(self) -> str:
        return str(self.run.get("fxprune") or self.plan.library_version or "unknown")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); was the run interrupted while writing it? "
                         "Re-run `fxprune prune --out DIR` to write it again.") from None


def _report_from_dict(data: dict[str, Any]) -> Report:
    """Report.to_dict() back into a Report (the derived ratios are dropped: Report recomputes them)."""
    names = {f.name for f in fields(Report)}
    return Report(**{k: v for k, v in data.items() if k in names})


def list_files(run_dir: Path) -> list[tuple[str, int]]:
    """The run's files (relative path, size), sorted, without the report's own outputs."""
    out = []
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir)
        if p.is_file() and rel.parts[0] not in OUTPUTS:
            out.append((rel.as_posix(), p.stat().st_size))
    return out[:MAX_FILES]


def load_run(run_dir: str | Path) -> RunData:
    """Read plan.json, report.json and (optional) run.json of `run_dir`.

    Raises FileNotFoundError naming the directory when it is not a run directory."""
    run_dir = Path(run_dir)
    for name in REQUIRED:
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir} has no {name}: it must be a run directory written by `fxprune prune --out DIR` "
                f"(one with {' and '.join(REQUIRED)}).")
    plan = PruningPlan.from_dict(_read_json(run_dir / "plan.json"))
    report = _report_from_dict(_read_json(run_dir / "report.json"))
    run = _read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    if not isinstance(run, dict):
        raise ValueError(f"{run_dir / 'run.json'} must hold a JSON object, got {type(run).__name__}.")
    return RunData(run_dir, plan, report, run, list_files(run_dir))
