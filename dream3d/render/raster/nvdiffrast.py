"""The nvdiffrast backend of :mod:`dream3d.render.raster` (GPU users; optional, never imported on CPU runs).

:func:`dream3d.render.raster.rasterize` hands CUDA work here when ``backend="nvdiffrast"``, or ``"auto"`` and
nvdiffrast imports. The result is the same :class:`~dream3d.render.raster.core.Raster` (triangle ids,
perspective-correct barycentrics, view depth), so :func:`~dream3d.render.raster.interpolate` and
:func:`~dream3d.render.raster.face_attribute` work unchanged; nvdiffrast's own output is kept in
``Raster.native`` so that :func:`~dream3d.render.raster.antialias` can use ``nvdiffrast.torch.antialias``.

nvdiffrast's rasterizer output per pixel is (u, v, z/w, triangle id + 1) with the point at
u·p0 + v·p1 + (1 - u - v)·p2 of the triangle's corners; its gradients reach the clip-space positions
through u and v. ``tests/test_raster_backends.py`` checks agreement with the torch backend where both run.
(``import nvdiffrast.torch`` below is the installed package: imports are absolute.)
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from dream3d.render.raster.core import Raster


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether nvdiffrast imports and a CUDA device exists."""
    if not torch.cuda.is_available():
        return False
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:  # an import error, or a broken build
        return False
    return True


@functools.lru_cache(maxsize=None)
def _context(device_index: int):
    import nvdiffrast.torch as dr

    return dr.RasterizeCudaContext(device=torch.device("cuda", device_index))


def rasterize(clip: Tensor, faces: Tensor, height: int, width: int, cull_backfaces: bool = False) -> Raster:
    """Same contract as :func:`dream3d.render.raster.rasterize` (clip [B,V,4] on CUDA, faces [F,3])."""
    import nvdiffrast.torch as dr

    tri = faces.to(torch.int32).contiguous()
    native, _ = dr.rasterize(_context(clip.device.index or 0), clip.contiguous().float(), tri, (height, width))
    if cull_backfaces:  # nvdiffrast draws both sides; drop pixels of triangles clockwise in NDC
        tri_id = native[..., 3].long() - 1
        ndc = clip[..., :2] / clip[..., 3:4]
        corners = ndc[:, tri.long()]  # [B,F,3,2]
        e1, e2 = corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0]
        ccw = (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]) > 0  # [B,F]
        keep = torch.gather(ccw, 1, tri_id.clamp_min(0).flatten(1)).view_as(tri_id) & (tri_id >= 0)
        native = torch.where(keep[..., None], native, torch.zeros_like(native))
    tri_id = native[..., 3].long() - 1
    mask = tri_id >= 0
    u, v = native[..., 0], native[..., 1]
    bary = torch.stack([u, v, 1.0 - u - v], dim=-1) * mask[..., None]
    w = clip[..., 3]  # [B,V] view depth
    corners_w = w[:, tri.long()]  # [B,F,3]
    face_w = torch.gather(corners_w, 1, tri_id.clamp_min(0).flatten(1)[..., None].expand(-1, -1, 3))
    depth = (bary * face_w.view(*tri_id.shape, 3)).sum(-1) * mask
    return Raster(tri_id=tri_id, bary=bary, depth=depth, mask=mask, native=native)


def antialias(color: Tensor, rast: Raster, clip: Tensor, faces: Tensor, topology: Optional[Tensor] = None) -> Tensor:
    """``nvdiffrast.torch.antialias`` of ``color`` [B,H,W,C] with the raster's native output (``topology``: unused)."""
    import nvdiffrast.torch as dr

    return dr.antialias(color.contiguous(), rast.native, clip.contiguous().float(), faces.to(torch.int32).contiguous())
