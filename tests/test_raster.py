"""The torch rasterizer: agreement with a brute-force reference, gradients, silhouettes, camera conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dream3d.cameras import Cameras, look_at_c2w, make_cameras
from dream3d.render.mesh import render_mesh, render_textured
from dream3d.render.mesh_geometry import edge_topology
from dream3d.render.raster import (
    antialias,
    clip_to_pixels,
    interpolate,
    mvp_from_cameras,
    perspective,
    rasterize,
    transform,
)
from dream3d.render.shading import shade
from dream3d.shapeworld.primitives import cube, sphere


def _camera(elevation: float, azimuth: float, distance: float = 2.0, fovy: float = 50.0, size: int = 64) -> Cameras:
    one = torch.ones(1)
    return make_cameras(one * elevation, one * azimuth, one * distance, one * fovy, size, size)


def _reference(clip: np.ndarray, faces: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Brute force, float64, one pixel at a time: homogeneous 2D barycentrics, inside test, smallest NDC z.

    Returns triangle ids [H,W], barycentrics [H,W,3] and how many fragments lost the depth test.
    """
    tri_id = -np.ones((height, width), dtype=np.int64)
    hidden = 0
    bary = np.zeros((height, width, 3))
    zbuf = np.full((height, width), np.inf)
    for j in range(height):
        for i in range(width):
            p = np.array([2 * (i + 0.5) / width - 1, 1 - 2 * (j + 0.5) / height, 1.0])
            for f, (a, b, c) in enumerate(faces):
                m = clip[[a, b, c]][:, [0, 1, 3]].T  # columns (x, y, w) of the three corners
                lam = np.linalg.solve(m, p)  # perspective-correct barycentrics, up to scale
                lam = lam / lam.sum()
                if (lam < 0).any():
                    continue
                z = (lam @ clip[[a, b, c], 2]) / (lam @ clip[[a, b, c], 3])
                if not -1 <= z <= 1:
                    continue
                hidden += 1
                if z < zbuf[j, i]:
                    zbuf[j, i], tri_id[j, i], bary[j, i] = z, f, lam
    return tri_id, bary, hidden - int((tri_id >= 0).sum())


def test_matches_brute_force_reference():
    gen = torch.Generator().manual_seed(1)
    n_faces, size = 8, 24
    centres = (torch.rand(n_faces, 1, 3, generator=gen) - 0.5) * 0.8
    verts = (centres + 0.5 * torch.randn(n_faces, 3, 3, generator=gen)).reshape(-1, 3)
    faces = torch.arange(3 * n_faces).view(n_faces, 3)
    clip = transform(verts.double(), mvp_from_cameras(_camera(20.0, 30.0, size=size)).double())
    rast = rasterize(clip, faces, size, size)
    ref_id, ref_bary, hidden = _reference(clip[0].numpy(), faces.numpy(), size, size)
    got = rast.tri_id[0].numpy()
    assert (ref_id >= 0).sum() > 200 and len(np.unique(ref_id)) >= 6 and hidden > 20  # overlaps, not empty
    assert (got != ref_id).mean() < 0.005  # only pixel centres within rounding of an edge may differ
    same = (got == ref_id) & (ref_id >= 0)
    np.testing.assert_allclose(rast.bary[0].numpy()[same], ref_bary[same], atol=1e-6)
    assert torch.equal(rast.mask, rast.tri_id >= 0)
    assert (rast.bary[~rast.mask] == 0).all() and (rast.depth[~rast.mask] == 0).all()


def test_dense_visibility_pass_equals_the_pixel_by_pixel_one(monkeypatch):
    """Small triangles are z-tested on their whole k x k box at once; the result must be the per-pixel pass's,
    bit for bit, for every box size (both dense buckets and the larger boxes left to the per-pixel pass)."""
    from dream3d.render.raster import torch_backend

    gen = torch.Generator().manual_seed(3)
    n_faces, size = 600, 96
    scale = 10 ** (-2.3 + 2.2 * torch.rand(n_faces, 1, 1, generator=gen))  # triangle sizes over two decades
    centres = (torch.rand(n_faces, 1, 3, generator=gen) - 0.5) * 1.2
    verts = (centres + scale * torch.randn(n_faces, 3, 3, generator=gen)).reshape(-1, 3)
    faces = torch.arange(3 * n_faces).view(n_faces, 3)
    cams = make_cameras(torch.tensor([20.0, -5.0]), torch.tensor([30.0, 200.0]), torch.tensor([2.0, 1.6]),
                        torch.tensor([50.0, 60.0]), size, size)
    clip = transform(verts, mvp_from_cameras(cams))
    count, _, ints = torch_backend._triangle_setup(clip, faces, size, size, False)
    side = torch.maximum(ints[1], count // ints[1])
    assert (side == 1).any() and (side > max(torch_backend._DENSE_SIDES)).any()  # every path is taken
    monkeypatch.setattr(torch_backend, "_DENSE_MIN", 0)  # the dense pass even for this small scene
    dense = torch_backend._visibility(clip, faces, size, size, False)
    monkeypatch.setattr(torch_backend, "_DENSE_SIDES", ())
    assert torch.equal(dense, torch_backend._visibility(clip, faces, size, size, False))
    assert (dense >= 0).float().mean() > 0.2  # a scene, not an empty image


def _two_triangles() -> tuple[torch.Tensor, torch.Tensor]:
    clip = torch.tensor(
        [[[-0.8, -0.7, 0.2, 1.0], [0.7, -0.9, 0.1, 1.3], [-0.3, 0.8, 0.3, 0.9],
          [0.9, 0.9, 0.5, 1.1], [0.85, -0.2, 0.4, 1.2]]], dtype=torch.float64,
    )
    return clip, torch.tensor([[0, 1, 2], [2, 1, 4], [2, 4, 3]])


def test_gradcheck_interpolate_and_depth():
    clip, faces = _two_triangles()
    attr = torch.randn(5, 2, dtype=torch.float64)

    def render(c: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rast = rasterize(c, faces, 8, 8)
        return interpolate(a, rast, faces), rast.depth

    assert rasterize(clip, faces, 8, 8).mask.sum() > 20
    assert torch.autograd.gradcheck(render, (clip.clone().requires_grad_(), attr.requires_grad_()), atol=1e-6)


def test_gradcheck_antialias():
    clip, faces = _two_triangles()
    clip = clip * torch.tensor([0.8, 0.8, 1.0, 1.0], dtype=torch.float64)  # leave background around the mesh
    color = torch.rand(1, 10, 10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def render(c: torch.Tensor) -> torch.Tensor:
        return antialias(color, rasterize(c, faces, 10, 10), c, faces)

    assert (render(clip) != color).any()  # some silhouette pixels were blended
    assert torch.autograd.gradcheck(render, (clip.clone().requires_grad_(),), atol=1e-6)


def _projected_hull_area(verts: torch.Tensor, cams: Cameras) -> float:
    """Area in pixels of the convex hull of the vertices projected with the pinhole model of Cameras.rays()."""
    w2c = torch.linalg.inv(cams.c2w[0])
    cam = verts @ w2c[:3, :3].T + w2c[:3, 3]
    f = float(cams.focal()[0])
    pts = torch.stack([cams.width / 2 + f * cam[:, 0] / -cam[:, 2], cams.height / 2 - f * cam[:, 1] / -cam[:, 2]], -1)
    pts = sorted(map(tuple, pts.double().tolist()))
    hull: list[tuple[float, float]] = []
    for seq in (pts, pts[::-1]):  # monotone chain
        part: list[tuple[float, float]] = []
        for p in seq:
            while len(part) >= 2 and (
                (part[-1][0] - part[-2][0]) * (p[1] - part[-2][1]) - (part[-1][1] - part[-2][1]) * (p[0] - part[-2][0])
            ) <= 0:
                part.pop()
            part.append(p)
        hull += part[:-1]
    x, y = np.array(hull).T
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


@pytest.mark.parametrize("elevation,azimuth", [(0.0, 0.0), (25.0, 35.0)])
def test_cube_silhouette_area(elevation, azimuth):
    cams = _camera(elevation, azimuth, size=96)
    verts, faces = cube(0.7)
    expected = _projected_hull_area(verts, cams)
    out = render_mesh(verts, faces, cams, torch.ones_like(verts))
    hard = float(rasterize(transform(verts, mvp_from_cameras(cams)), faces, 96, 96).mask.sum())
    soft = float(out["opacity"].sum())
    perimeter = 4 * expected**0.5
    assert abs(hard - expected) < 0.5 * perimeter  # pixel counting: off by at most half the boundary pixels
    assert abs(soft - expected) < 0.005 * expected  # antialiased coverage is close to the exact area


def test_antialias_gives_silhouette_gradients():
    cams = _camera(25.0, 35.0, size=64)
    verts, faces = cube(0.7)
    verts = verts.clone().requires_grad_(True)
    out = render_mesh(verts, faces, cams, torch.full_like(verts, 0.5))
    out["opacity"].sum().backward()
    grad = verts.grad
    assert grad.abs().sum() > 0
    # the gradient of the covered area w.r.t. a uniform scale matches the analytic projected hull area
    eps = 1e-3
    with torch.no_grad():
        d_area = (_projected_hull_area(verts * (1 + eps), cams) - _projected_hull_area(verts * (1 - eps), cams)) / (2 * eps)
    assert float((grad * verts.detach()).sum()) == pytest.approx(d_area, rel=0.05)
    # without antialiasing, coverage is piecewise constant: no gradient reaches the positions through alpha
    plain = verts.detach().clone().requires_grad_(True)
    render_mesh(plain, faces, cams, torch.full_like(plain, 0.5), antialiased=False)["opacity"].sum().backward()
    assert plain.grad is None or plain.grad.abs().sum() == 0


def test_antialias_handles_fine_tessellation():
    """On a fine sphere the silhouette hides behind sub-pixel slivers; the walk across the mesh must find it."""
    cams = _camera(15.0, 0.0, distance=1.75, fovy=55.0, size=64)
    verts, faces = sphere(0.5, rings=48, segments=96)
    verts = verts.clone().requires_grad_(True)
    alpha = render_mesh(verts, faces, cams, torch.ones_like(verts))["opacity"]
    alpha.sum().backward()
    expected = _sphere_disc_area(0.5, 1.75, cams)
    assert float(alpha.detach().sum()) == pytest.approx(expected, rel=0.01)
    radial = (verts.grad * verts.detach()).sum()  # d(area)/d(scale) = 2 area / cos^2(half angle)
    assert float(radial) == pytest.approx(2 * expected / (1 - (0.5 / 1.75) ** 2), rel=0.05)


def _sphere_disc_area(radius: float, distance: float, cams: Cameras) -> float:
    """Pixel area of a sphere's perspective projection (an ellipse; a disc on the optical axis)."""
    # elevation tilts the view but the sphere is centred on the optical axis: its image is a disc
    half_angle = np.arcsin(radius / distance)
    r_pix = float(cams.focal()[0]) * np.tan(half_angle)
    return float(np.pi * r_pix**2)


def test_pixels_lie_on_camera_rays():
    height, width = 24, 32
    position = torch.tensor([[1.2, 0.7, 1.5]])
    c2w = look_at_c2w(position)
    cams = Cameras(c2w, torch.tensor([45.0]), torch.zeros(1), torch.zeros(1), torch.ones(1), position, height, width)
    origins, dirs = cams.rays()
    pixels = [(0, 0), (3, 29), (12, 16), (23, 5), (20, 31)]  # (row j, col i)
    mvp = mvp_from_cameras(cams)
    for j, i in pixels:
        point = origins[0, j, i] + 1.9 * dirs[0, j, i]
        xy, _ = clip_to_pixels(transform(point[None], mvp), height, width)
        assert torch.allclose(xy[0, 0], torch.tensor([i + 0.5, j + 0.5]), atol=1e-3)
        # a small triangle around the point covers exactly that pixel
        right, up = c2w[0, :3, 0], c2w[0, :3, 1]
        tri = torch.stack([point - 0.01 * right - 0.01 * up, point + 0.01 * right - 0.01 * up, point + 0.012 * up])
        rast = rasterize(transform(tri, mvp), torch.tensor([[0, 1, 2]]), height, width)
        assert rast.mask.sum() == 1 and rast.tri_id[0, j, i] == 0


def test_perspective_and_depth():
    proj = perspective(torch.tensor([60.0]), near=0.1, far=5.0)
    for depth in (0.1, 5.0):
        clip = proj[0] @ torch.tensor([0.0, 0.0, -depth, 1.0])
        assert float(clip[2] / clip[3]) == pytest.approx(-1.0 if depth == 0.1 else 1.0, abs=1e-5)
    cams = _camera(0.0, 0.0, distance=2.0, size=32)
    verts, faces = cube(0.5)
    rast = rasterize(transform(verts, mvp_from_cameras(cams)), faces, 32, 32)
    assert torch.allclose(rast.depth[0, 16, 16], torch.tensor(1.75), atol=1e-4)  # front face at z = 0.25


def test_backface_culling_and_batch():
    cams = make_cameras(torch.zeros(2), torch.tensor([0.0, 180.0]), torch.full((2,), 2.0), torch.full((2,), 50.0), 32, 32)
    verts = torch.tensor([[-0.4, -0.4, 0.0], [0.4, -0.4, 0.0], [0.0, 0.4, 0.0]])  # CCW seen from +Z
    faces = torch.tensor([[0, 1, 2]])
    clip = transform(verts, mvp_from_cameras(cams))
    both = rasterize(clip, faces, 32, 32)
    culled = rasterize(clip, faces, 32, 32, cull_backfaces=True)
    assert both.mask[0].sum() > 50 and both.mask[1].sum() == both.mask[0].sum()
    assert culled.mask[0].sum() == both.mask[0].sum() and culled.mask[1].sum() == 0
    assert torch.equal(both.mask[0], both.mask[1].flip(-1))  # the back view is a mirror image


def test_edge_topology():
    _, faces = cube()
    opp = edge_topology(faces)
    assert (opp >= 0).all()
    for f in range(faces.shape[0]):
        for k in range(3):
            edge = {int(faces[f, k]), int(faces[f, (k + 1) % 3])}
            assert edge <= set(faces[opp[f, k]].tolist()) and opp[f, k] != f


def test_render_mesh_outputs():
    cams = _camera(20.0, 30.0, size=32)
    verts, faces = sphere(0.4, 8, 16)
    colors = torch.tensor([0.9, 0.2, 0.1]).expand(faces.shape[0], 3)  # per-face colours
    out = render_mesh(verts, faces, cams, colors, background=1.0)
    assert out["rgb"].shape == (1, 32, 32, 3) and out["opacity"].shape == (1, 32, 32, 1)
    assert out["normal"].shape == (1, 32, 32, 3) and out["depth"].shape == (1, 32, 32, 1)
    assert torch.allclose(out["rgb"][0, 0, 0], torch.ones(3))  # white background
    centre = out["rgb"][0, 16, 16]
    assert centre[0] > centre[1] and centre[0] > centre[2]
    mask = out["opacity"][0, ..., 0] > 0.999
    assert torch.allclose(out["normal"][0][mask].norm(dim=-1), torch.ones(int(mask.sum())), atol=1e-5)


def _textured_quad():
    """A unit quad in the z = 0 plane facing +Z, uv v = 0 along its top edge, and a 2 x 2 texture."""
    verts = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    texture = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]])  # row 0: red, green
    return verts, faces, uv, texture


def test_render_mesh_texture_orientation_and_gradients():
    from dream3d.representations.mesh import TexturedMesh

    verts, faces, uv, texture = _textured_quad()
    texture = texture.clone().requires_grad_(True)
    cams = _camera(0.0, 0.0, distance=2.0, fovy=40.0, size=48)
    out = render_mesh(verts, faces, cams, uv=uv, texture=texture, ambient=1.0)
    albedo = out["albedo"][0]
    mask = out["opacity"][0, ..., 0] > 0.999
    # the texture's top-left texel shows at the quad's top-left (image row 0 is the top, v = 0 is texture row 0)
    rows, cols = mask.nonzero(as_tuple=True)
    top, bottom, left, right = int(rows.min()) + 1, int(rows.max()) - 1, int(cols.min()) + 1, int(cols.max()) - 1
    expect = {(top, left): [1, 0, 0], (top, right): [0, 1, 0], (bottom, left): [0, 0, 1], (bottom, right): [1, 1, 1]}
    for (r, c), rgb in expect.items():
        assert torch.allclose(albedo[r, c], torch.tensor(rgb, dtype=torch.float32), atol=0.1), (r, c, albedo[r, c])
    # the albedo is the mesh's own texture lookup at the interpolated uv, and the shaded colour is the albedo here
    rast = rasterize(transform(verts, mvp_from_cameras(cams)), faces, 48, 48)
    mesh = TexturedMesh(verts, faces, uv=uv, texture=texture.detach())
    want = mesh.sample_texture(interpolate(uv, rast, faces)[0][mask])
    assert torch.allclose(albedo[mask], want, atol=1e-5)
    assert torch.allclose(out["rgb"][0][mask], albedo[mask], atol=1e-5)
    out["rgb"].sum().backward()
    assert texture.grad is not None and (texture.grad > 0).all()  # every texel is seen


def test_render_textured_picks_texture_colours_or_grey():
    from dream3d.representations.mesh import TexturedMesh

    verts, faces, uv, texture = _textured_quad()
    cams = _camera(0.0, 0.0, distance=2.0, fovy=40.0, size=24)
    textured = render_textured(TexturedMesh(verts, faces, uv=uv, texture=texture), cams)
    direct = render_mesh(verts, faces, cams, uv=uv, texture=texture)
    assert torch.equal(textured["rgb"], direct["rgb"])
    colours = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    coloured = render_textured(TexturedMesh(verts, faces, vertex_colors=colours), cams)
    assert torch.equal(coloured["rgb"], render_mesh(verts, faces, cams, colours)["rgb"])
    grey = render_textured(TexturedMesh(verts, faces), cams, ambient=1.0)
    mask = grey["opacity"][0, ..., 0] > 0.999
    assert torch.allclose(grey["rgb"][0][mask], torch.full((int(mask.sum()), 3), 0.7))
    with pytest.raises(ValueError, match="uv and texture"):
        render_mesh(verts, faces, cams, uv=uv)
    with pytest.raises(ValueError, match="give colors"):
        render_mesh(verts, faces, cams)


def test_render_mesh_modes_agree_where_they_must():
    """The one mesh renderer's options compose: paths that compute the same thing give the same bits."""
    cams = make_cameras(torch.tensor([10.0, 50.0]), torch.tensor([20.0, -130.0]), torch.full((2,), 2.0),
                        torch.tensor([50.0, 40.0]), 32, 32)
    verts, faces = sphere(0.5, 8, 16)
    colour = torch.tensor([0.8, 0.3, 0.2])
    light = torch.tensor([0.3, 1.0, 0.2])

    def run(albedo, **kwargs):
        v = verts.clone().requires_grad_(True)
        out = render_mesh(v, faces, cams, albedo, light=light, **kwargs)
        grad, = torch.autograd.grad(sum(t.sum() * (k + 1) for k, t in enumerate(out.values())), v)
        return out, grad

    def same(a, b, keys=("rgb", "opacity", "normal", "albedo", "depth")):
        (out_a, grad_a), (out_b, grad_b) = a, b
        for key in keys:
            assert torch.equal(out_a[key], out_b[key]), key
        assert len(keys) < 5 or torch.equal(grad_a, grad_b)  # the same images: the same gradients

    # an albedo field (the mesh stages) and per-face colours (previews) are one code path from the albedo on
    face_colours = run(colour.expand(faces.shape[0], 3))
    same(face_colours, run(lambda points: colour.expand(points.shape[0], 3)))
    # "lambert" is the diffuse model of dream3d.render.shading behind the ShadeFn interface, two-sided normals
    to_light = F.normalize(light, dim=0)
    same(face_colours, run(colour.expand(faces.shape[0], 3),
                           shade=lambda albedo, points, normal, view, index: shade(albedo, normal, to_light.expand(
                               index.shape[0], 3), "diffuse", 0.35)))
    # full ambient light is no shading
    unshaded, lit = run(colour.expand(faces.shape[0], 3), shade=None), run(colour.expand(faces.shape[0], 3), ambient=1.0)
    assert torch.equal(unshaded[0]["rgb"], lit[0]["rgb"])
    # antialiasing the normal map too (the mesh stages) leaves the other channels alone
    mesh_stage = run(colour.expand(faces.shape[0], 3), antialias_normals=True)
    same(face_colours, mesh_stage, keys=("rgb", "opacity", "albedo", "depth"))
    same(run(colour.expand(faces.shape[0], 3), antialiased=False),
         run(colour.expand(faces.shape[0], 3), antialiased=False, antialias_normals=True))
    assert not torch.equal(face_colours[0]["normal"], mesh_stage[0]["normal"])  # the silhouettes of the normals
