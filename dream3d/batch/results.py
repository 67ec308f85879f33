"""A batch's results in one place: ``summary.json``, ``summary.csv`` and ``gallery.html`` in the batch folder.

One row per fit: prompt, seed, recipe, status, attempts, wall times, the eval figures, the run folder. The
gallery is one offline HTML file: inline CSS and a few lines of inline script to sort the table by a column
(nothing from the network), each result's turntable video by a relative link into its run folder, every text
from a prompt or an error escaped. All three are rewritten (atomically) after every fit that ends.
"""

from __future__ import annotations

import csv
import html
import io
import os
from pathlib import Path
from typing import Any, Optional

from dream3d.io import write_json, write_text
from dream3d.rundir import RunFolder

COLUMNS = ["prompt", "seed", "recipe", "status", "attempts", "wall_s", "r_precision", "iou", "volume_iou",
           "chamfer", "colour_error", "janus", "front_ok", "top_caption", "run", "error"]
FIGURES = [("r_precision", "R-precision", "higher"), ("iou", "IoU", "higher"), ("volume_iou", "volume IoU", "higher"),
           ("chamfer", "Chamfer", "lower"), ("colour_error", "colour error", "lower"), ("janus", "Janus", "lower"),
           ("wall_s", "wall s", "lower")]


def make_row(job, result: Optional[dict], out: Path) -> dict:
    """A summary row of ``job`` from its worker result (None: not run yet)."""
    r = result or {}
    fit_s, eval_s = r.get("fit_s"), r.get("eval_s")
    row: dict[str, Any] = {
        "prompt": job.prompt, "seed": job.seed, "recipe": job.recipe, "line": job.line,
        "status": r.get("status", "pending"), "skipped": bool(r.get("skipped")), "attempts": r.get("attempts", 0),
        "wall_s": round(fit_s + (eval_s or 0.0), 1) if fit_s is not None else None,
        "fit_s": fit_s, "eval_s": eval_s, "train_s": r.get("train_s"),
        "run": os.path.relpath(job.run_dir, out), "error": r.get("error") or None,
        "eval_error": r.get("eval_error"),
    }
    for key in ("r_precision", "object_accuracy", "colour_accuracy", "iou", "volume_iou", "chamfer", "colour_error",
                "janus", "front_ok", "top_caption"):
        row[key] = r.get(key)
    return row


def read_results(out: Path) -> dict:
    """The batch folder's summary.json."""
    import json

    return json.loads((Path(out) / "summary.json").read_text())


def write_results(out: Path, rows: list[dict], meta: dict) -> None:
    """summary.json (meta + counts + rows), summary.csv (:data:`COLUMNS`) and gallery.html."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "interrupted", "pending")}
    write_json(out / "summary.json", {**meta, "counts": counts, "rows": rows})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    write_text(out / "summary.csv", buf.getvalue())
    write_text(out / "gallery.html", gallery_html(out, rows, meta, counts))


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value) -> str:
    if value is None:
        return '<td class="num na" data-v="">n/a</td>'
    if isinstance(value, bool):
        return f'<td class="num" data-v="{int(value)}">{"yes" if value else "no"}</td>'
    return f'<td class="num" data-v="{float(value)!r}">{float(value):.3g}</td>'


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } .meta { color: #666; margin: 0 0 16px; }
table { border-collapse: collapse; margin-bottom: 24px; } th, td { border: 1px solid #ddd; padding: 4px 8px; }
th { background: #f5f5f5; cursor: pointer; user-select: none; white-space: nowrap; } th.sorted { background: #e4ecf7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } .na { color: #999; }
tr.failed td, tr.interrupted td, tr.pending td { color: #a33; }
.cards { display: flex; flex-wrap: wrap; gap: 18px; } .card { width: 260px; }
.card h3 { font-size: 14px; margin: 0 0 4px; } .card p { margin: 2px 0; font-size: 12px; color: #555; }
video { width: 256px; height: 256px; background: #fff; border: 1px solid #eee; display: block; }
.none { width: 256px; height: 120px; border: 1px dashed #ccc; color: #999; display: flex; align-items: center;
        justify-content: center; font-size: 12px; text-align: center; padding: 4px; box-sizing: border-box; }
"""

# sort the table by a clicked header (numbers by data-v; empty cells last); no network, no libraries
_SCRIPT = """
document.querySelectorAll('#results th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = document.querySelector('#results tbody'), rows = Array.from(body.rows);
    var up = th.dataset.dir !== 'up'; th.dataset.dir = up ? 'up' : 'down';
    document.querySelectorAll('#results th').forEach(function (h) { h.classList.remove('sorted'); });
    th.classList.add('sorted');
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      if (x === undefined) { x = a.cells[col].textContent; y = b.cells[col].textContent; }
      if (x === '' || y === '') { return (x === '') - (y === ''); }
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return up ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def gallery_html(out: Path, rows: list[dict], meta: dict, counts: dict) -> str:
    head = "".join(f"<th>{_e(label)}</th>" for label in
                   ["prompt", "seed", "recipe", "status", *[f[1] for f in FIGURES], "top caption"])
    body, cards = [], []
    for r in rows:
        cells = [f"<td>{_e(r['prompt'])}</td>", f'<td class="num" data-v="{r["seed"]}">{r["seed"]}</td>',
                 f"<td>{_e(r['recipe'])}</td>",
                 f'<td title="{_e(r.get("error") or "")}">{_e(r["status"])}</td>']
        cells += [_num(r.get(key)) for key, _, _ in FIGURES]
        cells.append(f"<td>{_e(r.get('top_caption') or '')}</td>")
        body.append(f'<tr class="{_e(r["status"])}">{"".join(cells)}</tr>')
        video = RunFolder(r["run"]).video_path  # relative to the batch folder, as the page links it
        if (out / video).is_file():
            media = (f'<video src="{_e(video.as_posix())}" autoplay loop muted playsinline '
                     f'title="{_e(r["prompt"])}"></video>')
        else:
            media = f'<div class="none">{_e(r.get("error") or "no turntable")}</div>'
        figs = ", ".join(f"{label} {r[key]:.2f}" for key, label, _ in FIGURES[:5] if r.get(key) is not None)
        cards.append(f'<div class="card"><h3>{_e(r["prompt"])} (seed {r["seed"]})</h3>{media}'
                     f'<p>{_e(r["recipe"])}, {_e(r["status"])}{", " + _e(figs) if figs else ""}</p>'
                     + (f'<p><a href="{_e(Path(r["run"]).as_posix())}/">run folder</a></p>' if (out / r["run"]).is_dir()
                        else "") + "</div>")
    title = f"dream3d batch: {meta.get('prompts_file', '')}"
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n<h1>{_e(title)}</h1>\n"
            f'<p class="meta">{_e(summary)}; {len(rows)} fits; updated {_e(meta.get("updated", ""))}; '
            f"click a column header to sort</p>\n"
            f'<table id="results"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body) +
            "\n</tbody></table>\n<div class=\"cards\">\n" + "\n".join(cards) +
            f"\n</div>\n<script>{_SCRIPT}</script>\n</body></html>\n")
