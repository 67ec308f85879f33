"""The report page (:func:`render_html`), rendered from a :func:`dream3d.compare.report.write_report` summary
alone: one self-contained HTML file with inline CSS, relative links to the report folder's ``media/``, no
scripts and nothing from the network; every text from a run or a label is escaped.

Sections: the figures table (:data:`dream3d.compare.figures.ROWS`; the best value of a row in bold), the
turntables of every particle, the last validation grid of each stage, the loss plots, the definitions and the
run folders.
"""

from __future__ import annotations

import html
from typing import Optional

from dream3d.compare.figures import ROWS

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #666; margin: 0 0 12px; }
table { border-collapse: collapse; } th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; }
th[scope=row] { font-weight: normal; color: #444; background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.best { font-weight: bold; }
.na { color: #999; } .note { color: #888; font-size: 12px; }
.runs { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.run h3 { font-size: 15px; margin: 0 0 6px; }
figure { margin: 0 0 10px; } figcaption { color: #666; font-size: 12px; }
video { width: 256px; max-width: 100%; background: #fff; border: 1px solid #eee; display: block; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; display: block; }
img.grid { width: 512px; } img.plot { image-rendering: auto; }
dl { font-size: 13px; } dt { font-weight: bold; } dd { margin: 0 0 6px 16px; color: #444; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _cell(key: str, fig: dict, best: bool = False) -> str:
    """The table cell of figure ``key`` of one run: numbers right-aligned (bold when ``best``), n/a with the reason
    as a tooltip."""
    if key == "guidance":
        scale = fig.get("guidance_scale")
        text = f"{fig.get('guidance')}" + (f" (scale {scale:g})" if scale is not None else "")
        return f"<td>{_e(text)}</td>"
    value = fig.get(key)
    if value is None:
        reason = fig.get("unavailable", {}).get(key, "not recorded")
        return f'<td class="num"><span class="na" title="{_e(reason)}">n/a</span></td>'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = f"{value:d}" if isinstance(value, int) else f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        return f'<td class="num{" best" if best else ""}">{_e(text)}</td>'
    return f"<td>{_e(value)}</td>"


def _best(key: str, better: Optional[str], figs: list[dict]) -> set[int]:
    """Columns holding the best value of a row (none when fewer than two runs have it or all are equal)."""
    values = [f.get(key) for f in figs]
    if better is None or sum(isinstance(v, (int, float)) for v in values) < 2:
        return set()
    if better == "truth":
        scores = [None if v is None or f.get("true_saturation") is None else -abs(v - f["true_saturation"])
                  for v, f in zip(values, figs)]
    else:
        scores = [None if v is None else (v if better == "higher" else -v) for v in values]
    known = [s for s in scores if s is not None]
    if len(known) < 2 or max(known) == min(known):
        return set()
    return {k for k, s in enumerate(scores) if s == max(known)}


def _table(labels: list[str], figs: list[dict]) -> str:
    head = "".join(f'<th scope="col">{_e(label)}</th>' for label in labels)
    rows = [f"<tr><th></th>{head}</tr>"]
    for key, name, better, text in ROWS:
        best = _best(key, better, figs)
        cells = [_cell(key, f, k in best) for k, f in enumerate(figs)]
        rows.append(f'<tr><th scope="row" title="{_e(text)}">{_e(name)}</th>{"".join(cells)}</tr>')
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _turntables(entries: dict) -> str:
    columns = []
    for label, entry in entries.items():
        items = []
        for video in entry["media"]["videos"]:
            caption = f"particle {video['particle']}"
            if video["file"] is None:
                items.append(f'<figure><p class="na">no turntable ({_e(video["source"])}); make one with '
                             f'dream3d render</p><figcaption>{_e(caption)}</figcaption></figure>')
                continue
            items.append(f'<figure><video controls autoplay loop muted playsinline preload="auto">'
                         f'<source src="{_e(video["file"])}" type="video/mp4"></video>'
                         f"<figcaption>{_e(caption)}</figcaption></figure>")
        columns.append(f'<div class="run"><h3>{_e(label)}</h3>{"".join(items)}</div>')
    return f'<div class="runs">{"".join(columns)}</div>'


def _grids(entries: dict) -> str:
    columns = []
    for label, entry in entries.items():
        items = [f'<figure><img class="grid" src="{_e(g["file"])}" alt="{_e(label)} {_e(stage)}">'
                 f"<figcaption>stage {_e(stage)}: {_e(g['source'])}</figcaption></figure>"
                 for stage, g in entry["media"]["val_grids"].items()]
        shown = "".join(items) or '<p class="na">none</p>'
        columns.append(f'<div class="run"><h3>{_e(label)}</h3>{shown}</div>')
    return (f'<div class="runs">{"".join(columns)}</div><p class="note">rows: rgb / normals / opacity; '
            "columns: front, right, back, left</p>")


def _plots(plots: list[dict]) -> str:
    if not plots:
        return '<p class="na">no metrics.csv with a loss column</p>'
    items = [f'<figure><img class="plot" src="{_e(p["file"])}" alt="{_e(p["key"])} of stage {_e(p["stage"])}">'
             f"<figcaption>{_e(p['key'])}, stage {_e(p['stage'])}: {_e(', '.join(p['runs']))} (raw faint, "
             "moving average bold)</figcaption></figure>" for p in plots]
    return f'<div class="runs">{"".join(items)}</div>'


def render_html(summary: dict) -> str:
    """The report page of a :func:`write_report` summary: self-contained, relative links, escaped text."""
    entries = summary["runs"]
    labels, figs = list(entries), list(entries.values())
    prompts = list(dict.fromkeys(f["prompt"] for f in figs))
    definitions = "".join(f"<dt>{_e(name)}</dt><dd>{_e(text)}</dd>" for _, name, _, text in ROWS)
    runs = "".join(f"<li>{_e(label)}: <code>{_e(entry['run_dir'])}</code></li>" for label, entry in entries.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(summary["title"])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>{_CSS}</style></head>
<body>
<h1>{_e(summary["title"])}</h1>
<p class="meta">{_e(" / ".join(prompts))} &middot; {len(labels)} runs &middot; created {_e(summary["created"])}</p>
<h2>Figures</h2>
{_table(labels, figs)}
<p class="note">bold: the best value of a row (saturation: nearest the true object's); n/a: hover for the reason.
The classifier figures and IoU score particle 0.</p>
<h2>Turntables</h2>
{_turntables(entries)}
<h2>Validation grids (last step of each stage)</h2>
{_grids(entries)}
<h2>Loss curves</h2>
{_plots(summary.get("plots", []))}
<h2>Definitions</h2>
<dl>{definitions}</dl>
<h2>Runs</h2>
<ul>{runs}</ul>
</body></html>
"""
