"""NeRF stage (DreamFusion; ProlificDreamer's first stage): NeRF particles rendered from random cameras and
scored by score distillation (SDS or VSD).

``particles=N`` optimises N independent NeRFs (each with its own background and occupancy grid, its own
random initialisation and cameras). Their renders go through the guidance as one batch, so one UNet call
serves all of them and, with VSD, one LoRA model learns the distribution of all their renders. The
guidance averages its loss over the batch; the system scales it by N so each particle's gradient is what
it would get alone, and sums the regularizers over particles for the same reason.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dream3d.cameras import Cameras, sample_cameras, turntable
from dream3d.prior.prompts import PromptEmbeddings
from dream3d.registry import GUIDANCES, resolve
from dream3d.render.background import Background
from dream3d.render.volume import VolumeRenderer
from dream3d.representations.nerf import NeRF
from dream3d.systems.base import BaseSystem, opacity_entropy_loss, sparsity_loss

VALIDATION_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)


def choose_shading(r, step: int, gen: torch.Generator) -> str:
    """DreamFusion's random shading of a training render (``r``: a RendererConfig): albedo only during the first
    ``ambient_only_steps``, then albedo with probability ``albedo_prob``, else textureless or diffuse."""
    if step < r.ambient_only_steps:
        return "albedo"
    u = float(torch.rand((), generator=gen))
    if u < r.albedo_prob:
        return "albedo"
    return "textureless" if u < r.albedo_prob + (1 - r.albedo_prob) * r.textureless_prob else "diffuse"


class Particle(nn.Module):
    """One 3D result of a NeRF stage: the field, its background and its occupancy grid (in the renderer)."""

    def __init__(self, stage_cfg):
        super().__init__()
        rep, r = stage_cfg.representation, stage_cfg.renderer
        self.nerf = NeRF(rep)
        self.background = Background(r.background if r.background != "random" else "solid", tuple(r.background_color))
        self.renderer = VolumeRenderer(r, rep.radius)


class NeRFSystem(BaseSystem):
    """Optimises ``particles`` NeRFs (+ backgrounds) with SDS or VSD and the orientation, sparsity and opacity
    regularizers. State: ``particles.<k>.{nerf,background,renderer}`` and, for VSD, ``guidance.*``."""

    def __init__(self, run_cfg, stage_name, stage_cfg, prior, run_dir=None):
        super().__init__(run_cfg, stage_name, stage_cfg, prior, run_dir)
        self.particles = nn.ModuleList([Particle(stage_cfg) for _ in range(run_cfg.particles)])
        self.guidance = resolve(GUIDANCES, stage_cfg.guidance.name, "guidance")(stage_cfg.guidance, prior)
        self.prompts = PromptEmbeddings(prior, run_cfg.prompt, run_cfg.negative_prompt, run_cfg.view_dependent)

    def configure_optimizers(self):
        o = self.stage_cfg.optim
        groups = []
        for k, particle in enumerate(self.particles):
            for g in particle.nerf.parameter_groups(o):
                groups.append({**g, "name": f"{g.get('name', 'nerf')}{k}"})
            groups.append({"params": list(particle.background.parameters()), "lr": o.lr_background,
                           "name": f"background{k}"})
        return self.make_optimizer(groups)

    # particle 0, the single result of a one-particle run (what bench.py and the tests time and inspect)
    @property
    def nerf(self) -> NeRF:
        return self.particles[0].nerf

    @property
    def renderer(self) -> VolumeRenderer:
        return self.particles[0].renderer

    def render(self, cams: Cameras, shading: str = "albedo", stratified: bool = False, generator=None,
               bg_color: Tensor | None = None, with_normals: bool | None = None, particle: int = 0) -> dict[str, Tensor]:
        cams = cams.to(self.device)
        rays_o, rays_d = cams.rays()
        p = self.particles[particle]
        return p.renderer(p.nerf, p.background, rays_o, rays_d, cams.light_position, shading, stratified, generator,
                          bg_color, with_normals)

    def training_step(self, batch, batch_idx):
        step = self.step
        gen = self.step_generator(step)
        cfg = self.stage_cfg
        n = len(self.particles)
        occupied, cams, outs, regs = [], [], [], {}
        for k, particle in enumerate(self.particles):
            with self.timed("grid"):
                occ = particle.renderer.update_grid(particle.nerf, step, gen)
            if occ is not None:
                occupied.append(occ)
            cam = sample_cameras(cfg.camera, gen)
            shading = choose_shading(cfg.renderer, step, gen)
            bg_color = torch.rand(3, generator=gen).to(self.device) if cfg.renderer.background == "random" else None
            with_normals = shading != "albedo" or self.wants("orient")
            with self.timed("render"):
                out = self.render(cam, shading, stratified=True, generator=gen, bg_color=bg_color,
                                  with_normals=with_normals, particle=k)
            for term, value in self.regularizers(out, with_normals).items():
                regs[term] = regs.get(term, 0.0) + value
            cams.append(cam)
            outs.append(out)
        cams_all = Cameras.cat(cams)
        with self.timed("guidance"):
            labels = cams_all.view_labels(cfg.camera.front_threshold, cfg.camera.overhead_threshold)
            cond, uncond = self.prompts(labels)
            rgb = torch.cat([o["rgb"] for o in outs])
            g = self.guidance(rgb, cond, uncond, step, generator=gen, cameras=cams_all)
        terms = self.guidance_terms(g, n)
        terms.update(regs)
        loss, logs = self.weighted_loss(terms, step)
        logs.update(t=float(g["t"]), grad_norm=float(g["grad_norm"]),
                    samples=sum(float(o["samples"]) for o in outs) / n)
        if occupied:
            logs["occupied"] = sum(occupied) / len(occupied)
        self.record(logs)
        return loss

    def regularizers(self, out: dict[str, Tensor], with_normals: bool) -> dict[str, Tensor]:
        """The weighted regularizers of one particle's render."""
        terms = {}
        if with_normals and self.wants("orient"):
            terms["orient"] = out["orient"]
        if self.wants("sparsity"):
            terms["sparsity"] = sparsity_loss(out["opacity"])
        if self.wants("opacity"):
            terms["opacity"] = opacity_entropy_loss(out["opacity"])
        return terms

    def render_views(self) -> dict[str, Tensor]:
        """The validation views of every particle: particle k's four views are columns 4k..4k+3."""
        c = self.stage_cfg.camera
        outs = []
        for k in range(len(self.particles)):
            for az in VALIDATION_AZIMUTHS:
                cams = turntable(1, c.eval_elevation, c.eval_distance, c.eval_fovy, c.eval_size, start_azimuth=az)
                outs.append(self.render(cams, "albedo", with_normals=True, particle=k))
        return {k: torch.cat([o[k] for o in outs]) for k in ("rgb", "normal", "opacity")}
