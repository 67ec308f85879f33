#!/usr/bin/env python
"""What the guidance asks of the true object: score distillation on three numbers, the scales of its true mesh.

    .venv/bin/python scripts/sds_true_shape.py red_cube blue_cone red_pyramid
    .venv/bin/python scripts/sds_true_shape.py red_cube --recipe mvdream --stage coarse --steps 600 --set seed=1

Each catalogue object's true mesh (centred on its bounding box, its bounding sphere the stage's framing radius) is
rendered by the mesh rasteriser (antialiased, so its outline has a gradient) from the stage's random cameras, with
the stage's lighting (its ambient, the camera's point light as a direction) and render size, and scored by the
stage's guidance (scale, space, timesteps, camera conditioning) with the timestep range of the stage's middle step.
Only three numbers are learnt: the log-scales along x, y (up) and z (Adam, ``--lr``). Where the guidance asks for
the true shape the scales wander about 1 and the height over the width stays about 1; a drift is what the guidance
itself would make of the object before any NeRF, DMTet or regulariser has a say. Prints, per object, the mean
scales over the second half of the steps and height/width (y over the mean of x and z).

``--run FOLDER`` asks the same of a fitted run's NeRF stage instead (``--stage``, default coarse): the NeRF is frozen
and rendered through rays mapped by the inverse of the three scales (so it is stretched by them in the world; its
sample spacing stays in world units), with the stage's shading, cameras and guidance; only the scales are learnt.
Scales above 1 are what the guidance would add to the fitted object (docs/quality.md, round 19).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dream3d.cameras import sample_cameras  # noqa: E402
from dream3d.config import load_config  # noqa: E402
from dream3d.guidance.sds import SDSGuidance  # noqa: E402
from dream3d.prior import PromptEmbeddings, load_prior  # noqa: E402
from dream3d.render.mesh import render_mesh  # noqa: E402
from dream3d.render.mesh_geometry import framed  # noqa: E402
from dream3d.shapeworld.catalogue import catalogue  # noqa: E402
from dream3d.systems.base import choose_shading  # noqa: E402


def distil_scales(cfg, st, prior, render, steps: int, lr: float, at_step: int | None,
                  start: tuple = (1.0, 1.0, 1.0), taper: bool = False) -> tuple[list[float], float]:
    """The probes' loop: ``render(cams, scale [3], k [1], shading_step, gen) -> rgb`` scored by ``st``'s guidance with
    the timestep range of stage step ``at_step`` (None: the middle); Adam on the log-scales from ``start`` (and on the
    taper ``k`` when ``taper``). Returns the mean scales over the second half of the steps and the mean k there."""
    guidance = SDSGuidance(st.guidance, prior)
    prompts = PromptEmbeddings(prior, cfg.prompt, cfg.negative_prompt, cfg.view_dependent and not prior.takes_camera)
    log_scale = torch.tensor([math.log(v) for v in start], requires_grad=True)
    k = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([log_scale, k] if taper else [log_scale], lr=lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    at_step = st.steps // 2 if at_step is None else at_step
    kept, kept_k = [], []
    for step in range(steps):
        cams = sample_cameras(st.camera, gen)
        rgb = render(cams, log_scale.exp(), k, at_step, gen)
        cond, uncond = prompts(cams.view_labels(st.camera.front_threshold, st.camera.overhead_threshold))
        loss = guidance(rgb, cond, uncond, at_step, generator=gen, cameras=cams)["sds"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= steps // 2:
            kept.append(log_scale.detach().exp())
            kept_k.append(float(k.detach()))
    return torch.stack(kept).mean(0).tolist(), sum(kept_k) / len(kept_k)


def height_width(s: list[float]) -> float:
    return s[1] / (0.5 * (s[0] + s[2]))


def true_shape_scales(name: str, recipe: str = "mvdream", stage: str = "coarse", steps: int = 600, lr: float = 0.01,
                      overrides: list[str] | None = None, prior=None, log=print, start: tuple = (1.0, 1.0, 1.0),
                      taper: bool = False, at_step: int | None = None) -> dict:
    """Optimise the x/y/z scales of catalogue object ``name`` under ``stage``'s guidance (module docstring), from
    the scales ``start``; ``taper`` learns a fourth number, the top's width over the bottom's (x and z scaled by
    exp(k y / r) at height y, framing radius r; reported as exp(2k)); ``at_step``: the stage step whose timestep
    range is used (None: the middle). Returns {"name", "caption", "scales" [3] (means over the second half),
    "height_width", "taper"}."""
    objects = {o.name: o for o in catalogue()}
    if name not in objects:
        raise SystemExit(f"unknown catalogue object {name!r}; expected one of: {', '.join(sorted(objects))}")
    obj = objects[name]
    cfg = load_config([f"recipe={recipe}", f"prompt={obj.caption}", *(overrides or [])])
    if stage not in cfg.stages:
        raise SystemExit(f"recipe {recipe} has no stage {stage!r}; it has: {', '.join(cfg.stages)}")
    st = cfg.stages[stage]
    r = st.camera.framing_radius
    verts = framed(obj.verts, r)

    def render(cams, scale, k, shading_step, gen):
        v = verts * scale
        if taper:
            flare = torch.exp(k * verts[:, 1:2] / r)
            v = torch.cat([v[:, :1] * flare, v[:, 1:2], v[:, 2:] * flare], dim=-1)
        return render_mesh(v, obj.faces, cams, obj.colors, ambient=st.renderer.ambient,
                           light=F.normalize(cams.light_position, dim=-1), background=1.0)["rgb"]

    s, k = distil_scales(cfg, st, prior or load_prior(cfg.prior), render, steps, lr, at_step, start, taper)
    top_bottom = math.exp(2 * k)
    result = {"name": name, "caption": obj.caption, "scales": s, "height_width": height_width(s), "taper": top_bottom}
    log(f"{obj.caption}: scales x {s[0]:.3f} y {s[1]:.3f} z {s[2]:.3f}, height/width {result['height_width']:.3f}"
        + (f", top/bottom width {top_bottom:.3f}" if taper else "") + " (the true object: 1)")
    return result


def fitted_nerf_scales(run_dir: str, stage: str = "coarse", steps: int = 300, lr: float = 0.01,
                       at_step: int | None = None, prior=None, log=print) -> dict:
    """The probe on a fitted run's NeRF stage (module docstring): {"caption", "scales", "height_width"}."""
    from dream3d.export.run import ExportError, load_stage
    from dream3d.rundir import RunFolder

    try:
        loaded = load_stage(run_dir, stage)
    except ExportError as exc:
        raise SystemExit(str(exc)) from None
    if not loaded.particles[0].volume:
        raise SystemExit(f"--run {run_dir}: stage {stage!r} is a mesh stage; expected a NeRF stage (e.g. coarse)")
    cfg = RunFolder(run_dir).read_config()
    st, particle = loaded.cfg, loaded.particles[0]
    for q in particle.parameters():
        q.requires_grad_(False)

    def render(cams, scale, k, shading_step, gen):
        shading = choose_shading(st.renderer, shading_step, gen)
        rays_o, rays_d = cams.rays()
        return particle.renderer(particle.nerf, particle.background, rays_o / scale, rays_d / scale,
                                 cams.light_position, shading, True, gen, None, shading != "albedo")["rgb"]

    s, _ = distil_scales(cfg, st, prior or load_prior(cfg.prior), render, steps, lr, at_step)
    result = {"caption": cfg.prompt, "scales": s, "height_width": height_width(s)}
    log(f"{cfg.prompt} (fitted {stage} NeRF): scales x {s[0]:.3f} y {s[1]:.3f} z {s[2]:.3f}, height/width "
        f"{result['height_width']:.3f} (the fit as it is: 1)")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("objects", nargs="*", default=["red_cube", "blue_cone", "red_pyramid", "yellow_cylinder"],
                    help="catalogue object names (e.g. red_cube, snowman)")
    ap.add_argument("--recipe", default="mvdream")
    ap.add_argument("--stage", default="coarse")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run config overrides")
    ap.add_argument("--start", default="1,1,1", help="starting scales x,y,z (e.g. 1,0.8,1: a squat start)")
    ap.add_argument("--taper", action="store_true", help="also learn the top's width over the bottom's")
    ap.add_argument("--at-step", type=int, default=None, help="the stage step whose timesteps are used (default: middle)")
    ap.add_argument("--run", default=None, metavar="FOLDER",
                    help="probe this fitted run's NeRF stage (--stage) instead of true objects")
    args = ap.parse_args(argv)
    try:
        start = tuple(float(v) for v in args.start.split(","))
    except ValueError:
        start = ()
    if len(start) != 3 or min(start) <= 0:
        raise SystemExit(f"--start {args.start}: expected three positive numbers x,y,z")
    if args.steps < 2 or not math.isfinite(args.lr) or args.lr <= 0:
        raise SystemExit(f"--steps {args.steps} --lr {args.lr}: expected at least 2 steps and a positive lr")
    if args.run is not None:
        fitted_nerf_scales(args.run, args.stage, args.steps, args.lr, args.at_step)
        return 0
    # the prior once for every object (the config needs a prompt to be checked; the prior does not depend on it)
    prior = load_prior(load_config([f"recipe={args.recipe}", "prompt=a red cube", *args.set]).prior)
    for name in args.objects:
        true_shape_scales(name, args.recipe, args.stage, args.steps, args.lr, args.set, prior, start=start,
                          taper=args.taper, at_step=args.at_step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
