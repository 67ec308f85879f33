"""The shape world: primitives are closed and outward, the catalogue is complete, oriented and exportable."""

from __future__ import annotations

import pytest
import torch
import trimesh

from dream3d.cameras import VIEW_LABELS, make_cameras
from dream3d.cli import export_shape_glb
from dream3d.render.mesh import render_mesh
from dream3d.shapeworld import (
    COLORS,
    PRIMITIVES,
    caption_with_view,
    catalogue,
    format_catalogue,
    get,
)
from dream3d.shapeworld import primitives as P

COMPOSITES = ("pineapple", "snowman", "mug", "house", "table", "mushroom", "tree", "chair")


def _trimesh(verts: torch.Tensor, faces: torch.Tensor) -> trimesh.Trimesh:
    return trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)


@pytest.mark.parametrize("builder", [*PRIMITIVES.values(), P.dome, lambda: P.frustum(0.3, 0.1, 0.6)])
def test_primitives_are_watertight_and_outward(builder):
    verts, faces = builder()
    assert verts.dtype == torch.float32 and faces.dtype == torch.int64 and faces.shape[1] == 3
    mesh = _trimesh(verts, faces)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # counter-clockwise seen from outside: normals point out
    assert (verts.abs() <= 0.5 + 1e-6).all()


def test_transforms_keep_orientation():
    nose = P.rotate(P.cone(), "x", 90)
    assert nose.verts[:, 2].argmax() == P.cone().verts[:, 1].argmax()  # +90 about x takes the apex (+Y) to +Z
    moved = P.merge([P.translate(P.scale(P.cube(), (1.0, 0.5, 2.0)), (1, 2, 3)), P.sphere()])
    assert _trimesh(*moved).is_watertight and _trimesh(*moved).volume > 0


def test_catalogue_contents():
    objects = catalogue()
    names = [o.name for o in objects]
    assert len(names) == len(set(names)) and len({o.caption for o in objects}) == len(objects)
    assert len(COLORS) >= 8 and len(PRIMITIVES) == 6
    primitives = [o for o in objects if o.category == "primitive"]
    assert len(primitives) == len(COLORS) * len(PRIMITIVES)
    assert get("a red cube").name == "red_cube" and get("blue_torus").caption == "a blue torus"
    assert get("orange sphere").caption == "an orange sphere"
    for name in COMPOSITES:
        assert get(name).caption == f"a {name}"
    assert get("snowman").has_front and get("chair").has_front and not get("red_cube").has_front
    assert [o.name for o in catalogue()] == names  # deterministic
    for obj in objects:
        assert obj.verts.shape == obj.colors.shape and obj.verts.dtype == torch.float32
        assert obj.faces.dtype == torch.int64 and int(obj.faces.max()) < obj.verts.shape[0]
        assert (obj.colors >= 0).all() and (obj.colors <= 1).all()
        assert (obj.verts.abs() <= 0.5).all(), obj.name  # fits the box [-0.5, 0.5]^3
        centre = 0.5 * (obj.verts.amin(0) + obj.verts.amax(0))
        assert centre.abs().max() < 1e-5 and obj.verts.abs().max() > 0.4  # centred, roughly unit size


def test_snowman_nose_points_to_the_front():
    snowman = get("a snowman")
    orange = (snowman.colors - torch.tensor([0.98, 0.48, 0.06])).abs().sum(-1) < 1e-3
    assert orange.any()
    assert snowman.verts[orange, 2].min() > 0  # the whole carrot is in front
    assert orange[snowman.verts[:, 2].argmax()]  # its tip is the front-most point
    # and it shows in a front view but not in a back view
    one = torch.ones(2)
    cams = make_cameras(10 * one, torch.tensor([0.0, 180.0]), 1.6 * one, 40 * one, 96, 96)
    r, g, b = render_mesh(snowman.verts, snowman.faces, cams, snowman.colors)["rgb"].unbind(-1)
    is_orange = (r > 0.15) & (r > 1.6 * g) & (g > 4 * b)  # carrot hue: not snow, coal, nor the brown arms
    assert is_orange[0].sum() >= 3 and is_orange[1].sum() == 0


def test_front_features():
    chair, mug, house = get("chair"), get("mug"), get("house")
    tall = chair.verts[:, 1] > 0.3  # the backrest is the only part this high
    assert chair.verts[tall, 2].max() < 0
    top = mug.verts[:, 1] > mug.verts[:, 1].max() - 1e-6  # the coffee's surface, centred on the mug's axis
    assert mug.verts[top, 0].mean() < -0.05  # the axis is left of centre: the handle sticks out on the +X side
    door = (house.colors - torch.tensor([0.45, 0.28, 0.12])).abs().sum(-1) < 1e-3
    assert door.any() and house.verts[door, 2].min() > 0.1


def test_caption_with_view():
    assert caption_with_view("a snowman", "front") == "a snowman, front view"
    assert caption_with_view("a mug", "overhead") == "a mug, overhead view"
    assert {caption_with_view("x", v).split(", ")[1] for v in VIEW_LABELS} == {
        "front view", "side view", "back view", "overhead view",
    }
    with pytest.raises(ValueError, match="front"):
        caption_with_view("a mug", "below")


def test_get_error_lists_close_matches():
    with pytest.raises(KeyError) as err:
        get("a snowmen")
    assert "snowman" in str(err.value) and "a snowmen" in str(err.value)


def test_format_catalogue():
    table = format_catalogue()
    lines = table.splitlines()
    assert len(lines) == len(catalogue()) + 2
    assert lines[0].split() == ["name", "caption", "category", "front", "faces"]
    snowman = next(line for line in lines if line.startswith("snowman "))
    assert "a snowman" in snowman and "yes" in snowman and str(get("snowman").num_faces) in snowman


def test_export_glb_round_trip(tmp_path):
    obj = get("a pineapple")
    path = export_shape_glb(obj, tmp_path / "out" / "pineapple.glb")
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    from dream3d.export.mesh import load_mesh

    loaded = load_mesh(path)
    assert (loaded.num_verts, loaded.num_faces) == (obj.verts.shape[0], obj.faces.shape[0])
    assert (loaded.vertex_colors - obj.colors).abs().max() < 1.0 / 255 + 1e-6
    assert loaded.metallic == 0.0  # a matte material, not glTF's fully metallic default
    assert len(trimesh.load(path, force="mesh", process=False).vertices) == obj.verts.shape[0]
