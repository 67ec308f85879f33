"""Differentiable triangle rasterization: the contract and the backend dispatch.

The API follows nvdiffrast (:func:`rasterize` -> :func:`interpolate` / :func:`face_attribute` ->
:func:`antialias`). Two backends sit behind it: :mod:`~dream3d.render.raster.torch_backend` (pure PyTorch, any
device; the default) and :mod:`~dream3d.render.raster.nvdiffrast` (CUDA, when nvdiffrast imports; chosen by
``backend=`` and :func:`use_nvdiffrast`). Whichever runs, the result is a :class:`Raster` with these
conventions (they differ from nvdiffrast's own in places; its backend converts):

* **Image orientation**: row 0 is the *top* of the image (NDC y = +1), like :meth:`Cameras.rays` and
  ordinary image files. (nvdiffrast puts NDC y = -1 in row 0.)
* **Pixel centres** sit at ``(i + 0.5, j + 0.5)`` in pixel units; NDC ``x = 2 (i + 0.5) / W - 1``,
  ``y = 1 - 2 (j + 0.5) / H``.
* **Clipping**: there is no near-plane clipping. Triangles with a vertex at ``w <= 1e-6`` (on or behind the
  camera plane) are dropped; fragments whose NDC depth lies outside [-1, 1] are discarded per pixel.
* **Depth**: :attr:`Raster.depth` is the *view depth* (clip ``w``: distance along the camera's viewing axis),
  perspective-correct and differentiable; 0 in the background. The z-test itself uses NDC z.

Silhouette gradients come from :func:`antialias` (the torch backend's analytic edge antialiasing, or
nvdiffrast's). The :class:`Raster` type and the clip-space transforms (:func:`perspective`,
:func:`mvp_from_cameras`, :func:`transform`, :func:`clip_to_pixels`) live in
:mod:`~dream3d.render.raster.core`, which the backends import; nothing here is imported by a backend.
Mesh geometry (normals, edge topology) is :mod:`dream3d.render.mesh_geometry`; rendering a mesh with
shading is :mod:`dream3d.render.mesh`.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from dream3d.render.raster import torch_backend
from dream3d.render.raster.core import (
    BACKENDS,
    Raster,
    clip_to_pixels,
    covered_pixels,
    gather_corners,
    mvp_from_cameras,
    perspective,
    transform,
)

__all__ = [
    "BACKENDS",
    "Raster",
    "antialias",
    "clip_to_pixels",
    "face_attribute",
    "interpolate",
    "mvp_from_cameras",
    "perspective",
    "rasterize",
    "transform",
    "use_nvdiffrast",
]


def use_nvdiffrast(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` (auto | torch | nvdiffrast) means nvdiffrast for tensors on ``device``
    (:func:`dream3d.render.use_accelerator`: ``auto`` picks it on CUDA when it imports)."""
    from dream3d.render import use_accelerator
    from dream3d.render.raster import nvdiffrast

    def why() -> Optional[str]:
        return None if nvdiffrast.available() else (
            "it does not import; pip install git+https://github.com/NVlabs/nvdiffrast, or use backend=torch")

    return use_accelerator("rasterizer", backend, BACKENDS, "nvdiffrast", device, why)


def rasterize(clip: Tensor, faces: Tensor, height: int, width: int, cull_backfaces: bool = False,
              backend: str = "auto") -> Raster:
    """Rasterize triangles: clip-space vertices [B,V,4], faces [F,3] int64 -> :class:`Raster` of B x H x W.

    Coverage uses pixel centres with an inclusive edge test (a hair of tolerance, so shared edges leave no
    pinholes); the nearest fragment (smallest NDC z) wins, ties going to the lower face index.
    ``cull_backfaces`` drops triangles that are clockwise in NDC (seen from behind, for outward CCW winding).
    ``backend``: :func:`use_nvdiffrast` decides whether nvdiffrast does the work (CUDA only).
    """
    if use_nvdiffrast(backend, clip.device):
        from dream3d.render.raster import nvdiffrast

        return nvdiffrast.rasterize(clip, faces, height, width, cull_backfaces)
    return torch_backend.rasterize(clip, faces, height, width, cull_backfaces)


def interpolate(attr: Tensor, rast: Raster, faces: Tensor) -> Tensor:
    """Interpolate vertex attributes [V,C] or [B,V,C] with the raster's barycentrics -> [B,H,W,C] (0 in background).

    Differentiable w.r.t. ``attr`` and (through ``rast.bary``) the clip-space vertices.
    """
    B, H, W = rast.tri_id.shape
    idx, image, tri = covered_pixels(rast.tri_id)
    if attr.dim() == 2:
        vals = attr.index_select(0, faces.long().index_select(0, tri).reshape(-1)).view(-1, 3, attr.shape[-1])
    else:
        vals = gather_corners(attr, faces.long(), image, tri)
    bary = rast.bary.reshape(-1, 3).index_select(0, idx)
    out = (bary[..., None] * vals).sum(1)
    return attr.new_zeros(B * H * W, attr.shape[-1]).index_put((idx,), out).view(B, H, W, -1)


def face_attribute(attr: Tensor, rast: Raster) -> Tensor:
    """Per-face attributes [F,C] or [B,F,C] gathered at each pixel's visible triangle -> [B,H,W,C] (0 background)."""
    B, H, W = rast.tri_id.shape
    idx, image, tri = covered_pixels(rast.tri_id)
    if attr.dim() == 2:
        vals = attr.index_select(0, tri)
    else:
        vals = attr.reshape(-1, attr.shape[-1]).index_select(0, image * attr.shape[1] + tri)
    return attr.new_zeros(B * H * W, attr.shape[-1]).index_put((idx,), vals).view(B, H, W, -1)


def antialias(
    color: Tensor, rast: Raster, clip: Tensor, faces: Tensor,
    background: Optional[Union[Tensor, float]] = None, topology: Optional[Tensor] = None, max_steps: int = 16,
) -> Tensor:
    """Silhouette antialiasing of ``color`` [B,H,W,C] rendered with ``rast`` from ``clip`` [B,V,4], ``faces``.

    The backend that rasterized does the work: nvdiffrast's ``antialias`` for its rasters, else the torch
    backend's analytic antialiasing (:func:`dream3d.render.raster.torch_backend.antialias`, whose docstring
    explains the method; ``topology`` and ``max_steps`` are its options). ``background`` (a float, [C], or
    broadcastable to [B,H,W,C]) replaces ``color`` at background pixels first; leave it None when ``color``
    already holds the background.
    """
    if background is not None:
        bg = torch.as_tensor(background, dtype=color.dtype, device=color.device).expand_as(color)
        color = torch.where(rast.mask[..., None], color, bg)
    if rast.native is not None:  # rasterized by nvdiffrast: its antialias
        from dream3d.render.raster import nvdiffrast

        return nvdiffrast.antialias(color, rast, clip, faces)
    return torch_backend.antialias(color, rast, clip, faces, topology=topology, max_steps=max_steps)
