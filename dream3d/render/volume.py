"""Volume rendering of a NeRF by ray marching, in pure PyTorch, with empty-space skipping and early stop.

Each ray is clipped to the scene box and sampled at ``num_samples`` stratified points. Two things keep
the field from being queried where it cannot matter:

* an **occupancy grid** (G^3 cells over the box) holds an exponential moving maximum of the density
  seen in each cell; samples in cells whose alpha over one step stays below ``grid_threshold`` are
  skipped (their contribution is below that alpha by construction);
* **early stop**: a first, gradient-free pass evaluates only the density at the occupied samples and
  computes each sample's transmittance; samples behind which it fell below ``early_stop`` (their weight
  is below that by construction) are dropped before the second pass, which evaluates density, albedo and
  normals with gradients. One call per pass: on a CPU each field call has a large fixed cost (a Python
  loop over the hash-grid levels), so marching in sequential chunks was slower than this.

Compositing uses the quadrature of Max (1995): alpha_i = 1 - exp(-sigma_i delta_i),
T_i = exp(-sum_{j<i} sigma_j delta_j), w_i = T_i alpha_i. Only the kept samples are evaluated with
gradients; their values are scattered into dense [rays, samples] tensors for the scan.

The **distortion** of Mip-NeRF 360 (Barron et al. 2022) is returned per image for the loss of the same name:
with s_i the i-th sample's position along its ray in the box, normalised to [0, 1], and 1/S its interval,
L_dist = sum_{i,j} w_i w_j |s_i - s_j| + 1/(3S) sum_i w_i^2, computed in O(S) per ray with running sums. It is
small for a ray whose weight sits in one short interval (a surface) and largest for weight spread along the ray
(haze, fog): a penalty on fog that leaves opaque bodies alone, unlike the sparsity loss.

Backends (``renderer.backend``, :func:`use_nerfacc`): ``torch`` (this file, any device) and ``nerfacc``
(:mod:`dream3d.render.volume_nerfacc`, CUDA only: nerfacc's grid traversal and packed compositing with this
file's occupancy grid, step, early stop and quadrature; its docstring lists where the samples differ). ``auto``
picks nerfacc for CUDA renders when it imports and its extension loads, else torch; asking for ``nerfacc`` where
it cannot run is an error naming what is missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream3d.render.background import Background
from dream3d.render.shading import shade


@dataclass
class RendererConfig:
    """Volume rendering (ray marching) settings."""

    backend: str = "auto"  # NeRF stages: auto | torch | nerfacc (CUDA); mesh stages: auto | torch | nvdiffrast
    num_samples: int = 64  # samples per ray across the scene box
    occupancy_grid: bool = True
    grid_resolution: int = 32
    grid_update_every: int = 16
    grid_threshold: float = 0.01  # a cell is empty when its alpha over one sample step stays below this
    grid_decay: float = 0.95
    early_stop: float = 1e-4  # samples behind which the transmittance fell below this are not evaluated (0: off)
    ambient_only_steps: int = 200  # albedo-only shading before this step
    textureless_prob: float = 0.5
    albedo_prob: float = 0.2
    ambient: float = 0.1  # ambient light share in diffuse/textureless shading
    background: str = "mlp"  # mlp (learned from view direction) | solid | random
    background_color: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])


BACKENDS = ("auto", "torch", "nerfacc")


def use_nerfacc(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` (auto | torch | nerfacc) means nerfacc for a render on ``device``
    (:func:`dream3d.render.use_accelerator`; what nerfacc needs: :func:`dream3d.render.volume_nerfacc.why_unavailable`)."""
    from dream3d.render import use_accelerator, volume_nerfacc

    return use_accelerator("volume renderer", backend, BACKENDS, "nerfacc", device, volume_nerfacc.why_unavailable)


def ray_aabb(origins: Tensor, dirs: Tensor, radius: float, near: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test against [-radius, radius]^3. origins/dirs [R,3] -> t_near [R], t_far [R], hit [R] bool."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-radius - origins) * inv
    t1 = (radius - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(near)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far, t_far > t_near


class OccupancyGrid(nn.Module):
    """A G^3 grid over [-radius, radius]^3 marking where the density can be non-negligible."""

    def __init__(self, radius: float, resolution: int, sigma_threshold: float, decay: float = 0.95):
        super().__init__()
        self.radius = radius
        self.resolution = resolution
        self.sigma_threshold = sigma_threshold
        self.decay = decay
        self.register_buffer("density", torch.full((resolution**3,), float("inf")))  # unknown = occupied
        self.register_buffer("occupied", torch.ones(resolution, resolution, resolution, dtype=torch.bool))

    def cell_index(self, pts: Tensor) -> tuple[Tensor, Tensor]:
        """pts [...,3] -> flat cell index [...] (int64) and inside-box mask [...]."""
        G = self.resolution
        u = (pts / self.radius + 1.0) * 0.5 * G
        ijk = u.floor().long()
        inside = ((ijk >= 0) & (ijk < G)).all(dim=-1)
        ijk = ijk.clamp(0, G - 1)
        return (ijk[..., 0] * G + ijk[..., 1]) * G + ijk[..., 2], inside

    def query(self, pts: Tensor) -> Tensor:
        """pts [...,3] -> bool [...]: inside the box and in an occupied cell."""
        idx, inside = self.cell_index(pts)
        return self.occupied.view(-1)[idx] & inside

    @torch.no_grad()
    def update(self, density_fn, generator: Optional[torch.Generator] = None, chunk: int = 65536) -> float:
        """Evaluate the density at one random point in every cell, keep max(decayed old, new), mark the cells above
        the threshold and their neighbours. Returns the occupied fraction."""
        G = self.resolution
        dev = self.density.device
        ar = torch.arange(G, device=dev)
        ijk = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), dim=-1).view(-1, 3).float()
        jitter = torch.rand(ijk.shape, generator=generator).to(dev)
        pts = ((ijk + jitter) / G * 2.0 - 1.0) * self.radius
        new = torch.cat([density_fn(pts[i : i + chunk]) for i in range(0, pts.shape[0], chunk)])
        old = torch.where(torch.isinf(self.density), torch.zeros_like(new), self.density * self.decay)
        self.density.copy_(torch.maximum(old, new))
        # dilate by one cell: a single random point per cell can miss a thin or partly covered cell
        above = (self.density > self.sigma_threshold).view(1, 1, G, G, G).float()
        self.occupied.copy_(F.max_pool3d(above, 3, stride=1, padding=1).view(G, G, G) > 0)
        return float(self.occupied.float().mean())


def distortion(w: Tensor) -> Tensor:
    """Mip-NeRF 360's distortion of weights w [R,S] at evenly spaced samples, positions s_i = (i + 1/2) / S.

    sum_{i,j} w_i w_j |s_i - s_j| = 2 sum_i w_i (s_i W_i - U_i), with W_i = sum_{j<i} w_j, U_i = sum_{j<i} w_j s_j;
    plus the intervals' own spread 1/(3S) sum_i w_i^2. Returns [R]. The stratified jitter is ignored (it moves a
    sample by less than its interval)."""
    S = w.shape[1]
    s = (torch.arange(S, device=w.device, dtype=w.dtype) + 0.5) / S
    ws = w * s
    before_w = torch.cumsum(w, dim=1) - w
    before_ws = torch.cumsum(ws, dim=1) - ws
    return 2.0 * (w * (s * before_w - before_ws)).sum(dim=1) + (w**2).sum(dim=1) / (3.0 * S)


class VolumeRenderer(nn.Module):
    """Renders a :class:`dream3d.representations.nerf.NeRF` for a batch of cameras.

    ``cfg`` is a :class:`dream3d.config.RendererConfig`. Returns a dict of images:
    rgb [B,H,W,3] (composited over the background; [B,H,W,C] for a latent field's C channels), opacity [B,H,W,1], depth [B,H,W,1], normal [B,H,W,3]
    (world space, composited, not normalised), plus scalars ``orient`` (DreamFusion orientation penalty,
    sum of w_i max(0, n_i.d)^2 per ray, averaged over rays; weights detached), ``distortion`` (Mip-NeRF 360's,
    averaged over rays: :func:`distortion`) and ``samples`` (how many field evaluations the image took), and
    ``weights`` [M], the compositing weights of those evaluated samples.
    """

    def __init__(self, cfg, radius: float):
        super().__init__()
        self.cfg = cfg
        self.radius = radius
        step = 2.0 * radius / cfg.num_samples
        sigma_threshold = -math.log(1.0 - cfg.grid_threshold) / step
        self.grid = OccupancyGrid(radius, cfg.grid_resolution, sigma_threshold, cfg.grid_decay) if cfg.occupancy_grid else None

    @torch.no_grad()
    def update_grid(self, nerf, step: int, generator: Optional[torch.Generator] = None) -> Optional[float]:
        """Refresh the occupancy grid every ``grid_update_every`` steps (step 0 included)."""
        if self.grid is None or step % self.cfg.grid_update_every:
            return None
        return self.grid.update(nerf.density, generator)

    def forward(
        self,
        nerf,
        background: Background,
        rays_o: Tensor,
        rays_d: Tensor,
        light_position: Tensor,
        shading: str = "albedo",
        stratified: bool = False,
        generator: Optional[torch.Generator] = None,
        bg_color: Optional[Tensor] = None,
        with_normals: Optional[bool] = None,
    ) -> dict[str, Tensor]:
        """rays_o/rays_d [B,H,W,3], light_position [B,3]. ``with_normals`` defaults to shading != albedo."""
        B, H, W, _ = rays_o.shape
        need_normals = shading != "albedo" if with_normals is None else with_normals
        o, d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        if use_nerfacc(self.cfg.backend, o.device):
            return self._forward_nerfacc(nerf, background, o, d, (B, H, W), light_position, shading, stratified,
                                         generator, bg_color, need_normals)
        R, S = o.shape[0], self.cfg.num_samples
        dev = o.device
        t_near, t_far, hit = ray_aabb(o, d, self.radius, near=1e-3)
        span = (t_far - t_near).clamp_min(0.0)
        u = torch.rand(R, S, generator=generator).to(dev) if stratified else torch.full((R, S), 0.5, device=dev)
        t = t_near[:, None] + (torch.arange(S, device=dev)[None] + u) / S * span[:, None]  # [R,S]
        delta = (span / S)[:, None]  # [R,1]
        pts = o[:, None] + d[:, None] * t[..., None]  # [R,S,3]
        mask = hit[:, None].expand(R, S)
        if self.grid is not None:
            mask = mask & self.grid.query(pts)
        if self.cfg.early_stop > 0 and bool(mask.any()):
            with torch.no_grad():
                sd = torch.zeros(R, S, device=dev).masked_scatter(mask, nerf.density(pts[mask]) * delta.expand(R, S)[mask])
                t_before = torch.exp(-(torch.cumsum(sd, dim=1) - sd))
            mask = mask & (t_before > self.cfg.early_stop)

        ray_id, _ = mask.nonzero(as_tuple=True)
        p = pts[mask]  # [M,3]
        field = nerf(p, with_normals=need_normals)
        sd = torch.zeros(R, S, device=dev).masked_scatter(mask, field["density"] * delta[ray_id, 0])
        csum = torch.cumsum(sd, dim=1)
        w = torch.exp(-(csum - sd)) * (1.0 - torch.exp(-sd))  # [R,S] weights T_i alpha_i
        w_s = w[mask]  # [M]
        normal_s = field.get("normal")
        light_dir = None
        if shading != "albedo":
            light_dir = F.normalize(light_position[torch.div(ray_id, H * W, rounding_mode="floor")] - p, dim=-1)
        color = shade(field["albedo"], normal_s, light_dir, shading, self.cfg.ambient)
        rgb = torch.zeros(R, color.shape[-1], device=dev).index_add(0, ray_id, w_s[:, None] * color)
        normal_img = torch.zeros(R, 3, device=dev)
        orient = torch.zeros((), device=dev)
        if normal_s is not None:
            normal_img = normal_img.index_add(0, ray_id, w_s[:, None] * normal_s)
            orient = (w_s.detach() * (normal_s * d[ray_id]).sum(-1).clamp_min(0.0) ** 2).sum()
        opacity = w.sum(dim=1)
        depth = (w * t).sum(dim=1)
        rgb = rgb + (1.0 - opacity)[:, None] * background(d, bg_color)
        return _outputs((B, H, W), rgb, opacity, depth, normal_img, orient / R, distortion(w).mean(), w_s)

    def _forward_nerfacc(self, nerf, background: Background, o: Tensor, d: Tensor, shape: tuple[int, int, int],
                         light_position: Tensor, shading: str, stratified: bool,
                         generator: Optional[torch.Generator], bg_color: Optional[Tensor],
                         need_normals: bool) -> dict[str, Tensor]:
        """:meth:`forward` with nerfacc's packed marching and compositing (:mod:`dream3d.render.volume_nerfacc`);
        the same outputs, the same grid, step, early stop and quadrature."""
        from dream3d.render import volume_nerfacc as acc

        B, H, W = shape
        R, S = o.shape[0], self.cfg.num_samples
        dev = o.device
        t_near, t_far, hit = ray_aabb(o, d, self.radius, near=1e-3)
        t_far = torch.where(hit, t_far, t_near)  # a ray that misses the box gets no samples
        span = (t_far - t_near).clamp_min(1e-9)
        step = 2.0 * self.radius / S
        if self.grid is not None:
            occupied = self.grid.occupied
        else:
            G = self.cfg.grid_resolution
            occupied = torch.ones(G, G, G, dtype=torch.bool, device=dev)
        shift = torch.rand(R, generator=generator).to(dev) if stratified else None
        ray_id, t0, t1, info = acc.march(occupied, self.radius, o, d, t_near, t_far, step, shift, nerf.density,
                                         self.cfg.early_stop)
        t = (t0 + t1) * 0.5
        p = o[ray_id] + d[ray_id] * t[:, None]  # [M,3]
        field = nerf(p, with_normals=need_normals)
        w_s = acc.weights(t0, t1, field["density"], info)  # [M]
        normal_s = field.get("normal")
        light_dir = None
        if shading != "albedo":
            light_dir = F.normalize(light_position[torch.div(ray_id, H * W, rounding_mode="floor")] - p, dim=-1)
        color = shade(field["albedo"], normal_s, light_dir, shading, self.cfg.ambient)
        rgb = acc.accumulate(w_s, color, ray_id, R)
        opacity = acc.accumulate(w_s, None, ray_id, R)[:, 0]
        depth = acc.accumulate(w_s, t[:, None], ray_id, R)[:, 0]
        normal_img = torch.zeros(R, 3, device=dev)
        orient = torch.zeros((), device=dev)
        if normal_s is not None:
            normal_img = acc.accumulate(w_s, normal_s, ray_id, R)
            orient = (w_s.detach() * (normal_s * d[ray_id]).sum(-1).clamp_min(0.0) ** 2).sum()
        s_norm = (t - t_near[ray_id]) / span[ray_id]
        dist = acc.distortion(w_s, s_norm, (t1 - t0) / span[ray_id], info)
        rgb = rgb + (1.0 - opacity)[:, None] * background(d, bg_color)
        return _outputs(shape, rgb, opacity, depth, normal_img, orient / R, dist.mean(), w_s)


def _outputs(shape: tuple[int, int, int], rgb: Tensor, opacity: Tensor, depth: Tensor, normal: Tensor, orient: Tensor,
             dist: Tensor, weights: Tensor) -> dict[str, Tensor]:
    """The renderer's outputs (both backends): per-ray figures [R,...] as images [B,H,W,...], the scalars, and the
    weights w_i = T_i alpha_i of the evaluated samples, packed [M] (every other sample of the R x num_samples has
    weight below the grid's or the early stop's threshold; SJC's emptiness loss reads them)."""
    B, H, W = shape
    return {"rgb": rgb.view(B, H, W, -1), "opacity": opacity.view(B, H, W, 1), "depth": depth.view(B, H, W, 1),
            "normal": normal.view(B, H, W, 3), "orient": orient, "distortion": dist, "weights": weights,
            "samples": torch.tensor(float(weights.shape[0]))}
