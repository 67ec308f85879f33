"""Mesh export: marching cubes on analytic fields, UV baking, and GLB/OBJ/PLY files that load back."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
import trimesh

from dream3d.export.mesh import (
    RENDER_SAMPLES,
    auto_threshold,
    bake_mesh,
    bake_texture,
    density_grid,
    dilate_texture,
    export_mesh,
    extract_mesh,
    faint_parts,
    load_mesh,
    matched_threshold,
    signed_volume,
    unwrap_uv,
    uv_clip,
    visual_hull,
    write_glb,
    write_obj,
    write_ply,
)
from dream3d.render.raster import rasterize
from dream3d.representations.mesh import TexturedMesh

RES = 40
VOXEL = 2.0 / (RES - 1)


def sphere(x: torch.Tensor) -> torch.Tensor:
    return (x.norm(dim=-1) < 0.5).float() * 50.0


def colour(x: torch.Tensor) -> torch.Tensor:
    """Position mapped into [0.1, 0.9] on the sphere: a smooth field with no zero texels."""
    return (x + 0.5).clamp(0, 1) * 0.8 + 0.1


@pytest.fixture(scope="module")
def sphere_mesh():
    return extract_mesh(sphere, 1.0, resolution=RES)


@pytest.fixture(scope="module")
def baked(sphere_mesh):
    verts, faces, uv, vmapping = unwrap_uv(*sphere_mesh, size=128)
    texture = bake_texture(verts, faces, uv, colour, size=128)
    return TexturedMesh(verts, faces, uv=uv, texture=texture), vmapping


def glb_json(path) -> dict:
    data = path.read_bytes()
    assert data[:4] == b"glTF"
    (length,) = struct.unpack("<I", data[12:16])
    return json.loads(data[20:20 + length])


# ---------------------------------------------------------------------------------------------------- extraction


def test_sphere_is_closed_outward_and_on_the_surface(sphere_mesh):
    verts, faces = sphere_mesh
    assert verts.dtype == torch.float32 and faces.dtype == torch.long
    assert trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False).is_watertight
    assert (verts.norm(dim=-1) - 0.5).abs().max() < VOXEL
    assert signed_volume(verts, faces) == pytest.approx(4 / 3 * math.pi * 0.5**3, rel=0.05)
    v = verts[faces]
    normals = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
    assert ((normals * v.mean(1)).sum(-1) > 0).float().mean() > 0.99  # CCW seen from outside


def test_field_touching_the_box_gives_a_closed_mesh_inside_it():
    verts, faces = extract_mesh(lambda x: torch.ones(len(x)), 0.7, resolution=8, threshold=0.5)
    assert trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False).is_watertight
    assert verts.abs().max() <= 0.7 + 1.4 / 7 and signed_volume(verts, faces) > 0


def test_largest_component_drops_a_floater():
    def two_blobs(x):
        small = (x - torch.tensor([0.7, 0.7, 0.7])).norm(dim=-1) < 0.2
        return sphere(x) + small.float() * 50.0

    _, faces_all = extract_mesh(two_blobs, 1.0, resolution=RES, keep_largest=False)
    verts, faces = extract_mesh(two_blobs, 1.0, resolution=RES)
    assert len(trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False).split(only_watertight=False)) == 1
    assert len(faces) < len(faces_all)
    assert (verts.norm(dim=-1) - 0.5).abs().max() < VOXEL


def test_a_sizeable_piece_next_to_the_largest_is_kept_and_flakes_are_not():
    """A cap over a stem a hair's breadth below it (two pieces, as a fine stage can leave a mushroom) is one
    object; a flake beside the cap is not part of it."""
    def mushroom(x, flake=True):
        cap = ((x - torch.tensor([0.0, 0.3, 0.0])).norm(dim=-1) < 0.35) & (x[:, 1] > 0.2)
        stem = (x[:, [0, 2]].norm(dim=-1) < 0.1) & (x[:, 1] > -0.4) & (x[:, 1] < 0.14)
        bit = (x - torch.tensor([0.45, 0.3, 0.0])).norm(dim=-1) < 0.05
        return 50.0 * (cap | stem | (bit & flake)).float()

    verts, faces = extract_mesh(mushroom, 1.0, resolution=RES)
    parts = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False).split(only_watertight=False)
    assert len(parts) == 2 and float(verts[:, 1].min()) < -0.35  # cap and stem
    assert float(verts[:, 0].max()) < 0.42  # no flake
    _, alone = extract_mesh(lambda x: mushroom(x, flake=False), 1.0, resolution=RES)
    assert len(alone) == len(faces)


def test_decimation_respects_max_faces():
    verts, faces = extract_mesh(sphere, 1.0, resolution=RES, max_faces=300)
    assert 100 < len(faces) <= 300
    assert int(faces.max()) < len(verts) and signed_volume(verts, faces) > 0
    assert (verts.norm(dim=-1) - 0.5).abs().max() < 0.1


def test_empty_field_raises_one_clear_line():
    with pytest.raises(ValueError, match="empty density field") as err:
        extract_mesh(lambda x: torch.zeros(len(x)), 1.0, resolution=8)
    assert "\n" not in str(err.value) and "threshold" in str(err.value) and "max density found 0" in str(err.value)
    with pytest.raises(ValueError, match="empty.*threshold 60.*max density found 50"):
        extract_mesh(sphere, 1.0, resolution=16, threshold=60.0)


def test_auto_threshold_rule():
    step = 2.0 / RENDER_SAMPLES
    assert auto_threshold(1000.0, 1.0) == pytest.approx(math.log(2) / step)  # alpha 0.5 over one render step
    assert auto_threshold(10.0, 1.0) == pytest.approx(5.0)  # weak field (untrained blob): half the peak
    assert auto_threshold(0.0, 1.0) == pytest.approx(-math.log(0.99) / step)  # never below empty space


def soft_snowman(x: torch.Tensor) -> torch.Tensor:
    """A dense dark hat (peak 30) on a faint body (density 5, 0.6 across: optical depth about 3, so it renders
    opaque, though far below half the peak): what a coarse NeRF makes of a white body on a white background."""
    hat = 30.0 * ((x - torch.tensor([0.0, 0.5, 0.0])).norm(dim=-1) < 0.15).float()
    body = 5.0 * ((x - torch.tensor([0.0, -0.2, 0.0])).norm(dim=-1) < 0.3).float()
    return torch.maximum(hat, body)


def test_matched_threshold_keeps_the_faint_parts_a_soft_field_renders():
    level = matched_threshold(density_grid(soft_snowman, 1.0, 48, 65536), 1.0)
    assert level < 5.0 < auto_threshold(30.0, 1.0)  # the body is inside the matched level set, not the half-peak one
    verts, _ = extract_mesh(soft_snowman, 1.0, resolution=48, threshold=level, keep_largest=False)
    assert float(verts[:, 1].min()) < -0.4  # the body, down to its base
    verts, _ = extract_mesh(soft_snowman, 1.0, resolution=48, keep_largest=False)
    assert float(verts[:, 1].min()) > 0.3  # the default (half the peak): the hat alone


def test_matched_threshold_keeps_the_usual_level_for_hard_fields_and_falls_back_when_nothing_renders():
    hard = density_grid(lambda x: (x.norm(dim=-1) < 0.5).float() * 1000.0, 1.0, 48, 65536)
    level = matched_threshold(hard, 1.0)  # every level between empty space and the peak matches: the usual one
    assert abs(math.log(level / auto_threshold(1000.0, 1.0))) < 0.1
    faint = torch.full((16, 16, 16), 0.2)  # optical depth 0.4 < ln 2 along every line: nothing renders opaque
    assert matched_threshold(faint, 1.0) == pytest.approx(auto_threshold(0.2, 1.0))


def test_render_samples_matches_the_renderer_default():
    from dream3d.config import RendererConfig

    assert RENDER_SAMPLES == RendererConfig().num_samples


# ---------------------------------------------------------------------------------------------------- UVs, baking


def test_uv_rows_follow_v():
    """v = 0 is texture row 0: a quad over v in [0, 0.25] covers the top quarter of the rows."""
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.25], [0.0, 0.25]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    mask = rasterize(uv_clip(uv), faces, 16, 16).mask[0]
    assert mask[:4].all() and not mask[4:].any()


def test_unwrap_splits_seams_and_keeps_geometry(sphere_mesh, baked):
    verts, faces = sphere_mesh
    mesh, vmapping = baked
    assert mesh.num_faces == len(faces) and mesh.num_verts >= len(verts)
    assert torch.equal(mesh.verts, verts[vmapping])
    assert mesh.uv.min() >= 0 and mesh.uv.max() <= 1


def test_baked_texture_matches_the_colour_field(baked):
    mesh, _ = baked
    error = (mesh.sample_texture(mesh.uv) - colour(mesh.verts)).abs().mean()
    assert error < 0.02
    assert (mesh.texture.sum(-1) > 0).all()  # dilation and the mean fill leave no black texel


def test_dilation_grows_from_filled_texels_and_fills_the_rest():
    tex = torch.zeros(32, 32, 3)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    tex[10:12, 10:12] = torch.tensor([1.0, 0.5, 0.25])
    mask[10:12, 10:12] = True
    out = dilate_texture(tex, mask, iterations=2)
    assert torch.allclose(out[8:14, 8:14], torch.tensor([1.0, 0.5, 0.25]).expand(6, 6, 3))
    assert torch.allclose(out[0, 0], torch.tensor([1.0, 0.5, 0.25]))  # the mean colour beyond the dilation


def test_bake_mesh_on_an_untrained_nerf_blob():
    from dream3d.config import NeRFConfig
    from dream3d.representations.nerf import NeRF

    torch.manual_seed(0)
    nerf = NeRF(NeRFConfig(backend="torch", hidden=16))
    mesh = bake_mesh(nerf.density, lambda x: nerf(x)["albedo"], nerf.radius, resolution=24, texture_size=64)
    assert mesh.textured and mesh.texture.shape == (64, 64, 3) and mesh.num_faces > 100
    assert 0.15 < float(mesh.verts.norm(dim=-1).mean()) < 0.4  # the blob's half-peak shell
    assert signed_volume(mesh.verts, mesh.faces) > 0


# ---------------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_round_trip(tmp_path, baked, fmt):
    mesh, _ = baked
    path = export_mesh(mesh, tmp_path, "model", formats=[fmt])[fmt]
    assert path == tmp_path / f"model.{fmt}" and path.stat().st_size > 0
    back = load_mesh(path)
    assert back.num_verts == mesh.num_verts and back.num_faces == mesh.num_faces
    assert torch.equal(back.faces, mesh.faces)
    assert torch.allclose(back.verts, mesh.verts, atol=1e-6)
    expected = mesh.sample_texture(mesh.uv)
    if fmt == "ply":
        assert (back.vertex_colors - expected).abs().max() <= 0.5 / 255 + 1e-6
        return
    assert (back.texture - mesh.texture).abs().mean() < 1 / 255 + 1e-3
    assert torch.allclose(back.uv, mesh.uv, atol=1e-6)
    assert (back.sample_texture(back.uv) - expected).abs().mean() < 1 / 255


def test_glb_has_pbr_material_and_embedded_png(tmp_path, baked):
    mesh, _ = baked
    gltf = glb_json(write_glb(mesh, tmp_path / "m.glb"))
    pbr = gltf["materials"][0]["pbrMetallicRoughness"]
    assert "baseColorTexture" in pbr and pbr["metallicFactor"] == 0 and pbr["roughnessFactor"] == 1
    assert gltf["images"][0]["mimeType"] == "image/png"
    assert "TEXCOORD_0" in gltf["meshes"][0]["primitives"][0]["attributes"]
    shiny = TexturedMesh(mesh.verts, mesh.faces, uv=mesh.uv, texture=mesh.texture, roughness=0.3, metallic=0.6)
    back = load_mesh(write_glb(shiny, tmp_path / "shiny.glb"))
    assert back.roughness == pytest.approx(0.3) and back.metallic == pytest.approx(0.6)
    back = load_mesh(write_obj(shiny, tmp_path / "shiny.obj"))
    assert back.roughness == pytest.approx(0.3) and back.metallic == pytest.approx(0.6)


def test_vertex_colour_mesh_writes_color_0(tmp_path):
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mesh = TexturedMesh(torch.eye(3), torch.tensor([[0, 1, 2]]), vertex_colors=colors)
    path = write_glb(mesh, tmp_path / "vc.glb")
    assert "COLOR_0" in glb_json(path)["meshes"][0]["primitives"][0]["attributes"]
    for written in (path, write_obj(mesh, tmp_path / "vc.obj"), write_ply(mesh, tmp_path / "vc.ply")):
        assert torch.equal(load_mesh(written).vertex_colors, colors)


def test_obj_files_are_named_after_the_stem(tmp_path, baked):
    mesh, _ = baked
    write_obj(mesh, tmp_path / "thing.obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing.mtl", "thing.obj", "thing.png"]
    assert "map_Kd thing.png" in (tmp_path / "thing.mtl").read_text()
    assert "mtllib thing.mtl" in (tmp_path / "thing.obj").read_text()


def test_unknown_format_is_one_clear_line(tmp_path, baked):
    mesh, _ = baked
    with pytest.raises(ValueError, match="unknown mesh format 'stl' .*glb, obj, ply"):
        export_mesh(mesh, tmp_path, formats=["glb", "stl"])
    assert not list(tmp_path.iterdir())  # checked before anything was written
    with pytest.raises(ValueError, match="unknown mesh format"):
        load_mesh(tmp_path / "model.stl")
    with pytest.raises(FileNotFoundError, match="missing.glb"):
        load_mesh(tmp_path / "missing.glb")


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_failed_write_leaves_no_file(tmp_path, baked, fmt):
    mesh, _ = baked
    broken = TexturedMesh(mesh.verts, mesh.faces, uv=mesh.uv, texture=mesh.texture)
    broken.texture = torch.full_like(mesh.texture, float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        export_mesh(broken, tmp_path, formats=[fmt])
    assert not list(tmp_path.iterdir())
    good = export_mesh(mesh, tmp_path, formats=[fmt])[fmt]
    before = good.read_bytes()
    broken.texture = torch.zeros(4, 4)  # not [H,W,3]
    with pytest.raises(ValueError, match="texture"):
        export_mesh(broken, tmp_path, formats=[fmt])
    assert good.read_bytes() == before  # the earlier file survives
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]


def test_matched_threshold_alpha_picks_the_opacity_a_part_must_render_at():
    """A faint body (optical depth about 0.9 across, opacity about 0.6): kept by a level matched to the pixels that
    render at least 30% opaque, dropped by one matched to 90%; the dense hat is kept by both."""
    def faint(x):
        hat = 30.0 * ((x - torch.tensor([0.0, 0.5, 0.0])).norm(dim=-1) < 0.15).float()
        body = 1.5 * ((x - torch.tensor([0.0, -0.2, 0.0])).norm(dim=-1) < 0.3).float()
        return torch.maximum(hat, body)

    grid = density_grid(faint, 1.0, 48, 65536)
    low, high = matched_threshold(grid, 1.0, alpha=0.3), matched_threshold(grid, 1.0, alpha=0.9)
    assert low < 1.5 < high < 30.0
    with pytest.raises(ValueError, match="alpha"):
        matched_threshold(grid, 1.0, alpha=1.0)


def bucket(x: torch.Tensor) -> torch.Tensor:
    """A dense open box (walls and a bottom 0.08 thick, no lid) of side 0.8: what a coarse NeRF can make of a cube
    whose top face renders faint."""
    a = x.abs()
    box = (a < 0.4).all(-1)
    cavity = (a[:, 0] < 0.32) & (a[:, 2] < 0.32) & (x[:, 1] > -0.32)
    return 50.0 * (box & ~cavity).float()


def torus(x: torch.Tensor) -> torch.Tensor:
    ring = torch.stack([x[:, [0, 2]].norm(dim=-1) - 0.35, x[:, 1]], -1).norm(dim=-1)
    return 50.0 * (ring < 0.12).float()


def test_visual_hull_fills_what_every_side_sees_opaque_and_keeps_holes_seen_through():
    lin = torch.linspace(-1.0, 1.0, 49)

    def at(mask, x, y, z):
        return bool(mask[(lin - x).abs().argmin(), (lin - y).abs().argmin(), (lin - z).abs().argmin()])

    grid = density_grid(bucket, 1.0, 49, 65536)
    hull = visual_hull(grid, 1.0, alpha=0.3)
    assert at(hull, 0.0, 0.0, 0.0) and at(hull, 0.2, 0.3, -0.2)  # the open box's inside: a solid box
    assert not at(grid > 25.0, 0.0, 0.0, 0.0)  # ... where its level set is empty
    assert not at(hull, 0.0, 0.5, 0.0) and not at(hull, 0.55, 0.0, 0.0)  # nothing over or beside it
    grid = density_grid(torus, 1.0, 49, 65536)
    hull = visual_hull(grid, 1.0, alpha=0.3)
    assert at(hull, 0.35, 0.0, 0.0) and at(hull, 0.0, 0.0, -0.35)  # the ring
    assert not at(hull, 0.0, 0.0, 0.0)  # the hole, seen through from above
    assert int((hull & (grid < 25.0)).sum()) < 0.25 * int((grid > 25.0).sum())  # little besides the ring


def test_faint_parts_keeps_a_whole_faint_part_and_drops_the_halo():
    """A dense hat with a soft edge (a halo between the two levels all round it) on a faint body: the body is a
    faint part, the hat's halo is not, and a field without faint parts has none."""
    def field(x, body=True):
        r = (x - torch.tensor([0.0, 0.4, 0.0])).norm(dim=-1)
        hat = 30.0 * (r < 0.15).float() + 2.0 * ((r >= 0.15) & (r < 0.22)).float()  # core and halo
        if not body:
            return hat
        return torch.maximum(hat, 2.0 * ((x - torch.tensor([0.0, -0.1, 0.0])).norm(dim=-1) < 0.3).float())

    grid = density_grid(field, 1.0, 48, 65536)
    lin = torch.linspace(-1.0, 1.0, 48)

    def at(x, y, z):
        return bool(parts[(lin - x).abs().argmin(), (lin - y).abs().argmin(), (lin - z).abs().argmin()])

    parts = faint_parts(grid, low=1.0, high=10.0)
    assert at(0.0, -0.1, 0.0) and at(0.2, -0.1, 0.0) and at(0.0, 0.2, 0.0)  # the body, up to where it meets the hat
    assert not at(0.0, 0.6, 0.0) and not at(0.19, 0.45, 0.0)  # the halo over and beside the hat
    assert not at(0.0, 0.4, 0.0)  # the hat itself is the high level's
    assert not bool(faint_parts(density_grid(lambda x: field(x, body=False), 1.0, 48, 65536), 1.0, 10.0).any())
