"""Differentiable triangle rasterization in pure PyTorch (the ``torch`` backend of the mesh renderer).

The API follows nvdiffrast (``rasterize`` -> ``interpolate`` -> ``antialias``) so that an nvdiffrast
backend can sit behind the same functions. Differences from nvdiffrast worth knowing:

* **Image orientation**: row 0 is the *top* of the image (NDC y = +1), like :meth:`Cameras.rays` and
  ordinary image files. (nvdiffrast puts NDC y = -1 in row 0; an nvdiffrast backend must flip.)
* **Pixel centres** sit at ``(i + 0.5, j + 0.5)`` in pixel units; NDC ``x = 2 (i + 0.5) / W - 1``,
  ``y = 1 - 2 (j + 0.5) / H``.
* **Clipping**: there is no near-plane clipping. Triangles with a vertex at ``w <= 1e-6`` (on or behind the
  camera plane) are dropped; fragments whose NDC depth lies outside [-1, 1] are discarded per pixel.
* **Depth**: :attr:`Raster.depth` is the *view depth* (clip ``w``: distance along the camera's viewing axis),
  perspective-correct and differentiable; 0 in the background. The z-test itself uses NDC z.

How it works. The visibility pass runs without gradients: each surviving triangle is expanded into the
pixels of its screen bounding box (vectorised with ``repeat_interleave``, in chunks whose total pixel count
is bounded, so no ``[F, H*W]`` tensor is ever built), edge functions decide coverage, and a packed
``(depth, triangle id)`` int64 key reduced with ``scatter_reduce(amin)`` resolves the z-test in one pass
(ties go to the lower triangle id). Then, for covered pixels only, perspective-correct barycentrics are
recomputed from the clip-space vertices of the winning triangle with ordinary differentiable torch ops,
so gradients flow from ``bary``/``depth`` (and everything interpolated from them) to the vertices.

Silhouette gradients come from :func:`antialias`, an analytic edge antialiasing in the spirit of
nvdiffrast's: see its docstring.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

_W_EPS = 1e-6  # vertices with clip w below this are "behind the camera": their triangles are dropped
_MAX_CHUNK = 1 << 22  # most (triangle, pixel) candidates evaluated at once in the visibility pass
_NO_HIT = torch.iinfo(torch.int64).max
_INSIDE_EPS = 1e-6  # barycentric tolerance of the coverage test: shared edges never leave pinholes


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
    w = clip[..., 3].clamp_min(_W_EPS)
    x = (clip[..., 0] / w + 1.0) * (0.5 * width)
    y = (1.0 - clip[..., 1] / w) * (0.5 * height)
    return torch.stack([x, y], dim=-1), clip[..., 2] / w


# --------------------------------------------------------------------------------------------------------------
# Rasterization
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Raster:
    """Result of :func:`rasterize` for a batch of B images of H x W pixels."""

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


def _edge(a: Tensor, b: Tensor, p: Tensor) -> Tensor:
    """2D edge function (cross product of b - a and p - a); a, b, p [...,2] -> [...]."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def _depth_key(z: Tensor) -> Tensor:
    """NDC z in [-1, 1] -> non-negative int64 whose order matches z (float32 bit pattern of (z + 1) / 2)."""
    z01 = ((z.float() + 1.0) * 0.5).clamp(0.0, 1.0)
    return z01.view(torch.int32).to(torch.int64)


def _affine(ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor, inv_area: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients (A, B, C) of the edge function of (a, b) times ``inv_area``: A x + B y + C."""
    dx, dy = (bx - ax) * inv_area, (by - ay) * inv_area
    return -dy, dx, dy * ax - dx * ay


def _triangle_setup(
    clip: Tensor, faces: Tensor, height: int, width: int, cull_backfaces: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Screen-space setup of every (image, triangle) that can cover a pixel centre (no gradients).

    Returns ``count`` [T] (pixels in its bounding box), ``coef`` [9,T] float and ``ints`` [3,T] int64. Within
    the box, the pixel (dx, dy) away from its top-left pixel has barycentrics ``b0 = coef[0] dx + coef[1] dy +
    coef[2]``, ``b1`` from ``coef[3:6]`` and NDC z from ``coef[6:9]`` (all affine in screen space; evaluated
    relative to the box so float32 keeps its precision). ``ints`` holds the flat index of the box's first pixel
    (b * H * W + row * W + col), the box width and the face index. Layouts are component-major because
    gathering contiguous rows is what CPU torch does fastest.
    """
    B, n_verts = clip.shape[:2]
    n_faces = faces.shape[0]
    xy, z = clip_to_pixels(clip, height, width)
    per_vertex = torch.stack([xy[..., 0], xy[..., 1], z, (clip[..., 3] > _W_EPS).to(clip.dtype)]).reshape(4, -1)
    ids = faces.t()[:, None, :] + (torch.arange(B, device=clip.device) * n_verts)[None, :, None]  # [3,B,F]
    corner = per_vertex.index_select(1, ids.reshape(-1)).view(4, 3, B * n_faces)
    (x0, x1, x2), (y0, y1, y2), (z0, z1, z2), (f0, f1, f2) = corner.unbind(0)
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)  # > 0 for triangles CCW in NDC
    lo_x = torch.ceil(torch.minimum(torch.minimum(x0, x1), x2) - 0.5).clamp_min(0)
    lo_y = torch.ceil(torch.minimum(torch.minimum(y0, y1), y2) - 0.5).clamp_min(0)
    hi_x = torch.floor(torch.maximum(torch.maximum(x0, x1), x2) - 0.5).clamp_max(width - 1)
    hi_y = torch.floor(torch.maximum(torch.maximum(y0, y1), y2) - 0.5).clamp_max(height - 1)
    ok = (f0 * f1 * f2 > 0) & (area.abs() > 1e-10) & (hi_x >= lo_x) & (hi_y >= lo_y)
    ok &= (torch.maximum(torch.maximum(z0, z1), z2) > -1) & (torch.minimum(torch.minimum(z0, z1), z2) < 1)
    if cull_backfaces:
        ok &= area < 0  # y is flipped in pixel space, so front faces (CCW in NDC) have negative area here
    sel = ok.nonzero().squeeze(1)
    packed = torch.stack([x0, x1, x2, y0, y1, y2, z0, z1, z2, area, lo_x, lo_y, hi_x, hi_y]).index_select(1, sel)
    x0, x1, x2, y0, y1, y2, z0, z1, z2, area, lo_x, lo_y, hi_x, hi_y = packed.unbind(0)
    ox, oy = lo_x + 0.5, lo_y + 0.5  # the box's first pixel centre is the local origin
    x0, x1, x2, y0, y1, y2 = x0 - ox, x1 - ox, x2 - ox, y0 - oy, y1 - oy, y2 - oy
    inv_area = 1.0 / area
    a0, b0, c0 = _affine(x1, y1, x2, y2, inv_area)
    a1, b1, c1 = _affine(x2, y2, x0, y0, inv_area)
    dz0, dz1 = z0 - z2, z1 - z2
    coef = torch.stack([a0, b0, c0, a1, b1, c1, a0 * dz0 + a1 * dz1, b0 * dz0 + b1 * dz1, c0 * dz0 + c1 * dz1 + z2])
    box_w = (hi_x - lo_x + 1).long()
    box_h = (hi_y - lo_y + 1).long()
    first = torch.div(sel, n_faces, rounding_mode="floor") * (height * width) + lo_y.long() * width + lo_x.long()
    ints = torch.stack([first, box_w, sel % n_faces])
    return box_w * box_h, coef, ints


def _visibility(clip: Tensor, faces: Tensor, height: int, width: int, cull_backfaces: bool) -> Tensor:
    """Z-buffer pass without gradients: clip [B,V,4], faces [F,3] -> visible triangle id per pixel [B,H,W]."""
    B = clip.shape[0]
    count, coef, ints = _triangle_setup(clip, faces, height, width, cull_backfaces)
    keys = torch.full((B * height * width,), _NO_HIT, dtype=torch.int64, device=clip.device)
    bounds = torch.cumsum(count, 0).tolist()
    start, n = 0, len(bounds)
    while start < n:  # chunks of triangles whose bounding boxes hold at most _MAX_CHUNK pixels (or one triangle)
        before = bounds[start - 1] if start > 0 else 0
        stop = max(bisect.bisect_right(bounds, before + _MAX_CHUNK, lo=start), start + 1)
        _splat(keys, count[start:stop], coef[:, start:stop], ints[:, start:stop], width)
        start = stop
    tri_id = torch.where(keys == _NO_HIT, -1, keys & 0xFFFFFFFF)
    return tri_id.view(B, height, width)


def _splat(keys: Tensor, count: Tensor, coef: Tensor, ints: Tensor, width: int) -> None:
    """Test every pixel centre in the bounding boxes of a chunk of triangles; min-reduce keys [B*H*W] in place."""
    owner = torch.repeat_interleave(torch.arange(count.shape[0], device=count.device), count)
    starts = torch.cumsum(count, 0) - count
    first, box_w, face = torch.cat([ints, starts[None]]).index_select(1, owner).unbind(0)[:3]
    local = torch.arange(owner.shape[0], device=count.device) - starts.index_select(0, owner)
    dy = torch.div(local, box_w, rounding_mode="floor")
    dx = local - dy * box_w
    fx, fy = dx.to(coef.dtype), dy.to(coef.dtype)
    a0, b0, c0, a1, b1, c1, az, bz, cz = coef.index_select(1, owner).unbind(0)
    w0 = a0 * fx + b0 * fy + c0
    w1 = a1 * fx + b1 * fy + c1
    z = az * fx + bz * fy + cz
    inside = (w0 >= -_INSIDE_EPS) & (w1 >= -_INSIDE_EPS) & (w0 + w1 <= 1 + _INSIDE_EPS) & (z >= -1) & (z <= 1)
    key = torch.where(inside, (_depth_key(z) << 32) | face, _NO_HIT)
    keys.scatter_reduce_(0, first + dy * width + dx, key, reduce="amin")


def _covered(tri_id: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flat indices [N] of covered pixels, their image index [N] and triangle id [N]."""
    flat = tri_id.reshape(-1)
    idx = (flat >= 0).nonzero().squeeze(1)
    hw = tri_id.shape[1] * tri_id.shape[2]
    return idx, torch.div(idx, hw, rounding_mode="floor"), flat.index_select(0, idx)


def _pixel_centres(idx: Tensor, height: int, width: int, dtype: torch.dtype) -> Tensor:
    """Flat pixel indices [N] -> pixel-space centres [N,2] as (x, y)."""
    rem = idx % (height * width)
    row = torch.div(rem, width, rounding_mode="floor")
    return torch.stack([rem - row * width, row], dim=-1).to(dtype) + 0.5


def _gather_corners(values: Tensor, faces: Tensor, image: Tensor, tri: Tensor) -> Tensor:
    """Per-vertex values [B,V,C] at the corners of faces ``tri`` [N] of images ``image`` [N] -> [N,3,C]."""
    B, V, C = values.shape
    ids = faces.index_select(0, tri) + (image * V)[:, None]
    return values.reshape(B * V, C).index_select(0, ids.reshape(-1)).view(-1, 3, C)


def _barycentrics(clip: Tensor, faces: Tensor, tri_id: Tensor) -> tuple[Tensor, Tensor]:
    """Differentiable perspective-correct barycentrics [B,H,W,3] and view depth [B,H,W] of the visible triangles."""
    B, H, W = tri_id.shape
    idx, image, tri = _covered(tri_id)
    v = _gather_corners(clip, faces, image, tri)  # [N,3,4]
    xy, _ = clip_to_pixels(v, H, W)
    p = _pixel_centres(idx, H, W, clip.dtype)
    area = _edge(xy[:, 0], xy[:, 1], xy[:, 2])
    screen = torch.stack(
        [_edge(xy[:, 1], xy[:, 2], p), _edge(xy[:, 2], xy[:, 0], p), _edge(xy[:, 0], xy[:, 1], p)], dim=-1
    ) / area[:, None]
    persp = screen / v[..., 3]  # b_i / w_i
    inv_w = persp.sum(-1, keepdim=True)
    bary = persp / inv_w
    bary_img = clip.new_zeros(B * H * W, 3).index_put((idx,), bary)
    depth_img = clip.new_zeros(B * H * W).index_put((idx,), 1.0 / inv_w.squeeze(-1))
    return bary_img.view(B, H, W, 3), depth_img.view(B, H, W)


BACKENDS = ("auto", "torch", "nvdiffrast")


def use_nvdiffrast(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` (auto | torch | nvdiffrast) means nvdiffrast for tensors on ``device``. ``auto`` picks
    it on CUDA when it imports; asking for nvdiffrast where it cannot run is an error."""
    if backend not in BACKENDS:
        raise ValueError(f"rasterizer backend: expected one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend == "torch" or device.type != "cuda":
        if backend == "nvdiffrast":
            raise ValueError("rasterizer backend nvdiffrast: needs CUDA tensors (this render is on the CPU)")
        return False
    from dream3d.render import nvdiffrast_backend

    if backend == "nvdiffrast" and not nvdiffrast_backend.available():
        raise ValueError("rasterizer backend nvdiffrast: it does not import; pip install "
                         "git+https://github.com/NVlabs/nvdiffrast, or use backend=torch")
    return nvdiffrast_backend.available()


def rasterize(clip: Tensor, faces: Tensor, height: int, width: int, cull_backfaces: bool = False,
              backend: str = "auto") -> Raster:
    """Rasterize triangles: clip-space vertices [B,V,4], faces [F,3] int64 -> :class:`Raster` of B x H x W.

    Coverage uses pixel centres with an inclusive edge test (a hair of tolerance, so shared edges leave no
    pinholes); the nearest fragment (smallest NDC z) wins, ties going to the lower face index.
    ``cull_backfaces`` drops triangles that are clockwise in NDC (seen from behind, for outward CCW winding).
    ``backend``: :func:`use_nvdiffrast` decides whether nvdiffrast does the work (CUDA only).
    """
    if use_nvdiffrast(backend, clip.device):
        from dream3d.render import nvdiffrast_backend

        return nvdiffrast_backend.rasterize(clip, faces, height, width, cull_backfaces)
    faces = faces.long()
    with torch.no_grad():
        tri_id = _visibility(clip.detach(), faces, height, width, cull_backfaces)
    bary, depth = _barycentrics(clip, faces, tri_id)
    return Raster(tri_id=tri_id, bary=bary, depth=depth, mask=tri_id >= 0)


def interpolate(attr: Tensor, rast: Raster, faces: Tensor) -> Tensor:
    """Interpolate vertex attributes [V,C] or [B,V,C] with the raster's barycentrics -> [B,H,W,C] (0 in background).

    Differentiable w.r.t. ``attr`` and (through ``rast.bary``) the clip-space vertices.
    """
    B, H, W = rast.tri_id.shape
    idx, image, tri = _covered(rast.tri_id)
    if attr.dim() == 2:
        vals = attr.index_select(0, faces.long().index_select(0, tri).reshape(-1)).view(-1, 3, attr.shape[-1])
    else:
        vals = _gather_corners(attr, faces.long(), image, tri)
    bary = rast.bary.reshape(-1, 3).index_select(0, idx)
    out = (bary[..., None] * vals).sum(1)
    return attr.new_zeros(B * H * W, attr.shape[-1]).index_put((idx,), out).view(B, H, W, -1)


def face_attribute(attr: Tensor, rast: Raster) -> Tensor:
    """Per-face attributes [F,C] or [B,F,C] gathered at each pixel's visible triangle -> [B,H,W,C] (0 background)."""
    B, H, W = rast.tri_id.shape
    idx, image, tri = _covered(rast.tri_id)
    if attr.dim() == 2:
        vals = attr.index_select(0, tri)
    else:
        vals = attr.reshape(-1, attr.shape[-1]).index_select(0, image * attr.shape[1] + tri)
    return attr.new_zeros(B * H * W, attr.shape[-1]).index_put((idx,), vals).view(B, H, W, -1)


# --------------------------------------------------------------------------------------------------------------
# Antialiasing
# --------------------------------------------------------------------------------------------------------------


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


def antialias(
    color: Tensor, rast: Raster, clip: Tensor, faces: Tensor,
    background: Optional[Union[Tensor, float]] = None, topology: Optional[Tensor] = None, max_steps: int = 16,
) -> Tensor:
    """Analytic silhouette antialiasing (nvdiffrast-style): color [B,H,W,C] -> [B,H,W,C].

    For every pair of horizontally or vertically adjacent pixels showing different triangles, the pixel in
    front (smaller depth; background is farthest) is ``a``, the other ``b``; pairs whose triangles share a
    vertex and face the same way (one continuous patch of surface) are skipped. Starting from ``a``'s triangle
    the segment between the two pixel centres is walked across the mesh (through the thin front-facing
    slivers, covering no pixel centre, that fine meshes show at grazing angles) until it leaves the surface
    through a *silhouette* edge: a mesh boundary, or an edge whose neighbour faces the other way on screen.
    If the walk reaches a triangle covering ``b`` instead, the pair is left alone; if it runs out of
    ``max_steps`` triangles, its last exit edge stands in for the silhouette (slightly inside it). With the crossing at fraction ``t`` of
    the way from ``a`` to ``b``, the front surface covers ``t - 1/2`` of pixel ``b`` (``t > 1/2``: ``b`` is
    blended towards ``a``'s colour) or misses ``1/2 - t`` of pixel ``a`` (``t < 1/2``: ``a`` is blended towards
    ``b``'s colour). An edge is handled only by the pair direction it is closer to perpendicular to (horizontal
    pairs for steep edges), so no pixel is corrected twice for one edge. ``t`` is a differentiable function of
    the edge's clip-space vertices: that is how vertex positions receive gradients from silhouettes (the
    derivative of the covered area). Corrections are computed from the input colours and summed.

    ``background`` (a float, [C], or broadcastable to [B,H,W,C]) replaces ``color`` at background pixels
    first; leave it None when ``color`` already holds the background. ``topology`` is
    :func:`edge_topology(faces) <edge_topology>`, computed here when not given (pass it to save time).
    """
    if rast.native is not None:  # rasterized by nvdiffrast: its antialias
        from dream3d.render import nvdiffrast_backend

        if background is not None:
            color = torch.where(rast.mask[..., None], color, torch.as_tensor(background).to(color).expand_as(color))
        return nvdiffrast_backend.antialias(color, rast, clip, faces)
    B, H, W, C = color.shape
    faces = faces.long()
    if background is not None:
        bg = torch.as_tensor(background, dtype=color.dtype, device=color.device).expand(B, H, W, C)
        color = torch.where(rast.mask[..., None], color, bg)
    if topology is None:
        topology = edge_topology(faces)
    flat = color.reshape(B * H * W, C)
    xy, _ = clip_to_pixels(clip, H, W)  # [B,V,2], differentiable
    with torch.no_grad():
        corners, orient = _screen_triangles(xy.detach(), clip.detach(), faces)
        pa, pb, horizontal = _pixel_pairs(rast.tri_id)
        n_faces = faces.shape[0]
        tri_flat = rast.tri_id.reshape(-1)
        image_offset = torch.div(pa, H * W, rounding_mode="floor") * n_faces
        ta, tb = tri_flat.index_select(0, pa), tri_flat.index_select(0, pb)
        ta, tb = torch.where(ta >= 0, ta + image_offset, -1), torch.where(tb >= 0, tb + image_offset, -1)
        keep = (~_continuous(ta, tb, faces, orient, n_faces)).nonzero().squeeze(1)
        pa, pb, horizontal = pa.index_select(0, keep), pb.index_select(0, keep), horizontal.index_select(0, keep)
        depth = torch.where(rast.mask, rast.depth.detach(), math.inf).reshape(-1)
        ta, tb = ta.index_select(0, keep), tb.index_select(0, keep)
        a_front = depth.index_select(0, pa) <= depth.index_select(0, pb)
        front, other = torch.where(a_front, pa, pb), torch.where(a_front, pb, pa)
        start = torch.where(a_front, ta, tb)  # the front pixel's triangle, as b * F + f
        image = torch.div(front, H * W, rounding_mode="floor")
        pf, po = _pixel_centres(front, H, W, xy.dtype), _pixel_centres(other, H, W, xy.dtype)
        lines = _edge_lines(corners, orient)
        tri, k, found = _walk_to_silhouette(lines, orient, topology, start, pf, po, max_steps)
        v = corners.index_select(0, tri)
        rows = torch.arange(k.shape[0], device=k.device)
        d = v[rows, (k + 1) % 3] - v[rows, k]
        steep = d[:, 1].abs() > d[:, 0].abs()
        sel = (found & (steep == horizontal)).nonzero().squeeze(1)
    tri, k, image = tri[sel], k[sel], image[sel]
    face = tri - image * n_faces
    n_verts = xy.shape[1]
    flat_faces = faces.reshape(-1)
    v0 = xy.reshape(-1, 2).index_select(0, flat_faces.index_select(0, face * 3 + k) + image * n_verts)
    v1 = xy.reshape(-1, 2).index_select(0, flat_faces.index_select(0, face * 3 + (k + 1) % 3) + image * n_verts)
    sign = orient.index_select(0, tri)
    front, other = front[sel], other[sel]
    ef = _edge(v0, v1, pf[sel]) * sign
    eo = _edge(v0, v1, po[sel]) * sign
    t = ef / (ef - eo)  # crossing point, as a fraction of the way from the front pixel to the other
    cf, co = flat.index_select(0, front), flat.index_select(0, other)
    over = t > 0.5
    target = torch.where(over, other, front)
    delta = torch.where(over[:, None], (t - 0.5)[:, None] * (cf - co), (0.5 - t)[:, None] * (co - cf))
    return flat.index_add(0, target, delta).view(B, H, W, C)


def _pixel_pairs(tri_id: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Adjacent pixels showing different triangles: flat indices a [N], b [N] (right of / below a) and a flag
    [N], True for horizontal pairs."""
    W = tri_id.shape[2]
    h = F.pad(tri_id[:, :, :-1] != tri_id[:, :, 1:], (0, 1)).reshape(-1).nonzero().squeeze(1)
    v = F.pad(tri_id[:, :-1] != tri_id[:, 1:], (0, 0, 0, 1)).reshape(-1).nonzero().squeeze(1)
    horizontal = torch.arange(h.shape[0] + v.shape[0], device=tri_id.device) < h.shape[0]
    return torch.cat([h, v]), torch.cat([h + 1, v + W]), horizontal


def _continuous(ta: Tensor, tb: Tensor, faces: Tensor, orient: Tensor, n_faces: int) -> Tensor:
    """Whether flat triangles ``ta``, ``tb`` [N] (b * F + f; -1 background) share a vertex and face the same way.

    Such pairs lie on one continuous patch of surface (the common case inside a finely tessellated object)
    and are not searched for silhouettes.
    """
    ca = faces.index_select(0, (ta % n_faces).clamp_min(0))
    cb = faces.index_select(0, (tb % n_faces).clamp_min(0))
    shared = (ca[:, :, None] == cb[:, None, :]).flatten(1).any(1)
    same = orient.index_select(0, ta.clamp_min(0)) == orient.index_select(0, tb.clamp_min(0))
    return shared & same & (ta >= 0) & (tb >= 0)


def _screen_triangles(xy: Tensor, clip: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel-space corners [B*F,3,2] and on-screen orientation [B*F] (+1/-1; 0 when behind the camera)."""
    B, V, _ = xy.shape
    ids = (faces[None] + (torch.arange(B, device=xy.device) * V)[:, None, None]).reshape(-1)
    corners = xy.reshape(-1, 2).index_select(0, ids).view(-1, 3, 2)
    w = clip[..., 3].reshape(-1).index_select(0, ids).view(-1, 3)
    orient = torch.sign(_edge(corners[:, 0], corners[:, 1], corners[:, 2]))
    return corners, torch.where((w > _W_EPS).all(-1), orient, torch.zeros_like(orient))


def _edge_lines(corners: Tensor, orient: Tensor) -> Tensor:
    """Edge lines [T,3,3] of triangles ``corners`` [T,3,2]: row k holds (A, B, C) with A x + B y + C >= 0 on the
    inner side of edge k (corner k to corner k + 1), for either orientation ``orient`` [T]."""
    start, end = corners, corners.roll(-1, dims=1)
    dx, dy = end[..., 0] - start[..., 0], end[..., 1] - start[..., 1]
    lines = torch.stack([-dy, dx, dy * start[..., 0] - dx * start[..., 1]], dim=-1)
    return lines * orient[:, None, None]


def _walk_to_silhouette(
    lines: Tensor, orient: Tensor, topology: Tensor, start: Tensor, pf: Tensor, po: Tensor, max_steps: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Walk each segment ``pf -> po`` [N,2] across the mesh from triangle ``start`` [N] (flat b * F + f ids).

    ``lines`` are :func:`_edge_lines` of all triangles. Returns the last triangle [N], its exit edge [N], and
    whether a silhouette (or, after ``max_steps`` triangles, the last exit edge) was crossed before ``po`` [N];
    False where the walk reached a triangle that covers ``po``.
    """
    n_faces = topology.shape[0]
    flat_topology = topology.reshape(-1)
    last, edge = start.clone(), torch.zeros_like(start)
    found = torch.zeros_like(start, dtype=torch.bool)
    ends_h = torch.stack([torch.cat([pf, torch.ones_like(pf[:, :1])], 1), torch.cat([po, torch.ones_like(po[:, :1])], 1)], 2)
    ids, cur, sign = torch.arange(start.shape[0], device=start.device), start, orient.index_select(0, start)
    for step in range(max_steps):
        e = torch.bmm(lines.index_select(0, cur), ends_h)  # [n,3 edges,2 ends]: edge functions at pf and po
        ef, eo = e[..., 0], e[..., 1]
        t, k = torch.where(eo < ef, ef / (ef - eo), math.inf).min(dim=1)  # where the segment leaves the triangle
        face = cur % n_faces
        opp = flat_topology.index_select(0, face * 3 + k)
        nxt = cur - face + opp.clamp_min(0)
        opp_sign = torch.where(opp >= 0, orient.index_select(0, nxt), 0)
        ends = t < 1.0
        silhouette = ends & (opp_sign != sign)
        last[ids], edge[ids], found[ids] = cur, k, silhouette
        go_on = (ends & ~silhouette).nonzero().squeeze(1)
        if go_on.numel() == 0:
            break
        if step == max_steps - 1:  # out of steps: the last exit is the best (inner) estimate of the silhouette
            found[ids.index_select(0, go_on)] = True
            break
        ids, cur, sign, ends_h = ids[go_on], nxt[go_on], sign[go_on], ends_h[go_on]
    return last, edge, found


# --------------------------------------------------------------------------------------------------------------
# Convenience renderer
# --------------------------------------------------------------------------------------------------------------


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


def _light_directions(cams, light: Optional[Tensor]) -> Tensor:
    """Unit directions towards the light [B,3]: given ([3] or [B,3]), else from the camera and above."""
    B = cams.batch_size
    if light is None:
        to_cam = F.normalize(cams.position, dim=-1)
        up = torch.tensor([0.0, 1.0, 0.0], dtype=to_cam.dtype, device=to_cam.device)
        return F.normalize(to_cam + 0.6 * up, dim=-1)
    light = torch.as_tensor(light, dtype=cams.c2w.dtype, device=cams.c2w.device)
    return F.normalize(light.reshape(-1, 3).expand(B, 3), dim=-1)


def texture_lookup(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup of ``texture`` [H,W,C] at ``uv`` [...,2] -> [...,C] (differentiable in both).

    The convention of :class:`dream3d.representations.mesh.TexturedMesh`: ``u`` runs along image columns,
    ``v = 0`` is image row 0 (the top row); texel centres at ``(i + 0.5) / W``; clamped at the border.
    """
    shape = uv.shape[:-1]
    grid = (uv.reshape(1, -1, 1, 2) * 2.0 - 1.0).to(texture.dtype)
    out = F.grid_sample(texture.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                        align_corners=False)  # [1,C,N,1]
    return out[0, :, :, 0].t().reshape(*shape, texture.shape[-1])


def render_mesh(
    verts: Tensor, faces: Tensor, colors: Optional[Tensor], cams, light: Optional[Tensor] = None,
    background: Union[float, Tensor] = 1.0, ambient: float = 0.35, smooth_normals: bool = False,
    face_colors: Optional[bool] = None, antialiased: bool = True, topology: Optional[Tensor] = None,
    uv: Optional[Tensor] = None, texture: Optional[Tensor] = None,
) -> dict[str, Tensor]:
    """Render a coloured or textured mesh with Lambert + ambient shading under a directional light.

    verts [V,3], faces [F,3], colors [V,3] per vertex or [F,3] per face (``face_colors`` forces the choice;
    by default per-face when ``colors`` has F rows and V != F). With ``uv`` [V,2] and ``texture`` [Ht,Wt,3]
    (both or neither) the albedo is instead the bilinear :func:`texture_lookup` at the interpolated uv, and
    ``colors`` is ignored (it may be None). ``light`` is the direction *towards* the light
    ([3] or [B,3], world); by default it comes from the camera, tilted upwards. Surfaces are shaded two-sided
    (normals flipped to face the camera). Returns ``rgb`` [B,H,W,3] composited over ``background``,
    ``alpha`` [B,H,W,1], ``albedo`` [B,H,W,3] (unshaded, 0 in background), ``normal`` [B,H,W,3] (world,
    unit, 0 in background), ``depth`` [B,H,W,1] (view depth, 0 in background). Flat normals unless
    ``smooth_normals``. ``topology`` (:func:`edge_topology` of ``faces``) can be passed to save recomputing
    it for every render of the same mesh.
    """
    if (uv is None) != (texture is None):
        raise ValueError("render_mesh: uv and texture must be given together (got only "
                         f"{'uv' if texture is None else 'texture'})")
    if texture is None and colors is None:
        raise ValueError("render_mesh: give colors, or uv and texture")
    faces = faces.long()
    H, W = cams.height, cams.width
    clip = transform(verts, mvp_from_cameras(cams).to(verts))
    rast = rasterize(clip, faces, H, W)
    if smooth_normals:
        normal = F.normalize(interpolate(vertex_normals(verts, faces), rast, faces), dim=-1, eps=1e-12)
    else:
        normal = face_attribute(face_normals(verts, faces), rast)
    pos = interpolate(verts, rast, faces)
    view = pos - cams.position.to(verts).view(-1, 1, 1, 3)
    normal = torch.where((normal * view).sum(-1, keepdim=True) > 0, -normal, normal)
    if texture is not None:
        albedo = texture_lookup(texture.to(verts), interpolate(uv.to(verts), rast, faces)) * rast.mask[..., None]
    else:
        per_face = face_colors if face_colors is not None else (colors.shape[0] == faces.shape[0] != verts.shape[0])
        albedo = face_attribute(colors, rast) if per_face else interpolate(colors, rast, faces)
    to_light = _light_directions(cams, light).to(verts).view(-1, 1, 1, 3)
    shade = albedo * (ambient + (1.0 - ambient) * (normal * to_light).sum(-1, keepdim=True).clamp_min(0.0))
    mask = rast.mask[..., None]
    bg = torch.as_tensor(background, dtype=verts.dtype, device=verts.device).expand_as(shade)
    rgba = torch.cat([torch.where(mask, shade, bg), mask.to(verts.dtype)], dim=-1)
    if antialiased:
        rgba = antialias(rgba, rast, clip, faces, topology=topology)
    return {"rgb": rgba[..., :3], "alpha": rgba[..., 3:], "albedo": albedo, "normal": normal * mask,
            "depth": rast.depth[..., None]}


def render_textured(
    mesh, cams, default_color: Union[float, Tensor] = 0.7, **kwargs
) -> dict[str, Tensor]:
    """:func:`render_mesh` of a :class:`~dream3d.representations.mesh.TexturedMesh`.

    The albedo comes from the mesh's texture when it has one (uv + texture), else its vertex colours, else
    ``default_color`` (grey; a float or an RGB triple). Other keyword arguments go to :func:`render_mesh`.
    """
    verts, faces = mesh.verts, mesh.faces
    if mesh.textured:
        return render_mesh(verts, faces, None, cams, uv=mesh.uv, texture=mesh.texture, **kwargs)
    if mesh.vertex_colors is not None:
        return render_mesh(verts, faces, mesh.vertex_colors.to(verts), cams, **{**kwargs, "face_colors": False})
    grey = torch.as_tensor(default_color, dtype=verts.dtype, device=verts.device).reshape(-1)
    return render_mesh(verts, faces, grey.expand(3).expand(verts.shape[0], 3), cams, **{**kwargs, "face_colors": False})
