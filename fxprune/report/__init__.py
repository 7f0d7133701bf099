"""The HTML report of a pruning run: `render_report(run_dir)` reads a run directory written by
`fxprune prune --out DIR` (plan.json, report.json, optional run.json) and writes `report.html` with its
figures under `figures/`. The page is self-contained (inline CSS, no JavaScript, no network): open it
from disk.

>>> from fxprune.report import render_report
>>> render_report("/no/such/run")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
FileNotFoundError: /no/such/run has no plan.json: it must be a run directory written by `fxprune prune --out DIR`...
"""
from __future__ import annotations

from pathlib import Path

from fxprune.report.figures import FIGURES, write_figures
from fxprune.report.load import RunData, load_run
from fxprune.report.page import SECTIONS, render_page

__all__ = ["FIGURES", "SECTIONS", "RunData", "load_run", "render_report"]


def render_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report.html` and its PNG figures under `run_dir/figures/`; return the html path."""
    run = load_run(run_dir)
    figures = write_figures(run, run.dir / "figures")
    path = run.dir / "report.html"
    path.write_text(render_page(run, figures), encoding="utf-8")
    return path
