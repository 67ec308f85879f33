"""The comparison report of ``dream3d compare``: figures, turntables, validation grids and loss curves of several
runs (SDS vs VSD) side by side in one HTML page that opens offline.

:func:`write_report` writes into a folder::

    report.html     the page: relative links only, inline CSS, no scripts, nothing from the network
    summary.json    the figures of every run (:func:`run_figures`), their definitions and the media files
    media/          copies of every particle's turntable, each stage's last validation grid, the loss plots

so the folder can be moved, zipped or served as it is. The page is rendered from ``summary.json`` alone
(:func:`render_html`).

Figures of one run (:func:`run_figures`), label-free (no reference images needed beyond the shape world):

* from ``config.yaml`` / ``summary.json``: prompt, recipe, the last stage's guidance and guidance scale, steps,
  wall time, iterations per second (all stages' steps over their training time), peak RSS;
* ``saturation``: :func:`foreground_saturation` of turntable renders of each particle mesh, mean over particles;
  ``true_saturation``: the same measure on the prompt's true shape-world object (None outside the catalogue).
  SDS at high guidance scales is known for over-saturated colours; VSD should land nearer the truth;
* the classifier figures of ``eval.json`` (:func:`dream3d.eval.evaluate_run`, run again when the file is missing
  or older than ``export/model.glb``): ``r_precision``, ``object_accuracy``, ``colour_accuracy``, ``iou``,
  ``colour_error``. They score particle 0 (``export/model.glb``), as ``dream3d eval`` does;
* ``diversity``: how different the particles are: every particle mesh rendered from the same cameras (on white),
  the mean absolute RGB difference of each pair of aligned views over the whole frame, averaged over views and
  pairs (0: identical particles; None with one particle).

Renders (:func:`render_particles`) use the evaluation's turntable and lighting (:mod:`dream3d.eval`): azimuth 0
at the front, Lambert + ambient light from the camera, white background. The particle meshes are rendered as
exported, in the scene's units and *not* normalised one by one, and the cameras frame the largest particle's
bounding sphere about the origin: a particle that is bigger, smaller or shifted is a different result, and the
diversity counts it.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import itertools
import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from dream3d.errors import Dream3DError
from dream3d.export.run import EXPORT_DIR, particle_dirs, particle_meshes
from dream3d.io import atomic_path, save_png, write_json, write_text

MESH_FILE, VIDEO_FILE = "model.glb", "turntable.mp4"
REPORT_FILE, SUMMARY_FILE, MEDIA_DIR = "report.html", "summary.json", "media"
PLOT_KEYS = ("loss", "sds", "vsd", "lora")  # metrics.csv columns worth a loss plot, when a run has them
CLASSIFIER_KEYS = ("r_precision", "object_accuracy", "colour_accuracy", "iou", "colour_error")
ALPHA_THRESHOLD = 0.5  # foreground pixels: alpha above this (as eval.py's silhouettes)

# (key, row label, better: "higher" | "lower" | "truth" (nearer true_saturation) | None, definition)
ROWS: tuple[tuple[str, str, Optional[str], str], ...] = (
    ("prompt", "prompt", None, "the run's prompt"),
    ("recipe", "recipe", None, "the run's recipe (configs/<recipe>.yaml)"),
    ("guidance", "guidance", None, "guidance of the last stage and its classifier-free guidance scale s "
                                   "(diffusers convention: uncond + s * (cond - uncond))"),
    ("steps", "steps", None, "training steps completed, all stages"),
    ("particles", "particles", None, "particle meshes in the run (export/model.glb, export/particle<k>/model.glb)"),
    ("wall_s", "wall time (s)", "lower", "training wall time of all stages, seconds (summary.json)"),
    ("it_per_s", "it/s", "higher", "training steps per second: all stages' steps over their training time"),
    ("peak_rss_mb", "peak memory (MB)", "lower", "peak resident set size of the fit process, MB (summary.json)"),
    ("saturation", "saturation", "truth", "mean HSV saturation (max - min) / max of the foreground pixels "
     "(alpha > 0.5) of shaded turntable renders, mean over particles; nearer the true object's is better"),
    ("true_saturation", "true saturation", None, "the same measure on the prompt's true shape-world object"),
    ("r_precision", "R-precision", "higher", "fraction of views whose top-1 caption among all catalogue captions "
                                             "is the prompt's (evaluation classifier; particle 0)"),
    ("object_accuracy", "object accuracy", "higher", "fraction of views the classifier gives the prompt's object kind"),
    ("colour_accuracy", "colour accuracy", "higher", "fraction of views the classifier gives the prompt's colour"),
    ("iou", "silhouette IoU", "higher", "mean silhouette IoU against the true object (particle 0)"),
    ("colour_error", "colour error", "lower", "mean |albedo difference| against the true object where both cover"),
    ("diversity", "diversity", None, "mean absolute RGB difference between particles' aligned views on white "
                                     "(whole frame), averaged over views and pairs; 0 = identical particles"),
)


class ReportError(Dream3DError, ValueError):
    """Bad input for a comparison report: the message is one line naming the file or argument."""


# --------------------------------------------------------------------------------------------------------------
# A run's files
# --------------------------------------------------------------------------------------------------------------


def last_validation_grid(stage_dir: Path) -> Optional[Path]:
    """``<stage>/val/step<N>.png`` with the highest N, or None."""
    grids = [(int(m.group(1)), p) for p in (stage_dir / "val").glob("step*.png")
             if (m := re.fullmatch(r"step(\d+)\.png", p.name))]
    return max(grids)[1] if grids else None


def _load_config(run_dir: Path):
    """The run's stored RunConfig; ReportError when ``run_dir`` is not a run folder."""
    from dream3d.rundir import RunFolder

    return RunFolder(run_dir).read_config()


def _ensure_exported(run_dir: Path, cfg, log: Callable[[str], None]) -> None:
    """Export ``export/model.glb`` with the run's own mesh settings when it is missing."""
    from dream3d.export.run import ExportError, export_run

    glb = run_dir / EXPORT_DIR / MESH_FILE
    if glb.is_file():
        return
    try:
        export_run(run_dir, ("glb",), resolution=cfg.mesh_resolution, texture_size=cfg.texture_size, log=log)
    except ExportError as exc:
        raise ReportError(f"{glb}: not found and cannot be exported ({exc})") from None


def _load_meshes(paths: Sequence[Path]) -> list:
    from dream3d.export.mesh import load_mesh

    meshes = []
    for path in paths:
        try:
            mesh = load_mesh(path)
        except (ValueError, OSError, KeyError, IndexError) as exc:
            raise ReportError(f"{path}: {str(exc).splitlines()[0]}") from None
        if mesh.num_faces == 0:
            raise ReportError(f"{path}: the mesh has no faces")
        meshes.append(mesh)
    return meshes


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------


def foreground_saturation(rgb: Tensor, alpha: Tensor, threshold: float = ALPHA_THRESHOLD) -> Optional[float]:
    """Mean HSV saturation ``(max - min) / max`` over the pixels of ``rgb`` [V,H,W,3] (in [0,1]) whose ``alpha``
    [V,H,W,1] is above ``threshold``; black pixels count as 0. None when no pixel is foreground.

    Saturation is a ratio of the channels, so it does not change with the Lambert shading of a render (a pure
    red face is 1 whether lit or in shade, any grey is 0): it measures the colours of the object, not its light.
    """
    rgb, alpha = torch.as_tensor(rgb, dtype=torch.float32), torch.as_tensor(alpha, dtype=torch.float32)
    if rgb.shape[-1] != 3 or alpha.shape != rgb.shape[:-1] + (1,):
        raise ValueError(f"foreground_saturation: expected rgb [...,3] and alpha [...,1] of the same size, "
                         f"got {tuple(rgb.shape)} and {tuple(alpha.shape)}")
    hi, lo = rgb.amax(-1), rgb.amin(-1)
    saturation = torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-8), torch.zeros_like(hi))
    mask = alpha[..., 0] > threshold
    return float(saturation[mask].mean()) if bool(mask.any()) else None


def render_particles(meshes: Sequence, views: int = 16, size: int = 64, elevation: float = 15.0) -> Tensor:
    """Shaded renders on white of every mesh from the *same* evaluation turntable -> rgb [P,V,H,W,3], alpha
    [P,V,H,W,1] stacked as [P,V,H,W,4]. The cameras frame the largest bounding sphere about the origin."""
    from dream3d.eval import eval_cameras, render_eval

    radius = max(float(m.verts.norm(dim=-1).max()) for m in meshes)
    cams = eval_cameras(views, elevation, size, max(radius, 1e-3))
    outs = [render_eval(m, cams) for m in meshes]
    return torch.stack([torch.cat([o["rgb"], o["alpha"]], dim=-1) for o in outs])


def diversity(renders: Tensor) -> Optional[float]:
    """Mean over particle pairs and views of the mean absolute RGB difference of aligned views:
    renders [P,V,H,W,3+] (on white) -> float; None with fewer than two particles."""
    pairs = list(itertools.combinations(range(renders.shape[0]), 2))
    if not pairs:
        return None
    rgb = renders[..., :3]
    return float(sum(float((rgb[i] - rgb[j]).abs().mean()) for i, j in pairs) / len(pairs))


def _true_saturation(prompt: str, views: int, size: int, elevation: float) -> tuple[Optional[float], str]:
    """Saturation of the prompt's catalogue object, or (None, why not)."""
    from dream3d.eval import match_prompt
    from dream3d.representations.mesh import TexturedMesh

    caption, obj = match_prompt(prompt)
    if obj is None:
        return None, f"'{caption}' is not a catalogue caption: no true object"
    truth = render_particles([TexturedMesh(obj.verts, obj.faces, vertex_colors=obj.colors.clamp(0, 1))],
                             views, size, elevation)
    return foreground_saturation(truth[..., :3], truth[..., 3:]), ""


def _eval_result(run_dir: Path, views: int, size: int, elevation: float, classifier, log) -> tuple[dict, str]:
    """``eval.json`` of the run, evaluated again when missing, unreadable or older than ``export/model.glb``
    -> (result, "") or ({}, why there is none)."""
    from dream3d.eval import EVAL_FILE, EvalError, evaluate_run

    path, glb = run_dir / EVAL_FILE, run_dir / EXPORT_DIR / MESH_FILE
    if path.is_file() and path.stat().st_mtime >= glb.stat().st_mtime:
        try:
            return json.loads(path.read_text()), ""
        except json.JSONDecodeError:
            pass
    log(f"evaluating {run_dir} ({views} views) -> {path}")
    try:
        return evaluate_run(run_dir, views=views, classifier_dir=classifier, elevation=elevation, size=size), ""
    except EvalError as exc:
        return {}, f"dream3d eval failed: {exc}"


def _read_summary(run_dir: Path) -> dict:
    """The run's summary.json ({} when there is none); ReportError when it is not JSON."""
    from dream3d.run import read_summary

    try:
        return read_summary(run_dir)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{run_dir / 'summary.json'}: not valid JSON ({exc})") from None


def _training_figures(cfg, summary: dict) -> dict:
    """steps, wall_s, it_per_s, peak_rss_mb from summary.json (configured steps when the fit recorded none)."""
    stages = [summary.get("stages", {}).get(name, {}) for name in cfg.stages]
    done = [s.get("completed_steps") for s in stages]
    steps = sum(d or 0 for d in done) if any(d is not None for d in done) else sum(s.steps for s in cfg.stages.values())
    wall = summary.get("wall_s")
    if wall is None and any("wall_s" in s for s in stages):
        wall = round(sum(s.get("wall_s", 0.0) for s in stages), 2)
    timed = [(s["completed_steps"], s["it_per_s"]) for s in stages if s.get("it_per_s") and s.get("completed_steps")]
    it_per_s = round(sum(n for n, _ in timed) / sum(n / r for n, r in timed), 3) if timed else None
    return {"steps": steps, "wall_s": wall, "it_per_s": it_per_s, "peak_rss_mb": summary.get("peak_rss_mb")}


def run_figures(
    run_dir: str | Path, views: int = 16, size: int = 64, classifier: Optional[str | Path] = None,
    elevation: float = 15.0, log: Callable[[str], None] = print,
) -> dict:
    """The figures of one run (see the module docstring) as a JSON-ready dict; missing ones are None with the
    reason under ``unavailable``. ``classifier``: the evaluation classifier's folder (None: the run prior's, else
    the shipped one), used when ``eval.json`` has to be computed. Exports ``export/model.glb`` first when missing.
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    if views < 1 or size < 16:
        raise ReportError(f"views={views} size={size}: expected views >= 1 and size >= 16")
    cfg = _load_config(run_dir)
    _ensure_exported(run_dir, cfg, log)
    meshes = particle_meshes(run_dir)
    last = list(cfg.stages)[-1] if cfg.stages else None
    guidance = cfg.stages[last].guidance if last else None
    unavailable: dict[str, str] = {}

    renders = render_particles(_load_meshes(meshes), views, size, elevation)
    per_particle = [foreground_saturation(r[..., :3], r[..., 3:]) for r in renders]
    seen = [s for s in per_particle if s is not None]
    saturation = sum(seen) / len(seen) if seen else None
    if saturation is None:
        unavailable["saturation"] = "no particle covers a pixel with alpha > 0.5"
    true_saturation, why = _true_saturation(cfg.prompt, views, size, elevation)
    if why:
        unavailable["true_saturation"] = why
    spread = diversity(renders)
    if spread is None:
        unavailable["diversity"] = "one particle: nothing to compare it with"

    result, why = _eval_result(run_dir, views, size, elevation, classifier, log)
    for key in CLASSIFIER_KEYS:
        if result.get(key) is None:
            unavailable[key] = why or result.get("unavailable", {}).get(key, "not in eval.json")

    return {
        "prompt": cfg.prompt, "recipe": cfg.recipe, "stages": list(cfg.stages), "stage": last,
        "guidance": guidance.name if guidance else None,
        "guidance_scale": float(guidance.guidance_scale) if guidance else None,
        **_training_figures(cfg, _read_summary(run_dir)),
        "particles": len(meshes), "meshes": [str(p.relative_to(run_dir)) for p in meshes],
        "saturation": _round(saturation), "saturation_per_particle": [_round(s) for s in per_particle],
        "true_saturation": _round(true_saturation),
        **{key: _round(result.get(key)) for key in CLASSIFIER_KEYS},
        "diversity": _round(spread),
        "eval_views": result.get("views"),
        "render": {"views": views, "size": size, "elevation": float(elevation)},
        "unavailable": unavailable, "seconds": round(time.perf_counter() - start, 2),
    }


def _round(x: Optional[float], digits: int = 4) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


# --------------------------------------------------------------------------------------------------------------
# Loss plots (PIL only)
# --------------------------------------------------------------------------------------------------------------

_PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))


def read_metric(csv_path: str | Path, key: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(steps [N], values [N]) of column ``key`` of a metrics.csv (empty and non-finite cells left out), or None
    when the file has no such column."""
    path = Path(csv_path)
    if not path.is_file():
        raise ReportError(f"{path}: not found (expected a stages/<stage>/metrics.csv)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if key not in (reader.fieldnames or []):
            return None
        pairs = [(_float(row.get("step")), _float(row.get(key))) for row in reader]
    pairs = [(s, v) for s, v in pairs if math.isfinite(s) and math.isfinite(v)]
    return np.array([s for s, _ in pairs], np.float64), np.array([v for _, v in pairs], np.float64)


def _float(text: Optional[str]) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average [N] -> [N]; the window shrinks at the ends (no padding bias)."""
    if window <= 1 or len(values) < 2:
        return values.copy()
    kernel = np.ones(window)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones_like(values), kernel, "same")


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5, 5 x 10^k steps) within [lo, hi]."""
    span = hi - lo
    if not span > 0:
        return [lo]
    raw = span / max(count, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _value_range(series: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """y range: the smoothed curves and the 2nd..98th percentile of the raw values (spikes go off the chart)."""
    lows = [min(float(s.min()), float(np.percentile(v, 2))) for _, v, s in series]
    highs = [max(float(s.max()), float(np.percentile(v, 98))) for _, v, s in series]
    lo, hi = min(lows), max(highs)
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 1.0)
    return lo - pad, hi + pad


def loss_plot(
    csv_paths: dict[str, Path], key: str, out_png: str | Path, title: Optional[str] = None,
    size: tuple[int, int] = (720, 360),
) -> list[str]:
    """Plot column ``key`` of each run's metrics.csv against step on one chart -> the labels plotted.

    Each run is one colour: the raw curve faint, a moving average (window ~1/25 of the steps) on top. Axes with
    round tick values, a legend with the runs' labels. A run whose CSV lacks the column is left out; when none has
    it nothing is written and the list is empty. Drawn with PIL only; written atomically as a PNG.
    """
    from PIL import Image, ImageDraw

    series, labels = [], []
    for label, path in csv_paths.items():
        data = read_metric(path, key)
        if data is None or len(data[0]) == 0:
            continue
        steps, values = data
        series.append((steps, values, moving_average(values, max(1, round(len(values) / 25)))))
        labels.append(label)
    if not series:
        return []
    width, height = size
    left, right, top, bottom = 70, 16, 30, 42
    pw, ph = width - left - right, height - top - bottom
    x_lo = min(float(s.min()) for s, _, _ in series)
    x_hi = max(max(float(s.max()) for s, _, _ in series), x_lo + 1.0)
    y_lo, y_hi = _value_range(series)

    def xy(steps: np.ndarray, values: np.ndarray) -> list[tuple[float, float]]:  # plot-area pixel coordinates
        x = (steps - x_lo) / (x_hi - x_lo) * (pw - 1)
        y = (y_hi - values) / (y_hi - y_lo) * (ph - 1)
        return list(zip(x.tolist(), y.tolist()))

    area = Image.new("RGB", (pw, ph), "white")  # curves drawn here: whatever leaves the area is clipped
    draw = ImageDraw.Draw(area)
    colours = [_PALETTE[k % len(_PALETTE)] for k in range(len(series))]
    for (steps, values, _), colour in zip(series, colours):  # every raw curve first, faint ...
        if len(steps) > 1:
            draw.line(xy(steps, values), fill=tuple(int(255 - 0.3 * (255 - c)) for c in colour), width=1)
    for (steps, values, smooth), colour in zip(series, colours):  # ... then the moving averages over them
        if len(steps) > 1:
            draw.line(xy(steps, smooth), fill=colour, width=2)
        else:
            (x, y), = xy(steps, values)
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(area, (left, top))
    _axes(ImageDraw.Draw(canvas), (left, top, pw, ph), (x_lo, x_hi), (y_lo, y_hi), title or key)
    _legend(ImageDraw.Draw(canvas), labels, left + pw - 8, top + 8)
    save_png(out_png, np.asarray(canvas))
    return labels


def _axes(draw, box: tuple[int, int, int, int], xr: tuple[float, float], yr: tuple[float, float], title: str) -> None:
    """Frame, ticks with labels and grid lines, the title above and "step" below."""
    left, top, pw, ph = box
    font, grid, ink = _font(12), (225, 225, 225), (60, 60, 60)
    for v in nice_ticks(*xr, count=6):
        x = left + (v - xr[0]) / (xr[1] - xr[0]) * (pw - 1)
        draw.line([(x, top + ph), (x, top + ph + 4)], fill=ink)
        draw.text((x, top + ph + 6), f"{v:.6g}", fill=ink, font=font, anchor="mt")
    for v in nice_ticks(*yr, count=5):
        y = top + (yr[1] - v) / (yr[1] - yr[0]) * (ph - 1)
        draw.line([(left, y), (left + pw - 1, y)], fill=grid)
        draw.line([(left - 4, y), (left, y)], fill=ink)
        draw.text((left - 6, y), f"{v:.4g}", fill=ink, font=font, anchor="rm")
    draw.rectangle([left - 1, top - 1, left + pw, top + ph], outline=ink)
    draw.text((left + pw / 2, top + ph + 24), "step", fill=ink, font=font, anchor="mt")
    draw.text((left + pw / 2, top / 2), title, fill=(0, 0, 0), font=_font(14), anchor="mm")


def _legend(draw, labels: Sequence[str], right: int, top: int) -> None:
    """A boxed legend whose top-right corner is at (right, top): a colour swatch and the label per run."""
    font = _font(12)
    texts = [label if len(label) <= 32 else label[:31] + "…" for label in labels]
    width = max(draw.textlength(t, font=font) for t in texts) + 34
    height = 18 * len(texts) + 8
    draw.rectangle([right - width, top, right, top + height], fill="white", outline=(160, 160, 160))
    for k, text in enumerate(texts):
        y = top + 4 + 18 * k + 9
        draw.line([(right - width + 6, y), (right - width + 24, y)], fill=_PALETTE[k % len(_PALETTE)], width=3)
        draw.text((right - width + 30, y), text, fill=(0, 0, 0), font=font, anchor="lm")


# --------------------------------------------------------------------------------------------------------------
# The report folder
# --------------------------------------------------------------------------------------------------------------


def _copy(src: Path, out_dir: Path, name: str) -> str:
    """Copy ``src`` to ``out_dir/media/name`` atomically -> the path relative to ``out_dir`` (POSIX)."""
    target = out_dir / MEDIA_DIR / name
    with atomic_path(target, keep_suffix=True) as tmp:
        shutil.copyfile(src, tmp)
    return f"{MEDIA_DIR}/{name}"


def _slugs(labels: Sequence[str]) -> dict[str, str]:
    """A distinct file-name-safe stem per run label."""
    from dream3d.run import slugify

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
    for k, folder in enumerate(particle_dirs(run_dir)):
        if not (folder / MESH_FILE).is_file():
            continue
        video = folder / VIDEO_FILE
        videos.append({"particle": k, "file": _copy(video, out_dir, f"{slug}-p{k}-turntable.mp4")
                       if video.is_file() else None, "source": str(video.relative_to(run_dir))})
    grids = {}
    for stage in stages:
        grid = last_validation_grid(run_dir / "stages" / stage)
        if grid is not None:
            grids[stage] = {"file": _copy(grid, out_dir, f"{slug}-{stage}-{grid.name}"),
                            "source": str(grid.relative_to(run_dir))}
    return {"videos": videos, "val_grids": grids}


def _loss_plots(runs: dict[str, Path], stages: dict[str, list[str]], out_dir: Path) -> list[dict]:
    """One plot per stage name and PLOT_KEYS column that any run has -> [{stage, key, file, runs}]."""
    plots = []
    for stage in dict.fromkeys(s for names in stages.values() for s in names):
        csvs = {label: run / "stages" / stage / "metrics.csv" for label, run in runs.items()
                if (run / "stages" / stage / "metrics.csv").is_file()}
        for key in PLOT_KEYS:
            name = f"loss-{stage}-{key}.png"
            drawn = loss_plot(csvs, key, out_dir / MEDIA_DIR / name, title=f"{key} (stage {stage})")
            if drawn:
                plots.append({"stage": stage, "key": key, "file": f"{MEDIA_DIR}/{name}", "runs": drawn})
    return plots


def write_report(
    out_dir: str | Path, runs: dict[str, str | Path], title: str, log: Callable[[str], None] = print,
    views: int = 16, size: int = 64, classifier: Optional[str | Path] = None,
) -> dict:
    """Compare ``runs`` ({label: run folder}) in ``out_dir``: ``report.html``, ``summary.json`` and ``media/``
    (see the module docstring). Every file is written atomically, the page last. Returns the summary dict."""
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
    write_json(out_dir / SUMMARY_FILE, summary)
    write_text(out_dir / REPORT_FILE, render_html(summary))
    log(f"report: {out_dir / REPORT_FILE} ({len(runs)} runs, {len(plots)} loss plots)")
    return summary


# --------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------

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
