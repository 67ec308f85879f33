"""Exports of a run folder: what ``dream3d export`` and ``dream3d render`` do, and what ``fit`` ends with.

* :func:`load_stage` rebuilds the last trained stage's particles (its system's particle class) from the run
  folder's config and checkpoint (:class:`dream3d.rundir.RunFolder`), without the prior;
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

from dream3d.errors import Dream3DError
from dream3d.rundir import RunFolder, check_writable

RENDER_MODES = ("rgb", "normal", "depth", "all", "volume")


class ExportError(Dream3DError, ValueError):
    """Bad run folder or export input: the message is one line naming the file or key."""


@dataclass
class LoadedStage:
    name: str
    cfg: object  # the stage's StageConfig
    particles: list[nn.Module]  # the stage system's particles (each knows how to bake itself)

    @property
    def nerf(self) -> nn.Module:  # particle 0 of a NeRF stage
        return self.particles[0].nerf

    @property
    def is_mesh(self) -> bool:
        return not self.particles[0].volume


def load_stage(run_dir: str | Path, stage: Optional[str] = None) -> LoadedStage:
    """The particles of ``stage`` (default: the last stage that has a checkpoint), on the CPU, eval mode,
    rebuilt by the stage's system class and loaded from its checkpoint."""
    from dream3d.registry import SYSTEMS, resolve

    folder = RunFolder(run_dir)
    if not folder.path.is_dir():
        raise ExportError(f"{folder}: not a folder (expected a dream3d run folder)")
    cfg = folder.read_config()
    if stage is not None and stage not in cfg.stages:
        raise ExportError(f"stage={stage}: no such stage in {folder.config_path} ({', '.join(cfg.stages)})")
    name = stage or folder.last_trained_stage(cfg.stages)
    if name is None:
        raise ExportError(f"{folder}: no checkpoint found (expected {folder.ckpt('<stage>').relative_to(folder.path)}"
                          " from dream3d fit)")
    ckpt = folder.ckpt(name)
    if not ckpt.is_file():
        raise ExportError(f"{ckpt}: not found (stage '{name}' has not been trained)")
    st = cfg.stages[name]
    system = resolve(SYSTEMS, st.system, "system")
    state = folder.load_checkpoint(name)["state_dict"]
    if not any(k.startswith("particles.") for k in state):  # a run from before particles: one, unprefixed
        state = {f"particles.0.{k}": v for k, v in state.items()}
    particles = []
    for k in range(max(1, cfg.particles)):
        prefix = f"particles.{k}."
        part = {key[len(prefix):]: v for key, v in state.items() if key.startswith(prefix)}
        particle = system.make_particle(st)
        missing = [m for m in particle.load_state_dict(part, strict=False).missing_keys
                   if m.startswith(particle.required)]
        if missing:
            raise ExportError(f"{ckpt}: particle {k} has no {missing[0]} (expected a checkpoint of this run's config)")
        particles.append(particle.eval())
    return LoadedStage(name, st, particles)


def record_export(run_dir: Path, **values) -> None:
    """Merge ``values`` into summary.json's ``"export"`` entry (atomically)."""
    folder = RunFolder(run_dir)
    summary = folder.read_summary()
    summary.setdefault("export", {}).update(values)
    folder.write_summary(summary)


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
    from dream3d.export.mesh import FORMATS, export_mesh

    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    formats = parse_formats(formats, FORMATS)
    if resolution < 16 or texture_size < 16:
        raise ExportError(f"resolution={resolution} texture_size={texture_size}: expected at least 16 each")
    loaded = load_stage(run_dir, stage)
    check_writable(folder.export_dir, "run folder")  # before the work, not after it
    t0 = time.perf_counter()
    first: dict[str, Path] = {}
    faces, watertight = [], []
    for k, particle in enumerate(loaded.particles):
        what = f"stage '{loaded.name}'" + (f", particle {k}" if len(loaded.particles) > 1 else "")
        with torch.no_grad():
            try:
                mesh, closed = particle.bake(texture_size, max_faces, resolution, threshold)
            except ValueError as exc:
                raise ExportError(f"{run_dir} ({what}): {exc}") from None
        if closed is not None:
            watertight.append(closed)
        paths = export_mesh(mesh, folder.particle_dir(k), "model", formats)
        first = first or paths
        faces.append(mesh.num_faces)
        log(f"exported {what}: {mesh.num_verts} vertices, {mesh.num_faces} faces, texture {texture_size}px -> "
            f"{', '.join(str(p) for p in paths.values())}")
    seconds = time.perf_counter() - t0
    extra = {"watertight": all(watertight), "particle_watertight": watertight} if watertight else {}
    record_export(run_dir, stage=loaded.name, faces=faces[0], particle_faces=faces, texture_size=texture_size,
                  mesh_seconds=round(seconds, 2), **extra,
                  files={k: str(Path(v).relative_to(run_dir)) for k, v in first.items()})
    return first


def ensure_exported(run_dir: str | Path, log: Callable[[str], None] = print) -> Path:
    """``export/model.glb``, exported first with the run's own mesh settings when it is missing (what render,
    eval and compare need before they start). ExportError when it cannot be made."""
    folder = RunFolder(run_dir)
    if not folder.mesh_path.is_file():
        cfg = folder.read_config()
        export_run(run_dir, ("glb",), resolution=cfg.mesh_resolution, texture_size=cfg.texture_size, log=log)
    return folder.mesh_path


def _last_nerf_stage(folder: RunFolder) -> Optional[str]:
    """The last NeRF stage with a checkpoint (what ``mode=volume`` renders by default), or None."""
    from dream3d.registry import mesh_systems

    try:
        stages = folder.read_config().stages
    except Dream3DError:  # ConfigError and RunFolderError alike
        return None
    return folder.last_trained_stage([n for n, st in stages.items() if st.system not in mesh_systems()])


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
    name = "turntable" if mode == "rgb" else f"turntable-{mode}"
    folder = RunFolder(run_dir).require()
    check_writable(folder.export_dir, "run folder")  # before the work, not after it
    t0 = time.perf_counter()
    written: list[dict[str, Path]] = []  # per particle
    if mode == "volume":
        loaded = load_stage(run_dir, stage or _last_nerf_stage(folder))
        if loaded.is_mesh:
            raise ExportError(f"mode=volume: stage '{loaded.name}' is a mesh stage; volume renders are for NeRF "
                              "stages (pass stage=<a NeRF stage> or another mode)")
        cams = turntable_cameras(views, elevation, size, fit_distance(loaded.nerf.radius, DEFAULT_FOVY))
        for k, p in enumerate(loaded.particles):

            def render_fn(c, p=p):
                rays_o, rays_d = c.rays()
                return p.renderer(p.nerf, p.background, rays_o, rays_d, c.light_position, "albedo")["rgb"]

            with torch.no_grad():
                frames = volume_frames(render_fn, cams, chunk=max(1, 16384 // (size * size)) if size < 128 else 1)
            written.append(write_turntable(frames, folder.particle_dir(k) / name, fps, formats))
    else:
        if not folder.mesh_path.is_file():
            export_run(run_dir, ("glb",), stage=stage, log=log)
        for glb in folder.particle_meshes():
            written.append(render_turntable(load_mesh(glb), glb.parent / name, views, fps, elevation, size, mode,
                                            formats))
    paths = written[0]
    seconds = time.perf_counter() - t0
    log(f"rendered {views} views at {size}px ({mode}) in {seconds:.1f} s -> "
        f"{', '.join(str(p) for p in paths.values())}")
    record_export(run_dir, **{f"turntable_{mode}": {"views": views, "size": size, "fps": fps, "seconds": round(seconds, 2),
                                                "files": {k: str(Path(v).relative_to(run_dir)) for k, v in paths.items()}}})
    return paths

