"""NeRF stage (DreamFusion; ProlificDreamer's first stage): NeRF particles rendered from random cameras and
scored by score distillation (SDS or VSD).

``particles=N`` optimises N independent NeRFs (each with its own background and occupancy grid, its own
random initialisation and cameras). Their renders go through the guidance as one batch, so one UNet call
serves all of them and, with VSD, one LoRA model learns the distribution of all their renders. The
guidance averages its loss over the batch; the system scales it by N so each particle's gradient is what
it would get alone, and sums the regularizers over particles for the same reason.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from dream3d.cameras import Cameras
from dream3d.render.background import Background
from dream3d.render.volume import VolumeRenderer
from dream3d.representations.nerf import NeRF
from dream3d.systems.base import BaseSystem, choose_shading, opacity_entropy_loss, sparsity_loss


class NeRFParticle(nn.Module):
    """One 3D result of a NeRF stage: the field, its background and its occupancy grid (in the renderer)."""

    volume = True  # export: marching cubes on the density; ``render mode=volume`` can ray-march it
    required = "nerf."  # the state a checkpoint must hold for it

    def __init__(self, stage_cfg):
        super().__init__()
        rep, r = stage_cfg.representation, stage_cfg.renderer
        self.nerf = NeRF(rep)
        self.background = Background(r.background if r.background != "random" else "solid", tuple(r.background_color))
        self.renderer = VolumeRenderer(r, rep.radius)

    def bake(self, texture_size: int, max_faces: Optional[int], resolution: int = 128,
             threshold: Optional[float] = None):
        """The exported mesh: marching cubes on the density, the albedo baked into a texture."""
        from dream3d.export.mesh import bake_mesh

        nerf = self.nerf
        return bake_mesh(nerf.density, lambda x: nerf(x)["albedo"], nerf.radius, resolution, threshold,
                         texture_size, max_faces), None


class NeRFSystem(BaseSystem):
    """Optimises ``particles`` NeRFs (+ backgrounds) with SDS or VSD and the orientation, sparsity and opacity
    regularizers. State: ``particles.<k>.{nerf,background,renderer}`` and, for VSD, ``guidance.*``."""

    Particle = NeRFParticle

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
        return self.render_particle(self.particles[particle], cams, shading, stratified, generator, bg_color,
                                    with_normals)

    def render_particle(self, p: NeRFParticle, cams: Cameras, shading: str = "albedo", stratified: bool = False,
                        generator=None, bg_color: Tensor | None = None,
                        with_normals: bool | None = None) -> dict[str, Tensor]:
        cams = cams.to(self.device)
        rays_o, rays_d = cams.rays()
        return p.renderer(p.nerf, p.background, rays_o, rays_d, cams.light_position, shading, stratified, generator,
                          bg_color, with_normals)

    # the training step's hooks ------------------------------------------------------------------------------
    def prepare_particle(self, particle, step: int, gen: torch.Generator) -> None:
        with self.timed("grid"):
            occupied = particle.renderer.update_grid(particle.nerf, step, gen)
        self._occupied.append(occupied)

    def training_step(self, batch, batch_idx):
        self._occupied: list[Optional[float]] = []
        return super().training_step(batch, batch_idx)

    def render_training(self, particle, k: int, cams: Cameras, step: int, gen: torch.Generator) -> dict[str, Tensor]:
        cfg = self.stage_cfg
        shading = choose_shading(cfg.renderer, step, gen)
        bg_color = torch.rand(3, generator=gen).to(self.device) if cfg.renderer.background == "random" else None
        with_normals = shading != "albedo" or self.wants("orient")
        out = self.render_particle(particle, cams, shading, stratified=True, generator=gen, bg_color=bg_color,
                                   with_normals=with_normals)
        out["with_normals"] = with_normals
        return out

    def regularizers(self, particle, out: dict[str, Tensor]) -> dict[str, Tensor]:
        terms = {}
        if out["with_normals"] and self.wants("orient"):
            terms["orient"] = out["orient"]
        if self.wants("sparsity"):
            terms["sparsity"] = sparsity_loss(out["opacity"])
        if self.wants("opacity"):
            terms["opacity"] = opacity_entropy_loss(out["opacity"])
        if self.wants("distortion"):
            terms["distortion"] = out["distortion"]
        return terms

    def step_figures(self, outs: list[dict[str, Tensor]]) -> dict[str, float]:
        figures = {"samples": sum(float(o["samples"]) for o in outs) / len(outs)}
        occupied = [o for o in self._occupied if o is not None]
        if occupied:
            figures["occupied"] = sum(occupied) / len(occupied)
        return figures

    def render_validation(self, particle, cams: Cameras) -> dict[str, Tensor]:
        return self.render_particle(particle, cams, "albedo", with_normals=True)
