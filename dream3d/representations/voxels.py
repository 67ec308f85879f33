r"""A dense voxel grid field (``representation.field: voxels``): SJC's voxel radiance field, with the interface of
:class:`dream3d.representations.nerf.NeRF` (``density(x)``, ``forward(x, with_normals)``, ``parameter_groups``,
``radius``), so the volume renderer, the occupancy grid, Sketch-Shape, the DMTet start and the export take it as
they take the hash-grid NeRF.

Two grids of G³ values over the scene box [-r, r]³ (G = ``voxel_resolution``, r = ``radius``), a value at the
centre of each cell (SJC's convention: a voxel is a cube, like a pixel), read by trilinear interpolation:

    v(x) = Σ_{corners k} λ_k(x) V_k,      f(x) = Σ_k λ_k(x) F_k

with V ∈ R^{G³} the raw density grid and F ∈ R^{C×G³} the feature grid (both zero at the start), λ_k(x) the
trilinear weights of the 8 cell centres around x (outside the outermost centres the border value holds). The
density and the colour are

    σ(x) = act(e^s v(x) + b + β_blob (1 - |x| / r_blob)),        c(x) = sigmoid(f(x))  or  f(x)

with act the ``density_activation`` (softplus in SJC), s a learned scalar log-scale of the density (SJC's
``d_scale``, zero at the start), b = ``density_shift`` (SJC: -1 for Stable Diffusion, so the empty-grid start is
a faint uniform fog, softplus(-1) = 0.31 per unit length), and the optional Magic3D blob of the NeRF
(``blob_density``; 0 gives SJC's uniform start). c(x) is an albedo in (0, 1) for ``output: rgb`` and
C = ``latent_channels`` raw latent channels for ``output: latent`` (no activation: SJC's ``V_SD``). Normals are
the negated, normalised density gradient, by autograd through the interpolation (``analytic``) or central
differences (``finite_difference``). For the export (:meth:`VoxelGrid.iso_level`, :meth:`VoxelGrid.surface_albedo`)
the marching-cubes level is the one whose silhouettes match the renders and the colour is composited along the
surface normal, since a grid has no smoothness between voxels.

Where dream3d departs from SJC: the feature grid starts at zero rather than standard normal (on the shipped
prior, 600 steps at 16 x 16 latents leave most voxels unseen, and random latents there export as speckled
colours); configs/sjc.yaml uses G = 32 rather than 100 on the shipped prior, the same ratio of voxels to latent
pixels as SJC's 100³ grid seen in 64 x 64 latents (a 64³ grid seen in 16 x 16 latents came out spongy); the learned
4 x 4 background texture is replaced by the latent of the prior's solid background (the Latent-NeRF particle's,
dream3d/systems/nerf.py); and SJC marches at half a voxel, here the renderer's ``num_samples`` sets the step.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream3d.fields import get_activation
from dream3d.fields.normals import finite_difference_normal


class VoxelGrid(nn.Module):
    """Density grid [1,1,G,G,G], feature grid [1,C,G,G,G] (index order z, y, x) and the density log-scale."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.radius = float(cfg.radius)
        self.channels = int(cfg.latent_channels) if cfg.output == "latent" else 3
        G = int(cfg.voxel_resolution)
        self.density_grid = nn.Parameter(torch.zeros(1, 1, G, G, G))
        self.feature_grid = nn.Parameter(torch.zeros(1, self.channels, G, G, G))
        self.density_scale = nn.Parameter(torch.zeros(()))
        self.density_act = get_activation(cfg.density_activation)

    def _sample(self, grid: Tensor, x: Tensor) -> Tensor:
        """Trilinear read of ``grid`` [1,K,G,G,G] at world points x [N,3] -> [N,K]."""
        u = (x / self.radius).view(1, -1, 1, 1, 3)  # grid_sample's (x, y, z) index (W, H, D)
        out = F.grid_sample(grid, u.to(grid.dtype), mode="bilinear", padding_mode="border", align_corners=False)
        return out.view(grid.shape[1], -1).t()

    def _raw_density(self, x: Tensor) -> Tensor:
        """e^s v(x) + b + blob(x), [N]."""
        cfg = self.cfg
        raw = self._sample(self.density_grid, x)[:, 0] * self.density_scale.exp() + cfg.density_shift
        if cfg.blob_density:
            raw = raw + cfg.blob_density * (1.0 - x.norm(dim=-1) / cfg.blob_radius)
        return raw

    def density(self, x: Tensor) -> Tensor:
        """x [N,3] -> sigma [N] >= 0."""
        return self.density_act(self._raw_density(x))

    def forward(self, x: Tensor, with_normals: bool = False) -> dict[str, Tensor]:
        """x [N,3] -> {"density": [N], "albedo": [N,3] in (0,1) (latent: [N,C]), "normal": [N,3] unit (if asked)}."""
        normal = None
        if with_normals and self.cfg.normals == "analytic":
            need_graph = torch.is_grad_enabled()
            with torch.enable_grad():
                xg = x if x.requires_grad else x.detach().requires_grad_(True)
                sigma = self.density(xg)
                (grad,) = torch.autograd.grad(sigma.sum(), xg, create_graph=need_graph)
            if not need_graph:
                sigma = sigma.detach()
            normal = -grad
        else:
            sigma = self.density(x)
            if with_normals:
                normal = finite_difference_normal(self.density, x, self.cfg.finite_difference_eps)
        feat = self._sample(self.feature_grid, x)
        out = {"density": sigma, "albedo": torch.sigmoid(feat) if self.cfg.output == "rgb" else feat}
        if normal is not None:
            out["normal"] = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return out

    # export ---------------------------------------------------------------------------------------------------
    def iso_level(self, resolution: int) -> Optional[float]:
        """The export's marching-cubes level: :func:`dream3d.export.mesh.matched_threshold`, the level whose
        silhouettes match what the grid renders. A voxel grid trained by score distillation is a soft cloud
        (peak densities of 10-20 on the shipped prior) with isolated dense voxels; the default half-peak rule
        (``auto_threshold``) cuts it into a perforated shell."""
        from dream3d.export.mesh import density_grid, matched_threshold

        return matched_threshold(density_grid(self.density, self.radius, resolution), self.radius)

    def surface_albedo(self, x: Tensor, outside: float = 2.0, inside: float = 4.0, per_voxel: int = 2) -> Tensor:
        """The colour the renders show at surface points x [N,3]: the albedo composited along the inward normal
        n (the negated density gradient, central differences one voxel wide) from ``outside`` voxels out to
        ``inside`` voxels in, with the renderer's quadrature, normalised by the accumulated weight:

            c(x) = Σ_i w_i c(x + (a - i δ) n) / Σ_i w_i,    w_i = T_i (1 - exp(-σ_i δ)),

        δ = h / ``per_voxel`` (h the voxel size), a = ``outside`` h. A grid has no smoothness between voxels, so the
        albedo at one point is whichever voxel the iso-surface crosses, often one the renders only see through
        its neighbours (a latent grid then bakes speckled colours); the composite is what a camera facing the
        surface sees. Where nothing along the segment is dense (Σ w < 1e-4), the point's own albedo."""
        h = 2.0 * self.radius / self.density_grid.shape[-1]
        offsets = torch.eye(3, device=x.device) * h
        d = self.density(torch.cat([x + offsets[k] for k in range(3)] + [x - offsets[k] for k in range(3)]))
        d = d.view(6, -1)
        n = (d[3:] - d[:3]).t()  # -grad: outward
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        K = int(round((outside + inside) * per_voxel))
        delta = (outside + inside) * h / K
        s = outside * h - (torch.arange(K, device=x.device, dtype=x.dtype) + 0.5) * delta  # from outside inwards
        pts = x[:, None, :] + n[:, None, :] * s[None, :, None]  # [N,K,3]
        field = self(pts.reshape(-1, 3))
        sd = field["density"].view(-1, K) * delta
        w = torch.exp(-(torch.cumsum(sd, dim=1) - sd)) * (1.0 - torch.exp(-sd))  # [N,K]
        color = (w[..., None] * field["albedo"].view(-1, K, self.channels)).sum(1)
        total = w.sum(1, keepdim=True)
        own = self(x)["albedo"]
        return torch.where(total > 1e-4, color / total.clamp_min(1e-4), own)

    def parameter_groups(self, optim_cfg) -> list[dict]:
        """Both grids and the density scale at ``lr_encoding`` (the grids are this field's encoding)."""
        return [{"params": [self.density_grid, self.feature_grid, self.density_scale], "lr": optim_cfg.lr_encoding,
                 "name": "voxels"}]

    @staticmethod
    def rgb_state_from_latent(state: dict[str, Tensor], latent_rgb: Tensor) -> dict[str, Tensor]:
        """This field's state (keys without the particle prefix) of a latent grid as the state of an RGB grid at the
        latent colours: the logits 4 (rgb - 1/2) of rgb = [F, 1] M per cell (``latent_rgb`` M [C+1, 3],
        :func:`dream3d.prior.latent.latent_rgb_map`). Trilinear interpolation is linear, so a point's mapped
        latent is the interpolated mapped grid; sigmoid(4 (x - 1/2)) is within 0.12 of x on [0, 1]."""
        state = dict(state)
        grid = state["feature_grid"]  # [1,C,G,G,G]
        A, c = latent_rgb[:-1].to(grid), latent_rgb[-1].to(grid)
        rgb = torch.einsum("bcdhw,cr->brdhw", grid, A) + c.view(1, 3, 1, 1, 1)
        state["feature_grid"] = 4.0 * (rgb - 0.5)
        return state
