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

from dream3d.cameras import Cameras, turntable
from dream3d.render.background import Background
from dream3d.render.volume import VolumeRenderer
from dream3d.representations.nerf import NeRF, make_field
from dream3d.systems.base import (
    VALIDATION_AZIMUTHS,
    BaseSystem,
    LatentStage,
    center_depth_loss,
    choose_shading,
    emptiness_loss,
    opacity_entropy_loss,
    sparsity_loss,
)


class NeRFParticle(nn.Module):
    """One 3D result of a NeRF stage: the field (``representation.field``: the hash-grid NeRF or SJC's voxel grid),
    its background and its occupancy grid (in the renderer)."""

    volume = True  # export: marching cubes on the density; ``render mode=volume`` can ray-march it
    required = "nerf."  # the state a checkpoint must hold for it

    def __init__(self, stage_cfg):
        super().__init__()
        rep, r = stage_cfg.representation, stage_cfg.renderer
        self.nerf = make_field(rep)
        self.background = Background(r.background if r.background != "random" else "solid", tuple(r.background_color))
        self.renderer = VolumeRenderer(r, rep.radius)

    def bake(self, texture_size: int, max_faces: Optional[int], resolution: int = 128,
             threshold: Optional[float] = None):
        """The exported mesh: marching cubes on the density (at the field's ``iso_level`` unless ``threshold`` is
        given), the field's ``surface_albedo`` baked into a texture."""
        from dream3d.export.mesh import bake_mesh

        nerf = self.nerf
        level = threshold if threshold is not None else nerf.iso_level(resolution)
        return bake_mesh(nerf.density, nerf.surface_albedo, nerf.radius, resolution, level, texture_size,
                         max_faces), None


class NeRFSystem(BaseSystem):
    """Optimises ``particles`` NeRFs (+ backgrounds) with SDS or VSD and the orientation, sparsity and opacity
    regularizers. State: ``particles.<k>.{nerf,background,renderer}`` and, for VSD, ``guidance.*``."""

    Particle = NeRFParticle

    def __init__(self, run_cfg, stage_name: str, stage_cfg, prior, run_dir=None):
        super().__init__(run_cfg, stage_name, stage_cfg, prior, run_dir)
        # Sketch-Shape (representations/sketch.py): the run's sketch mesh, in stages that weight loss.sketch; held
        # outside the module tree (the config names the file, no checkpoint carries it)
        self.sketch = None
        if getattr(run_cfg, "sketch", "") and self.wants("sketch"):
            from dream3d.representations.sketch import SketchShape

            self.sketch = SketchShape.load(run_cfg.sketch, stage_cfg.representation.radius, run_cfg.sketch_sigma)

    def initialise(self, state: dict[str, Tensor], init_cfg) -> None:
        """From an earlier NeRF stage; from a latent NeRF (Latent-NeRF's RGB refinement) the density is kept and
        the colours start at the latent colours through an affine latent -> rgb map fitted to the VAE's decoding of
        the latent NeRF's renders (:meth:`latent_colours`; the field's ``rgb_state_from_latent``); its background is
        not taken."""
        if init_cfg.representation.output == "latent" and self.stage_cfg.representation.output == "rgb":
            state = dict(state)
            for k, particle in enumerate(self.particles):
                prefix = f"particles.{k}.nerf."
                latent_rgb = self.latent_colours(state, k, init_cfg)
                state.pop(f"particles.{k}.latent_rgb")
                field = {n[len(prefix):]: state.pop(n) for n in [n for n in state if n.startswith(prefix)]}
                for name, value in particle.nerf.rgb_state_from_latent(field, latent_rgb).items():
                    state[prefix + name] = value
                for name in [n for n in state if n.startswith(f"particles.{k}.background.")]:
                    del state[name]
        super().initialise(state, init_cfg)

    def render_latent_source(self, source, cams: Cameras, init_cfg) -> dict[str, Tensor]:
        """A latent NeRF's renders, every sample marched (no occupancy grid that may lag the field)."""
        source.renderer.grid = None
        rays_o, rays_d = cams.rays()
        return source.renderer(source.nerf, source.background, rays_o, rays_d, cams.light_position)

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
                        generator=None, bg_color: Tensor | None = None, with_normals: bool | None = None,
                        pixel_offset: Tensor | None = None) -> dict[str, Tensor]:
        """``pixel_offset`` [B,2]: the rays moved off the pixel centres (:meth:`dream3d.cameras.Cameras.rays`)."""
        cams = cams.to(self.device)
        rays_o, rays_d = cams.rays(pixel_offset)
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

    def render_reference(self, particle, cams: Cameras, step: int, gen: torch.Generator) -> dict[str, Tensor]:
        """Lit as the training renders when the reference's colours are matched; else albedo without normals (only
        the opacity is matched: half the cost). The rays move off the pixel centres by a random offset each step
        (``pixel_offset``; the reference is read at the same points): with the same rays every step, a field can
        meet the mask with a fence of density on those rays only (a house's walls came out as a grid)."""
        shading = choose_shading(self.stage_cfg.renderer, step, gen) if self.wants("reference_rgb") else "albedo"
        offset = torch.rand(1, 2, generator=gen) - 0.5
        out = self.render_particle(particle, cams, shading, stratified=True, generator=gen,
                                   with_normals=shading != "albedo", pixel_offset=offset)
        out["pixel_offset"] = offset
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
        if self.wants("emptiness"):
            slots = out["opacity"].numel() * self.stage_cfg.renderer.num_samples  # rays x samples
            terms["emptiness"] = emptiness_loss(out["weights"], slots)
        if self.wants("center_depth"):
            terms["center_depth"] = center_depth_loss(out["depth"], out["opacity"])
        if self.sketch is not None:
            gen = torch.Generator().manual_seed(self.run_cfg.seed * 1_000_003 + 7 * self.step + 1)
            delta = 2.0 * particle.renderer.radius / self.stage_cfg.renderer.num_samples
            terms["sketch"] = self.sketch.loss(particle.nerf.density, delta, gen, self.device)
        return terms

    def step_figures(self, outs: list[dict[str, Tensor]]) -> dict[str, float]:
        figures = {"samples": sum(float(o["samples"]) for o in outs) / len(outs)}
        occupied = [o for o in self._occupied if o is not None]
        if occupied:
            figures["occupied"] = sum(occupied) / len(occupied)
        return figures

    def render_validation(self, particle, cams: Cameras) -> dict[str, Tensor]:
        return self.render_particle(particle, cams, "albedo", with_normals=True)


class LatentNeRFParticle(NeRFParticle):
    """A latent NeRF (``representation.output: latent``): its field outputs the prior's latent channels, its
    background is the prior's latent of the renderer's background colour, and it holds the affine
    latent -> rgb map (``latent_rgb``, :func:`dream3d.prior.latent.latent_rgb_map`) for its export and for the
    RGB refinement that starts from it. Both buffers are set by the system from the prior and checkpointed."""

    def __init__(self, stage_cfg):
        super().__init__(stage_cfg)
        C = int(stage_cfg.representation.latent_channels)
        self.background = Background("solid", (0.0,) * C)
        self.register_buffer("latent_rgb", torch.zeros(C + 1, 3))

    def bake(self, texture_size: int, max_faces: Optional[int], resolution: int = 128,
             threshold: Optional[float] = None):
        """Marching cubes on the density; the colour is the latent through ``latent_rgb`` (an approximation: the
        recipe's RGB refinement stage is what exports real colours)."""
        from dream3d.export.mesh import bake_mesh
        from dream3d.prior.latent import latents_to_rgb

        nerf = self.nerf
        level = threshold if threshold is not None else nerf.iso_level(resolution)
        return bake_mesh(nerf.density, lambda x: latents_to_rgb(nerf.surface_albedo(x), self.latent_rgb),
                         nerf.radius, resolution, level, texture_size, max_faces), None


class LatentNeRFSystem(LatentStage, NeRFSystem):
    r"""Latent-NeRF (Metzer et al. 2022): a NeRF whose colour channels are the latent prior's C latent channels,
    rendered at the latent resolution and scored by SDS directly in latent space:

        z = Σ_i T_i α_i f_i + (1 - Σ_i T_i α_i) z_bg          (per pixel of the h x w latent image)
        ∇_θ L = w(t) (ε̂(z_t; y, t) - ε) ∂z/∂θ                 (SDS, guidance/sds.py, latent space)

    with f_i ∈ R^C the field's latent at sample i (no activation), T_i α_i the usual volume-rendering weights,
    z_bg the VAE's latent of the solid background colour (what the shipped prior saw: white), and ε̂ the guided
    noise prediction. No VAE encoder runs (Latent-NeRF's saving: the render is already a latent, at 1/f of the
    image size); the renders are not shaded (a latent has no albedo to light). Validation grids show the VAE's
    decoding of latent renders at the eval size, resized to it. Sketch-Shape (``sketch=<mesh>``) constrains the
    density (:mod:`dream3d.representations.sketch`).

    Where dream3d departs from the paper: the background latent is fixed (the prior's world has one background)
    rather than learned, and the refinement's colour head starts from an affine latent -> rgb fit to the prior's
    own VAE (:func:`dream3d.representations.nerf.rgb_head_from_latent`) instead of a fixed SD matrix."""

    Particle = LatentNeRFParticle

    def __init__(self, run_cfg, stage_name: str, stage_cfg, prior, run_dir=None):
        super().__init__(run_cfg, stage_name, stage_cfg, prior, run_dir)
        if prior is None:  # rebuilt to read a checkpoint: the buffers come from it
            return
        background, latent_rgb = self.latent_setup(prior, stage_name, stage_cfg, stage_cfg.renderer.background_color)
        for particle in self.particles:
            particle.background.color.copy_(background)
            particle.latent_rgb.copy_(latent_rgb)

    def render_training(self, particle, k: int, cams: Cameras, step: int, gen: torch.Generator) -> dict[str, Tensor]:
        with_normals = self.wants("orient")
        out = self.render_particle(particle, cams, "albedo", stratified=True, generator=gen, with_normals=with_normals)
        out["with_normals"] = with_normals
        return out

    def render_validation(self, particle, cams: Cameras) -> dict[str, Tensor]:
        return self.decoded(self.render_particle(particle, cams, "albedo", with_normals=True))


FIT_MIN_OPACITY = 0.3  # SJCSystem.fit_latent_colours: pixels rendered at least this opaque


class SJCSystem(LatentNeRFSystem):
    r"""Score Jacobian Chaining (Wang et al. 2023): a voxel grid of the latent prior's channels
    (``representation.field: voxels``, :mod:`dream3d.representations.voxels`) ascending the 3D score

        ∇_θ log p̃_σ(θ) = E_π[ PAAS(x_π, √2σ) · ∂x_π/∂θ ]

    of its latent renders x_π (the ``sjc`` guidance, :mod:`dream3d.guidance.sjc`, where PAAS and σ are defined),
    with SJC's emptiness and centre-depth losses (``loss.emptiness``, ``loss.center_depth``:
    :func:`dream3d.systems.base.emptiness_loss`, :func:`~dream3d.systems.base.center_depth_loss`). Training is the
    Latent-NeRF stage's: the latent render goes to the guidance without an encoder, over the latent of the prior's
    background. One thing is added, for the export: the particle's affine latent -> rgb map (``latent_rgb``,
    what the exported texture's colours go through) is refitted at every validation to the object's own
    renders, ridge least squares

        M = argmin_M Σ_p α_p ‖[z_p, 1] M - r_p‖² + λ ‖M - M_solid‖²,      z_p = (ẑ_p - (1 - α_p) z_bg) / α_p,

    over the pixels p that the four validation views render at least 0.3 opaque (opacity α_p), ẑ_p the rendered
    latent, z_bg the background latent (so z_p is the object's own latent, what the export's surface colour reads),
    r_p the VAE's decoding of the view at p (area-averaged to the latent pixel; the decoder shows a half-opaque
    object in nearly its full colour, so r_p is not un-mixed), λ = 1 and M_solid the map fitted on solid colours
    (:func:`dream3d.prior.latent.latent_rgb_map`) that Latent-NeRF keeps. The VAE is not a per-pixel map, and the
    latents of a lit object are far from those of solid colours: on the shipped prior the solid-colour map is off
    by 0.18-0.33 per channel on an object's pixels (a yellow cylinder exports green) and a refitted one by about
    0.05. SJC itself exports no mesh (it renders the field and decodes), so this is dream3d's addition."""

    def __init__(self, run_cfg, stage_name: str, stage_cfg, prior, run_dir=None):
        super().__init__(run_cfg, stage_name, stage_cfg, prior, run_dir)
        self.frozen["solid_rgb"] = self.particles[0].latent_rgb.clone() if prior is not None else None

    def save_validation(self, step: int):
        self.fit_latent_colours()
        return super().save_validation(step)

    @torch.no_grad()
    def fit_latent_colours(self) -> None:
        """Refit every particle's ``latent_rgb`` to its four validation views (class docstring); a particle with
        fewer than 16 opaque pixels keeps its map."""
        from dream3d.prior.latent import fit_latent_rgb

        if self.prior is None:
            return
        was_training = self.training
        self.eval()
        c = self.stage_cfg.camera
        for particle in self.particles:
            latents, colours, alphas = [], [], []
            background = particle.background.color
            for az in VALIDATION_AZIMUTHS:
                cams = turntable(1, c.eval_elevation, c.eval_distance, c.eval_fovy, c.eval_size, start_azimuth=az)
                out = self.render_validation(particle, cams)
                alpha = out["opacity"][..., 0]
                keep = alpha > FIT_MIN_OPACITY
                a = alpha[keep][:, None]
                latents.append((out["latents"][keep] - (1 - a) * background) / a)  # the object's own latent
                colours.append(out["rgb"][keep])
                alphas.append(a[:, 0])
            z, rgb, a = torch.cat(latents), torch.cat(colours), torch.cat(alphas)
            if z.shape[0] >= 16:
                particle.latent_rgb.copy_(fit_latent_rgb(z, rgb, self.frozen["solid_rgb"], weights=a))
        self.train(was_training)
