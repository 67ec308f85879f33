"""The exported mesh shows what the field holds: a shape-world object put into a voxel field, baked into a
textured mesh, rendered from 8 views next to volume renders of the field itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dream3d.cameras import turntable
from dream3d.config import RendererConfig
from dream3d.export.mesh import bake_mesh
from dream3d.render.background import Background
from dream3d.render.mesh import render_textured
from dream3d.render.volume import VolumeRenderer
from dream3d.shapeworld import get

RADIUS, GRID, INSIDE = 0.6, 64, 200.0


def _winding_number(points: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Generalised winding number of a closed mesh at points [N,3] (1 inside, 0 outside; van Oosterom-Strackee)."""
    tri = verts[faces]  # [F,3,3]
    out = []
    for chunk in points.split(8192):
        a, b, c = (tri[None, :, k] - chunk[:, None] for k in range(3))  # [N,F,3]
        la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
        det = (a * torch.cross(b, c, dim=-1)).sum(-1)
        den = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out.append(torch.atan2(det, den).sum(-1) / (2 * torch.pi))
    return torch.cat(out)


def _nearest_face_colour(points: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor):
    """Colour of the face whose centroid is nearest (faces are small enough on the chosen object)."""
    centroid, face_colour = verts[faces].mean(1), colors[faces].mean(1)
    return torch.cat([face_colour[torch.cdist(c, centroid).argmin(-1)] for c in points.split(8192)])


class VoxelField(nn.Module):
    """A NeRF-shaped field from dense grids: density [G,G,G] and albedo [G,G,G,3] over [-RADIUS, RADIUS]^3."""

    def __init__(self, density: torch.Tensor, albedo: torch.Tensor):
        super().__init__()
        self.radius = RADIUS
        self.register_buffer("grid", torch.cat([density[None], albedo.permute(3, 0, 1, 2)])[None])  # [1,4,G,G,G]

    def _sample(self, x: torch.Tensor) -> torch.Tensor:
        g = (x / RADIUS).flip(-1).view(1, -1, 1, 1, 3)  # grid_sample wants (x, y, z) = (W, H, D) = our (k, j, i)
        return F.grid_sample(self.grid, g, align_corners=True, padding_mode="zeros")[0, :, :, 0, 0].t()

    def density(self, x):
        return self._sample(x)[:, 0]

    def forward(self, x, with_normals=False):
        v = self._sample(x)
        return {"density": v[:, 0], "albedo": v[:, 1:].clamp(0, 1)}


def _voxel_field(name: str) -> VoxelField:
    obj = get(name)
    axis = torch.linspace(-RADIUS, RADIUS, GRID)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    inside = _winding_number(pts, obj.verts, obj.faces) > 0.5
    colour = _nearest_face_colour(pts, obj.verts, obj.faces, obj.colors)
    return VoxelField((inside.float() * INSIDE).view(GRID, GRID, GRID), colour.view(GRID, GRID, GRID, 3))


def test_baked_mesh_matches_the_field_from_eight_views():
    field = _voxel_field("house")  # 196 faces, walls, roof, door and windows in different colours
    with torch.no_grad():
        mesh = bake_mesh(field.density, lambda x: field(x)["albedo"], RADIUS, resolution=96, texture_size=512)
    cams = turntable(8, elevation=20.0, distance=1.6, fovy=45.0, size=64)
    cfg = RendererConfig(num_samples=256, occupancy_grid=False, early_stop=0.0, background="solid")
    renderer, background = VolumeRenderer(cfg, RADIUS), Background("solid", (1.0, 1.0, 1.0))
    with torch.no_grad():
        rays_o, rays_d = cams.rays()
        vol = renderer(field, background, rays_o, rays_d, cams.light_position, "albedo")
        ras = render_textured(mesh, cams)
    vol_mask, mesh_mask = vol["opacity"][..., 0] > 0.5, ras["opacity"][..., 0] > 0.5
    iou = (vol_mask & mesh_mask).sum() / (vol_mask | mesh_mask).sum()
    both = vol_mask & mesh_mask
    vol_colour = vol["rgb"] / vol["opacity"].clamp_min(1e-6) - (1 - vol["opacity"]) / vol["opacity"].clamp_min(1e-6)
    error = (vol_colour - ras["albedo"]).abs()[both].mean()
    assert iou >= 0.9, f"silhouette IoU {iou:.3f}"
    assert error < 0.05, f"mean colour error {error:.4f}"
    # the figure would catch a broken bake: the door / wall / roof colours differ by far more than the threshold
    spread = ras["albedo"][mesh_mask].std(0).mean()
    assert spread > 0.1
