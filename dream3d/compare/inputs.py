"""What the comparison report reads from a run folder, made with the project's own commands when missing.

* the stored config and ``summary.json`` through :class:`dream3d.rundir.RunFolder`;
* ``export/model.glb``, exported by :func:`dream3d.export.run.export_run` with the run's own mesh settings when
  it is missing (:func:`ensure_exported`), and the particle meshes loaded from the export folder;
* ``eval.json``, computed again by :func:`dream3d.eval.evaluate_run` when it is missing, unreadable or older than
  ``export/model.glb`` (:func:`eval_result`);
* the last validation grid of a stage.

Every problem is a one-line :class:`~dream3d.compare.errors.ReportError` naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Optional, Sequence

from dream3d.compare.errors import ReportError
from dream3d.rundir import RunFolder, RunFolderError


def read_config(run_dir: Path):
    """The run's stored RunConfig; ReportError when ``run_dir`` is not a run folder."""
    try:
        return RunFolder(run_dir).read_config()
    except RunFolderError as exc:
        raise ReportError(str(exc)) from None


def read_summary(run_dir: Path) -> dict:
    """The run's summary.json ({} when it is missing or unreadable)."""
    return RunFolder(run_dir).read_summary()


def ensure_exported(run_dir: Path, log: Callable[[str], None]) -> None:
    """``export/model.glb`` (:func:`dream3d.export.run.ensure_exported`), as a ReportError when it cannot be made."""
    from dream3d.export.run import ExportError
    from dream3d.export.run import ensure_exported as export_if_missing

    try:
        export_if_missing(run_dir, log=log)
    except ExportError as exc:
        raise ReportError(f"{RunFolder(run_dir).mesh_path}: not found and cannot be exported ({exc})") from None


def load_meshes(paths: Sequence[Path]) -> list:
    """The meshes at ``paths`` (GLB files); ReportError for one that cannot be read or has no faces."""
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


def eval_result(run_dir: Path, views: int, size: int, elevation: float, classifier, log) -> tuple[dict, str]:
    """``eval.json`` of the run, evaluated again when missing, unreadable or older than ``export/model.glb``
    -> (result, "") or ({}, why there is none)."""
    from dream3d.eval import EvalError, evaluate_run

    folder = RunFolder(run_dir)
    path, glb = folder.eval_path, folder.mesh_path
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


def last_validation_grid(run_dir: Path, stage: str) -> Optional[Path]:
    """``stages/<stage>/val/step<N>.png`` with the highest N, or None."""
    grids = [(int(m.group(1)), p) for p in RunFolder(run_dir).validation_dir(stage).glob("step*.png")
             if (m := re.fullmatch(r"step(\d+)\.png", p.name))]
    return max(grids)[1] if grids else None
