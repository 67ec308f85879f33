r"""Quality of a generated mesh against the shape world: what ``dream3d eval <run folder>`` measures.

The mesh and the prompt's true catalogue object are both normalised like the catalogue (centred on their
bounding box, largest side :data:`~dream3d.shapeworld.catalogue.OBJECT_EXTENT`) and rendered from the
same turntable orbit (azimuth 0 = the canonical front, +Z), lit like the evaluation classifier's training
images (:mod:`dream3d.shapeworld.data`): white background, Lambert + ambient light from the camera.
An object without a front (every primitive, and composites such as the table or the tree) is first turned about
the vertical to its best volume IoU with the true object (:func:`align_yaw`, reported as ``yaw``): the prompt
says nothing about which way it faces. Objects with a front are compared as they stand.
Framing, also as in training: a bounding sphere spans :data:`FILL` of the field of view :data:`FOVY` (the
middles of the training ranges): the mesh's own sphere for the views the classifier sees, the larger of the
two spheres for the silhouette comparison (same cameras for both meshes, both wholly in view). Figures:

* ``r_precision``: R-precision as Dream Fields and DreamFusion define it (there with CLIP), R = 1: the fraction
  of views whose top-1 retrieved caption among *all* catalogue captions is the prompt's. The retrieval score
  is the classifier's entry probability (one class per catalogue caption), so a render must beat every
  distractor caption, not just score high on its own;
* ``object_accuracy`` / ``colour_accuracy``: the classifier's object kind / colour is the prompt's;
* ``iou``: mean silhouette IoU (alpha > 0.5) against the true object; ``colour_error``: mean absolute albedo
  difference (RGB in [0, 1], averaged over channels) on the pixels both silhouettes cover;
* ``volume_iou``: 3D shape, which no classifier judges: the IoU of the two normalised meshes' solid occupancy on
  a :data:`VOLUME_RES`\ ^3 grid over [-0.5, 0.5]^3 (:func:`occupancy`: signed ray crossings along +-x, +-y, +-z,
  inside where most of the six rays see a nonzero winding number, so the overlapping closed parts of the
  composites count as their union and a small hole or a seam in a generated mesh does not empty it);
  ``chamfer``: the symmetric mean distance between :data:`SURFACE_SAMPLES` area-weighted surface samples of each
  mesh and the other's samples (:func:`chamfer_distance`), as a fraction of the normalised largest side (0 =
  the same surface, ~0.01 the sampling noise; a cone for a pyramid ~0.04, a sphere for a cube ~0.12). Neither looks
  at colour;
* for objects with a front (``has_front``), from the classifier's *view head* (front / side / back /
  overhead, trained on true renders labelled by camera azimuth):

  - ``front_accuracy``: fraction of views whose classifier view equals the camera's label;
  - ``janus``: the multi-face score. Among views whose camera is at the side or the back, the fraction the
    classifier calls "front", i.e. where the render shows front features (a face, a nose, a door) where
    there should be none. The true object scores 0. Seen from the side a face on the back hides, so a
    perfect second face scores about the share of back views among these (3 of 9 with 16 views);
  - ``front_azimuth``: where the classifier places the front, the circular mean of the view azimuths
    weighted by P(front) - P(back) (back evidence points the opposite way); ``front_ok``: within 45 degrees
    of the canonical front. A mesh turned by 180 degrees gets ~180 here, a low ``front_accuracy`` and a
    high ``janus``.

  The view head judges the render alone, so this works for any geometry; comparing with the true object's
  front texture instead would need the mesh to be aligned with the truth first, which is what is being
  tested. Views within :data:`VIEW_MARGIN` degrees of a label boundary (|azimuth| = 45 or 135, where front
  and side, or side and back, legitimately look alike) are left out of both figures.

A prompt outside the catalogue has no true object and no class: only the classifier's top caption per view
and the silhouette coverage are reported, and the missing figures are listed in ``unavailable`` with the
reason (as are the front figures of objects without a front, and the classifier figures without one).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dream3d.cameras import Cameras, turntable
from dream3d.errors import Dream3DError
from dream3d.io import save_png, write_json
from dream3d.render.mesh_geometry import occupancy
from dream3d.representations.mesh import TexturedMesh
from dream3d.shapeworld.catalogue import match_prompt  # noqa: F401  (where the commands and scripts find it)

FOVY = 55.0  # degrees: the middle of the classifier's training range (40..70)
FILL = 0.875  # bounding sphere / field of view: the middle of the training range (0.75..1)
AMBIENT = 0.35  # the middle of the training range (0.2..0.5)
VIEW_MARGIN = 10.0  # degrees around the front/side and side/back boundaries left out of the view figures
FRONT_THRESHOLD, OVERHEAD_THRESHOLD = 45.0, 60.0  # the camera view labels (CameraConfig defaults)
FIGURES = ("r_precision", "object_accuracy", "colour_accuracy", "iou", "colour_error", "front_accuracy", "janus",
           "front_azimuth", "volume_iou", "chamfer")
VOLUME_RES = 64  # occupancy grid cells per side for volume_iou (over [-0.5, 0.5]^3, the normalised objects' box)
SURFACE_SAMPLES = 8192  # surface points per mesh for chamfer
YAW_STEP = 5.0  # degrees between the turns about the vertical that align_yaw tries
YAW_RES = 32  # occupancy grid of align_yaw's search (the reported volume_iou uses VOLUME_RES)
SHAPE_FIGURES = ("volume_iou", "chamfer")
CLASSIFIER_FIGURES = ("r_precision", "object_accuracy", "colour_accuracy", "front_accuracy", "janus",
                      "front_azimuth")
SHIPPED_CLASSIFIER = "assets/priors/shapeworld/classifier"


class EvalError(Dream3DError, ValueError):
    """Bad run folder or evaluation input: the message is one line naming the file or key."""


# --------------------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------------------


def normalise(mesh: TexturedMesh) -> TexturedMesh:
    """The mesh centred on its bounding box, scaled so its largest side is the catalogue's OBJECT_EXTENT."""
    from dream3d.shapeworld.catalogue import OBJECT_EXTENT

    if mesh.num_faces == 0:
        raise EvalError("mesh has no faces: nothing to evaluate")
    lo, hi = mesh.verts.amin(0), mesh.verts.amax(0)
    side = float((hi - lo).max())
    if not math.isfinite(side) or side <= 0:
        raise EvalError(f"mesh has a degenerate bounding box (largest side {side})")
    return dataclasses.replace(mesh, verts=(mesh.verts - 0.5 * (lo + hi)) * (OBJECT_EXTENT / side))


def turn(mesh: TexturedMesh, degrees: float) -> TexturedMesh:
    """The mesh turned by ``degrees`` about the vertical (+Y) axis through the origin (+Z towards +X)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    rot = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=mesh.verts.dtype)
    return dataclasses.replace(mesh, verts=mesh.verts @ rot.T)


def align_yaw(mesh: TexturedMesh, true_mesh: TexturedMesh, step: float = YAW_STEP, res: int = YAW_RES) -> float:
    """The turn about the vertical (degrees in [0, 360), a multiple of ``step``) that gives the normalised
    ``mesh`` the largest volume IoU with the normalised ``true_mesh`` on a ``res``^3 grid; the first such turn on
    ties, so an aligned mesh, or one whose turns the grid sees as exactly alike (a cube by 90), keeps 0.

    For objects without a front, which way the object faces is not in the prompt: the prior saw them from every
    azimuth under every view word, so a fit's cube is as right turned by 30 degrees as face-on, while the
    catalogue's copy is face-on. Without this, a well-made cube turned by about 20 degrees scored a silhouette IoU
    of 0.55 (its diagonal is wider than a face, and normalisation shrinks it to the catalogue's extent)."""
    if not step > 0:
        raise EvalError(f"yaw step={step}: expected a positive number of degrees")
    true_mesh = normalise(true_mesh)
    true_occ = occupancy(true_mesh.verts, true_mesh.faces, res)
    best, best_iou = 0.0, -1.0
    for k in range(math.ceil(360.0 / step - 1e-9)):
        turned = normalise(turn(mesh, k * step))
        score = _volume_iou(occupancy(turned.verts, turned.faces, res), true_occ)
        if score > best_iou + 1e-9:
            best, best_iou = k * step, score
    return best


def eval_cameras(views: int, elevation: float, size: int, radius: float) -> Cameras:
    """Turntable from the front (azimuth 0) with a bounding sphere of ``radius`` spanning FILL of FOVY."""
    distance = radius / (FILL * math.sin(math.radians(FOVY) / 2))
    return turntable(views, elevation, distance, FOVY, size)


def render_eval(mesh: TexturedMesh, cams: Cameras, ambient: float = AMBIENT) -> dict[str, Tensor]:
    """Shaded renders on white like the classifier's training data -> rgb [B,H,W,3], alpha [B,H,W,1], albedo."""
    from dream3d.render.mesh import render_textured

    with torch.no_grad():
        out = render_textured(mesh, cams, ambient=1.0, background=0.0)  # antialiased, premultiplied albedo
    lambert = (out["normal"] * F.normalize(cams.position, dim=-1).view(-1, 1, 1, 3)).sum(-1, keepdim=True)
    rgb = out["rgb"] * (ambient + (1.0 - ambient) * lambert.clamp_min(0.0)) + (1.0 - out["opacity"])
    return {"rgb": rgb.clamp(0.0, 1.0), "alpha": out["opacity"], "albedo": out["albedo"]}


def _counted(azimuth: float, label: str) -> bool:
    """Whether a view counts for the view figures: not overhead and not near a label boundary."""
    a = abs((azimuth + 180.0) % 360.0 - 180.0)
    near = min(abs(a - FRONT_THRESHOLD), abs(a - (180.0 - FRONT_THRESHOLD)))
    return label != "overhead" and near >= VIEW_MARGIN


def _r(x: Optional[float], digits: int = 4) -> Optional[float]:
    return None if x is None else round(float(x), digits)


def surface_samples(verts: Tensor, faces: Tensor, n: int = SURFACE_SAMPLES, seed: int = 0) -> Tensor:
    """``n`` points [n,3] uniformly on a mesh's surface (area-weighted triangles, uniform barycentrics)."""
    tri = verts.detach().float()[faces]
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    if not float(area.sum()) > 0:
        return tri.reshape(-1, 3)[:1].expand(n, 3).clone()
    gen = torch.Generator().manual_seed(seed)
    pick = torch.multinomial(area.double(), n, replacement=True, generator=gen)
    u, w = torch.rand(n, generator=gen).sqrt(), torch.rand(n, generator=gen)
    t = tri[pick]
    return (1 - u)[:, None] * t[:, 0] + (u * (1 - w))[:, None] * t[:, 1] + (u * w)[:, None] * t[:, 2]


def chamfer_distance(a: Tensor, b: Tensor) -> float:
    """Symmetric mean nearest-neighbour distance between point sets a [N,3] and b [M,3]: (mean over a of the
    distance to b + mean over b of the distance to a) / 2."""
    from scipy.spatial import cKDTree

    a_np, b_np = a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
    d_ab, _ = cKDTree(b_np).query(a_np)
    d_ba, _ = cKDTree(a_np).query(b_np)
    return 0.5 * (float(d_ab.mean()) + float(d_ba.mean()))


def _volume_iou(occ: Tensor, true_occ: Tensor) -> float:
    union = int((occ | true_occ).sum())
    return int((occ & true_occ).sum()) / union if union else 0.0


def shape_figures(mesh: TexturedMesh, true_mesh: TexturedMesh, res: int = VOLUME_RES) -> dict[str, float]:
    """``volume_iou`` and ``chamfer`` (see the module docstring) of ``mesh`` against ``true_mesh``, both first
    put through :func:`normalise` (the silhouette comparison's normalisation; idempotent)."""
    from dream3d.shapeworld.catalogue import OBJECT_EXTENT

    mesh, true_mesh = normalise(mesh), normalise(true_mesh)
    volume_iou = _volume_iou(occupancy(mesh.verts, mesh.faces, res), occupancy(true_mesh.verts, true_mesh.faces, res))
    chamfer = chamfer_distance(surface_samples(mesh.verts, mesh.faces), surface_samples(true_mesh.verts, true_mesh.faces))
    return {"volume_iou": volume_iou, "chamfer": chamfer / OBJECT_EXTENT}


# --------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------


def _silhouette(alpha: Tensor) -> Tensor:
    """Rendered alpha [V,H,W,1] (or [V,H,W]) -> the silhouette [V,H,W] that ``iou`` compares (alpha > 0.5)."""
    return (alpha.squeeze(-1) if alpha.dim() == 4 else alpha) > 0.5


def _compare(out: dict, truth: dict) -> tuple[list[float], list[Optional[float]], Optional[float]]:
    """Per-view IoU and colour error, and the colour error over all pixels both cover."""
    m, t = _silhouette(out["alpha"]), _silhouette(truth["alpha"])
    inter, union = (m & t).flatten(1).sum(1), (m | t).flatten(1).sum(1)
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union, dtype=torch.float32))
    diff = (out["albedo"] - truth["albedo"]).abs().mean(-1) * (m & t)
    per_view = [float(d) / int(n) if int(n) else None for d, n in zip(diff.flatten(1).sum(1), inter)]
    total = float(diff.sum()) / int(inter.sum()) if int(inter.sum()) else None
    return iou.tolist(), per_view, total


def silhouette_difference(alpha: Tensor, true_alpha: Tensor, per_row: int = 8) -> Tensor:
    """Where a mesh's silhouettes differ from the truth's: alphas [V,H,W] (or [V,H,W,1]) -> uint8 [rows*H, per_row*W, 3],
    the views left to right, then down: green where both cover, red where only the mesh does (too much), blue
    where only the truth does (missing), black where neither. What the silhouette IoU counts, as a picture."""
    m, t = _silhouette(alpha), _silhouette(true_alpha)
    img = torch.stack([m & ~t, m & t, t & ~m], -1).to(torch.uint8) * 255  # [V,H,W,3]
    v, h, w, _ = img.shape
    per_row = max(1, min(per_row, v))
    rows = -(-v // per_row)
    img = torch.cat([img, img.new_zeros(rows * per_row - v, h, w, 3)])  # blank tiles fill the last row
    return img.view(rows, per_row, h, w, 3).permute(0, 2, 1, 3, 4).reshape(rows * h, per_row * w, 3)


def _view_figures(rows: list[dict], probs: Tensor, views: list[str]) -> dict:
    """front_accuracy, janus, front_azimuth, front_ok from the classifier's view probabilities [B,4]."""
    counted = [r for r in rows if r["counted"]]
    hits = [r["view"] == r["camera_view"] for r in counted]
    away = [r["view"] == "front" for r in counted if r["camera_view"] in ("side", "back")]
    signed = probs[:, views.index("front")] - probs[:, views.index("back")]
    az = torch.deg2rad(torch.tensor([r["azimuth"] for r in rows]))
    keep = torch.tensor([r["camera_view"] != "overhead" for r in rows])
    x, y = float((signed * az.cos() * keep).sum()), float((signed * az.sin() * keep).sum())
    front_az = math.degrees(math.atan2(y, x)) if math.hypot(x, y) > 1e-3 * max(int(keep.sum()), 1) else None
    return {
        "front_accuracy": sum(hits) / len(hits) if hits else None,
        "janus": sum(away) / len(away) if away else None,
        "front_azimuth": front_az,
        "front_ok": front_az is not None and abs(front_az) <= FRONT_THRESHOLD,
    }


def evaluate_mesh(
    mesh: TexturedMesh, prompt: str, classifier=None, views: int = 16, elevation: float = 15.0, size: int = 64,
    volume_res: int = VOLUME_RES, align: bool = True, images: Optional[dict] = None,
) -> dict:
    """Score ``mesh`` for ``prompt`` (see the module docstring). ``classifier``: a loaded
    :class:`~dream3d.shapeworld.classifier.ShapeClassifier`, or None for the classifier-free figures.

    ``volume_res``: the occupancy grid of ``volume_iou`` (cells per side). ``align``: for a catalogue object
    without a front, first turn the mesh about the vertical by :func:`align_yaw` (reported as ``yaw``); objects
    with a front are never turned: facing the front is part of what is measured. ``images``: a dict that, for a
    catalogue object, receives ``silhouettes``, the :func:`silhouette_difference` of the views the IoU compares.

    Returns a JSON-ready dict: prompt, caption, in_catalogue, object, has_front, settings, the figures of
    :data:`FIGURES` (None when unavailable), front_ok, coverage, top_caption, ``unavailable`` {figure: reason}
    and ``per_view`` rows (azimuth, camera_view, classifier caption / object / colour / view, p_front, iou, ...).
    """
    if views < 1 or size < 16:
        raise EvalError(f"views={views} size={size}: expected views >= 1 and size >= 16")
    caption, obj = match_prompt(prompt)
    mesh = normalise(mesh)
    true_mesh = None if obj is None else TexturedMesh(obj.verts, obj.faces, vertex_colors=obj.colors)
    yaw = None
    if align and obj is not None and not obj.has_front:
        yaw = align_yaw(mesh, true_mesh)
        mesh = normalise(turn(mesh, yaw))
    radius = float(mesh.verts.norm(dim=-1).max())
    cams = eval_cameras(views, elevation, size, radius)  # the classifier's framing of the mesh
    labels = cams.view_labels(FRONT_THRESHOLD, OVERHEAD_THRESHOLD)
    out = render_eval(mesh, cams)
    coverage = out["alpha"][..., 0].flatten(1).mean(1)
    rows = [{"azimuth": _r(a, 2), "camera_view": lab, "coverage": _r(c), "counted": _counted(a, lab)}
            for a, lab, c in zip(cams.azimuth.tolist(), labels, coverage.tolist())]
    figures: dict = dict.fromkeys(FIGURES)
    front_ok = None
    unavailable: dict[str, str] = {}

    if true_mesh is None:
        for k in ("iou", "colour_error", *SHAPE_FIGURES):
            unavailable[k] = f"'{caption}' is not a catalogue caption: no true object to compare with"
    else:
        both = max(radius, float(true_mesh.verts.norm(dim=-1).max()))
        cmp_cams = cams if both == radius else eval_cameras(views, elevation, size, both)
        cmp = out if both == radius else render_eval(mesh, cmp_cams)
        truth = render_eval(true_mesh, cmp_cams)
        iou, errors, total = _compare(cmp, truth)
        if images is not None:
            images["silhouettes"] = silhouette_difference(cmp["alpha"], truth["alpha"])
        figures["iou"], figures["colour_error"] = sum(iou) / len(iou), total
        for row, i, e in zip(rows, iou, errors):
            row.update(iou=_r(i), colour_error=_r(e))
        figures.update(shape_figures(mesh, true_mesh, volume_res))

    top_caption = None
    if classifier is None:
        for k in CLASSIFIER_FIGURES:
            unavailable[k] = "no classifier given"
    else:
        result = classifier.classify(out["rgb"])
        classes = classifier.classes
        for k, row in enumerate(rows):
            row.update(caption=result["captions"][k], object=result["objects"][k], colour=result["colours"][k],
                       view=result["views"][k], p_front=_r(result["view_probs"][k, classes["views"].index("front")]))
        top_caption = Counter(result["captions"]).most_common(1)[0][0]
        entry = next((e for e in classes["entries"] if e["caption"] == caption), None)
        if entry is None:
            why = (f"'{caption}' is not a catalogue caption" if obj is None
                   else f"the classifier does not know '{caption}' (trained on another catalogue)")
            for k in CLASSIFIER_FIGURES:
                unavailable[k] = f"{why}: no class to compare with"
        else:
            n = len(rows)
            figures["r_precision"] = sum(c == caption for c in result["captions"]) / n
            figures["object_accuracy"] = sum(o == entry["kind"] for o in result["objects"]) / n
            figures["colour_accuracy"] = sum(c == entry["colour"] for c in result["colours"]) / n
            if entry["has_front"]:
                front = _view_figures(rows, result["view_probs"], list(classes["views"]))
                figures.update({k: front[k] for k in ("front_accuracy", "janus", "front_azimuth")})
                front_ok = front["front_ok"]
                for k in ("front_accuracy", "janus"):
                    if front[k] is None:
                        unavailable[k] = "no side, back or front view off the label boundaries (try elevation < 60)"
                if front["front_azimuth"] is None:
                    unavailable["front_azimuth"] = "the classifier sees no front or back in any view"
            else:
                for k in ("front_accuracy", "janus", "front_azimuth"):
                    unavailable[k] = f"'{caption}' has no front (it looks alike from all sides)"

    return {
        "prompt": prompt, "caption": caption, "in_catalogue": obj is not None,
        "object": None if obj is None else obj.name, "has_front": None if obj is None else obj.has_front,
        "views": views, "elevation": float(elevation), "size": size, "fovy": FOVY,
        "distance": _r(float(cams.distance[0])),
        "volume_res": volume_res, "yaw": yaw,
        **{k: (_r(v, 2) if k == "front_azimuth" else _r(v)) for k, v in figures.items()},
        "front_ok": front_ok,
        "coverage": _r(float(coverage.mean())), "top_caption": top_caption,
        "unavailable": unavailable, "per_view": rows,
    }


# --------------------------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------------------------


def find_classifier(prior: str, classifier_dir: Optional[str | Path] = None) -> Path:
    """The classifier folder: ``classifier_dir`` if given, else ``<prior>/classifier``, else the shipped one."""
    from dream3d.config import PROJECT_ROOT

    if classifier_dir:
        folder = Path(classifier_dir).expanduser()
        if not (folder / "config.json").is_file():
            raise EvalError(f"classifier={classifier_dir}: no classifier there (expected config.json and "
                            "model.safetensors)")
        return folder
    candidates = dict.fromkeys(p.resolve() for p in (Path(prior).expanduser() / "classifier",
                                                     PROJECT_ROOT / prior / "classifier",
                                                     PROJECT_ROOT / SHIPPED_CLASSIFIER))
    for folder in candidates:
        if (folder / "config.json").is_file():
            return folder
    raise EvalError(f"no evaluation classifier found (looked in {', '.join(map(str, candidates))}); "
                    "pass classifier=<folder> or train one with scripts/train_shapeworld_prior.py")


def evaluate_run(
    run_dir: str | Path, views: int = 16, classifier_dir: Optional[str | Path] = None, elevation: float = 15.0,
    size: int = 64,
) -> dict:
    """Evaluate a run's exported mesh (``export/model.glb``, exported first when missing) for its prompt and
    write ``<run>/eval.json`` atomically, and for a catalogue object ``<run>/eval_silhouettes.png``
    (:func:`silhouette_difference`). Returns the result (:func:`evaluate_mesh` plus run, mesh, classifier,
    seconds)."""
    from dream3d.export.mesh import load_mesh
    from dream3d.rundir import RunFolder, check_writable
    from dream3d.shapeworld.classifier import load_classifier

    start = time.perf_counter()
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    cfg = run.read_config()
    check_writable(run_dir, "run folder")  # eval.json is written at the end: find a read-only folder first
    if not cfg.prompt.strip():
        raise EvalError(f"{run.config_path}: prompt is empty: nothing to evaluate against")
    folder = find_classifier(cfg.prior, classifier_dir)
    try:
        classifier = load_classifier(folder)
    except (FileNotFoundError, KeyError, RuntimeError) as exc:
        raise EvalError(f"classifier {folder}: {str(exc).splitlines()[0]}") from None
    from dream3d.export.run import ExportError, ensure_exported

    try:
        glb = ensure_exported(run_dir)
    except ExportError as exc:
        raise EvalError(f"{run.mesh_path}: not found and cannot be exported ({exc})") from None
    try:
        mesh = load_mesh(glb)
    except ValueError as exc:
        raise EvalError(f"{glb}: {exc}") from None
    images: dict = {}
    result = evaluate_mesh(mesh, cfg.prompt, classifier, views, elevation, size, images=images)
    result = {"run": str(run_dir), "mesh": str(glb.relative_to(run_dir)), "classifier": str(folder), **result,
              "seconds": round(time.perf_counter() - start, 2)}
    if "silhouettes" in images:
        save_png(run.eval_silhouettes_path, images["silhouettes"].numpy())
    elif run.eval_silhouettes_path.exists():  # an earlier prompt's picture would mislead
        run.eval_silhouettes_path.unlink()
    write_json(run.eval_path, result)
    return result


def format_table(result: dict) -> str:
    """A readable summary of :func:`evaluate_mesh` / :func:`evaluate_run`'s result: figures, then views."""
    what = (f"catalogue object {result['object']} ({'has a front' if result['has_front'] else 'no front'})"
            if result["in_catalogue"] else "not in the catalogue")
    lines = [f"eval of '{result['caption']}': {what}; {result['views']} views at elevation "
             f"{result['elevation']:g}, {result['size']} px"]
    notes = {"r_precision": "top-1 caption among all catalogue captions is the prompt's",
             "iou": "silhouette IoU against the true object", "colour_error": "mean |albedo difference| where both cover",
             "front_accuracy": "classifier view = camera view", "janus": "side/back views the classifier calls front",
             "front_azimuth": "where the classifier sees the front (0 = right)",
             "volume_iou": "3D occupancy IoU against the true object",
             "chamfer": "mean surface distance to the true object / largest side"}
    for key in FIGURES:
        value = result.get(key)
        if value is None:
            lines.append(f"  {key:<16} n/a     {result['unavailable'].get(key, '')}")
        else:
            lines.append(f"  {key:<16} {value:<7.3f} {notes.get(key, '')}".rstrip())
    lines.append(f"  {'coverage':<16} {result['coverage']:<7.3f} fraction of the frame the mesh covers")
    if result.get("yaw") is not None:
        lines.append(f"  {'yaw':<16} {result['yaw']:<7g} degrees the mesh was turned about the vertical to meet "
                     "the true object (no front)")
    if result.get("top_caption"):
        lines.append(f"  {'top caption':<16} {result['top_caption']}")
    lines.append(f"  {'azimuth':>8}  {'camera':<8} {'classifier caption':<22} {'view':<8} {'iou':>6} {'col.err':>7}")
    marked = result.get("front_accuracy") is not None
    for r in result["per_view"]:
        num = {k: "-" if r.get(k) is None else f"{r[k]:.3f}" for k in ("iou", "colour_error")}
        camera = r["camera_view"] + ("~" if marked and not r["counted"] else "")
        lines.append(f"  {r['azimuth']:>8.1f}  {camera:<8} {r.get('caption', '-'):<22} "
                     f"{r.get('view', '-'):<8} {num['iou']:>6} {num['colour_error']:>7}")
    if marked and not all(r["counted"] for r in result["per_view"]):
        lines.append(f"  (~: within {VIEW_MARGIN:g} degrees of a view-label boundary, left out of the view figures)")
    return "\n".join(lines)
