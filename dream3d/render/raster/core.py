"""The rasterizer's shared vocabulary: the :class:`Raster` result, clip-space transforms, pixel bookkeeping.

Imported by the dispatcher (:mod:`dream3d.render.raster`) and by both backends
(:mod:`~dream3d.render.raster.torch_backend`, :mod:`~dream3d.render.raster.nvdiffrast`); it imports neither.
The conventions every backend honours are listed in the package docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "torch", "nvdiffrast")
W_EPS = 1e-6  # vertices with clip w below this are "behind the camera": their triangles are dropped


@dataclass
class Raster:
    """Result of :func:`dream3d.render.raster.rasterize` for a batch of B images of H x W pixels."""

    tri_id: Tensor  # [B,H,W] int64, index into faces of the visible triangle, -1 for background
    bary: Tensor  # [B,H,W,3] perspective-correct barycentrics (differentiable w.r.t. clip), 0 in background
    depth: Tensor  # [B,H,W] view depth (clip w) of the visible surface (differentiable), 0 in background
    mask: Tensor  # [B,H,W] bool, tri_id >= 0
    native: Optional[Tensor] = None  # nvdiffrast backend: its own raster output, for its antialias

    @property
    def height(self) -> int:
        return self.tri_id.shape[1]

    @property
    def width(self) -> int:
        return self.tri_id.shape[2]


# --------------------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------------------


def perspective(fovy_deg: Tensor, near: float = 0.05, far: float = 10.0, aspect: float = 1.0) -> Tensor:
    """OpenGL projection matrices [B,4,4] from vertical fields of view ``fovy_deg`` [B] (degrees).

    ``aspect`` is width / height (1 for the square images used everywhere in dream3d). The camera looks down
    -Z; NDC z runs from -1 at ``near`` to +1 at ``far``.
    """
    fovy_deg = torch.as_tensor(fovy_deg, dtype=torch.get_default_dtype()).reshape(-1)
    f = 1.0 / torch.tan(torch.deg2rad(fovy_deg) / 2)
    proj = torch.zeros(fovy_deg.shape[0], 4, 4, dtype=fovy_deg.dtype, device=fovy_deg.device)
    proj[:, 0, 0] = f / aspect
    proj[:, 1, 1] = f
    proj[:, 2, 2] = (far + near) / (near - far)
    proj[:, 2, 3] = 2 * far * near / (near - far)
    proj[:, 3, 2] = -1.0
    return proj


def mvp_from_cameras(cams, near: float = 0.05, far: float = 10.0) -> Tensor:
    """World-to-clip matrices [B,4,4] for :class:`dream3d.cameras.Cameras`: ``projection @ inverse(c2w)``."""
    proj = perspective(cams.fovy.to(cams.c2w), near, far, aspect=cams.width / cams.height)
    return proj @ torch.linalg.inv(cams.c2w)


def transform(verts: Tensor, mvp: Tensor) -> Tensor:
    """Homogeneous transform: ``verts`` [V,3] or [B,V,3], ``mvp`` [B,4,4] -> clip-space vertices [B,V,4]."""
    homo = F.pad(verts, (0, 1), value=1.0)
    if homo.dim() == 2:
        return torch.einsum("bij,vj->bvi", mvp, homo)
    return torch.einsum("bij,bvj->bvi", mvp, homo)


def clip_to_pixels(clip: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Clip-space vertices [...,4] -> (continuous pixel coordinates [...,2] as (x right, y down), NDC z [...]).

    Pixel ``(row j, col i)`` has its centre at ``(i + 0.5, j + 0.5)``. Vertices with ``w <= 0`` give
    meaningless values; callers drop their triangles.
    """
    w = clip[..., 3].clamp_min(W_EPS)
    x = (clip[..., 0] / w + 1.0) * (0.5 * width)
    y = (1.0 - clip[..., 1] / w) * (0.5 * height)
    return torch.stack([x, y], dim=-1), clip[..., 2] / w


# --------------------------------------------------------------------------------------------------------------
# Covered pixels
# --------------------------------------------------------------------------------------------------------------


def covered_pixels(tri_id: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flat indices [N] of covered pixels of ``tri_id`` [B,H,W], their image index [N] and triangle id [N]."""
    flat = tri_id.reshape(-1)
    idx = (flat >= 0).nonzero().squeeze(1)
    hw = tri_id.shape[1] * tri_id.shape[2]
    return idx, torch.div(idx, hw, rounding_mode="floor"), flat.index_select(0, idx)


def gather_corners(values: Tensor, faces: Tensor, image: Tensor, tri: Tensor) -> Tensor:
    """Per-vertex values [B,V,C] at the corners of faces ``tri`` [N] of images ``image`` [N] -> [N,3,C]."""
    B, V, C = values.shape
    ids = faces.index_select(0, tri) + (image * V)[:, None]
    return values.reshape(B * V, C).index_select(0, ids.reshape(-1)).view(-1, 3, C)
