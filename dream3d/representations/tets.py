"""Tetrahedral grids for DMTet: a conforming Kuhn tetrahedralisation of the cube, its disk cache, and
differentiable marching tetrahedra.

The grid
--------
:func:`kuhn_grid` splits each of the ``N^3`` cells of the cube ``[-1, 1]^3`` into 6 tetrahedra along the cell's
main diagonal (the Kuhn / Freudenthal split). The tetrahedron of a cell with lowest corner ``c`` and axis
permutation ``(p, q, r)`` is the monotone path ``c, c + e_p, c + e_p + e_q, c + (1, 1, 1)``. Every cell uses the
same split, so each cell face is cut along the diagonal through its lowest corner on both sides and the mesh
is *conforming* (neighbouring tetrahedra share whole faces); every edge joins a vertex to a vertex that is
larger by a vector of 0s and 1s. Layout, relied on by :func:`candidate_tets`:

* vertex ``(i, j, k)`` (x, y, z indices in ``[0, N]``) is row ``(i * (N + 1) + j) * (N + 1) + k`` of
  ``verts [V,3]``, ``V = (N + 1)^3``, at ``-1 + 2 (i, j, k) / N``;
* cell ``(i, j, k)`` owns tetrahedra ``6 * ((i * N + j) * N + k) + s`` for ``s`` in ``0..5``;
* ``tets [T,4]`` are positively oriented: ``det(v1 - v0, v2 - v0, v3 - v0) > 0`` (for odd permutations the
  last two corners are swapped), each of volume ``h^3 / 6`` with ``h = 2 / N``;
* ``edges [E,2]`` are the unique edges (lower vertex first) and ``tet_edges [T,6]`` index them for the local
  edges ``(0,1), (0,2), (0,3), (1,2), (1,3), (2,3)`` of each tetrahedron (:data:`TET_EDGE_PAIRS`).

Index arrays are int32 (they are the bulk of the memory: ~650 MB at N = 128 in int32, twice that in int64);
:func:`marching_tets` widens only the few surface tetrahedra it touches. Grids are cached as ``.npz`` under
``$DREAM3D_CACHE/tets/`` (default ``~/.cache/dream3d/tets/``), written atomically, regenerated when a cached
file cannot be read or does not match.

Marching tetrahedra
-------------------
Sign convention: **sdf < 0 is inside**, sdf >= 0 outside (a vertex exactly at 0 counts as outside). Each
tetrahedron's 4 inside/outside bits select one of 16 cases: no triangle (all in or all out), one triangle
(one vertex apart from the other three) or two (two and two: a quad, split along one diagonal). Surface
vertices sit on sign-changing edges at the zero of the linear interpolation of the sdf, so they are
differentiable w.r.t. both the sdf and the grid vertex positions. Every edge yields one vertex however many
tetrahedra share it, so the surface is closed wherever the inside region stays clear of the grid's boundary.
The triangle table is derived (not typed in) on a reference positive tetrahedron, winding each triangle
counter-clockwise seen from the outside vertices: since the case topology is combinatorial and the grid's
tetrahedra are positive, the output winds consistently and its normals ``cross(v1 - v0, v2 - v0)`` point
outwards, the convention of :mod:`dream3d.render.mesh_geometry` and the exporters.
"""

from __future__ import annotations

import itertools
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from dream3d.io import atomic_path

__all__ = [
    "TET_EDGE_PAIRS",
    "TetGrid",
    "kuhn_grid",
    "load_tet_grid",
    "tet_cache_dir",
    "candidate_tets",
    "tet_volumes",
    "kuhn_interpolate",
    "marching_tets",
    "triangle_table",
]

CACHE_VERSION = 1  # bump when the layout of the generated arrays changes: old cache files are then regenerated
TET_EDGE_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))  # local edge e of a tetrahedron joins these corners
_DIRECTIONS = 7  # edges leave a vertex towards +(a, b, c) with a, b, c in {0, 1}, not all 0: code 4a + 2b + c - 1


# --------------------------------------------------------------------------------------------------------------
# Grid generation
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TetGrid:
    """A tetrahedral grid of the cube [-1, 1]^3 (see the module docstring for the layout)."""

    resolution: int  # N cells per axis
    verts: Tensor  # [V,3] float32
    tets: Tensor  # [T,4] int32, positively oriented
    edges: Optional[Tensor] = None  # [E,2] int32, unique, lower vertex first (None when not loaded)
    tet_edges: Optional[Tensor] = None  # [T,6] int32, index into edges for the local edges TET_EDGE_PAIRS

    @property
    def cell_size(self) -> float:
        """Edge length h = 2 / N of a cell of the unit-radius grid."""
        return 2.0 / self.resolution

    def nbytes(self) -> int:
        """Memory held by the arrays, in bytes."""
        arrays = (self.verts, self.tets, self.edges, self.tet_edges)
        return sum(t.element_size() * t.numel() for t in arrays if t is not None)

    def to(self, device) -> "TetGrid":
        arrays = (self.verts, self.tets, self.edges, self.tet_edges)
        return TetGrid(self.resolution, *(None if t is None else t.to(device) for t in arrays))


def _kuhn_corners() -> np.ndarray:
    """Corner offsets [6,4,3] (0/1) of the 6 Kuhn tetrahedra of the unit cell, each positively oriented."""
    out = []
    for perm in itertools.permutations(range(3)):
        path = [np.zeros(3, dtype=np.int64)]
        for axis in perm:
            path.append(path[-1] + np.eye(3, dtype=np.int64)[axis])
        if np.linalg.det(np.stack([p - path[0] for p in path[1:]]).astype(float)) < 0:
            path[2], path[3] = path[3], path[2]
        out.append(np.stack(path))
    return np.stack(out)


def _grid_verts(n: int) -> np.ndarray:
    """Grid vertices [(n+1)^3, 3] float32 spanning [-1, 1]^3, x-major (index (i * (n+1) + j) * (n+1) + k)."""
    axis = np.linspace(-1.0, 1.0, n + 1).astype(np.float32)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def kuhn_grid(n: int) -> TetGrid:
    """Generate the Kuhn tetrahedralisation of [-1, 1]^3 with ``n`` cells per axis (no cache; see :func:`load_tet_grid`)."""
    if n < 1:
        raise ValueError(f"tet grid resolution must be >= 1, got {n}")
    m = n + 1
    if _DIRECTIONS * m**3 >= 2**31:
        raise ValueError(f"tet grid resolution {n} is too large for int32 indices")
    corners = _kuhn_corners()  # [6,4,3]
    stride = np.array([m * m, m, 1])
    idx = np.arange(n, dtype=np.int32)
    cell = ((idx[:, None, None] * m + idx[None, :, None]) * m + idx[None, None, :]).reshape(-1)  # [C] lowest corner
    tets = (cell[:, None, None] + (corners @ stride).astype(np.int32)[None]).reshape(-1, 4)  # [T,4]
    edges, tet_edges = _kuhn_edges(cell, corners, stride, m)
    return TetGrid(n, *(torch.from_numpy(a) for a in (_grid_verts(n), tets, edges, tet_edges)))


def _kuhn_edges(cell: np.ndarray, corners: np.ndarray, stride: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique edges [E,2] and tet -> edge index [T,6] (int32) from the cells' lowest corners ``cell`` [C].

    Edge ids come from the structure instead of a sort: every edge runs from its lower vertex ``v`` in one of 7
    positive directions ``d`` (code 0..6), so ``7 v + d`` is a unique key; the keys in use are then renumbered.
    """
    lower, code = [], []  # per (tet type, local edge): offset of the edge's lower corner, direction code
    for s in range(6):
        for a, b in TET_EDGE_PAIRS:
            lo, hi = sorted((corners[s, a], corners[s, b]), key=lambda c: int(c.sum()))
            lower.append(int(lo @ stride))
            code.append(int((hi - lo) @ np.array([4, 2, 1])) - 1)
    key_offset = (np.array(lower) * _DIRECTIONS + np.array(code)).astype(np.int32).reshape(6, 6)
    keys = (cell[:, None, None] * _DIRECTIONS + key_offset[None]).reshape(-1, 6)  # [T,6] sparse edge keys
    used = np.zeros(_DIRECTIONS * m**3, dtype=bool)
    used[keys.reshape(-1)] = True
    renumber = np.cumsum(used, dtype=np.int32) - 1
    chunk = 1 << 20
    for start in range(0, keys.shape[0], chunk):  # in place, a slab at a time: keys become tet_edges, no copy
        keys[start:start + chunk] = renumber[keys[start:start + chunk]]
    edge_keys = np.flatnonzero(used).astype(np.int32)
    first, d = edge_keys // _DIRECTIONS, edge_keys % _DIRECTIONS + 1
    step = ((d >> 2) & 1) * stride[0] + ((d >> 1) & 1) * stride[1] + (d & 1) * stride[2]
    return np.stack([first, first + step.astype(np.int32)], axis=1), keys


# --------------------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------------------


def tet_cache_dir() -> Path:
    """Where grids are cached: ``$DREAM3D_CACHE/tets`` when the variable is set, else ``~/.cache/dream3d/tets``."""
    root = os.environ.get("DREAM3D_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "dream3d") / "tets"


def _cache_path(n: int, cache_dir: Optional[Path]) -> Path:
    return Path(cache_dir if cache_dir is not None else tet_cache_dir()) / f"kuhn-{n}-v{CACHE_VERSION}.npz"


def _read_cache(path: Path, n: int, with_edges: bool) -> TetGrid:
    """Load and check a cached grid; raises ValueError (or the loader's error) when it does not match.

    ``np.load`` reads the members of an ``.npz`` lazily, so without ``with_edges`` the edge arrays stay on disk.
    """
    names = ("tets", "edges", "tet_edges") if with_edges else ("tets",)
    with np.load(path, allow_pickle=False) as data:
        if int(data["version"]) != CACHE_VERSION or int(data["resolution"]) != n:
            raise ValueError("version or resolution does not match")
        arrays = {k: data[k] for k in names}
    n_tets = 6 * n**3
    n_edges = arrays["edges"].shape[0] if with_edges else 0
    expected = {"tets": ((n_tets, 4), (n + 1) ** 3), "edges": ((n_edges, 2), (n + 1) ** 3),
                "tet_edges": ((n_tets, 6), n_edges)}
    for name, array in arrays.items():
        shape, bound = expected[name]
        if array.shape != shape or array.dtype != np.int32:
            raise ValueError(f"{name} is {array.shape} {array.dtype}, expected {shape} int32")
        if array.size and (int(array.min()) < 0 or int(array.max()) >= bound):
            raise ValueError(f"{name} indices out of range")
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return TetGrid(n, torch.from_numpy(_grid_verts(n)), **tensors)


def _write_cache(path: Path, grid: TetGrid) -> None:
    """Write the index arrays (not the vertices, which are recomputed exactly) atomically, uncompressed."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, version=np.int64(CACHE_VERSION), resolution=np.int64(grid.resolution),
                 tets=grid.tets.numpy(), edges=grid.edges.numpy(), tet_edges=grid.tet_edges.numpy())


def load_tet_grid(
    n: int, cache_dir: Optional[str | Path] = None, use_cache: bool = True, with_edges: bool = True
) -> TetGrid:
    """The Kuhn grid of resolution ``n`` from the cache, generated (and cached) when absent or unreadable.

    ``with_edges=False`` leaves ``edges`` and ``tet_edges`` out (None): marching tets does not need them, and
    at N = 128 they are 420 of the grid's 650 MB. A cached file that fails to load or does not match (truncated,
    another layout version, wrong shapes) is reported with a warning and replaced. The cache is an optimisation
    only: when it cannot be written (a read-only home) the grid is still returned.
    """
    path = _cache_path(n, Path(cache_dir) if cache_dir is not None else None)
    if use_cache and path.exists():
        try:
            return _read_cache(path, n, with_edges)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(f"tet grid cache {path} is unreadable ({err}); regenerating it", stacklevel=2)
    grid = kuhn_grid(n)
    if use_cache:
        try:
            _write_cache(path, grid)
        except OSError as err:
            warnings.warn(f"could not write the tet grid cache {path} ({err})", stacklevel=2)
    if not with_edges:
        grid.edges = grid.tet_edges = None
    return grid


# --------------------------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------------------------


def tet_volumes(verts: Tensor, tets: Tensor) -> Tensor:
    """Signed volumes [T] of tetrahedra ``tets`` [T,4] over ``verts`` [V,3] (positive for positive orientation)."""
    v = verts[tets.long()]
    a, b, c = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], v[:, 3] - v[:, 0]
    return (a * torch.cross(b, c, dim=-1)).sum(-1) / 6.0


def candidate_tets(inside: Tensor, resolution: int) -> Tensor:
    """Ids [S] (int64) of the tetrahedra of every Kuhn cell whose 8 corners are not all on one side.

    ``inside`` [V] bool. A tetrahedron can only cross the surface inside such a cell, so marching the
    candidates instead of all ``6 N^3`` tetrahedra skips the gather of 4 signs per tetrahedron (the costly
    part at N = 128) for slicing of the vertex grid.
    """
    n = resolution
    occ = inside.view(n + 1, n + 1, n + 1)
    any_in = torch.zeros(n, n, n, dtype=torch.bool, device=inside.device)
    all_in = torch.ones(n, n, n, dtype=torch.bool, device=inside.device)
    for dx, dy, dz in itertools.product((0, 1), repeat=3):
        corner = occ[dx:dx + n, dy:dy + n, dz:dz + n]
        any_in |= corner
        all_in &= corner
    cells = (any_in & ~all_in).reshape(-1).nonzero().squeeze(1)
    return (cells[:, None] * 6 + torch.arange(6, device=inside.device)).reshape(-1)


def kuhn_interpolate(values: Tensor, points: Tensor, resolution: int) -> Tensor:
    """Piecewise-linear interpolation of per-vertex ``values`` [V] (or [V,C]) of the undeformed Kuhn grid at
    ``points`` [P,3] in [-1, 1]^3 -> [P] (or [P,C]); differentiable w.r.t. both.

    No search is needed: in a cell, the Kuhn tetrahedron holding a point is the one whose monotone path follows
    the point's local coordinates ``f`` in decreasing order ``f_p >= f_q >= f_r``, and its barycentric weights
    are ``1 - f_p, f_p - f_q, f_q - f_r, f_r``. This is exactly the function whose zero set marching tets
    extracts, so fitting it fits the surface.
    """
    n, m = resolution, resolution + 1
    g = (points.clamp(-1.0, 1.0) + 1.0) * (0.5 * n)
    cell = g.detach().floor().clamp(0, n - 1)
    f = g - cell  # [P,3] in [0,1]
    f_sorted, order = f.sort(dim=-1, descending=True)
    stride = torch.tensor([m * m, m, 1], device=points.device)
    steps = stride[order].cumsum(-1)  # [P,3] vertex offsets of the path's corners 1..3
    base = (cell.long() * stride).sum(-1, keepdim=True)
    ids = torch.cat([base, base + steps], dim=-1)  # [P,4]
    one, zero = torch.ones_like(f_sorted[:, :1]), torch.zeros_like(f_sorted[:, :1])
    weights = torch.cat([one, f_sorted], -1) - torch.cat([f_sorted, zero], -1)  # [P,4]
    corner = values.index_select(0, ids.reshape(-1)).view(*ids.shape, *values.shape[1:])
    if values.dim() == 1:
        return (weights * corner).sum(-1)
    return (weights[..., None] * corner).sum(1)


# --------------------------------------------------------------------------------------------------------------
# Marching tetrahedra
# --------------------------------------------------------------------------------------------------------------


def _orient(tri: list[int], ref: np.ndarray, inside: list[bool]) -> list[int]:
    """Reorder a triangle of local edges so its normal points from the inside corners to the outside ones."""
    mid = np.array([(ref[a] + ref[b]) / 2 for a, b in (TET_EDGE_PAIRS[e] for e in tri)])
    normal = np.cross(mid[1] - mid[0], mid[2] - mid[0])
    out = ref[[not s for s in inside]].mean(0) - ref[inside].mean(0)
    return tri if normal @ out > 0 else [tri[0], tri[2], tri[1]]


def triangle_table() -> tuple[Tensor, Tensor]:
    """The marching-tets table: triangles [16,2,3] of local edge ids (-1: none) and counts [16] per case.

    Case ``c`` has corner ``i`` inside when bit ``i`` of ``c`` is set. Built on the reference tetrahedron
    (0, e_x, e_y, e_z) (positive): one corner apart gives the triangle of its 3 edges; two and two give the quad
    (a,c) (a,d) (b,d) (b,c) of inside {a, b}, outside {c, d}, split along (a,c)-(b,d). Each triangle is wound
    counter-clockwise seen from outside.
    """
    ref = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    tris = torch.full((16, 2, 3), -1, dtype=torch.long)
    counts = torch.zeros(16, dtype=torch.long)
    edge_of = {frozenset(p): e for e, p in enumerate(TET_EDGE_PAIRS)}
    for case in range(16):
        inside = [bool(case >> i & 1) for i in range(4)]
        ins = [i for i in range(4) if inside[i]]
        outs = [i for i in range(4) if not inside[i]]
        if len(ins) in (0, 4):
            continue
        if len(ins) == 2:
            (a, b), (c, d) = ins, outs
            quad = [edge_of[frozenset(p)] for p in ((a, c), (a, d), (b, d), (b, c))]
            polys = [quad[:3], [quad[0], quad[2], quad[3]]]
        else:
            lone = ins[0] if len(ins) == 1 else outs[0]
            polys = [[edge_of[frozenset((lone, j))] for j in range(4) if j != lone]]
        for t, tri in enumerate(polys):
            tris[case, t] = torch.tensor(_orient(tri, ref, inside))
        counts[case] = len(polys)
    return tris, counts


_TABLE, _COUNTS = triangle_table()
_PAIRS = torch.tensor(TET_EDGE_PAIRS, dtype=torch.long)  # [6,2]


def _tet_cases(inside: Tensor, tets: Tensor) -> Tensor:
    """Case index [S] int64 (bit i: corner i inside) of tetrahedra ``tets`` [S,4] from ``inside`` [V] bool."""
    occ = inside.index_select(0, tets.reshape(-1).long()).view(-1, 4).to(torch.uint8)
    return (occ[:, 0] | occ[:, 1] << 1 | occ[:, 2] << 2 | occ[:, 3] << 3).long()


def marching_tets(
    verts: Tensor, sdf: Tensor, tets: Tensor, tet_edges: Optional[Tensor] = None,
    candidates: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Zero level set of a per-vertex sdf on a tetrahedral grid -> (mesh verts [M,3], faces [F,3] int64).

    verts [V,3] (deformed grid vertices), sdf [V] (< 0 inside), tets [T,4] positively oriented (int32 or
    int64). ``tet_edges`` [T,6] (unique edge ids of :data:`TET_EDGE_PAIRS`, as :class:`TetGrid` holds them)
    identifies shared edges directly; without it they are keyed by their sorted vertex pair. ``candidates``
    [S] restricts the search to those tetrahedra (e.g. :func:`candidate_tets`; they must include every
    tetrahedron that crosses the surface). Mesh vertices are ordered by edge id (or key), so the same signs give
    the same mesh. Differentiable w.r.t. ``verts`` and ``sdf``; the topology itself is not (it follows the signs).
    """
    device = verts.device
    inside = sdf.detach() < 0
    ids = torch.arange(tets.shape[0], device=device) if candidates is None else candidates.to(device).long()
    cases = _tet_cases(inside, tets.index_select(0, ids))
    crossing = (cases > 0) & (cases < 15)
    ids, cases = ids[crossing], cases[crossing]
    table, counts = _TABLE.to(device), _COUNTS.to(device)
    n_tris = counts.index_select(0, cases)  # [S] 1 or 2
    tri_tet = torch.repeat_interleave(torch.arange(ids.shape[0], device=device), n_tris)  # [F] into ids
    first = torch.cumsum(n_tris, 0) - n_tris
    slot = torch.arange(tri_tet.shape[0], device=device) - first.index_select(0, tri_tet)  # 0 or 1
    local = table[cases.index_select(0, tri_tet), slot]  # [F,3] local edge ids
    corners = tets.index_select(0, ids).long().index_select(0, tri_tet)  # [F,4]
    pairs = _PAIRS.to(device)[local]  # [F,3,2]
    ends = torch.gather(corners[:, None, :].expand(-1, 3, -1), 2, pairs)  # [F,3,2] vertex ids
    lo, hi = ends.min(-1).values, ends.max(-1).values
    if tet_edges is not None:
        key = torch.gather(tet_edges.index_select(0, ids).long().index_select(0, tri_tet), 1, local)  # [F,3]
    else:
        key = lo * verts.shape[0] + hi
    unique, faces = torch.unique(key.reshape(-1), return_inverse=True)
    a = torch.zeros_like(unique).scatter_(0, faces, lo.reshape(-1))
    b = torch.zeros_like(unique).scatter_(0, faces, hi.reshape(-1))
    return _edge_zero(verts, sdf, a, b), faces.view(-1, 3)


def _edge_zero(verts: Tensor, sdf: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Zero crossings [M,3] of the linear sdf on edges (a, b) [M] whose ends have opposite signs.

    ``w = s_a / (s_a - s_b)`` lies in (0, 1]; the denominator is never 0 because exactly one end is < 0.
    """
    sa, sb = sdf.index_select(0, a), sdf.index_select(0, b)
    va, vb = verts.index_select(0, a), verts.index_select(0, b)
    w = (sa / (sa - sb))[:, None]
    return va + w * (vb - va)
