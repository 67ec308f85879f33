"""DreamFusion stage: a NeRF rendered from random cameras and scored by score distillation (SDS)."""

from __future__ import annotations

import torch
from torch import Tensor

from dream3d.cameras import Cameras, sample_cameras, turntable
from dream3d.prior.prompts import PromptEmbeddings
from dream3d.registry import GUIDANCES, resolve
from dream3d.render.background import Background
from dream3d.render.volume import VolumeRenderer
from dream3d.representations.nerf import NeRF
from dream3d.systems.base import BaseSystem, opacity_entropy_loss, sparsity_loss

VALIDATION_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)


class NeRFSystem(BaseSystem):
    """Optimises a :class:`NeRF` (+ background) with SDS, orientation, sparsity and opacity regularizers."""

    def __init__(self, run_cfg, stage_name, stage_cfg, prior, run_dir=None):
        super().__init__(run_cfg, stage_name, stage_cfg, prior, run_dir)
        rep = stage_cfg.representation
        self.nerf = NeRF(rep)
        r = stage_cfg.renderer
        self.background = Background(r.background if r.background != "random" else "solid", tuple(r.background_color))
        self.renderer = VolumeRenderer(r, rep.radius)
        self.guidance = resolve(GUIDANCES, stage_cfg.guidance.name, "guidance")(stage_cfg.guidance, prior)
        self.prompts = PromptEmbeddings(prior, run_cfg.prompt, run_cfg.negative_prompt, run_cfg.view_dependent)

    def configure_optimizers(self):
        o = self.stage_cfg.optim
        groups = self.nerf.parameter_groups(o)
        groups.append({"params": list(self.background.parameters()), "lr": o.lr_background, "name": "background"})
        groups = [g for g in groups if g["params"]]
        try:  # the fused kernel is ~3x faster on CPU (torch >= 2.4)
            return torch.optim.Adam(groups, betas=tuple(o.betas), eps=o.eps, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.Adam(groups, betas=tuple(o.betas), eps=o.eps)

    def choose_shading(self, step: int, gen: torch.Generator) -> str:
        r = self.stage_cfg.renderer
        if step < r.ambient_only_steps:
            return "albedo"
        u = float(torch.rand((), generator=gen))
        if u < r.albedo_prob:
            return "albedo"
        return "textureless" if u < r.albedo_prob + (1 - r.albedo_prob) * r.textureless_prob else "diffuse"

    def render(self, cams: Cameras, shading: str = "albedo", stratified: bool = False, generator=None,
               bg_color: Tensor | None = None, with_normals: bool | None = None) -> dict[str, Tensor]:
        cams = cams.to(self.device)
        rays_o, rays_d = cams.rays()
        return self.renderer(self.nerf, self.background, rays_o, rays_d, cams.light_position, shading, stratified,
                             generator, bg_color, with_normals)

    def training_step(self, batch, batch_idx):
        step = self.step
        gen = self.step_generator(step)
        with self.timed("grid"):
            occupied = self.renderer.update_grid(self.nerf, step, gen)
        cfg = self.stage_cfg
        cams = sample_cameras(cfg.camera, gen)
        shading = self.choose_shading(step, gen)
        bg_color = torch.rand(3, generator=gen).to(self.device) if cfg.renderer.background == "random" else None
        with_normals = shading != "albedo" or self.wants("orient")
        with self.timed("render"):
            out = self.render(cams, shading, stratified=True, generator=gen, bg_color=bg_color, with_normals=with_normals)
        with self.timed("guidance"):
            labels = cams.view_labels(cfg.camera.front_threshold, cfg.camera.overhead_threshold)
            cond, uncond = self.prompts(labels)
            g = self.guidance(out["rgb"], cond, uncond, step, generator=gen, cameras=cams)
        terms = {k: v for k, v in g.items() if hasattr(cfg.loss, k)}
        if with_normals and self.wants("orient"):
            terms["orient"] = out["orient"]
        if self.wants("sparsity"):
            terms["sparsity"] = sparsity_loss(out["opacity"])
        if self.wants("opacity"):
            terms["opacity"] = opacity_entropy_loss(out["opacity"])
        loss, logs = self.weighted_loss(terms, step)
        logs.update(t=float(g["t"]), grad_norm=float(g["grad_norm"]), samples=float(out["samples"]))
        if occupied is not None:
            logs["occupied"] = occupied
        self.record(logs)
        return loss

    def render_views(self) -> dict[str, Tensor]:
        c = self.stage_cfg.camera
        outs = []
        for az in VALIDATION_AZIMUTHS:
            cams = turntable(1, c.eval_elevation, c.eval_distance, c.eval_fovy, c.eval_size, start_azimuth=az)
            outs.append(self.render(cams, "albedo", with_normals=True))
        return {k: torch.cat([o[k] for o in outs]) for k in ("rgb", "normal", "opacity")}
