"""Mesh stages: a DMTet surface (per particle) rendered by the differentiable rasterizer and scored by SDS or VSD.

Three kinds, one class each (the ``system`` names of the registry):

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

from dream3d.cameras import Cameras, sample_cameras, turntable
from dream3d.prior.prompts import PromptEmbeddings
from dream3d.registry import GUIDANCES, resolve
from dream3d.render.shading import shade
from dream3d.representations.dmtet import DMTet, render_surface
from dream3d.systems.base import BaseSystem, laplacian_loss, normal_consistency_loss
from dream3d.systems.nerf import VALIDATION_AZIMUTHS, choose_shading

KINDS = ("refine", "geometry", "texture")


class MeshParticle(nn.Module):
    """One result of a mesh stage: the DMTet and, for a PBR texture stage, the material field and light."""

    def __init__(self, stage_cfg, kind: str):
        super().__init__()
        self.dmtet = DMTet(stage_cfg.dmtet)
        self.material: Optional[nn.Module] = None
        self.light: Optional[nn.Module] = None
        if kind == "texture" and stage_cfg.mesh.material == "pbr":
            from dream3d.fields.material import MaterialConfig, MaterialField
            from dream3d.render.shading import EnvironmentLight

            d = stage_cfg.dmtet  # the material field is sized like the stage's albedo field
            self.material = MaterialField(MaterialConfig(radius=d.radius, encoding=d.encoding, backend=d.backend,
                                                         hidden=d.hidden, hidden_layers=d.hidden_layers))
            self.light = EnvironmentLight(stage_cfg.mesh.light)
        self._fixed: Optional[tuple[Tensor, Tensor]] = None  # texture stages: the meshed, frozen geometry

    def surface(self, fixed: bool) -> tuple[Tensor, Tensor]:
        """(verts [M,3], faces [F,3]): differentiable, or meshed once without gradients when ``fixed``."""
        if not fixed:
            return self.dmtet.mesh()
        if self._fixed is None or self._fixed[0].device != self.dmtet.sdf.device:
            with torch.no_grad():
                self._fixed = self.dmtet.mesh()
        return self._fixed

    def colour_field(self):
        """points [N,3] -> albedo [N,3], or the PBR material dict."""
        return self.material if self.material is not None else self.dmtet.albedo


def ellipsoid_sdf(axes: list[float]):
    """An approximate signed distance of the ellipsoid with semi-axes ``axes`` (exact for a sphere)."""
    a = torch.tensor([float(x) for x in axes])

    def fn(x: Tensor) -> Tensor:
        return ((x / a.to(x)).norm(dim=-1) - 1.0) * float(a.min())

    return fn


class MeshSystem(BaseSystem):
    """A mesh stage (see the module docstring); subclasses fix :attr:`KIND`."""

    KIND = "refine"

    def __init__(self, run_cfg, stage_name, stage_cfg, prior, run_dir=None):
        super().__init__(run_cfg, stage_name, stage_cfg, prior, run_dir)
        self.particles = nn.ModuleList([MeshParticle(stage_cfg, self.KIND) for _ in range(run_cfg.particles)])
        self.guidance = resolve(GUIDANCES, stage_cfg.guidance.name, "guidance")(stage_cfg.guidance, prior)
        self.prompts = PromptEmbeddings(prior, run_cfg.prompt, run_cfg.negative_prompt, run_cfg.view_dependent)
        if stage_cfg.init is None:
            self.init_without_stage()
        if self.KIND == "texture":
            for p in self.particles:
                p.dmtet.sdf.requires_grad_(False)
                p.dmtet.deformation.requires_grad_(False)

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
        """From a NeRF stage: sdf from its density, albedo distilled (refine). From a DMTet stage: its geometry
        (and texture field). Particle k starts from the earlier stage's particle k (modulo their number)."""
        n_init = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("particles.")), default=0)
        for k, particle in enumerate(self.particles):
            prefix = f"particles.{k % n_init}."
            part = {key[len(prefix):]: v for key, v in state.items() if key.startswith(prefix)}
            if any(key.startswith("nerf.") for key in part):
                self._from_nerf(particle, part, init_cfg)
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

    def _from_nerf(self, particle: MeshParticle, part: dict[str, Tensor], init_cfg) -> None:
        from dream3d.representations.nerf import NeRF

        nerf = NeRF(init_cfg.representation)
        nerf.load_state_dict({key[len("nerf."):]: v for key, v in part.items() if key.startswith("nerf.")})
        nerf.eval()
        m = self.stage_cfg.mesh
        with torch.no_grad():
            particle.dmtet.init_from_density(nerf.density, fit_steps=m.init_fit_steps,
                                             seed=self.run_cfg.seed)
        if self.KIND == "refine" and m.texture_fit_steps > 0:
            distill_albedo(particle.dmtet, lambda x: nerf(x)["albedo"], m.texture_fit_steps, self.run_cfg.seed)

    # optimisation --------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.stage_cfg.optim
        groups = []
        for k, p in enumerate(self.particles):
            dm = p.dmtet.parameter_groups(o.lr_sdf, o.lr_deformation, o.lr_encoding, o.lr_network)
            if self.KIND == "geometry":  # the texture field is not scored
                dm = [g for g in dm if g["name"] in ("sdf", "deformation")]
            elif self.KIND == "texture":
                dm = [] if p.material is not None else [g for g in dm if g["name"] in ("encoding", "network")]
            groups += [{**g, "name": f"{g['name']}{k}"} for g in dm]
            if p.material is not None:
                groups += [{**g, "name": f"material-{g['name']}{k}"}
                           for g in p.material.parameter_groups(o.lr_encoding, o.lr_network)]
            if p.light is not None:
                groups.append({"params": [q for q in p.light.parameters() if q.requires_grad], "lr": o.lr_background,
                               "name": f"light{k}"})
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
        verts, faces = particle.surface(fixed=self.KIND == "texture")
        bg = torch.tensor(self.stage_cfg.mesh.background_color, device=self.device)
        out = render_surface(verts, faces, cams, particle.colour_field(), bg, True, self.shade_fn(particle, shading, cams),
                             backend=self.stage_cfg.renderer.backend)
        out.update(verts=verts, faces=faces)
        return out

    def scored_image(self, out: dict[str, Tensor], step: int) -> tuple[Tensor, Optional[Tensor]]:
        """What the guidance scores: the render (refine, texture) or the normal map, or [normal, mask] latents."""
        if self.KIND != "geometry":
            return out["rgb"], None
        bg = torch.tensor(self.stage_cfg.mesh.background_color, device=self.device)
        normal_map = (out["normal"] * 0.5 + 0.5) * out["opacity"] + bg * (1 - out["opacity"])
        prior = self.prior
        if step < self.stage_cfg.mesh.latent_mask_steps and prior.is_latent and prior.unet.config.in_channels == 4:
            latents = torch.cat([out["normal"], out["opacity"] * 2 - 1], dim=-1).permute(0, 3, 1, 2)
            return normal_map, latents
        return normal_map, None

    def training_step(self, batch, batch_idx):
        step = self.step
        gen = self.step_generator(step)
        cfg = self.stage_cfg
        n = len(self.particles)
        cams, images, latents, faces, regs = [], [], [], [], {}
        for particle in self.particles:
            cam = sample_cameras(cfg.camera, gen)
            shading = choose_shading(cfg.renderer, step, gen) if self.KIND == "refine" else "albedo"
            with self.timed("render"):
                out = self.render(particle, cam, shading)
            image, lat = self.scored_image(out, step)
            faces.append(out["faces"].shape[0])
            images.append(image)
            latents.append(lat)
            cams.append(cam)
            if self.KIND != "texture":
                for term, fn in (("normal_consistency", normal_consistency_loss), ("laplacian", laplacian_loss)):
                    if self.wants(term):
                        value = fn(out["verts"], out["faces"])
                        if term == "laplacian":  # in cells, so the weight does not depend on the grid resolution
                            value = value / particle.dmtet.cell_size**2
                        regs[term] = regs.get(term, 0.0) + value
        cams_all = Cameras.cat(cams)
        with self.timed("guidance"):
            labels = cams_all.view_labels(cfg.camera.front_threshold, cfg.camera.overhead_threshold)
            cond, uncond = self.prompts(labels)
            lat = torch.cat(latents) if latents[0] is not None else None
            g = self.guidance(torch.cat(images), cond, uncond, step, generator=gen, cameras=cams_all, latents=lat)
        terms = self.guidance_terms(g, n)
        terms.update(regs)
        loss, logs = self.weighted_loss(terms, step)
        logs.update(t=float(g["t"]), grad_norm=float(g["grad_norm"]), faces=sum(faces) / n)
        self.record(logs)
        return loss

    def render_views(self) -> dict[str, Tensor]:
        """Validation views: particle k's four views are columns 4k..4k+3 (rgb: what the stage scores)."""
        c = self.stage_cfg.camera
        outs = []
        for particle in self.particles:
            for az in VALIDATION_AZIMUTHS:
                cams = turntable(1, c.eval_elevation, c.eval_distance, c.eval_fovy, c.eval_size, start_azimuth=az)
                out = self.render(particle, cams, "textureless" if self.KIND == "geometry" else "albedo")
                outs.append(out)
        return {k: torch.cat([o[k] for o in outs]) for k in ("rgb", "normal", "opacity")}


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
    KIND = "refine"


class DMTetGeometrySystem(MeshSystem):
    KIND = "geometry"


class MeshTextureSystem(MeshSystem):
    KIND = "texture"
