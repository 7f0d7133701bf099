"""The report page: one self-contained HTML document (inline CSS, no JavaScript, no network).

`SECTIONS` maps a section name to a function `(RunData, figures) -> str` that returns its HTML, or "" to
leave the section out. Every string that comes from the run is escaped with `html.escape` (see `esc`).

>>> esc("<script>")
'&lt;script&gt;'
>>> table(["a", "b"], [["<x>", 1.5]], align="lr")  # doctest: +ELLIPSIS
'<table><thead><tr><th>a</th><th class="r">b</th></tr></thead><tbody><tr><td>&lt;x&gt;</td>...</table>'
>>> count(40_810_000), count(272_474), count(12)
('40.81 M', '272.47 k', '12')
"""
from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any, Callable

from fxprune.types import search_text
from fxprune.report.load import RunData

CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1150px;color:#1d2733;
background:#fff}
header{background:#24364b;color:#fff;padding:16px 22px;border-radius:6px}
header h1{margin:0 0 8px;font-size:24px}
header dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:0;font-size:14px}
header dt{color:#aac4e0}header dd{margin:0}
h2{border-bottom:2px solid #d5dde6;padding-bottom:4px;margin-top:30px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{padding:3px 9px;border-bottom:1px solid #e3e8ee;text-align:left;vertical-align:top}
th{background:#eef2f6}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#f8fafc}
.bar{display:inline-block;height:9px;background:#3c9d6e;vertical-align:middle;margin-right:6px}
.figs{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}figure{margin:0}
figure img{max-width:100%;border:1px solid #e3e8ee}
.muted{color:#6b7785;font-size:13px}
"""


def esc(value: Any) -> str:
    """`value` as text, HTML-escaped (quotes too)."""
    return html.escape(str(value), quote=True)


def count(n: float) -> str:
    """A FLOPs / params count with an SI suffix."""
    for scale, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def _opt(v: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "–" if v is None else f"{v:{spec}}{unit}"


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "", raw: int | None = None) -> str:
    """An HTML table; `align` has one "l"/"r" per column; every cell is escaped except column `raw`
    (for markup built here from numbers only)."""
    def cls(i: int) -> str:
        return ' class="r"' if i < len(align) and align[i] == "r" else ""
    ths = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(head))
    trs = "".join("<tr>" + "".join(f"<td{cls(i)}>{c if i == raw else esc(c)}</td>" for i, c in enumerate(r))
                  + "</tr>" for r in rows)
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>"


def _budget_text(budget: dict[str, Any]) -> str:
    kind, value = budget.get("kind"), budget.get("value")
    if kind == "ratio":
        return f"remove {value} of each group's channels"
    if kind in ("flops", "params"):
        return f"keep {value} of the dense {'FLOPs' if kind == 'flops' else 'params'}"
    return "–" if kind is None else f"{kind} {value}"


def header(run: RunData, figures: dict[str, str]) -> str:
    p, r = run.plan, run.run
    opts = ", ".join(f"{k}={v}" for k, v in sorted(p.method_options.items()))
    items = {
        "model": r.get("model"), "input size": "×".join(map(str, r.get("input_size") or [])),
        "method": p.method + (f" ({opts})" if opts else ""), "budget": _budget_text(p.budget),
        "scope / steps / round_to": f"{p.scope} / {p.steps} / {p.round_to}",
        "date": r.get("created"), "fxprune": run.version, "command": r.get("command"),
    }
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items.items() if v not in (None, ""))
    return f"<header><h1>fxprune report: {esc(r.get('model', run.dir.name))}</h1><dl>{dl}</dl></header>"


def _accuracy_rows(acc: dict[str, float]) -> list[list[str]]:
    """Pruned / fine-tuned top-1 against dense; just dense when the run measured nothing else."""
    dense = acc.get("dense")
    labels = {"pruned": "accuracy, pruned (before fine-tuning)", "finetuned": "accuracy, fine-tuned"}
    rows = [[label, _opt(dense, unit=" %"), _opt(acc[key], unit=" %"),
             _opt(None if dense is None else acc[key] - dense, "+.2f", " pp")]
            for key, label in labels.items() if acc.get(key) is not None]
    return rows or ([["accuracy (dense)", _opt(dense, unit=" %"), "–", "–"]] if dense is not None else [])


def summary(run: RunData, figures: dict[str, str]) -> str:
    rep, lat = run.report, run.latency
    rows = [["FLOPs (2 per multiply-add)", count(rep.flops_before), count(rep.flops_after), f"{rep.flops_ratio:.3f}"],
            ["params", count(rep.params_before), count(rep.params_after), f"{rep.params_ratio:.3f}"]]
    if lat:
        where = f"latency ({lat.get('device', '?')}, batch {lat.get('batch', '?')})"
        rows.append([where, f"{lat['dense_ms']:.3f} ms", f"{lat['slim_ms']:.3f} ms",
                     f"{lat['slim_ms'] / lat['dense_ms']:.3f}"])
    rows += _accuracy_rows(rep.accuracy)
    if rep.search:
        rows.append(["search (the method's decision)", "–", search_text(rep.search), "–"])
    return "<h2>Summary</h2>" + table(["", "before (dense)", "after (slim)", "ratio / change"], rows, "lrrr")


CAPTIONS = {
    "budget": "Cost of the slim model relative to the dense one (dense = 1).",
    "widths": "Channels kept per group (blue) over the dense width (grey); frozen groups keep everything.",
    "accuracy": "Train and eval accuracy per fine-tune epoch; dotted lines separate rounds.",
    "search": "Width search: each group's most probable width and what it kept after the budget fit; the "
              "searched architecture's cost over the budget per epoch.",
}


def search_section(run: RunData, figures: dict[str, str]) -> str:
    """A searching method's record (`plan.search`): its scalars and short lists; the searched widths and the
    search curve are drawn in the search figure."""
    rows = [[key, ", ".join(map(str, value)) if isinstance(value, list) else value]
            for key, value in sorted(run.search.items())
            if not isinstance(value, (list, dict)) or (isinstance(value, list) and len(value) <= 12 and
                                                        not any(isinstance(v, (list, dict)) for v in value))]
    return f"<h2>Search ({esc(run.plan.method)})</h2>" + table(["", "value"], rows, "ll") if rows else ""


def figures_section(run: RunData, figures: dict[str, str]) -> str:
    imgs = "".join(f'<figure><img src="{esc(path)}" alt="{esc(name)} figure">'
                   f"<figcaption class=muted>{esc(CAPTIONS.get(name, ''))}</figcaption></figure>"
                   for name, path in figures.items())
    return f"<h2>Figures</h2><div class=figs>{imgs}</div>" if imgs else ""


def plan_section(run: RunData, figures: dict[str, str]) -> str:
    widths = run.report.widths or [(g.id, g.size, len(g.keep), "") for g in run.plan.groups]
    frozen, rows = run.frozen, []
    for gid, size, kept, origin in widths:
        pct = 100.0 * kept / max(size, 1)
        bar = f'<span class=bar style="width:{pct * 0.6:.0f}px"></span>{pct:.1f}'
        rows.append([gid, origin, size, kept, bar, frozen.get(int(gid), "")])
    note = f"<p class=muted>{len(rows)} groups, {len(frozen)} frozen.</p>"
    return "<h2>Plan per group</h2>" + note + table(["group", "origin", "size", "kept", "kept %", "frozen"],
                                                     rows, "rlrrrl", raw=4)


def history_section(run: RunData, figures: dict[str, str]) -> str:
    rows = [[i + 1, r.epoch + 1, f"{r.lr:.6f}", f"{r.train_loss:.4f}", f"{r.train_acc:.2f}",
             _opt(r.eval_loss, ".4f"), _opt(r.eval_acc), f"{r.images_per_s:.0f}", f"{r.seconds:.1f} s"]
            for i, h in enumerate(run.history) for r in h.records]
    if not rows:
        return ""
    head = ["round", "epoch", "lr", "train_loss", "train_acc", "eval_loss", "eval_acc", "img/s", "time"]
    return "<h2>Fine-tune history</h2>" + table(head, rows, "rrrrrrrrr")


def files_section(run: RunData, figures: dict[str, str]) -> str:
    rows = [[name, f"{size} B" if size < 1000 else count(size) + "B"] for name, size in run.files]
    return "<h2>Files in the run directory</h2>" + table(["file", "size"], rows, "lr")


SECTIONS: dict[str, Callable[[RunData, dict[str, str]], str]] = {
    "header": header, "summary": summary, "search": search_section, "figures": figures_section, "plan": plan_section,
    "history": history_section, "files": files_section,
}


def render_page(run: RunData, figures: dict[str, str]) -> str:
    """The whole page; `figures` maps a figure name to its path relative to the page."""
    body = "\n".join(s for s in (section(run, figures) for section in SECTIONS.values()) if s)
    title = esc(f"fxprune report: {run.run.get('model', run.dir.name)}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
