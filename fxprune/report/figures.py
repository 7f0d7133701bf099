"""The report's PNG figures, drawn with matplotlib's object API (no pyplot: no global backend change).

`FIGURES` maps a figure name to a function that draws it on a fresh `Figure` from a `RunData`, or returns
None when the run has nothing to show (no fine-tune history: no accuracy figure). matplotlib is imported
lazily so `import fxprune` stays light.
"""
from __future__ import annotations

from dataclasses import dataclass

from pathlib import Path
from typing import Any, Callable

from fxprune.report.load import RunData

DENSE, SLIM, FROZEN = "#9aa5b1", "#1f77b4", "#c9b37e"  # figure colours (the page's CSS uses others)
DPI = 100


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("fxprune's HTML report draws its figures with matplotlib, which is not installed: "
                          "`pip install matplotlib`.") from None
    return Figure(figsize=(width, height), dpi=DPI)


def widths_figure(run: RunData) -> Any:
    """Per-group width: the dense size behind the kept channels, frozen groups in another colour."""
    rows = run.report.widths or [(g.id, g.size, len(g.keep), "") for g in run.plan.groups]
    if not rows:
        return None
    ids = [int(r[0]) for r in rows]
    x = list(range(len(rows)))
    fig = _figure(min(max(6.0, 0.22 * len(rows) + 2), 18.0), 3.8)
    ax = fig.add_subplot()
    ax.bar(x, [r[1] for r in rows], color=DENSE, width=0.8, label="size (dense)")
    colours = [FROZEN if gid in run.frozen else SLIM for gid in ids]
    ax.bar(x, [r[2] for r in rows], color=colours, width=0.8, label="kept")
    if any(c == FROZEN for c in colours):
        ax.bar([0], [0], color=FROZEN, label="kept (frozen group)")
    step = max(1, len(rows) // 40)
    ax.set_xticks(x[::step], [str(i) for i in ids[::step]], fontsize=7)
    ax.set_xlabel("channel group")
    ax.set_ylabel("width (channels or blocks)")
    ax.set_title("Width per group: kept vs dense size")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def accuracy_figure(run: RunData) -> Any:
    """eval / train accuracy per epoch across all fine-tune rounds, dense and pruned accuracy as lines."""
    records = [(i, r) for i, h in enumerate(run.history) for r in h.records]
    if not records:
        return None
    fig = _figure(6.6, 3.8)
    ax = fig.add_subplot()
    epochs = list(range(1, len(records) + 1))
    evals = [(e, r.eval_acc) for e, (_, r) in zip(epochs, records) if r.eval_acc is not None]
    ax.plot(epochs, [r.train_acc for _, r in records], marker=".", color="#ff7f0e", label="train_acc")
    if evals:
        ax.plot(*zip(*evals), marker="o", color=SLIM, label="eval_acc")
    for e in range(1, len(records)):  # fine-tune round boundaries
        if records[e][0] != records[e - 1][0]:
            ax.axvline(e + 0.5, color="gray", ls=":", lw=1)
    acc = run.report.accuracy
    for key, style in (("dense", "--"), ("pruned", "-.")):
        if acc.get(key) is not None:
            ax.axhline(acc[key], color="gray", ls=style, lw=1, label=f"{key} {acc[key]:.2f}%")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch (all fine-tune rounds)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Fine-tuning history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def budget_metrics(run: RunData) -> dict[str, float]:
    """Slim / dense ratio of FLOPs, params and (when timed) latency."""
    out = {"FLOPs": run.report.flops_ratio, "params": run.report.params_ratio}
    if run.latency:
        out["latency"] = run.latency["slim_ms"] / run.latency["dense_ms"]
    return out


def budget_figure(run: RunData) -> Any:
    """FLOPs / params / latency before vs after, normalised to dense = 1."""
    ratios = budget_metrics(run)
    x = list(range(len(ratios)))
    fig = _figure(4.6, 3.8)
    ax = fig.add_subplot()
    ax.bar([i - 0.2 for i in x], [1.0] * len(x), width=0.4, color=DENSE, label="dense")
    bars = ax.bar([i + 0.2 for i in x], list(ratios.values()), width=0.4, color=SLIM, label="slim")
    ax.bar_label(bars, [f"{r:.3f}" for r in ratios.values()], fontsize=8)
    ax.set_xticks(x, list(ratios))
    ax.set_ylabel("relative to dense")
    ax.set_ylim(0, max(1.15, max(ratios.values()) * 1.15))
    ax.set_title("Cost before vs after (dense = 1)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


@dataclass(frozen=True)
class SearchTrace:
    """How a searching method's record (`plan.search`) is drawn: its widths and its search curve."""

    xlabel: str
    ylabel: str
    reference: float | None = None  # a horizontal line (the budget)
    widths: str = "searched_fractions"  # [[group id, searched width fraction], ...]
    curve: str = "log"  # [[step, value], ...]


SEARCH_TRACES: dict[str, SearchTrace] = {  # by method; another method's searched widths get DEFAULT_TRACE
    "tas": SearchTrace("search epoch", "argmax cost / budget", 1.0),
    "metapruning": SearchTrace("EA iteration", "best candidate score"),
    "jst": SearchTrace("search epoch", "mean sub-network reward"),
}
DEFAULT_TRACE = SearchTrace("search step", "value")


def search_figure(run: RunData) -> Any:
    """A width search (TAS, MetaPruning, JST): each group's searched width fraction beside the kept fraction
    after the budget fit and repair, and the method's search curve."""
    record = run.search
    trace = SEARCH_TRACES.get(run.plan.method, DEFAULT_TRACE)
    if not record.get(trace.widths):
        return None
    searched = record[trace.widths]
    sizes = {d.id: (d.size, len(d.keep)) for d in run.plan.groups}
    fig = _figure(min(max(7.0, 0.22 * len(searched) + 4), 18.0), 3.8)
    ax, ax_log = fig.add_subplot(1, 3, (1, 2)), fig.add_subplot(1, 3, 3)
    x = list(range(len(searched)))
    ax.bar([i - 0.2 for i in x], [f for _, f in searched], width=0.4, color=DENSE, label="searched")
    ax.bar([i + 0.2 for i in x], [sizes[g][1] / sizes[g][0] for g, _ in searched], width=0.4, color=SLIM,
           label="kept (after the budget fit)")
    step = max(1, len(x) // 40)
    ax.set_xticks(x[::step], [str(g) for g, _ in searched][::step], fontsize=7)
    ax.set(xlabel="channel group", ylabel="width fraction", ylim=(0, 1.05), title="Searched widths")
    ax.legend(fontsize=8)
    log = record.get(trace.curve) or []
    ax_log.plot([e for e, _ in log], [r for _, r in log], marker=".", color=SLIM)
    if trace.reference is not None:
        ax_log.axhline(trace.reference, color=FROZEN, linestyle="--", linewidth=1)
    ax_log.set(xlabel=trace.xlabel, ylabel=trace.ylabel, title="Search")
    for a in (ax, ax_log):
        a.grid(axis="y", alpha=0.3)
    return fig


FIGURES: dict[str, Callable[[RunData], Any]] = {  # in page order
    "budget": budget_figure,
    "accuracy": accuracy_figure,
    "widths": widths_figure,
    "search": search_figure,
}


def write_figures(run: RunData, out_dir: Path) -> dict[str, str]:
    """Draw every figure the run has data for into `out_dir/<name>.png`; name -> path relative to run.dir.

    Figures that a previous render wrote but this run no longer has (e.g. accuracy.png) are removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, draw in FIGURES.items():
        path = out_dir / f"{name}.png"
        fig = draw(run)
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        fig.tight_layout()
        fig.savefig(path)
        written[name] = path.relative_to(run.dir).as_posix()
    return written
