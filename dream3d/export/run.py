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

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from dream3d.errors import Dream3DError
from dream3d.rundir import RunFolder, check_writable

EXPORT_DIR = "export"
RENDER_MODES = ("rgb", "normal", "depth", "all", "volume")


class ExportError(Dream3DError, ValueError):
    """Bad run folder or export input: the message is one line naming the file or key."""


@dataclass
class LoadedStage:
    name: str
    cfg: object  # the stage's StageConfig (omegaconf)
    particles: list[nn.Module]  # systems.nerf.Particle (nerf, background, renderer) or systems.mesh.MeshParticle

    @property
    def nerf(self) -> nn.Module:  # particle 0 of a NeRF stage
        return self.particles[0].nerf

    @property
    def is_mesh(self) -> bool:
        return not hasattr(self.particles[0], "nerf")


def particle_dir(run_dir: Path, k: int) -> Path:
    """Where particle ``k``'s files go: ``export/`` for particle 0 (the run's result), else ``export/particle<k>/``."""
    return Path(run_dir) / EXPORT_DIR / ("" if k == 0 else f"particle{k}")


def _last_stage_with_checkpoint(run_dir: Path, stages: Sequence[str]) -> str:
    for name in reversed(list(stages)):
        if (run_dir / "ckpts" / name / "last.ckpt").is_file():
            return name
    raise ExportError(f"{run_dir}: no checkpoint found (expected ckpts/<stage>/last.ckpt from dream3d fit)")


def load_stage(run_dir: str | Path, stage: Optional[str] = None) -> LoadedStage:
    """The representation of ``stage`` (default: the last stage that has a checkpoint), on the CPU, eval mode."""
    from dream3d.config import MESH_SYSTEMS
    from dream3d.rundir import load_checkpoint
    from dream3d.systems.nerf import Particle

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: not a folder (expected a dream3d run folder)")
    cfg = RunFolder(run_dir).read_config()
    if stage is not None and stage not in cfg.stages:
        raise ExportError(f"stage={stage}: no such stage in {run_dir / 'config.yaml'} ({', '.join(cfg.stages)})")
    name = stage or _last_stage_with_checkpoint(run_dir, cfg.stages)
    ckpt = run_dir / "ckpts" / name / "last.ckpt"
    if not ckpt.is_file():
        raise ExportError(f"{ckpt}: not found (stage '{name}' has not been trained)")
    st = cfg.stages[name]
    if st.system in MESH_SYSTEMS:
        from dream3d.systems.mesh import KINDS, MeshParticle

        kind = KINDS[MESH_SYSTEMS.index(st.system)]
        make, needed = (lambda: MeshParticle(st, kind)), "dmtet."
    else:
        make, needed = (lambda: Particle(st)), "nerf."
    state = load_checkpoint(ckpt)["state_dict"]
    if not any(k.startswith("particles.") for k in state):  # a run from before particles: one, unprefixed
        state = {f"particles.0.{k}": v for k, v in state.items()}
    particles = []
    for k in range(max(1, cfg.particles)):
        prefix = f"particles.{k}."
        part = {key[len(prefix):]: v for key, v in state.items() if key.startswith(prefix)}
        particle = make()
        missing = [m for m in particle.load_state_dict(part, strict=False).missing_keys if m.startswith(needed)]
        if missing:
            raise ExportError(f"{ckpt}: particle {k} has no {missing[0]} (expected a checkpoint of this run's config)")
        particles.append(particle.eval())
    return LoadedStage(name, st, particles)


def particle_dirs(run_dir: str | Path) -> list[Path]:
    """The particles' export folders in order: ``export/`` (particle 0), then ``export/particle<k>/`` by k."""
    export = Path(run_dir) / EXPORT_DIR
    numbered = [(int(m.group(1)), p) for p in export.glob("particle*")
                if p.is_dir() and (m := re.fullmatch(r"particle(\d+)", p.name))]
    return [export] + [p for _, p in sorted(numbered)]


def particle_meshes(run_dir: str | Path) -> list[Path]:
    """The particle meshes of a run that exist: ``export/model.glb``, ``export/particle1/model.glb``, ..."""
    return [p for p in (d / "model.glb" for d in particle_dirs(run_dir)) if p.is_file()]


def particle_videos(run_dir: str | Path) -> list[Path]:
    """The particle turntables of a run that exist: ``export/turntable.mp4``, ``export/particle1/turntable.mp4``, ..."""
    return [p for p in (d / "turntable.mp4" for d in particle_dirs(run_dir)) if p.is_file()]


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
    from dream3d.export.mesh import FORMATS, bake_mesh, export_mesh

    run_dir = Path(run_dir)
    formats = parse_formats(formats, FORMATS)
    if resolution < 16 or texture_size < 16:
        raise ExportError(f"resolution={resolution} texture_size={texture_size}: expected at least 16 each")
    loaded = load_stage(run_dir, stage)
    check_writable(run_dir / EXPORT_DIR, "run folder")  # before the work, not after it
    t0 = time.perf_counter()
    first: dict[str, Path] = {}
    faces, watertight = [], []
    for k, particle in enumerate(loaded.particles):
        what = f"stage '{loaded.name}'" + (f", particle {k}" if len(loaded.particles) > 1 else "")
        with torch.no_grad():
            try:
                if loaded.is_mesh:
                    mesh, closed = _bake_mesh_particle(particle, loaded.cfg, texture_size, max_faces)
                    watertight.append(closed)
                else:
                    nerf = particle.nerf
                    mesh = bake_mesh(nerf.density, lambda x, nerf=nerf: nerf(x)["albedo"], nerf.radius, resolution,
                                     threshold, texture_size, max_faces)
            except ValueError as exc:
                raise ExportError(f"{run_dir} ({what}): {exc}") from None
        paths = export_mesh(mesh, particle_dir(run_dir, k), "model", formats)
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


def _last_nerf_stage(run_dir: Path) -> Optional[str]:
    """The last NeRF stage with a checkpoint (what ``mode=volume`` renders by default), or None."""
    from dream3d.config import MESH_SYSTEMS, ConfigError, load_run_config

    try:
        stages = load_run_config(run_dir).stages
    except ConfigError:
        return None
    for name in reversed(list(stages)):
        if stages[name].system not in MESH_SYSTEMS and (run_dir / "ckpts" / name / "last.ckpt").is_file():
            return name
    return None


def _bake_mesh_particle(particle, stage_cfg, texture_size: int, max_faces: Optional[int]):
    """A mesh stage's particle -> (TexturedMesh, watertight): its marching-tets surface, textured with its
    albedo (a geometry-only stage: flat grey), PBR stages with their mean roughness and metallic."""
    from dream3d.export.mesh import bake_surface

    verts, faces = particle.dmtet.mesh()
    field = particle.colour_field()
    if particle.material is not None:
        sample = field(verts[: 65536])
        roughness, metallic = float(sample["roughness"].mean()), float(sample["metallic"].mean())

        def colour(x):
            return field(x)["albedo"]
    elif stage_cfg.system == "dmtet-geometry":
        roughness = metallic = None

        def colour(x):
            return torch.full((x.shape[0], 3), 0.7)
    else:
        roughness = metallic = None
        colour = field
    return bake_surface(verts, faces, colour, texture_size, max_faces, roughness, metallic)


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
    RunFolder(run_dir).require()
    check_writable(run_dir / EXPORT_DIR, "run folder")  # before the work, not after it
    t0 = time.perf_counter()
    written: list[dict[str, Path]] = []  # per particle
    if mode == "volume":
        loaded = load_stage(run_dir, stage or _last_nerf_stage(run_dir))
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
            written.append(write_turntable(frames, particle_dir(run_dir, k) / name, fps, formats))
    else:
        if not (run_dir / EXPORT_DIR / "model.glb").is_file():
            export_run(run_dir, ("glb",), stage=stage, log=log)
        for glb in particle_meshes(run_dir):
            written.append(render_turntable(load_mesh(glb), glb.parent / name, views, fps, elevation, size, mode,
                                            formats))
    paths = written[0]
    seconds = time.perf_counter() - t0
    log(f"rendered {views} views at {size}px ({mode}) in {seconds:.1f} s -> "
        f"{', '.join(str(p) for p in paths.values())}")
    record_export(run_dir, **{f"turntable_{mode}": {"views": views, "size": size, "fps": fps, "seconds": round(seconds, 2),
                                                "files": {k: str(Path(v).relative_to(run_dir)) for k, v in paths.items()}}})
    return paths
