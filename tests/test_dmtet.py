"""DMTet: the Kuhn tet grid and its cache, marching tetrahedra (closed, outward, differentiable), rendering
gradients, and the three initialisers (analytic sdf, density field, shape-world mesh) checked by silhouettes."""

from __future__ import annotations

import itertools
import math
import time
import warnings

import pytest
import torch
import trimesh

from dream3d.cameras import turntable
from dream3d.export.mesh import signed_volume
from dream3d.fields import HashGridConfig
from dream3d.render.mesh import render_mesh
from dream3d.representations import dmtet as dmtet_module
from dream3d.representations import tets as tet_module
from dream3d.representations.dmtet import (
    DMTet,
    DMTetConfig,
    grid_winding_numbers,
    point_mesh_distance,
    render_dmtet,
)
from dream3d.representations.tets import (
    TET_EDGE_PAIRS,
    candidate_tets,
    kuhn_grid,
    kuhn_interpolate,
    load_tet_grid,
    marching_tets,
    tet_cache_dir,
    tet_volumes,
)
from dream3d.shapeworld import get
from dream3d.shapeworld import primitives as P

SMALL_ENCODING = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, max_resolution=64)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tets")


def _dmtet(cache_dir, resolution: int, radius: float = 0.6) -> DMTet:
    cfg = DMTetConfig(resolution=resolution, radius=radius, encoding=SMALL_ENCODING, backend="torch", hidden=16)
    return DMTet(cfg, cache_dir=str(cache_dir))


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / (a | b).sum())


def _check_closed_outward(verts: torch.Tensor, faces: torch.Tensor) -> trimesh.Trimesh:
    """Closed 2-manifold with consistent winding: every undirected edge in exactly 2 faces, every directed edge
    in exactly 1 (trimesh agrees), and a positive signed volume (outward normals)."""
    directed = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    _, counts = torch.unique(directed, dim=0, return_counts=True)
    assert (counts == 1).all(), "a directed edge appears twice: inconsistent winding"
    _, counts = torch.unique(directed.sort(1).values, dim=0, return_counts=True)
    assert (counts == 2).all(), "an edge is not shared by exactly two faces"
    mesh = trimesh.Trimesh(verts.detach().double().numpy(), faces.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert signed_volume(verts.detach(), faces) > 0
    return mesh


# ---------------------------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------------------------


def test_kuhn_grid_is_conforming_positive_and_fills_the_cube():
    n = 5
    grid = kuhn_grid(n)
    assert grid.verts.shape == ((n + 1) ** 3, 3) and grid.tets.shape == (6 * n**3, 4)
    assert grid.tets.dtype == torch.int32 and grid.verts.dtype == torch.float32
    vol = tet_volumes(grid.verts.double(), grid.tets)
    torch.testing.assert_close(vol, torch.full_like(vol, (2 / n) ** 3 / 6))  # positive, none degenerate
    assert math.isclose(float(vol.sum()), 8.0, rel_tol=1e-12)
    # conforming: each triangle is shared by two tetrahedra, or lies on the cube's surface
    tri = grid.tets.long()[:, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]].reshape(-1, 3).sort(1).values
    unique, counts = torch.unique(tri, dim=0, return_counts=True)
    assert set(counts.tolist()) == {1, 2}
    boundary = grid.verts[unique[counts == 1]]  # [Fb,3,3]
    on_side = ((boundary.abs() == 1).all(1)).any(-1)
    assert on_side.all() and len(boundary) == 6 * 2 * n * n
    # edges: unique, lower end first, steps of 0/1, and tet_edges names the right ones
    step = grid.verts[grid.edges[:, 1].long()] - grid.verts[grid.edges[:, 0].long()]
    assert torch.isclose(step, torch.zeros(1)).logical_or(torch.isclose(step, torch.tensor(2 / n))).all()
    assert len(torch.unique(grid.edges.long(), dim=0)) == len(grid.edges)
    ends = grid.edges.long()[grid.tet_edges.long()]  # [T,6,2]
    local = grid.tets.long()[:, torch.tensor(TET_EDGE_PAIRS)]  # [T,6,2]
    assert torch.equal(ends.sort(-1).values, local.sort(-1).values)
    # Euler characteristic of the solid ball: V - E + F - T = 1
    assert len(grid.verts) - len(grid.edges) + len(unique) - len(grid.tets) == 1


def test_deformations_below_a_sixth_of_a_cell_never_invert_a_tetrahedron():
    """The signed volume is affine in each corner, so its minimum over per-axis offsets of at most ``bound``
    cells lies at corners of the offset boxes: checking all 8^4 combinations per Kuhn tetrahedron is exact."""
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=3)), dtype=torch.float64)  # [8,3]
    combos = torch.tensor(list(itertools.product(range(8), repeat=4)))  # [4096,4]
    corners = torch.from_numpy(tet_module._kuhn_corners()).double()  # [6,4,3]

    def smallest_volume(bound: float) -> float:
        moved = corners[:, None] + bound * signs[combos][None]  # [6,4096,4,3]
        flat = moved.reshape(-1, 4, 3)
        return float(tet_volumes(flat.reshape(-1, 3), torch.arange(len(flat) * 4).view(-1, 4)).min())

    assert smallest_volume(0.16) > 0 and smallest_volume(0.17) < 0
    assert smallest_volume(0.5) < 0  # the default bound (half a cell) allows inverted tetrahedra


def test_grid_cache_loads_identical_arrays_and_replaces_a_corrupt_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAM3D_CACHE", str(tmp_path))
    assert tet_cache_dir() == tmp_path / "tets"
    n = 32
    gen_times = []
    for _ in range(2):
        start = time.perf_counter()
        fresh = kuhn_grid(n)
        gen_times.append(time.perf_counter() - start)
    first = load_tet_grid(n)  # generates and writes
    files = list((tmp_path / "tets").iterdir())
    assert [f.name for f in files] == [f"kuhn-{n}-v{tet_module.CACHE_VERSION}.npz"]  # no temporary left over

    def no_generation(n):
        raise AssertionError("the grid was generated again instead of loaded")

    monkeypatch.setattr(tet_module, "kuhn_grid", no_generation)
    load_times = []
    for _ in range(3):
        start = time.perf_counter()
        loaded = load_tet_grid(n)
        load_times.append(time.perf_counter() - start)
    for name in ("verts", "tets", "edges", "tet_edges"):
        assert torch.equal(getattr(loaded, name), getattr(first, name))
        assert torch.equal(getattr(loaded, name), getattr(fresh, name))
    assert min(load_times) < min(gen_times), (load_times, gen_times)
    slim = load_tet_grid(n, with_edges=False)
    assert slim.edges is None and slim.tet_edges is None and torch.equal(slim.tets, first.tets)

    monkeypatch.undo()
    monkeypatch.setenv("DREAM3D_CACHE", str(tmp_path))
    path = files[0]
    for corrupt in (b"not a zip file", path.read_bytes()[: path.stat().st_size // 2]):
        path.write_bytes(corrupt)
        with pytest.warns(UserWarning, match="unreadable.*regenerating"):
            again = load_tet_grid(n)
        assert torch.equal(again.tets, first.tets) and torch.equal(again.tet_edges, first.tet_edges)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(load_tet_grid(n).tets, first.tets)  # the replaced file reads back cleanly


# ---------------------------------------------------------------------------------------------------------------
# Marching tetrahedra
# ---------------------------------------------------------------------------------------------------------------


def test_every_case_of_one_tetrahedron_faces_along_the_sdf_gradient():
    gen = torch.Generator().manual_seed(0)
    tets = torch.tensor([[0, 1, 2, 3]])
    for case in range(1, 15):
        for _ in range(5):
            verts = torch.randn(4, 3, generator=gen, dtype=torch.float64)
            if float(tet_volumes(verts, tets)) < 0:
                verts = verts[[1, 0, 2, 3]]
            mag = torch.rand(4, generator=gen, dtype=torch.float64) + 0.1
            sdf = torch.where(torch.tensor([bool(case >> i & 1) for i in range(4)]), -mag, mag)
            out, faces = marching_tets(verts, sdf, tets)
            assert len(faces) == (2 if bin(case).count("1") == 2 else 1)
            # the sdf is linear in the tetrahedron: outward means along its gradient
            grad = torch.linalg.solve(verts[1:] - verts[0], sdf[1:] - sdf[0])
            v = out[faces]
            normal = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
            assert ((normal @ grad) > 0).all(), case
            torch.testing.assert_close(kuhn_free_sdf(verts, sdf, out), torch.zeros(len(out), dtype=torch.float64))


def kuhn_free_sdf(verts: torch.Tensor, sdf: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The linear function through (verts [4,3], sdf [4]) at points [P,3]."""
    grad = torch.linalg.solve(verts[1:] - verts[0], sdf[1:] - sdf[0])
    return sdf[0] + (points - verts[0]) @ grad


def test_marching_tets_sphere_is_closed_outward_and_has_the_right_volume():
    grid = kuhn_grid(64)
    r = 0.6
    sdf = grid.verts.norm(dim=-1) - r
    verts, faces = marching_tets(grid.verts, sdf, grid.tets, candidates=candidate_tets(sdf < 0, 64))
    mesh = _check_closed_outward(verts, faces)
    assert mesh.euler_number == 2  # one sphere
    volume = signed_volume(verts, faces)
    assert abs(volume / (4 / 3 * math.pi * r**3) - 1) < 0.02, volume
    centroid = verts[faces].mean(1)
    v = verts[faces]
    normal = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
    assert ((normal * centroid).sum(-1) > 0).all()  # every face points away from the centre
    assert (verts.norm(dim=-1) - r).abs().max() < 2 / 64  # vertices on the sphere, within a cell
    # the other paths (all tetrahedra; shared edges by edge id) give the same mesh
    for kwargs in ({}, {"tet_edges": grid.tet_edges}):
        v2, f2 = marching_tets(grid.verts, sdf, grid.tets, **kwargs)
        assert len(f2) == len(faces)
        torch.testing.assert_close(v2[f2].sum(1).sort(0).values, verts[faces].sum(1).sort(0).values)


def test_marching_tets_is_differentiable_in_sdf_and_positions():
    grid = kuhn_grid(4)
    verts = grid.verts.double()
    sdf = verts.norm(dim=-1) - 0.6
    sdf = torch.where(sdf.abs() < 0.05, sdf.sign() * 0.05, sdf)  # no sign flips within the finite differences
    tets = grid.tets

    def surface(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return marching_tets(v, s, tets)[0]

    assert surface(sdf, verts).shape[0] > 10
    assert torch.autograd.gradcheck(surface, (sdf.clone().requires_grad_(), verts.clone().requires_grad_()))


def test_kuhn_interpolation_is_the_function_marching_tets_meshes():
    grid = kuhn_grid(16)
    sdf = grid.verts.norm(dim=-1) - 0.5 + 0.05 * torch.sin(7 * grid.verts[:, 0])
    verts, _ = marching_tets(grid.verts, sdf, grid.tets)
    assert kuhn_interpolate(sdf, verts, 16).abs().max() < 1e-5  # surface vertices are zeros of the interpolant
    torch.testing.assert_close(kuhn_interpolate(sdf, grid.verts, 16), sdf)


# ---------------------------------------------------------------------------------------------------------------
# The representation
# ---------------------------------------------------------------------------------------------------------------


def test_dmtet_state_deformation_bound_and_albedo(cache_dir):
    dmtet = _dmtet(cache_dir, 16)
    state = dmtet.state_dict()
    assert "sdf" in state and "deformation" in state
    assert not any(k in state for k in ("grid_verts", "tets"))  # the grid comes from the config, not checkpoints
    with torch.no_grad():
        dmtet.deformation.uniform_(-50.0, 50.0)
    offset = (dmtet.vertices() - dmtet.grid_verts).abs()
    assert offset.max() <= 0.5 * dmtet.cell_size + 1e-6 and offset.max() > 0.49 * dmtet.cell_size
    albedo = dmtet.albedo(torch.rand(100, 3) - 0.5)
    assert albedo.shape == (100, 3) and ((albedo > 0) & (albedo < 1)).all()
    verts, faces = _dmtet(cache_dir, 16).mesh()  # default: the sphere of half the box's radius
    _check_closed_outward(verts, faces)


def test_render_gradients_reach_sdf_and_deformation_and_fitting_a_silhouette_works(cache_dir):
    cams = turntable(4, elevation=20.0, distance=1.6, fovy=45.0, size=48)
    box = P.box(0.6, 0.35, 0.45)
    with torch.no_grad():
        target = render_mesh(box.verts, box.faces, cams, torch.ones_like(box.verts))["opacity"]
    dmtet = _dmtet(cache_dir, 24).init_from_sdf(lambda x: x.norm(dim=-1) - 0.3)
    h = dmtet.cell_size
    opt = torch.optim.Adam([{"params": [dmtet.sdf], "lr": 0.3 * h}, {"params": [dmtet.deformation], "lr": 0.05}])
    losses = []
    for step in range(25):
        out = render_dmtet(dmtet, cams)
        assert out["rgb"].shape == (4, 48, 48, 3) and out["normal"].shape == (4, 48, 48, 3)
        loss = (out["opacity"] - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        if step == 0:
            for grad in (dmtet.sdf.grad, dmtet.deformation.grad):
                assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.2 * losses[0], losses
    _check_closed_outward(*dmtet.mesh())


def _box_and_ball():
    """A box with a ball on top: exact signed distance and a mesh of the same shape."""
    box_c, box_s = torch.tensor([0.0, -0.12, 0.0]), torch.tensor([0.7, 0.4, 0.5])
    ball_c, ball_r = torch.tensor([0.1, 0.22, 0.05]), 0.22

    def sdf(x: torch.Tensor) -> torch.Tensor:
        q = (x - box_c).abs() - box_s / 2
        box = q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0)
        return torch.minimum(box, (x - ball_c).norm(dim=-1) - ball_r)

    mesh = P.merge([P.translate(P.box(*box_s.tolist()), box_c.tolist()),
                    P.translate(P.sphere(ball_r, 24, 48), ball_c.tolist())])
    return sdf, mesh


def test_init_from_density_reproduces_the_silhouette(cache_dir):
    sdf, mesh = _box_and_ball()
    density = lambda x: 100.0 * torch.sigmoid(-sdf(x) / 0.002)  # noqa: E731  a sharp field, like a trained NeRF
    cams = turntable(8, elevation=20.0, distance=1.6, fovy=45.0, size=64)
    with torch.no_grad():
        target = render_mesh(mesh.verts, mesh.faces, cams, torch.ones_like(mesh.verts))["opacity"]
    dmtet = _dmtet(cache_dir, 32)
    ious = []
    for steps in (0, 150):
        dmtet.init_from_density(density, threshold=50.0, fit_steps=steps)
        with torch.no_grad():
            ious.append(_iou(render_dmtet(dmtet, cams)["opacity"], target))
        _check_closed_outward(*dmtet.mesh())
    assert ious[1] >= 0.95 and ious[1] > ious[0], ious  # the fit moves the surface onto the level set
    assert abs(float(dmtet.sdf.detach().abs().max()) - dmtet.cfg.truncation * dmtet.cell_size) < 0.5 * dmtet.cell_size


def test_init_level_matched_keeps_a_faint_body_that_half_the_peak_drops(cache_dir):
    def snowman(x):  # a dense hat over a faint body that still renders opaque (optical depth about 3)
        hat = 30.0 * ((x - torch.tensor([0.0, 0.3, 0.0])).norm(dim=-1) < 0.12).float()
        body = 5.0 * ((x - torch.tensor([0.0, -0.15, 0.0])).norm(dim=-1) < 0.25).float()
        return torch.maximum(hat, body)

    dmtet = _dmtet(cache_dir, 32)
    dmtet.init_from_density(snowman, fit_steps=0)
    assert float(dmtet.mesh()[0].detach()[:, 1].min()) > 0.1  # half-peak (the default): the hat alone
    dmtet.cfg.init_level = "matched"
    dmtet.init_from_density(snowman, fit_steps=0)
    verts, faces = dmtet.mesh()
    assert float(verts.detach()[:, 1].min()) < -0.3  # the body too
    _check_closed_outward(verts, faces)


def test_init_core_alpha_tightens_the_dense_parts_and_keeps_the_faint_ones(cache_dir):
    """A dense hat with a soft edge over a faint body: the 30% level keeps the body and the hat's halo; the core
    start (50%, plus the parts only 30% has) keeps the body and drops the halo."""
    def snowman(x):
        r = (x - torch.tensor([0.0, 0.3, 0.0])).norm(dim=-1)
        hat = 30.0 * (r < 0.12).float() + 3.0 * ((r >= 0.12) & (r < 0.2)).float()
        return torch.maximum(hat, 6.0 * ((x - torch.tensor([0.0, -0.2, 0.0])).norm(dim=-1) < 0.25).float())

    dmtet = _dmtet(cache_dir, 32)
    dmtet.cfg.init_level, dmtet.cfg.init_alpha = "matched", 0.3
    widths = {}
    for core in (0.0, 0.6):
        dmtet.cfg.init_core_alpha = core
        dmtet.init_from_density(snowman, fit_steps=0)
        verts, faces = dmtet.mesh()
        _check_closed_outward(verts, faces)
        v = verts.detach()
        assert float(v[:, 1].min()) < -0.35, core  # the body
        top = v[v[:, 1] > 0.3]
        widths[core] = float(top[:, 0].max() - top[:, 0].min())
    assert widths[0.0] > 0.36 and widths[0.6] < 0.3, widths  # the hat with its halo (0.4 across), then without


def test_init_hull_starts_an_open_box_as_a_solid_box(cache_dir):
    """A dense open box (no lid: a cube whose top face rendered faint) starts as a bucket at the matched level and
    as a solid box with the visual hull; both are closed and face outwards."""
    def bucket(x):
        a = x.abs()
        cavity = (a[:, 0] < 0.28) & (a[:, 2] < 0.28) & (x[:, 1] > -0.28)
        return 50.0 * ((a < 0.35).all(-1) & ~cavity).float()

    dmtet = _dmtet(cache_dir, 32)
    dmtet.cfg.init_level, dmtet.cfg.init_alpha = "matched", 0.3
    volumes = {}
    for hull in (False, True):
        dmtet.cfg.init_hull = hull
        dmtet.init_from_density(bucket, fit_steps=0)
        verts, faces = dmtet.mesh()
        _check_closed_outward(verts, faces)
        volumes[hull] = float(signed_volume(verts.detach(), faces))
    assert volumes[False] < 0.5 * 0.7**3 < 0.8 * 0.7**3 < volumes[True] < 1.2 * 0.7**3, volumes


def test_init_from_mesh_reproduces_shape_world_objects(cache_dir):
    cams = turntable(8, elevation=20.0, distance=1.6, fovy=45.0, size=64)
    dmtet = _dmtet(cache_dir, 48)
    for name in ("house", "snowman"):  # walls and roof; overlapping closed parts
        obj = get(name)
        dmtet.init_from_mesh(obj.verts, obj.faces)
        _check_closed_outward(*dmtet.mesh())
        with torch.no_grad():
            target = render_mesh(obj.verts, obj.faces, cams, obj.colors)["opacity"]
            iou = _iou(render_dmtet(dmtet, cams)["opacity"], target)
        assert iou >= 0.93, (name, iou)


def test_winding_numbers_along_lines_through_edges_and_vertices():
    n, radius = 8, 1.0
    cube = P.cube(1.0)  # faces at +-0.5: grid lines run along its edges and through its corners
    axis = torch.linspace(-radius, radius, n + 1)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    inside = (pts.abs() < 0.5 - 1e-6).all(-1)
    outside = (pts.abs() > 0.5 + 1e-6).any(-1)
    for flip in (False, True):  # orientation does not matter (non-zero winding)
        faces = cube.faces.flip(1) if flip else cube.faces
        for ax in range(3):
            w = grid_winding_numbers(cube.verts.double(), faces, n, radius, axis=ax)
            assert (w[inside] == (-1 if flip else 1)).all() and (w[outside] == 0).all(), (flip, ax)


def _sampled_distance(points: torch.Tensor, tri: torch.Tensor, steps: int = 300) -> torch.Tensor:
    """Distance [P] from points [P,3] to triangles [F,3,3], by a dense barycentric sampling of each triangle."""
    i, j = torch.meshgrid(torch.arange(steps + 1), torch.arange(steps + 1), indexing="ij")
    keep = i + j <= steps
    b = torch.stack([i[keep], j[keep], steps - i[keep] - j[keep]], -1).double() / steps  # [S,3]
    samples = torch.einsum("sk,fkc->fsc", b, tri).reshape(-1, 3)
    return torch.cat([torch.cdist(p, samples).amin(1) for p in points.split(64)])


def test_point_mesh_distance_matches_brute_force():
    obj = get("house")
    gen = torch.Generator().manual_seed(0)
    pts = (torch.rand(400, 3, generator=gen) - 0.5).double()
    verts, faces = obj.verts.double(), obj.faces
    tri = verts[faces]
    # the bucketing finds the nearest triangle: same as comparing every point with every triangle
    every = dmtet_module._point_triangle_distance(
        pts.repeat_interleave(len(faces), 0), tri.repeat(len(pts), 1, 1)).view(len(pts), -1).amin(1)
    got = point_mesh_distance(pts, verts, faces, max_distance=0.08)
    torch.testing.assert_close(got, every.clamp(max=0.08), atol=1e-12, rtol=0)
    assert (every < 0.08).sum() > 100
    # and the point-triangle distance is the distance to the triangle (dense sampling, a few triangles)
    some = tri[torch.randperm(len(faces), generator=gen)[:6]]
    near = some.mean(1).repeat(20, 1) + 0.1 * torch.randn(120, 3, generator=gen, dtype=torch.float64)
    exact = dmtet_module._point_triangle_distance(near.repeat_interleave(6, 0), some.repeat(120, 1, 1)).view(120, 6)
    torch.testing.assert_close(exact.amin(1), _sampled_distance(near, some), atol=2e-3, rtol=0)


def test_candidate_cells_hold_every_crossing_tetrahedron():
    grid = kuhn_grid(10)
    gen = torch.Generator().manual_seed(3)
    sdf = torch.randn(len(grid.verts), generator=gen)
    occ = (sdf < 0).index_select(0, grid.tets.reshape(-1).long()).view(-1, 4)
    crossing = set((occ.any(1) & ~occ.all(1)).nonzero().squeeze(1).tolist())
    assert crossing <= set(candidate_tets(sdf < 0, 10).tolist())
    for value in (-1.0, 1.0):  # all inside or all outside: nothing to march
        assert len(candidate_tets(torch.full_like(sdf, value) < 0, 10)) == 0
