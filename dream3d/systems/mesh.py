"""Mesh stages: a DMTet surface (per particle) rendered by the differentiable rasterizer and scored by SDS or VSD.

Three stages, one class each (the ``system`` names of the registry), each with its own particle class:

* ``dmtet`` (Magic3D's fine stage): geometry *and* albedo train together; renders are shaded like the NeRF
  stage's (albedo, diffuse under a point light, or textureless) at the stage's camera resolution, typically
  higher than the coarse NeRF's. Started from a NeRF stage: the sdf from the NeRF's density level set
  (:meth:`~dream3d.representations.dmtet.DMTet.init_from_density`) and the texture field distilled from the
  NeRF's albedo at the surface.
* ``dmtet-geometry`` (Fantasia3D's geometry stage, ProlificDreamer's stage 2): geometry only. The score is
  on the rendered normal map (world normals mapped to [0, 1] over the background); for the first
  ``mesh.latent_mask_steps`` steps of a latent prior, the normal map and the mask themselves are the four
  latent channels (Fantasia3D's early phase), which skips the VAE and shapes the silhouette coarsely.
  Starts from a NeRF stage, a sphere or ellipsoid, or a mesh file.
* ``mesh-texture`` (Fantasia3D's appearance stage, ProlificDreamer's stage 3): the geometry of an earlier
  DMTet stage is fixed (meshed once) and a texture trains: the DMTet's albedo field (``mesh.material=albedo``)
  or a PBR material field (albedo, roughness, metallic) lit by an environment light (``pbr``).

Regularizers of the geometry (weights in ``loss``): ``normal_consistency`` and ``laplacian``
(:mod:`dream3d.systems.base`). State per particle: ``particles.<k>.dmtet.*`` (+ ``material.*``, ``light.*``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream3d.cameras import Cameras
from dream3d.render.mesh import render_mesh
from dream3d.render.shading import shade
from dream3d.representations.dmtet import DMTet
from dream3d.systems.base import BaseSystem, choose_shading, laplacian_loss, normal_consistency_loss


class MeshParticle(nn.Module):
    """One result of a mesh stage whose geometry and albedo train together (``dmtet``): the DMTet, meshed
    differentiably at every render."""

    volume = False  # export bakes the marching-tets surface; there is no volume to ray-march
    required = "dmtet."  # the state a checkpoint must hold for it

    def __init__(self, stage_cfg):
        super().__init__()
        self.dmtet = DMTet(stage_cfg.dmtet)
        self.material: Optional[nn.Module] = None
        self.light: Optional[nn.Module] = None

    def surface(self) -> tuple[Tensor, Tensor]:
        """(verts [M,3], faces [F,3]) of the current geometry, differentiable."""
        return self.dmtet.mesh()

    def colour_field(self):
        """points [N,3] -> albedo [N,3], or the PBR material dict."""
        return self.material if self.material is not None else self.dmtet.albedo

    def bake_colour(self):
        """(points -> albedo, roughness, metallic) for the export: the albedo field, no PBR factors."""
        return self.dmtet.albedo, None, None

    def bake(self, texture_size: int, max_faces: Optional[int], resolution: int = 128,
             threshold: Optional[float] = None):
        """The exported mesh and whether it is watertight: the marching-tets surface with its colour baked."""
        from dream3d.export.mesh import bake_surface

        verts, faces = self.dmtet.mesh()
        colour, roughness, metallic = self.bake_colour()
        return bake_surface(verts, faces, colour, texture_size, max_faces, roughness, metallic)


class GeometryParticle(MeshParticle):
    """A geometry-only result (``dmtet-geometry``): its texture field is not scored, so it exports flat grey."""

    def bake_colour(self):
        return (lambda x: torch.full((x.shape[0], 3), 0.7)), None, None


class TextureParticle(MeshParticle):
    """A texture stage's result (``mesh-texture``): the geometry of the earlier stage, meshed once and frozen,
    with the DMTet's albedo field or (``mesh.material=pbr``) a material field lit by an environment light."""

    def __init__(self, stage_cfg):
        super().__init__(stage_cfg)
        if stage_cfg.mesh.material == "pbr":
            from dream3d.fields.material import MaterialConfig, MaterialField
            from dream3d.render.shading import EnvironmentLight

            d = stage_cfg.dmtet  # the material field is sized like the stage's albedo field
            self.material = MaterialField(MaterialConfig(radius=d.radius, encoding=d.encoding, backend=d.backend,
                                                         hidden=d.hidden, hidden_layers=d.hidden_layers))
            self.light = EnvironmentLight(stage_cfg.mesh.light)
        self._fixed: Optional[tuple[Tensor, Tensor]] = None

    def surface(self) -> tuple[Tensor, Tensor]:
        """Meshed once, without gradients (the geometry is fixed in a texture stage)."""
        if self._fixed is None or self._fixed[0].device != self.dmtet.sdf.device:
            with torch.no_grad():
                self._fixed = self.dmtet.mesh()
        return self._fixed

    def bake_colour(self):
        if self.material is None:
            return super().bake_colour()
        field = self.material
        verts, _ = self.dmtet.mesh()
        sample = field(verts[: 65536])
        return (lambda x: field(x)["albedo"]), float(sample["roughness"].mean()), float(sample["metallic"].mean())


def ellipsoid_sdf(axes: list[float]):
    """An approximate signed distance of the ellipsoid with semi-axes ``axes`` (exact for a sphere)."""
    a = torch.tensor([float(x) for x in axes])

    def fn(x: Tensor) -> Tensor:
        return ((x / a.to(x)).norm(dim=-1) - 1.0) * float(a.min())

    return fn


class MeshSystem(BaseSystem):
    """What the mesh stages share (see the module docstring): initialisation, rendering through the
    rasterizer, the geometry regularizers and validation. Subclasses: :class:`DMTetSystem`,
    :class:`DMTetGeometrySystem`, :class:`MeshTextureSystem`."""

    Particle = MeshParticle
    validation_shading = "albedo"

    def __init__(self, run_cfg, stage_name, stage_cfg, prior, run_dir=None):
        super().__init__(run_cfg, stage_name, stage_cfg, prior, run_dir)
        if stage_cfg.init is None:
            self.init_without_stage()

    # initialisation ------------------------------------------------------------------------------------------
    def init_without_stage(self) -> None:
        m = self.stage_cfg.mesh
        for p in self.particles:
            if m.init in ("sphere", "ellipsoid"):
                p.dmtet.init_from_sdf(ellipsoid_sdf(m.init_size if m.init == "ellipsoid" else [m.init_size[0]] * 3))
            else:
                from dream3d.export.mesh import load_mesh

                mesh = load_mesh(m.init)
                p.dmtet.init_from_mesh(mesh.verts, mesh.faces)

    def initialise(self, state: dict[str, Tensor], init_cfg) -> None:
        """From a NeRF stage: sdf from its density (:meth:`from_nerf`). From a DMTet stage: its geometry (and
        texture field). Particle k starts from the earlier stage's particle k (modulo their number)."""
        n_init = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("particles.")), default=0)
        for k, particle in enumerate(self.particles):
            prefix = f"particles.{k % n_init}."
            part = {key[len(prefix):]: v for key, v in state.items() if key.startswith(prefix)}
            if any(key.startswith("nerf.") for key in part):
                self.from_nerf(particle, part, init_cfg)
            elif any(key.startswith("dmtet.") for key in part):
                sub = {key[len("dmtet."):]: v for key, v in part.items() if key.startswith("dmtet.")}
                if sub["sdf"].shape != particle.dmtet.sdf.shape:
                    raise ValueError(f"stage '{self.stage_name}': dmtet.resolution differs from stage "
                                     f"'{self.stage_cfg.init}' ({sub['sdf'].shape[0]} vs {particle.dmtet.sdf.shape[0]}"
                                     " grid vertices); a mesh stage continues a DMTet at the same resolution")
                particle.dmtet.load_state_dict(sub, strict=False)
            else:
                raise ValueError(f"stage '{self.stage_name}': cannot start from stage '{self.stage_cfg.init}' "
                                 "(expected a NeRF or DMTet stage)")

    def from_nerf(self, particle: MeshParticle, part: dict[str, Tensor], init_cfg):
        """The sdf from the NeRF's density level set; returns the NeRF (for subclasses that take more of it)."""
        from dream3d.representations.nerf import make_field

        nerf = make_field(init_cfg.representation)
        nerf.load_state_dict({key[len("nerf."):]: v for key, v in part.items() if key.startswith("nerf.")})
        nerf.eval()
        with torch.no_grad():
            particle.dmtet.init_from_density(nerf.density, fit_steps=self.stage_cfg.mesh.init_fit_steps,
                                             seed=self.run_cfg.seed)
        return nerf

    # optimisation --------------------------------------------------------------------------------------------
    def particle_groups(self, particle: MeshParticle, o) -> list[dict]:
        """A particle's parameter groups (name, params, lr): every DMTet group."""
        return particle.dmtet.parameter_groups(o.lr_sdf, o.lr_deformation, o.lr_encoding, o.lr_network)

    def configure_optimizers(self):
        o = self.stage_cfg.optim
        groups = []
        for k, p in enumerate(self.particles):
            groups += [{**g, "name": f"{g['name']}{k}"} for g in self.particle_groups(p, o)]
        return self.make_optimizer(groups)

    def shade_fn(self, particle: MeshParticle, shading: str, cams: Cameras):
        """The per-pixel colour of a render: albedo, diffuse / textureless under the cameras' point lights, or
        PBR under the particle's environment light."""
        ambient = self.stage_cfg.renderer.ambient
        if particle.material is not None:
            from dream3d.render.shading import pbr_shade

            def pbr(material, points, normal, view, index):
                rgb = pbr_shade(material["albedo"], material["roughness"], material["metallic"], normal, view,
                                particle.light)
                return rgb.clamp(0.0, 1.0)  # linear radiance can exceed 1 at grazing angles; the prior sees [0, 1]

            return pbr
        if shading == "albedo":
            return None
        lights = cams.light_position.to(self.device)

        def lambert(albedo, points, normal, view, index):
            to_light = F.normalize(lights[index] - points, dim=-1, eps=1e-12)
            return shade(albedo, normal, to_light, shading, ambient)

        return lambert

    def render(self, particle: MeshParticle, cams: Cameras, shading: str = "albedo") -> dict[str, Tensor]:
        cams = cams.to(self.device)
        verts, faces = particle.surface()
        bg = torch.tensor(self.stage_cfg.mesh.background_color, device=self.device)
        out = render_mesh(verts, faces, cams, particle.colour_field(), shade=self.shade_fn(particle, shading, cams),
                          two_sided=False, antialias_normals=True, background=bg,
                          backend=self.stage_cfg.renderer.backend)
        out.update(verts=verts, faces=faces)
        return out

    # the training step's hooks ------------------------------------------------------------------------------
    def training_shading(self, step: int, gen: torch.Generator) -> str:
        return "albedo"

    def render_training(self, particle, k: int, cams: Cameras, step: int, gen: torch.Generator) -> dict[str, Tensor]:
        return self.render(particle, cams, self.training_shading(step, gen))

    def regularizers(self, particle, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """The geometry regularizers: normal consistency, and the Laplacian in cells (so its weight does not
        depend on the grid resolution)."""
        regs = {}
        for term, fn in (("normal_consistency", normal_consistency_loss), ("laplacian", laplacian_loss)):
            if self.wants(term):
                value = fn(out["verts"], out["faces"])
                if term == "laplacian":
                    value = value / particle.dmtet.cell_size**2
                regs[term] = value
        return regs

    def step_figures(self, outs: list[dict[str, Tensor]]) -> dict[str, float]:
        return {"faces": sum(o["faces"].shape[0] for o in outs) / len(outs)}

    def render_validation(self, particle, cams: Cameras) -> dict[str, Tensor]:
        return self.render(particle, cams, self.validation_shading)


@torch.enable_grad()
def distill_albedo(dmtet: DMTet, colour_fn, steps: int, seed: int = 0, batch: int = 8192) -> float:
    """Fit the DMTet's albedo field to ``colour_fn`` (points [N,3] -> [N,3]; e.g. a NeRF's albedo) on points
    around its current surface: ``steps`` Adam steps of MSE. Returns the last loss."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        verts, _ = dmtet.mesh()
        if len(verts) == 0:
            return 0.0
        pick = torch.randint(len(verts), (min(200_000, 50 * len(verts)),), generator=gen)
        points = verts[pick] + 0.5 * dmtet.cell_size * torch.randn(len(pick), 3, generator=gen).to(verts)
        target = torch.cat([colour_fn(points[i:i + 65536]).detach() for i in range(0, len(points), 65536)])
    params = list(dmtet.encoding.parameters()) + list(dmtet.network.parameters())
    opt = torch.optim.Adam(params, lr=0.01)
    loss = torch.zeros(())
    for _ in range(steps):
        i = torch.randint(len(points), (batch,), generator=gen).to(points.device)
        loss = F.mse_loss(dmtet.albedo(points[i]), target[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


class DMTetSystem(MeshSystem):
    """Magic3D's fine stage (``dmtet``): geometry and albedo train together on shaded renders; started from a
    NeRF, the texture field is first distilled from the NeRF's albedo."""

    def from_nerf(self, particle: MeshParticle, part: dict[str, Tensor], init_cfg):
        nerf = super().from_nerf(particle, part, init_cfg)
        m = self.stage_cfg.mesh
        if m.texture_fit_steps > 0:
            distill_albedo(particle.dmtet, lambda x: nerf(x)["albedo"], m.texture_fit_steps, self.run_cfg.seed)
        return nerf

    def training_shading(self, step: int, gen: torch.Generator) -> str:
        return choose_shading(self.stage_cfg.renderer, step, gen)


class DMTetGeometrySystem(MeshSystem):
    """Fantasia3D's geometry stage (``dmtet-geometry``): geometry only, scored on normal maps (or, early, on
    [normal, mask] as latents)."""

    Particle = GeometryParticle
    validation_shading = "textureless"

    def particle_groups(self, particle: MeshParticle, o) -> list[dict]:
        return [g for g in super().particle_groups(particle, o) if g["name"] in ("sdf", "deformation")]

    def scored_image(self, out: dict[str, Tensor], step: int) -> tuple[Tensor, Optional[Tensor]]:
        """The normal map over the background, or [normal, mask] latents for the first ``latent_mask_steps``."""
        bg = torch.tensor(self.stage_cfg.mesh.background_color, device=self.device)
        normal_map = (out["normal"] * 0.5 + 0.5) * out["opacity"] + bg * (1 - out["opacity"])
        prior = self.prior
        if step < self.stage_cfg.mesh.latent_mask_steps and prior.is_latent and prior.unet.config.in_channels == 4:
            latents = torch.cat([out["normal"], out["opacity"] * 2 - 1], dim=-1).permute(0, 3, 1, 2)
            return normal_map, latents
        return normal_map, None


class MeshTextureSystem(MeshSystem):
    """Fantasia3D's appearance stage (``mesh-texture``): the earlier stage's geometry, frozen; an albedo or PBR
    texture trains."""

    Particle = TextureParticle

    def __init__(self, run_cfg, stage_name, stage_cfg, prior, run_dir=None):
        super().__init__(run_cfg, stage_name, stage_cfg, prior, run_dir)
        for p in self.particles:
            p.dmtet.sdf.requires_grad_(False)
            p.dmtet.deformation.requires_grad_(False)

    def particle_groups(self, particle: MeshParticle, o) -> list[dict]:
        if particle.material is None:
            return [g for g in super().particle_groups(particle, o) if g["name"] in ("encoding", "network")]
        groups = [{**g, "name": f"material-{g['name']}"} for g in particle.material.parameter_groups(o.lr_encoding,
                                                                                                    o.lr_network)]
        return groups + [{"params": [q for q in particle.light.parameters() if q.requires_grad], "lr": o.lr_background,
                          "name": "light"}]

    def regularizers(self, particle, out: dict[str, Tensor]) -> dict[str, Tensor]:
        return {}  # the geometry is fixed
