"""Exports of a run folder: what ``dream3d export`` and ``dream3d render`` do, and what ``fit`` ends with.

* :func:`load_stage` rebuilds the last trained stage's representation (NeRF + background + renderer) from
  ``config.yaml`` and ``ckpts/<stage>/last.ckpt``, without the prior;
* :func:`export_run` extracts, unwraps and bakes the mesh and writes ``export/model.glb`` (and ``.obj`` with
  its ``.mtl`` and ``.png``, ``.ply``);
* :func:`render_run` renders the exported mesh on a turntable (``export/turntable.mp4`` / ``.gif``; other modes
  get a suffix: ``turntable-normal.mp4``), or the NeRF itself with ``mode="volume"``.

Every file is written atomically, and the figures land in ``summary.json`` under ``"export"``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from dream3d.io import write_json

EXPORT_DIR = "export"
RENDER_MODES = ("rgb", "normal", "depth", "all", "volume")


class ExportError(ValueError):
    """Bad run folder or export input: the message is one line naming the file or key."""


@dataclass
class LoadedStage:
    name: str
    cfg: object  # the stage's StageConfig (omegaconf)
    nerf: nn.Module
    background: nn.Module
    renderer: nn.Module


def _last_stage_with_checkpoint(run_dir: Path, stages: Sequence[str]) -> str:
    for name in reversed(list(stages)):
        if (run_dir / "ckpts" / name / "last.ckpt").is_file():
            return name
    raise ExportError(f"{run_dir}: no checkpoint found (expected ckpts/<stage>/last.ckpt from dream3d fit)")


def load_stage(run_dir: str | Path, stage: Optional[str] = None) -> LoadedStage:
    """The representation of ``stage`` (default: the last stage that has a checkpoint), on the CPU, eval mode."""
    from dream3d.config import ConfigError, load_run_config
    from dream3d.render.background import Background
    from dream3d.render.volume import VolumeRenderer
    from dream3d.representations.nerf import NeRF

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: not a folder (expected a dream3d run folder)")
    try:
        cfg = load_run_config(run_dir)
    except ConfigError as exc:
        raise ExportError(str(exc).replace("resume: ", "")) from None
    if stage is not None and stage not in cfg.stages:
        raise ExportError(f"stage={stage}: no such stage in {run_dir / 'config.yaml'} ({', '.join(cfg.stages)})")
    name = stage or _last_stage_with_checkpoint(run_dir, cfg.stages)
    ckpt = run_dir / "ckpts" / name / "last.ckpt"
    if not ckpt.is_file():
        raise ExportError(f"{ckpt}: not found (stage '{name}' has not been trained)")
    st = cfg.stages[name]
    if not st.system.startswith("nerf"):
        raise ExportError(f"stage '{name}': exporting system '{st.system}' is not supported yet")
    nerf = NeRF(st.representation)
    r = st.renderer
    background = Background(r.background if r.background != "random" else "solid", tuple(r.background_color))
    renderer = VolumeRenderer(r, st.representation.radius)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for prefix, module in (("nerf.", nerf), ("background.", background), ("renderer.", renderer)):
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=prefix == "nerf.")
    return LoadedStage(name, st, nerf.eval(), background.eval(), renderer.eval())


def record_export(run_dir: Path, **values) -> None:
    """Merge ``values`` into summary.json's ``"export"`` entry (atomically)."""
    from dream3d.run import read_summary

    summary = read_summary(run_dir)
    summary.setdefault("export", {}).update(values)
    write_json(run_dir / "summary.json", summary)


def parse_formats(formats: str | Sequence[str], known: Sequence[str], key: str = "format") -> list[str]:
    """``"glb,obj"`` or a list -> checked list (one-line ExportError naming ``key`` for unknown ones)."""
    items = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = [f for f in items if f not in known]
    if unknown or not items:
        shown = ",".join(unknown) if unknown else repr(formats)
        raise ExportError(f"{key}={shown}: unknown; expected a comma list of {', '.join(known)}")
    return list(dict.fromkeys(items))


def export_run(
    run_dir: str | Path, formats: str | Sequence[str] = ("glb",), threshold: Optional[float] = None,
    resolution: int = 128, texture_size: int = 1024, max_faces: Optional[int] = None, stage: Optional[str] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Bake the run's final representation into a textured mesh and write it as ``export/model.<format>``."""
    from dream3d.export.mesh import FORMATS, bake_mesh, export_mesh

    run_dir = Path(run_dir)
    formats = parse_formats(formats, FORMATS)
    if resolution < 16 or texture_size < 16:
        raise ExportError(f"resolution={resolution} texture_size={texture_size}: expected at least 16 each")
    loaded = load_stage(run_dir, stage)
    nerf = loaded.nerf
    t0 = time.perf_counter()
    with torch.no_grad():
        try:
            mesh = bake_mesh(nerf.density, lambda x: nerf(x)["albedo"], nerf.radius, resolution, threshold,
                             texture_size, max_faces)
        except ValueError as exc:
            raise ExportError(f"{run_dir} (stage '{loaded.name}'): {exc}") from None
    paths = export_mesh(mesh, run_dir / EXPORT_DIR, "model", formats)
    seconds = time.perf_counter() - t0
    log(f"exported stage '{loaded.name}': {mesh.num_verts} vertices, {mesh.num_faces} faces, texture "
        f"{texture_size}px in {seconds:.1f} s -> {', '.join(str(p) for p in paths.values())}")
    record_export(run_dir, stage=loaded.name, vertices=mesh.num_verts, faces=mesh.num_faces, texture_size=texture_size,
            mesh_seconds=round(seconds, 2), files={k: str(Path(v).relative_to(run_dir)) for k, v in paths.items()})
    return paths


def render_run(
    run_dir: str | Path, views: int = 120, fps: float = 30, elevation: float = 15.0, size: int = 512,
    mode: str = "rgb", formats: str | Sequence[str] = ("mp4", "gif"), stage: Optional[str] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Turntable of the exported mesh (``export/model.glb``, exported first when missing), or of the NeRF
    (``mode="volume"``). Writes ``export/turntable[-<mode>].<format>``."""
    from dream3d.export.mesh import load_mesh
    from dream3d.export.video import (
        DEFAULT_FOVY,
        FORMATS,
        fit_distance,
        render_turntable,
        turntable_cameras,
        volume_frames,
        write_turntable,
    )

    run_dir = Path(run_dir)
    if mode not in RENDER_MODES:
        raise ExportError(f"mode={mode}: unknown; expected one of {', '.join(RENDER_MODES)}")
    formats = parse_formats(formats, FORMATS)
    if views < 1 or size < 16 or fps <= 0:
        raise ExportError(f"views={views} size={size} fps={fps}: expected views >= 1, size >= 16, fps > 0")
    stem = run_dir / EXPORT_DIR / ("turntable" if mode == "rgb" else f"turntable-{mode}")
    t0 = time.perf_counter()
    if mode == "volume":
        loaded = load_stage(run_dir, stage)
        cams = turntable_cameras(views, elevation, size, fit_distance(loaded.nerf.radius, DEFAULT_FOVY))

        def render_fn(c):
            rays_o, rays_d = c.rays()
            return loaded.renderer(loaded.nerf, loaded.background, rays_o, rays_d, c.light_position, "albedo")["rgb"]

        with torch.no_grad():
            frames = volume_frames(render_fn, cams, chunk=max(1, 16384 // (size * size)) if size < 128 else 1)
        paths = write_turntable(frames, stem, fps, formats)
    else:
        glb = run_dir / EXPORT_DIR / "model.glb"
        if not glb.is_file():
            export_run(run_dir, ("glb",), stage=stage, log=log)
        paths = render_turntable(load_mesh(glb), stem, views, fps, elevation, size, mode, formats)
    seconds = time.perf_counter() - t0
    log(f"rendered {views} views at {size}px ({mode}) in {seconds:.1f} s -> "
        f"{', '.join(str(p) for p in paths.values())}")
    record_export(run_dir, **{f"turntable_{mode}": {"views": views, "size": size, "fps": fps, "seconds": round(seconds, 2),
                                                "files": {k: str(Path(v).relative_to(run_dir)) for k, v in paths.items()}}})
    return paths
