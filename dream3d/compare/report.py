"""The comparison report: figures, turntables, validation grids and loss curves of several runs (SDS vs VSD) side
by side in one HTML page that opens offline.

:func:`write_report` writes into a folder::

    report.html     the page: relative links only, inline CSS, no scripts, nothing from the network
    summary.json    the figures of every run (:func:`dream3d.compare.figures.run_figures`), their definitions and
                    the media files; written once, before the page
    media/          copies of every particle's turntable, each stage's last validation grid, the loss plots
                    (:func:`dream3d.compare.plots.loss_plot`)

so the folder can be moved, zipped or served as it is. The page is rendered from ``summary.json`` alone
(:func:`dream3d.compare.html.render_html`). The report only reads run folders (exporting a missing mesh and
evaluating a stale ``eval.json`` through :mod:`dream3d.compare.inputs`); it never fits.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from dream3d.compare.errors import ReportError
from dream3d.compare.figures import ROWS, run_figures
from dream3d.compare.html import render_html
from dream3d.compare.inputs import last_validation_grid
from dream3d.compare.plots import loss_plot
from dream3d.io import atomic_path, write_json, write_text
from dream3d.rundir import MESH_FILE, VIDEO_FILE, RunFolder

REPORT_FILE, SUMMARY_FILE, MEDIA_DIR = "report.html", "summary.json", "media"
PLOT_KEYS = ("loss", "sds", "vsd", "lora")  # metrics.csv columns worth a loss plot, when a run has them


def _copy(src: Path, out_dir: Path, name: str) -> str:
    """Copy ``src`` to ``out_dir/media/name`` atomically -> the path relative to ``out_dir`` (POSIX)."""
    target = out_dir / MEDIA_DIR / name
    with atomic_path(target, keep_suffix=True) as tmp:
        shutil.copyfile(src, tmp)
    return f"{MEDIA_DIR}/{name}"


def _slugs(labels: Sequence[str]) -> dict[str, str]:
    """A distinct file-name-safe stem per run label."""
    from dream3d.rundir import slugify

    slugs: dict[str, str] = {}
    for label in labels:
        base = slug = slugify(label, 24)
        n = 2
        while slug in slugs.values():
            slug, n = f"{base}-{n}", n + 1
        slugs[label] = slug
    return slugs


def _run_media(run_dir: Path, stages: Sequence[str], out_dir: Path, slug: str) -> dict:
    """Copy a run's particle turntables and each stage's last validation grid into media/ -> their paths."""
    videos = []
    for k, folder in enumerate(RunFolder(run_dir).particle_dirs()):
        if not (folder / MESH_FILE).is_file():
            continue
        video = folder / VIDEO_FILE
        videos.append({"particle": k, "file": _copy(video, out_dir, f"{slug}-p{k}-turntable.mp4")
                       if video.is_file() else None, "source": str(video.relative_to(run_dir))})
    grids = {}
    for stage in stages:
        grid = last_validation_grid(run_dir, stage)
        if grid is not None:
            grids[stage] = {"file": _copy(grid, out_dir, f"{slug}-{stage}-{grid.name}"),
                            "source": str(grid.relative_to(run_dir))}
    return {"videos": videos, "val_grids": grids}


def _loss_plots(runs: dict[str, Path], stages: dict[str, list[str]], out_dir: Path) -> list[dict]:
    """One plot per stage name and PLOT_KEYS column that any run has -> [{stage, key, file, runs}]."""
    plots = []
    for stage in dict.fromkeys(s for names in stages.values() for s in names):
        csvs = {label: RunFolder(run).metrics_path(stage) for label, run in runs.items()}
        csvs = {label: path for label, path in csvs.items() if path.is_file()}
        for key in PLOT_KEYS:
            name = f"loss-{stage}-{key}.png"
            drawn = loss_plot(csvs, key, out_dir / MEDIA_DIR / name, title=f"{key} (stage {stage})")
            if drawn:
                plots.append({"stage": stage, "key": key, "file": f"{MEDIA_DIR}/{name}", "runs": drawn})
    return plots


def write_report(
    out_dir: str | Path, runs: dict[str, str | Path], title: str, log: Callable[[str], None] = print,
    views: int = 16, size: int = 64, classifier: Optional[str | Path] = None, started: Optional[float] = None,
) -> dict:
    """Compare ``runs`` ({label: run folder}) in ``out_dir``: ``report.html``, ``summary.json`` and ``media/``
    (see the module docstring). Every file is written atomically, the page last. Returns the summary dict.

    ``started``: the ``time.perf_counter()`` at which the whole comparison began (``dream3d compare``); when
    given, the summary also records ``out`` (this folder) and ``compare_wall_s`` (seconds since then)."""
    out_dir = Path(out_dir)
    if not runs:
        raise ReportError("no runs to compare: expected at least one {label: run folder}")
    runs = {str(label): Path(path) for label, path in runs.items()}
    figures = {}
    for label, run in runs.items():
        log(f"{label}: figures of {run}")
        figures[label] = run_figures(run, views, size, classifier, log=log)
    slugs = _slugs(list(runs))
    entries = {}
    for label, run in runs.items():
        entries[label] = {**figures[label], "run_dir": str(run),
                          "media": _run_media(run, figures[label]["stages"], out_dir, slugs[label])}
    plots = _loss_plots(runs, {label: f["stages"] for label, f in figures.items()}, out_dir)
    summary = {
        "title": title, "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "report": REPORT_FILE, "runs": entries, "plots": plots,
        "definitions": {key: text for key, _, _, text in ROWS},
    }
    if started is not None:
        summary["out"] = str(out_dir)
        summary["compare_wall_s"] = round(time.perf_counter() - started, 1)
    write_json(out_dir / SUMMARY_FILE, summary)
    write_text(out_dir / REPORT_FILE, render_html(summary))
    log(f"report: {out_dir / REPORT_FILE} ({len(runs)} runs, {len(plots)} loss plots)")
    return summary
