"""Geometry of triangle meshes (verts [V,3], faces [F,3]): face and vertex normals, edge adjacency.

Conventions: faces wind counter-clockwise seen from outside, so ``cross(v1 - v0, v2 - v0)`` points outwards
(the convention of the marching-tets output, the shape world and the exporters). Edge ``k`` of a face joins
its corners ``k`` and ``(k + 1) % 3``.

Used by the rasterizer's antialiasing (:func:`edge_topology`), the mesh renderer
(:mod:`dream3d.render.mesh`) and the mesh stages' normal-consistency regulariser.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def face_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Unit face normals [F,3] (right-hand rule, outward for CCW-from-outside winding) of verts [V,3]."""
    v = verts[faces.long()]
    return F.normalize(torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1, eps=1e-12)


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals [V,3]."""
    v = verts[faces.long()]
    n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)  # length = 2 * area
    acc = torch.zeros_like(verts).index_add(0, faces.long().reshape(-1), n.repeat_interleave(3, dim=0))
    return F.normalize(acc, dim=-1, eps=1e-12)


def edge_topology(faces: Tensor) -> Tensor:
    """Opposite face across each triangle edge: faces [F,3] -> [F,3] int64, -1 on boundary edges.

    Edge ``k`` of a face joins its corners ``k`` and ``(k + 1) % 3``. Non-manifold edges pair up arbitrarily.
    """
    faces = faces.long()
    n_faces = faces.shape[0]
    a = faces
    b = faces.roll(-1, dims=1)
    n_verts = int(faces.max()) + 1 if n_faces else 1
    key = (torch.minimum(a, b) * n_verts + torch.maximum(a, b)).reshape(-1)  # [3F]
    sorted_key, order = torch.sort(key, stable=True)
    same = sorted_key[1:] == sorted_key[:-1]
    first, second = order[:-1][same], order[1:][same]
    opposite = torch.full((3 * n_faces,), -1, dtype=torch.int64, device=faces.device)
    opposite[first] = torch.div(second, 3, rounding_mode="floor")
    opposite[second] = torch.div(first, 3, rounding_mode="floor")
    return opposite.view(n_faces, 3)
