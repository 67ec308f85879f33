r"""Sketch-Shape (Latent-NeRF, Metzer et al. 2022): a rough mesh that steers a NeRF's geometry.

The sketch is a closed mesh in dream3d's world (Y up, front +Z, inside the scene box [-r, r]^3, in the same units
as an exported ``model.glb``). Its solid occupancy o(p) ∈ {0, 1} and the distance d(p) from p to its surface are
precomputed on a grid over the box (trilinear lookups). At points p drawn uniformly in the box, the NeRF's opacity
over one ray-march step δ,

    α(p) = 1 - exp(-σ(p) δ),

is pulled towards the sketch's occupancy by a binary cross-entropy that loosens near the sketch's surface:

    L_sketch = mean_p  BCE(α(p), o(p)) · (1 - exp(-d(p)² / (2 σ_S²)))

(σ: the NeRF's density; σ_S: ``sketch_sigma``, the leniency in scene units). Far from the surface the sketch
decides what is solid and what is empty; within about σ_S of it the score distillation is free to shape the
details (the sketch is rough). Where dream3d departs: the paper scores the points along the training rays; here
the points are uniform in the box (every region, including those no ray of the step crosses, is held to the sketch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SKETCH_GRID = 64  # cells per side of the occupancy and distance grids over the scene box
SKETCH_POINTS = 4096  # points drawn per step


class SketchShape:
    """The occupancy and distance grids of a sketch mesh over the box [-radius, radius]^3, and its loss. Not an
    nn.Module: nothing of it enters a checkpoint (the run's config names the file)."""

    def __init__(self, verts: Tensor, faces: Tensor, radius: float, sigma: float, res: int = SKETCH_GRID):
        from scipy.ndimage import distance_transform_edt

        from dream3d.eval import occupancy

        self.radius, self.sigma = float(radius), float(sigma)
        occ = occupancy(verts.float() * (0.5 / self.radius), faces.long(), res).cpu().numpy().astype(bool)  # [x,y,z]
        if not occ.any():
            raise ValueError("the sketch mesh encloses no volume inside the scene box (expected a closed mesh)")
        cell = 2.0 * self.radius / res
        dist = np.where(occ, distance_transform_edt(occ), distance_transform_edt(~occ)) * cell
        # grids as [1,1,D,H,W] = [z,y,x] for grid_sample, whose (x, y, z) coordinates index (W, H, D)
        self.occupancy = torch.from_numpy(occ.astype(np.float32)).permute(2, 1, 0)[None, None].contiguous()
        self.distance = torch.from_numpy(dist.astype(np.float32)).permute(2, 1, 0)[None, None].contiguous()

    @classmethod
    def load(cls, path: str | Path, radius: float, sigma: float) -> "SketchShape":
        """A sketch from a mesh file (GLB, OBJ or PLY; read as data, nothing in it runs)."""
        from dream3d.export.mesh import load_mesh

        mesh = load_mesh(path)
        return cls(mesh.verts, mesh.faces, radius, sigma)

    def lookup(self, pts: Tensor) -> tuple[Tensor, Tensor]:
        """pts [N,3] world -> (occupancy [N] in [0, 1], distance to the surface [N]), trilinear; outside the box:
        the nearest cell's values."""
        g = (pts / self.radius).clamp(-1.0, 1.0).view(1, -1, 1, 1, 3)
        occ = F.grid_sample(self.occupancy.to(pts.device), g, align_corners=False, padding_mode="border")
        dist = F.grid_sample(self.distance.to(pts.device), g, align_corners=False, padding_mode="border")
        return occ.view(-1), dist.view(-1)

    def loss(self, density_fn, delta: float, generator: torch.Generator, device: torch.device,
             n: int = SKETCH_POINTS) -> Tensor:
        """L_sketch (module docstring) at ``n`` points drawn uniformly in the box; ``density_fn`` x [N,3] -> σ [N]."""
        pts = ((torch.rand(n, 3, generator=generator) * 2.0 - 1.0) * self.radius).to(device)
        target, dist = self.lookup(pts)
        alpha = (1.0 - torch.exp(-density_fn(pts) * delta)).clamp(1e-5, 1.0 - 1e-5)
        bce = F.binary_cross_entropy(alpha, target.clamp(0.0, 1.0), reduction="none")
        return (bce * (1.0 - torch.exp(-dist**2 / (2.0 * self.sigma**2)))).mean()
