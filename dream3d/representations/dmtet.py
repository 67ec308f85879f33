"""DMTet: a deformable tetrahedral grid with a per-vertex signed distance, meshed by marching tetrahedra.

The representation of the mesh stages (Magic3D's fine stage, Fantasia3D's geometry stage). The grid is the
Kuhn tetrahedralisation of :mod:`dream3d.representations.tets`, scaled to the scene box
``[-radius, radius]^3``. Trainable state:

* ``sdf`` [V]: signed distance at every grid vertex, **negative inside**;
* ``deformation`` [V,3]: raw offsets; a vertex moves by ``bound * h * tanh(deformation)`` per axis, ``h`` the
  cell size and ``bound`` :attr:`DMTetConfig.deformation_bound` cells (half a cell by default, so neighbouring
  vertices can meet but never pass each other). Above 1/6 of a cell per axis a tetrahedron can flatten or
  invert (its signed volume is affine in each corner, so checking the corners of the offset boxes settles it),
  which flips the winding of the bit of surface inside it; a bound below 1/6 rules that out;
* ``encoding`` + ``network``: a hash-grid encoding and a small MLP for the albedo, evaluated at surface points
  (the same building blocks as :class:`dream3d.representations.nerf.NeRF`).

:meth:`DMTet.mesh` runs :func:`~dream3d.representations.tets.marching_tets` on the deformed grid: the surface
vertices are differentiable in ``sdf`` and ``deformation``, so image losses from :func:`render_dmtet` (through
the rasterizer's barycentrics and its antialiased silhouettes) reach both. The surface is closed as long as the
inside region does not touch the box's boundary; the initialisers below keep it clear.

Initialisation (each resets the deformation to zero):

* :meth:`DMTet.init_from_sdf`: an analytic signed distance (sphere, ellipsoid) at the grid vertices;
* :meth:`DMTet.init_from_mesh`: a closed triangle mesh. Inside/outside comes from the winding number counted
  along the grid's lines (:func:`grid_winding_numbers`); the magnitude is the exact distance to the mesh at
  the vertices of sign-changing edges (the only ones that place the surface) and ``truncation`` cells
  elsewhere (a truncated SDF);
* :meth:`DMTet.init_from_density`: a density field such as a trained NeRF (Magic3D). ``sdf = threshold -
  density`` has the density's level set as its zero set; it is turned into distance units by one Newton step,
  ``(threshold - density) / |grad density|`` (gradient by central differences on the grid), truncated. With
  ``fit_steps > 0`` the sdf is then fitted (Adam) so that the piecewise-linear function marching tets meshes
  classifies points sampled around the surface like the density does (logistic loss on ``-sdf / tau``, a
  small pull towards the starting values): the sub-cell surface position is thus learnt from the density
  field itself rather than from linear interpolation of its grid samples, which matters for sharp fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream3d.fields import MLP, HashGridConfig, make_encoding
from dream3d.render.mesh import render_mesh
from dream3d.representations.tets import candidate_tets, kuhn_interpolate, load_tet_grid, marching_tets

__all__ = ["DMTetConfig", "DMTet", "render_dmtet", "grid_winding_numbers", "point_mesh_distance"]

SdfFn = Callable[[Tensor], Tensor]  # points [N,3] -> signed distance [N] (< 0 inside)
DensityFn = Callable[[Tensor], Tensor]  # points [N,3] -> density [N]


@dataclass
class DMTetConfig:
    """DMTet hyper-parameters."""

    resolution: int = 64  # grid cells per axis (32, 64, 128): 6 N^3 tetrahedra
    radius: float = 1.0  # the grid spans [-radius, radius]^3 (the NeRF's scene box)
    deformation_bound: float = 0.5  # largest vertex offset per axis, in cells (tanh-scaled); < 1/6: no inversion
    truncation: float = 2.0  # |sdf| of vertices away from the surface after init_from_mesh/density, in cells
    init_level: str = "half-peak"  # init_from_density's level: half-peak (auto_threshold) | matched (its renders)
    init_alpha: float = 0.5  # matched: the rendered opacity whose silhouettes the level matches
    # matched, when above init_alpha: start at this opacity's level (a tighter silhouette), plus the parts that
    # only init_alpha's level has (export.mesh.faint_parts: a white body under a dark hat); 0: off
    init_core_alpha: float = 0.0
    # matched: also fill the field's visual hull at init_alpha (export.mesh.visual_hull): a face or a white body
    # that renders faint from some side, or a bubble's inside, which no level reaches, starts solid
    init_hull: bool = False
    encoding: HashGridConfig = field(default_factory=HashGridConfig)  # albedo field
    backend: str = "auto"  # hash grid: auto | torch | tcnn
    hidden: int = 64  # albedo MLP width
    hidden_layers: int = 1


class DMTet(nn.Module):
    """Deformable tetrahedral grid + per-vertex sdf + albedo field (see the module docstring).

    Starts as a sphere of half the box's radius; call one of the ``init_from_*`` methods to start elsewhere.
    ``cache_dir`` overrides where the grid is cached (:func:`~dream3d.representations.tets.load_tet_grid`).
    """

    def __init__(self, cfg: DMTetConfig, cache_dir: Optional[str] = None):
        super().__init__()
        self.cfg = cfg
        self.radius = float(cfg.radius)
        self.resolution = int(cfg.resolution)
        grid = load_tet_grid(self.resolution, cache_dir, with_edges=False)
        # the grid is rebuilt from the config, so it stays out of checkpoints (persistent=False)
        self.register_buffer("grid_verts", grid.verts * self.radius, persistent=False)  # [V,3]
        self.register_buffer("tets", grid.tets, persistent=False)  # [T,4] int32
        n_verts = grid.verts.shape[0]
        self.sdf = nn.Parameter(torch.zeros(n_verts))  # [V]
        self.deformation = nn.Parameter(torch.zeros(n_verts, 3))  # [V,3] raw (pre-tanh)
        self.encoding = make_encoding(cfg.encoding, cfg.backend)
        self.network = MLP(self.encoding.n_output_dims, 3, cfg.hidden, cfg.hidden_layers, activation="relu")
        self.init_from_sdf(lambda x: x.norm(dim=-1) - 0.5 * self.radius)

    # ----------------------------------------------------------------------------------------------------------
    # Geometry
    # ----------------------------------------------------------------------------------------------------------

    @property
    def cell_size(self) -> float:
        """World-space edge length h of a grid cell."""
        return 2.0 * self.radius / self.resolution

    def vertices(self) -> Tensor:
        """Deformed grid vertices [V,3]: ``grid_verts + bound * h * tanh(deformation)``."""
        scale = self.cfg.deformation_bound * self.cell_size
        return self.grid_verts + scale * torch.tanh(self.deformation)

    def mesh(self) -> tuple[Tensor, Tensor]:
        """The surface: (verts [M,3], faces [F,3] int64), outward winding, differentiable in sdf and deformation."""
        candidates = candidate_tets(self.sdf.detach() < 0, self.resolution)
        return marching_tets(self.vertices(), self.sdf, self.tets, candidates=candidates)

    # ----------------------------------------------------------------------------------------------------------
    # Appearance
    # ----------------------------------------------------------------------------------------------------------

    def albedo(self, points: Tensor) -> Tensor:
        """Albedo [N,3] in (0, 1) at world points [N,3] (normalised to the box's [0,1]^3 for the encoding)."""
        u = ((points / self.radius) + 1.0) * 0.5
        return torch.sigmoid(self.network(self.encoding(u.clamp(0.0, 1.0))))

    def parameter_groups(self, lr_sdf: float, lr_deformation: float, lr_encoding: float, lr_network: float) -> list[dict]:
        """Adam parameter groups, named like the NeRF's."""
        return [
            {"params": [self.sdf], "lr": lr_sdf, "name": "sdf"},
            {"params": [self.deformation], "lr": lr_deformation, "name": "deformation"},
            {"params": list(self.encoding.parameters()), "lr": lr_encoding, "name": "encoding"},
            {"params": list(self.network.parameters()), "lr": lr_network, "name": "network"},
        ]

    # ----------------------------------------------------------------------------------------------------------
    # Initialisation
    # ----------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def init_from_sdf(self, sdf_fn: SdfFn) -> "DMTet":
        """Set the sdf to ``sdf_fn`` (world points [N,3] -> [N], negative inside) at the undeformed vertices."""
        self.sdf.copy_(_evaluate(sdf_fn, self.grid_verts).to(self.sdf))
        self.deformation.zero_()
        return self

    @torch.no_grad()
    def init_from_mesh(self, verts: Tensor, faces: Tensor) -> "DMTet":
        """Truncated signed distance of a closed mesh (verts [Vm,3] world, faces [Fm,3]) at the grid vertices.

        The mesh should be closed (overlapping closed parts are fine: inside is a non-zero winding number);
        its orientation does not matter. A majority vote over the x, y and z line families keeps a small
        hole from streaking the result.
        """
        verts = torch.as_tensor(verts).to(self.grid_verts.device, torch.float64)
        faces = torch.as_tensor(faces).to(self.grid_verts.device).long()
        votes = sum((grid_winding_numbers(verts, faces, self.resolution, self.radius, axis) != 0).int()
                    for axis in range(3))
        inside = votes >= 2
        band = self._band(inside)
        dist = point_mesh_distance(self.grid_verts[band].double(), verts, faces, max_distance=2 * self.cell_size)
        self._set_truncated(inside, band, dist)
        return self

    @torch.no_grad()
    def init_from_density(
        self, density_fn: DensityFn, threshold: Optional[float] = None, fit_steps: int = 200,
        fit_points: int = 200_000, batch: int = 16384, seed: int = 0,
    ) -> "DMTet":
        """Surface = the level set ``density == threshold`` of ``density_fn`` (world points [N,3] -> [N]).

        ``threshold`` None picks the level by ``cfg.init_level``: ``half-peak``,
        :func:`dream3d.export.mesh.auto_threshold` of the peak density (what the mesh export uses), or
        ``matched``, :func:`dream3d.export.mesh.matched_threshold` (the level whose silhouettes match the field's
        renders: a soft coarse NeRF's faint parts, such as a snowman's white body, are kept). Then ``fit_steps``
        steps of Adam fit the sdf to the density's inside/outside labels of ``fit_points`` points sampled around
        the surface (see the module docstring; 0 skips it). The density is evaluated at the grid vertices and,
        when fitting, once at the sample points. Returns self.
        """
        density = _evaluate(density_fn, self.grid_verts)
        n = self.resolution + 1
        if threshold is None:
            from dream3d.export.mesh import auto_threshold, matched_threshold

            if self.cfg.init_level == "matched":
                grid = density.float().cpu().view(n, n, n)
                threshold = matched_threshold(grid, self.radius, alpha=self.cfg.init_alpha)
                if self.cfg.init_core_alpha > self.cfg.init_alpha:
                    density_fn, density, threshold = self._core_and_faint_parts(density_fn, density, grid, threshold)
                if self.cfg.init_hull:
                    density_fn, density = self._with_hull(density_fn, density, grid, threshold)
            else:
                threshold = auto_threshold(float(density.max()), self.radius)
        raw = float(threshold) - density  # [V], negative inside
        grad = _grid_gradient(raw.view(n, n, n), self.cell_size).reshape(-1)
        trunc = self.cfg.truncation * self.cell_size
        sdf = torch.where(grad > 1e-12, raw / grad.clamp_min(1e-12), torch.sign(raw) * trunc)
        sdf = sdf.clamp(-trunc, trunc)
        sdf = torch.where(raw < 0, sdf.clamp(max=-1e-6 * self.cell_size), sdf.clamp(min=0.0))  # keep the signs
        self.sdf.copy_(sdf.to(self.sdf))
        self.deformation.zero_()
        if fit_steps > 0:
            with torch.enable_grad():
                self._fit_to_density(density_fn, float(threshold), fit_steps, fit_points, batch, seed)
        return self

    def _core_and_faint_parts(self, density_fn: DensityFn, density: Tensor, grid: Tensor, low: float):
        """``init_core_alpha``'s level everywhere but on the parts only ``low`` (init_alpha's level) has: the
        density is scaled up there by core / low, so one level (the core's) gives both. ``grid``: ``density`` (at
        the grid vertices) as the [n,n,n] CPU grid. -> (density_fn, density, threshold), scaled; unchanged when the
        core level is not above ``low``."""
        from dream3d.export.mesh import faint_parts, matched_threshold

        n = self.resolution + 1
        core = matched_threshold(grid, self.radius, alpha=self.cfg.init_core_alpha)
        if not core > low:
            return density_fn, density, low
        scale = torch.ones(n, n, n)
        scale[faint_parts(grid, low, core)] = core / low
        scale = scale.reshape(-1).to(density)
        factor = self._vertex_field(scale)

        def scaled(points: Tensor) -> Tensor:
            return density_fn(points).reshape(-1) * factor(points)

        return scaled, density * scale, core

    def _with_hull(self, density_fn: DensityFn, density: Tensor, grid: Tensor, threshold: float):
        """The level set of ``threshold`` united with the visual hull of ``grid`` (the density at the grid vertices,
        [n,n,n] on the CPU) at ``init_alpha``, where the level set lies below: there the density is raised to twice
        the level, with the edge at the level. -> (density_fn, density)."""
        from dream3d.export.mesh import visual_hull

        hull = visual_hull(grid, self.radius, alpha=self.cfg.init_alpha)
        # only over the level set (grid index 1 is y, up): no camera looks up from below an object, so under it the
        # hull hangs down to the lowest haze any side sees, a skirt that no view carves away
        hull &= (grid > float(threshold)).int().cummax(dim=1).values.bool()
        hull = hull.reshape(-1).float().to(density)
        level, inside = 2.0 * float(threshold), self._vertex_field(hull)

        def united(points: Tensor) -> Tensor:
            return torch.maximum(density_fn(points).reshape(-1), level * inside(points))

        return united, torch.maximum(density, level * hull)

    def _vertex_field(self, values: Tensor) -> DensityFn:
        """World points [N,3] -> ``values`` [V] (one per grid vertex) interpolated as marching tets meshes them."""
        radius, resolution = self.radius, self.resolution
        return lambda points: kuhn_interpolate(values.to(points), points / radius, resolution)

    def _band(self, inside: Tensor) -> Tensor:
        """Vertices [V] bool of the candidate cells of ``inside`` (those next to the surface)."""
        tets = self.tets.index_select(0, candidate_tets(inside, self.resolution)).long()
        band = torch.zeros_like(inside)
        band[tets.reshape(-1)] = True
        return band

    def _set_truncated(self, inside: Tensor, band: Tensor, dist: Tensor) -> None:
        """sdf = -/+ dist at ``band`` vertices, -/+ truncation elsewhere; deformation zero."""
        trunc = self.cfg.truncation * self.cell_size
        magnitude = torch.full_like(self.sdf, trunc)
        magnitude[band] = dist.to(magnitude).clamp(1e-6 * self.cell_size, trunc)
        self.sdf.copy_(torch.where(inside, -magnitude, magnitude))
        self.deformation.zero_()

    def _fit_to_density(self, density_fn: DensityFn, threshold: float, steps: int, n_points: int, batch: int,
                        seed: int) -> None:
        """Fit the sdf to the density's inside/outside labels of points sampled around the current surface."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        h = self.cell_size
        with torch.no_grad():
            surface, _ = self.mesh()
            n_near = n_points * 4 // 5 if len(surface) else 0
            near = surface[torch.randint(max(len(surface), 1), (n_near,), generator=gen).to(surface.device)]
            near = near + h * torch.randn(near.shape, generator=gen).to(near)
            box = (torch.rand(n_points - n_near, 3, generator=gen) * 2 - 1).to(near) * self.radius
            points = torch.cat([near, box]).clamp(-self.radius, self.radius)
            target = (_evaluate(density_fn, points) > threshold).to(points)  # 1 inside
        start = self.sdf.detach().clone()
        opt = torch.optim.Adam([self.sdf], lr=0.05 * h)
        tau = 0.1 * h
        for _ in range(steps):
            pick = torch.randint(len(points), (batch,), generator=gen).to(points.device)
            value = kuhn_interpolate(self.sdf, points[pick] / self.radius, self.resolution)
            loss = F.binary_cross_entropy_with_logits(-value / tau, target[pick])
            loss = loss + 1e-2 * ((self.sdf - start) / h).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():  # back to a truncated sdf (Adam's steps drift saturated far vertices outwards)
            trunc = self.cfg.truncation * h
            self.sdf.clamp_(-trunc, trunc)


def _evaluate(fn: Callable[[Tensor], Tensor], points: Tensor, chunk: int = 65536) -> Tensor:
    """fn on points [N,3] in chunks, without gradients -> [N] float32 (NaN -> 0)."""
    with torch.no_grad():
        out = torch.cat([fn(p).detach().reshape(-1).float() for p in points.split(chunk)])
    return torch.nan_to_num(out, nan=0.0)


def _grid_gradient(values: Tensor, h: float) -> Tensor:
    """|grad| [n,n,n] of grid samples [n,n,n] (spacing h) by central differences (one-sided at the border)."""
    parts = []
    for dim in range(3):
        d = torch.gradient(values, spacing=h, dim=dim)[0]
        parts.append(d * d)
    return torch.sqrt(sum(parts))


# --------------------------------------------------------------------------------------------------------------
# Mesh -> signed distance on the grid
# --------------------------------------------------------------------------------------------------------------


def _edge_function(p: Tensor, q: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """2D edge function of directed edges p -> q [K,2] at points (y, z) [K], exactly antisymmetric.

    It is evaluated from the lexicographically smaller end and negated for the other direction, so the two
    triangles sharing an edge get bit-identical values of opposite sign: no line slips between them.
    """
    swap = (p[:, 0] > q[:, 0]) | ((p[:, 0] == q[:, 0]) & (p[:, 1] > q[:, 1]))
    a = torch.where(swap[:, None], q, p)
    b = torch.where(swap[:, None], p, q)
    e = (b[:, 0] - a[:, 0]) * (z - a[:, 1]) - (b[:, 1] - a[:, 1]) * (y - a[:, 0])
    return torch.where(swap, -e, e)


def _covers(p: Tensor, q: Tensor, y: Tensor, z: Tensor, orient: Tensor) -> Tensor:
    """Whether edge p -> q [K,2] of triangles with 2D orientation ``orient`` [K] (+1/-1) admits points (y, z).

    Strictly inside is admitted; on the edge line, a tie rule on the edge's direction (counter-clockwise
    traversal: ``d = orient * (q - p)``; admitted when ``d_z > 0``, or ``d_z == 0`` and ``d_y < 0``) gives a
    point on a shared edge or vertex to exactly one of the triangles around it, like a rasterizer's top-left
    rule.
    """
    e = _edge_function(p, q, y, z) * orient
    d = (q - p) * orient[:, None]
    tie = (d[:, 1] > 0) | ((d[:, 1] == 0) & (d[:, 0] < 0))
    return (e > 0) | ((e == 0) & tie)


def grid_winding_numbers(verts: Tensor, faces: Tensor, resolution: int, radius: float, axis: int = 0,
                         max_pairs: int = 1 << 22) -> Tensor:
    """Winding numbers [V] int32 of a closed mesh at the (N+1)^3 grid vertices of [-radius, radius]^3.

    Counted along the grid lines parallel to ``axis``: every triangle a line passes through adds +1 where the
    line enters the surface (the triangle faces against the line's direction) and -1 where it leaves, to all
    grid vertices further along; a cumulative sum along the line gives each vertex the winding number of the
    mesh around it. Cost O(lines x faces they cross + V) instead of O(V x faces) for the solid-angle formula.
    Lines through edges and vertices are counted once (:func:`_covers`); a vertex exactly on the surface may
    land on either side. verts [Vm,3] (float64 recommended), faces [Fm,3].
    """
    n = resolution
    h = 2.0 * radius / n
    perm = [(axis + 1) % 3, (axis + 2) % 3, axis]  # (line coordinate u, line coordinate w, along)
    tri = verts[:, perm][faces.long()]  # [F,3,3] in (u, w, t)
    uw = tri[..., :2]
    orient2 = (uw[:, 1, 0] - uw[:, 0, 0]) * (uw[:, 2, 1] - uw[:, 0, 1]) - (uw[:, 1, 1] - uw[:, 0, 1]) * (uw[:, 2, 0] - uw[:, 0, 0])
    keep = orient2 != 0  # triangles parallel to the lines never count
    tri, orient2 = tri[keep], orient2[keep]
    lo = torch.ceil((tri[..., :2].amin(1) + radius) / h - 1e-9).clamp(0, n).long()  # [F,2] first line index
    hi = torch.floor((tri[..., :2].amax(1) + radius) / h + 1e-9).clamp(-1, n).long()
    size = (hi - lo + 1).clamp_min(0)
    count = size[:, 0] * size[:, 1]
    delta = torch.zeros((n + 1) * (n + 1) * (n + 2), dtype=torch.int32, device=verts.device)
    bounds = torch.cumsum(count, 0)
    start = 0
    while start < len(count):  # triangles in chunks of at most max_pairs (triangle, line) candidates
        before = int(bounds[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(bounds, before + max_pairs, right=True)), start + 1)
        _splat_crossings(delta, tri[start:stop], orient2[start:stop], lo[start:stop], size[start:stop], n, h, radius)
        start = stop
    winding = torch.cumsum(delta.view(n + 1, n + 1, n + 2), dim=-1, dtype=torch.int32)[..., : n + 1]  # [u,w,t]
    order = [0, 0, 0]
    for position, dim in enumerate(perm):
        order[dim] = position
    return winding.permute(*order).reshape(-1).contiguous()  # back to x-major (i, j, k)


def _splat_crossings(delta: Tensor, tri: Tensor, orient2: Tensor, lo: Tensor, size: Tensor, n: int, h: float,
                     radius: float) -> None:
    """Add the signed crossings of the lines in each triangle's bounding box to ``delta`` [(n+1)^2 (n+2)]."""
    count = size[:, 0] * size[:, 1]
    owner = torch.repeat_interleave(torch.arange(len(count), device=tri.device), count)
    local = torch.arange(len(owner), device=tri.device) - (torch.cumsum(count, 0) - count)[owner]
    iu = lo[owner, 0] + torch.div(local, size[owner, 1], rounding_mode="floor")
    iw = lo[owner, 1] + local % size[owner, 1]
    u, w = iu.to(tri.dtype) * h - radius, iw.to(tri.dtype) * h - radius
    t, o = tri[owner], torch.sign(orient2[owner])
    a, b, c = t[:, 0, :2], t[:, 1, :2], t[:, 2, :2]
    hit = _covers(a, b, u, w, o) & _covers(b, c, u, w, o) & _covers(c, a, u, w, o)
    if not bool(hit.any()):
        return
    t, o, u, w, iu, iw = t[hit], o[hit], u[hit], w[hit], iu[hit], iw[hit]
    a, b, c = t[:, 0, :2], t[:, 1, :2], t[:, 2, :2]
    wa, wb, wc = _edge_function(b, c, u, w), _edge_function(c, a, u, w), _edge_function(a, b, u, w)
    total = wa + wb + wc
    along = (wa * t[:, 0, 2] + wb * t[:, 1, 2] + wc * t[:, 2, 2]) / total  # where the line meets the plane
    first = (torch.floor((along + radius) / h) + 1).clamp(0, n + 1).long()  # first vertex past the crossing
    sign = (-o).to(torch.int32)  # the line (towards +t) enters where the normal's t component is negative
    delta.index_add_(0, (iu * (n + 1) + iw) * (n + 2) + first, sign)


def point_mesh_distance(points: Tensor, verts: Tensor, faces: Tensor, max_distance: float) -> Tensor:
    """Unsigned distance [P] from points [P,3] to a triangle mesh, exact up to ``max_distance`` (larger
    distances come back as ``max_distance``).

    Points and triangles are bucketed in a uniform grid of ``max_distance`` cells; each point is compared with
    the triangles whose bounding box, grown by ``max_distance``, overlaps its cell, so the work is
    proportional to the pairs that can matter, not to P x F.
    """
    out = torch.full((len(points),), float(max_distance), dtype=points.dtype, device=points.device)
    if len(points) == 0 or len(faces) == 0:
        return out
    tri = verts.to(points.dtype)[faces.long()]  # [F,3,3]
    origin = torch.minimum(points.amin(0), tri.amin((0, 1))) - 2 * max_distance
    cell_of = lambda x: torch.floor((x - origin) / max_distance).long()  # noqa: E731
    dims = cell_of(torch.maximum(points.amax(0), tri.amax((0, 1))) + 2 * max_distance) + 1
    key = lambda c: (c[..., 0] * dims[1] + c[..., 1]) * dims[2] + c[..., 2]  # noqa: E731
    lo, hi = cell_of(tri.amin(1) - max_distance), cell_of(tri.amax(1) + max_distance)  # [F,3] cell ranges
    span = hi - lo + 1
    count = span.prod(-1)
    owner = torch.repeat_interleave(torch.arange(len(faces), device=points.device), count)
    local = torch.arange(len(owner), device=points.device) - (torch.cumsum(count, 0) - count)[owner]
    s = span[owner]
    offset = torch.stack([local // (s[:, 1] * s[:, 2]), (local // s[:, 2]) % s[:, 1], local % s[:, 2]], -1)
    tri_keys, order = key(lo[owner] + offset).sort()
    tri_ids = owner[order]
    point_keys = key(cell_of(points))
    first = torch.searchsorted(tri_keys, point_keys)
    n_pairs = torch.searchsorted(tri_keys, point_keys, right=True) - first
    for chunk in torch.arange(len(points), device=points.device).split(65536):
        pair_point = torch.repeat_interleave(chunk, n_pairs[chunk])
        if len(pair_point) == 0:
            continue
        base = (torch.cumsum(n_pairs[chunk], 0) - n_pairs[chunk]).repeat_interleave(n_pairs[chunk])
        pair_tri = tri_ids[first[pair_point] + torch.arange(len(pair_point), device=points.device) - base]
        d = _point_triangle_distance(points[pair_point], tri[pair_tri])
        out.scatter_reduce_(0, pair_point, d, reduce="amin")
    return out


def _point_triangle_distance(p: Tensor, tri: Tensor) -> Tensor:
    """Distance [K] from points p [K,3] to triangles tri [K,3,3]: to the plane when the foot of the
    perpendicular is inside the triangle, else to the nearest of its three edges (degenerate triangles: edges)."""
    a, b, c = tri.unbind(1)
    normal = torch.cross(b - a, c - a, dim=-1)
    area2 = normal.norm(dim=-1)
    unit = normal / area2.clamp_min(1e-30)[:, None]
    inside = area2 > 1e-20
    for x, y in ((a, b), (b, c), (c, a)):
        inside &= (torch.cross(y - x, p - x, dim=-1) * unit).sum(-1) >= 0
    plane = ((p - a) * unit).sum(-1).abs()
    edge = torch.stack([_point_segment_distance(p, x, y) for x, y in ((a, b), (b, c), (c, a))]).amin(0)
    return torch.where(inside, plane, edge)


def _point_segment_distance(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Distance [K] from points p [K,3] to segments a-b [K,3]."""
    ab = b - a
    t = ((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-30)
    return (p - (a + t.clamp(0, 1)[:, None] * ab)).norm(dim=-1)


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


def render_dmtet(dmtet: DMTet, cams, background: Union[float, Tensor] = 1.0, antialiased: bool = True) -> dict[str, Tensor]:
    """Render the DMTet's current surface from ``cams`` (:class:`dream3d.cameras.Cameras`) with its albedo field,
    unshaded, outward normals, the normal map antialiased too: see :func:`dream3d.render.mesh.render_mesh`.
    Gradients reach ``dmtet.sdf``, ``dmtet.deformation`` and the albedo field. Also returns the mesh
    (``verts`` [M,3], ``faces`` [F,3]) for regularisers."""
    verts, faces = dmtet.mesh()
    out = render_mesh(verts, faces, cams, dmtet.albedo, shade=None, two_sided=False, antialias_normals=True,
                      background=background, antialiased=antialiased)
    out.update(verts=verts, faces=faces)
    return out
