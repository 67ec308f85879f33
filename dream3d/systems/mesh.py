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
* ``latent-paint`` and ``mesh-paint`` (Latent-Paint, Metzer et al. 2022): a user's mesh (``mesh=<file>``), kept
  exactly as given (centred, scaled to the camera's ``framing_radius``), and a colour field on it
  (:class:`~dream3d.fields.colour.ColourField`): first in the prior's latent space, rendered at the latent size
  and scored without the VAE encoder, then in RGB, started from the latent colours.

Regularizers of the geometry (weights in ``loss``): ``normal_consistency`` and ``laplacian``
(:mod:`dream3d.systems.base`). State per particle: ``particles.<k>.dmtet.*`` (+ ``material.*``, ``light.*``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream3d.cameras import Cameras
from dream3d.render.mesh import render_mesh
from dream3d.render.mesh_geometry import framed
from dream3d.render.shading import point_light_shader
from dream3d.representations.dmtet import DMTet
from dream3d.systems.base import BaseSystem, LatentStage, choose_shading, laplacian_loss, normal_consistency_loss


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


class PaintParticle(nn.Module):
    """A given mesh and a colour field on it (``mesh-paint``; ``latent-paint``'s :class:`LatentPaintParticle`).

    The mesh (``mesh.init``, a GLB/OBJ/PLY file) is read when the particle is built, centred on its bounding box and
    scaled so that its farthest vertex is at the camera's ``framing_radius`` (the size the stage's cameras frame),
    and kept in the checkpoint (``verts``, ``faces``): export does not need the file again."""

    volume = False
    required = "field."
    material: Optional[nn.Module] = None
    light: Optional[nn.Module] = None

    def __init__(self, stage_cfg):
        super().__init__()
        from dream3d.fields.colour import ColourField

        self.field = ColourField(stage_cfg.representation)
        verts, faces = torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long)
        path = stage_cfg.mesh.init
        if path not in ("sphere", "ellipsoid") and Path(path).is_file():
            verts, faces = load_paint_mesh(path, stage_cfg.camera.framing_radius)
        self.register_buffer("verts", verts)
        self.register_buffer("faces", faces)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("verts", "faces"):  # the checkpoint's mesh, whatever this particle was built with
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def surface(self) -> tuple[Tensor, Tensor]:
        return self.verts, self.faces

    def colour_field(self):
        return self.field

    def bake_colour(self):
        return self.field

    def bake(self, texture_size: int, max_faces: Optional[int], resolution: int = 128,
             threshold: Optional[float] = None):
        """The given mesh (every part of it) with the field baked into a texture."""
        from dream3d.export.mesh import bake_surface

        return bake_surface(self.verts, self.faces, self.bake_colour(), texture_size, max_faces, keep_largest=False)


class LatentPaintParticle(PaintParticle):
    """Latent-Paint's particle: the field outputs the prior's latents; ``latent_rgb`` (set from the prior by the
    system, checkpointed) maps them to colours for its export and for the RGB stage that starts from it."""

    def __init__(self, stage_cfg):
        super().__init__(stage_cfg)
        self.register_buffer("latent_rgb", torch.zeros(int(stage_cfg.representation.latent_channels) + 1, 3))

    def bake_colour(self):
        from dream3d.prior.latent import latents_to_rgb

        return lambda x: latents_to_rgb(self.field(x), self.latent_rgb)


def load_paint_mesh(path, radius: float) -> tuple[Tensor, Tensor]:
    """A mesh file -> (verts [V,3], faces [F,3]) centred on its bounding box, its farthest vertex at ``radius``."""
    from dream3d.export.mesh import load_mesh

    mesh = load_mesh(path)
    verts, faces = mesh.verts.float(), mesh.faces.long()
    if faces.shape[0] == 0:
        raise ValueError(f"{path}: the mesh has no faces")
    return framed(verts, radius), faces


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
        return point_light_shader(cams.light_position.to(self.device), shading, ambient)

    two_sided = False  # DMTet surfaces are closed and wound outwards

    def background(self) -> Tensor:
        """The colour behind the object in the stage's renders (``mesh.background_color``)."""
        return torch.tensor(self.stage_cfg.mesh.background_color, device=self.device)

    def reference_background(self) -> list[float]:
        return list(self.stage_cfg.mesh.background_color)

    def render(self, particle: MeshParticle, cams: Cameras, shading: str = "albedo") -> dict[str, Tensor]:
        cams = cams.to(self.device)
        verts, faces = particle.surface()
        out = render_mesh(verts, faces, cams, particle.colour_field(), shade=self.shade_fn(particle, shading, cams),
                          two_sided=self.two_sided, antialias_normals=True, background=self.background(),
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


class MeshPaintSystem(MeshSystem):
    """Texture a given mesh (``mesh-paint``; Latent-Paint's RGB stage): the geometry is the user's mesh, fixed; an
    RGB colour field on it trains on shaded renders (as the DMTet stage's). Started from a ``latent-paint`` stage,
    the field's output layer starts at the latent colours (:func:`dream3d.representations.nerf.rgb_head_from_latent`).
    The mesh is rendered two-sided: a user's mesh need not be closed or consistently wound."""

    Particle = PaintParticle
    two_sided = True

    def init_without_stage(self) -> None:
        if self.particles[0].faces.shape[0] == 0:
            raise ValueError(f"stage '{self.stage_name}': mesh.init: expected a mesh file to paint, got "
                             f"'{self.stage_cfg.mesh.init}'")

    def initialise(self, state: dict[str, Tensor], init_cfg) -> None:
        from dream3d.representations.nerf import rgb_head_from_latent

        state = dict(state)
        if init_cfg.representation.output == "latent" and self.stage_cfg.representation.output == "rgb":
            for k, particle in enumerate(self.particles):
                key = f"particles.{k}.field.network.layers.{len(particle.field.network.layers) - 1}"
                latent_rgb = self.latent_colours(state, k, init_cfg)
                state.pop(f"particles.{k}.latent_rgb")
                state[key + ".weight"], state[key + ".bias"] = rgb_head_from_latent(
                    state[key + ".weight"], state[key + ".bias"], latent_rgb, keep=0)
        self.load_state_dict(state, strict=False)

    def render_latent_source(self, source, cams: Cameras, init_cfg) -> dict[str, Tensor]:
        """A latent paint stage's renders of the given mesh, over the prior's latent of its background colour."""
        from dream3d.prior.latent import solid_latents

        background = solid_latents(self.prior, torch.tensor([init_cfg.mesh.background_color]))[0]
        return render_mesh(source.verts, source.faces, cams, source.field, shade=None, two_sided=True,
                           background=background.to(self.device))

    def particle_groups(self, particle, o) -> list[dict]:
        return particle.field.parameter_groups(o.lr_encoding, o.lr_network)

    def training_shading(self, step: int, gen: torch.Generator) -> str:
        return choose_shading(self.stage_cfg.renderer, step, gen)

    def regularizers(self, particle, out: dict[str, Tensor]) -> dict[str, Tensor]:
        return {}  # the geometry is given


class LatentPaintSystem(LatentStage, MeshPaintSystem):
    r"""Latent-Paint (Metzer et al. 2022): a colour field on a given mesh whose values are the latent prior's C
    latent channels, rasterised at the latent resolution and scored by SDS in latent space:

        z(u) = f(p(u)) where pixel u sees the surface point p(u), else z_bg          (an h x w latent image)
        ∇_θ L = w(t) (ε̂(z_t; y, t) - ε) ∂z/∂θ                                        (SDS in latent space)

    with f the field (θ its parameters), z_bg the VAE's latent of the background colour, ε̂ the guided noise
    prediction. No VAE encoder runs and the renders are not shaded (a latent is not an albedo). Validation grids
    show the VAE's decoding of latent renders. Where dream3d departs: the paper paints a UV texture map of latents;
    here the colours live in a hash-grid field on the surface (dream3d's texture representation everywhere), baked
    into a UV texture at export, and the RGB stage starts from an affine latent -> rgb fit to the prior's VAE."""

    Particle = LatentPaintParticle

    def __init__(self, run_cfg, stage_name, stage_cfg, prior, run_dir=None):
        super().__init__(run_cfg, stage_name, stage_cfg, prior, run_dir)
        self._background = torch.zeros(int(stage_cfg.representation.latent_channels))
        if prior is None:
            return
        self._background, latent_rgb = self.latent_setup(prior, stage_name, stage_cfg, stage_cfg.mesh.background_color)
        for particle in self.particles:
            particle.latent_rgb.copy_(latent_rgb)

    def background(self) -> Tensor:
        return self._background.to(self.device)

    def training_shading(self, step: int, gen: torch.Generator) -> str:
        return "albedo"

    def render_validation(self, particle, cams: Cameras) -> dict[str, Tensor]:
        return self.decoded(self.render(particle, cams, "albedo"))
