"""The figures of one run in a comparison (:func:`run_figures`), label-free (no reference images needed beyond the
shape world), and their definitions (:data:`ROWS`: the report's table and ``summary.json``'s ``definitions``):

* from ``config.yaml`` / ``summary.json``: prompt, recipe, the last stage's guidance and guidance scale, steps,
  wall time, iterations per second (all stages' steps over their training time), peak RSS;
* ``saturation``: :func:`foreground_saturation` of turntable renders of each particle mesh, mean over particles;
  ``true_saturation``: the same measure on the prompt's true shape-world object (None outside the catalogue).
  SDS at high guidance scales is known for over-saturated colours; VSD should land nearer the truth;
* the classifier figures of ``eval.json`` (:func:`dream3d.compare.inputs.eval_result`: run again by
  :func:`dream3d.eval.evaluate_run` when the file is missing or older than ``export/model.glb``): ``r_precision``,
  ``object_accuracy``, ``colour_accuracy``, ``iou``, ``colour_error``. They score particle 0
  (``export/model.glb``), as ``dream3d eval`` does;
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

import itertools
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from dream3d.compare.errors import ReportError
from dream3d.compare.inputs import ensure_exported, eval_result, load_meshes, read_config, read_summary
from dream3d.rundir import RunFolder

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
    cfg = read_config(run_dir)
    ensure_exported(run_dir, log)
    meshes = RunFolder(run_dir).particle_meshes()
    last = list(cfg.stages)[-1] if cfg.stages else None
    guidance = cfg.stages[last].guidance if last else None
    unavailable: dict[str, str] = {}

    renders = render_particles(load_meshes(meshes), views, size, elevation)
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

    result, why = eval_result(run_dir, views, size, elevation, classifier, log)
    for key in CLASSIFIER_KEYS:
        if result.get(key) is None:
            unavailable[key] = why or result.get("unavailable", {}).get(key, "not in eval.json")

    return {
        "prompt": cfg.prompt, "recipe": cfg.recipe, "stages": list(cfg.stages), "stage": last,
        "guidance": guidance.name if guidance else None,
        "guidance_scale": float(guidance.guidance_scale) if guidance else None,
        **_training_figures(cfg, read_summary(run_dir)),
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
