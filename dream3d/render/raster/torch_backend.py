"""The pure-PyTorch rasterizer backend: visibility, perspective-correct barycentrics, analytic antialiasing.

It implements the contract of :mod:`dream3d.render.raster` (see there for the image orientation, pixel
centres, clipping and depth conventions) on any device; the dispatcher calls :func:`rasterize` and
:func:`antialias` here unless nvdiffrast takes the work.

How it works. The visibility pass runs without gradients: each surviving triangle is expanded into the
pixels of its screen bounding box (a triangle whose box fits in a small k x k square is tested on the
whole square by broadcasting; larger ones are expanded pixel by pixel with ``repeat_interleave``; both in
chunks whose total pixel count is bounded, so no ``[F, H*W]`` tensor is ever built), edge functions decide
coverage, and a packed ``(depth, triangle id)`` int64 key reduced with ``scatter_reduce(amin)`` resolves
the z-test in one pass (ties go to the lower triangle id). Then, for covered pixels only,
perspective-correct barycentrics are recomputed from the clip-space vertices of the winning triangle with
ordinary differentiable torch ops, so gradients flow from ``bary``/``depth`` (and everything interpolated
from them) to the vertices.

Silhouette gradients come from :func:`antialias`, an analytic edge antialiasing in the spirit of
nvdiffrast's: see its docstring.
"""

from __future__ import annotations

import bisect
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dream3d.render.mesh_geometry import edge_topology
from dream3d.render.raster.core import W_EPS, Raster, clip_to_pixels, covered_pixels, gather_corners

_MAX_CHUNK = 1 << 22  # most (triangle, pixel) candidates evaluated at once in the visibility pass
_NO_HIT = torch.iinfo(torch.int64).max
_INSIDE_EPS = 1e-6  # barycentric tolerance of the coverage test: shared edges never leave pinholes
_DENSE_SIDES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # bounding-box sides (pixels) whose triangles the visibility pass tests densely
_DENSE_MIN = 1 << 18  # ... when the pass has at least this many (triangle, pixel) candidates (below, per-call costs win)


# --------------------------------------------------------------------------------------------------------------
# Rasterization
# --------------------------------------------------------------------------------------------------------------


def rasterize(clip: Tensor, faces: Tensor, height: int, width: int, cull_backfaces: bool = False) -> Raster:
    """:func:`dream3d.render.raster.rasterize` in torch: clip [B,V,4], faces [F,3] -> :class:`Raster`."""
    faces = faces.long()
    with torch.no_grad():
        tri_id = _visibility(clip.detach(), faces, height, width, cull_backfaces)
    bary, depth = _barycentrics(clip, faces, tri_id)
    return Raster(tri_id=tri_id, bary=bary, depth=depth, mask=tri_id >= 0)


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
    per_vertex = torch.stack([xy[..., 0], xy[..., 1], z, (clip[..., 3] > W_EPS).to(clip.dtype)]).reshape(4, -1)
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
    """Z-buffer pass without gradients: clip [B,V,4], faces [F,3] -> visible triangle id per pixel [B,H,W].

    With at least :data:`_DENSE_MIN` candidates, triangles whose bounding box fits in a k x k square (k in
    :data:`_DENSE_SIDES`) are tested on that whole square at once (:func:`_splat_dense`: broadcasting, no
    per-pixel gathers; pixels outside the box are masked); the others pixel by pixel (:func:`_splat`). Both
    evaluate the same expressions, so the keys, and the winners, are the same either way."""
    B = clip.shape[0]
    count, coef, ints = _triangle_setup(clip, faces, height, width, cull_backfaces)
    keys = torch.full((B * height * width,), _NO_HIT, dtype=torch.int64, device=clip.device)
    if int(count.sum()) >= _DENSE_MIN:  # below, one per-pixel pass costs less than the buckets' calls
        count, coef, ints = _splat_small_boxes(keys, count, coef, ints, width)
    bounds = torch.cumsum(count, 0).tolist()
    start, n = 0, len(bounds)
    while start < n:  # chunks of triangles whose bounding boxes hold at most _MAX_CHUNK pixels (or one triangle)
        before = bounds[start - 1] if start > 0 else 0
        stop = max(bisect.bisect_right(bounds, before + _MAX_CHUNK, lo=start), start + 1)
        _splat(keys, count[start:stop], coef[:, start:stop], ints[:, start:stop], width)
        start = stop
    tri_id = torch.where(keys == _NO_HIT, -1, keys & 0xFFFFFFFF)
    return tri_id.view(B, height, width)


def _splat_small_boxes(keys: Tensor, count: Tensor, coef: Tensor, ints: Tensor, width: int) -> tuple[Tensor, ...]:
    """:func:`_splat_dense` every triangle whose box fits in a k x k square of :data:`_DENSE_SIDES` (each in the
    smallest such square); returns ``count``, ``coef`` and ``ints`` of the triangles left for :func:`_splat`."""
    box_h = torch.div(count, ints[1], rounding_mode="floor")
    side = torch.maximum(ints[1], box_h)
    done = torch.zeros_like(side, dtype=torch.bool)
    for k in _DENSE_SIDES:
        sel = ((side <= k) & ~done).nonzero().squeeze(1)
        done |= side <= k
        for part in sel.split(max(1, _MAX_CHUNK // (k * k))):
            _splat_dense(keys, k, box_h.index_select(0, part), coef.index_select(1, part), ints.index_select(1, part),
                         width)
    rest = (~done).nonzero().squeeze(1)
    return count.index_select(0, rest), coef.index_select(1, rest), ints.index_select(1, rest)


def _coverage_keys(coef: Tensor, face: Tensor, fx: Tensor, fy: Tensor) -> Tensor:
    """The z-test keys of pixels (fx, fy) boxes away from their triangles' first pixel: ``(depth << 32) | face``
    where the pixel centre is covered and in the depth range, :data:`_NO_HIT` elsewhere. ``coef`` rows, ``face``,
    ``fx`` and ``fy`` broadcast together (the triangle setup's affine coefficients, see :func:`_triangle_setup`)."""
    a0, b0, c0, a1, b1, c1, az, bz, cz = coef
    w0 = a0 * fx + b0 * fy + c0
    w1 = a1 * fx + b1 * fy + c1
    z = az * fx + bz * fy + cz
    inside = (w0 >= -_INSIDE_EPS) & (w1 >= -_INSIDE_EPS) & (w0 + w1 <= 1 + _INSIDE_EPS) & (z >= -1) & (z <= 1)
    return torch.where(inside, (_depth_key(z) << 32) | face, _NO_HIT)


def _splat(keys: Tensor, count: Tensor, coef: Tensor, ints: Tensor, width: int) -> None:
    """Test every pixel centre in the bounding boxes of a chunk of triangles; min-reduce keys [B*H*W] in place."""
    owner = torch.repeat_interleave(torch.arange(count.shape[0], device=count.device), count)
    starts = torch.cumsum(count, 0) - count
    first, box_w, face = torch.cat([ints, starts[None]]).index_select(1, owner).unbind(0)[:3]
    local = torch.arange(owner.shape[0], device=count.device) - starts.index_select(0, owner)
    dy = torch.div(local, box_w, rounding_mode="floor")
    dx = local - dy * box_w
    key = _coverage_keys(coef.index_select(1, owner), face, dx.to(coef.dtype), dy.to(coef.dtype))
    keys.scatter_reduce_(0, first + dy * width + dx, key, reduce="amin")


def _splat_dense(keys: Tensor, k: int, box_h: Tensor, coef: Tensor, ints: Tensor, width: int) -> None:
    """:func:`_splat` for triangles whose bounding boxes fit in k x k pixels: every triangle [T] against the same
    k x k offsets [T, k*k]; offsets outside a triangle's box get no key and write to its first pixel (a no-op
    under ``amin``)."""
    local = torch.arange(k * k, device=keys.device)
    dy, dx = torch.div(local, k, rounding_mode="floor"), local % k
    first, box_w, face = (row[:, None] for row in ints)
    key = _coverage_keys(coef[:, :, None], face, dx.to(coef.dtype), dy.to(coef.dtype))
    in_box = (dx < box_w) & (dy < box_h[:, None])
    key = torch.where(in_box, key, _NO_HIT)
    keys.scatter_reduce_(0, torch.where(in_box, first + dy * width + dx, first).reshape(-1), key.reshape(-1),
                         reduce="amin")


def _pixel_centres(idx: Tensor, height: int, width: int, dtype: torch.dtype) -> Tensor:
    """Flat pixel indices [N] -> pixel-space centres [N,2] as (x, y)."""
    rem = idx % (height * width)
    row = torch.div(rem, width, rounding_mode="floor")
    return torch.stack([rem - row * width, row], dim=-1).to(dtype) + 0.5


def _barycentrics(clip: Tensor, faces: Tensor, tri_id: Tensor) -> tuple[Tensor, Tensor]:
    """Differentiable perspective-correct barycentrics [B,H,W,3] and view depth [B,H,W] of the visible triangles."""
    B, H, W = tri_id.shape
    idx, image, tri = covered_pixels(tri_id)
    v = gather_corners(clip, faces, image, tri)  # [N,3,4]
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


# --------------------------------------------------------------------------------------------------------------
# Antialiasing
# --------------------------------------------------------------------------------------------------------------


def antialias(
    color: Tensor, rast: Raster, clip: Tensor, faces: Tensor, topology: Optional[Tensor] = None, max_steps: int = 16,
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

    ``topology`` is :func:`edge_topology(faces) <dream3d.render.mesh_geometry.edge_topology>`, computed here
    when not given (pass it to save time).
    """
    B, H, W, C = color.shape
    faces = faces.long()
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
    return corners, torch.where((w > W_EPS).all(-1), orient, torch.zeros_like(orient))


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


