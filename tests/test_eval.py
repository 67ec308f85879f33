"""dream3d eval: scores of true, wrong and rotated shape-world meshes; scale normalisation; the command."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dream3d import cli
from dream3d.cameras import turntable
from dream3d.config import PROJECT_ROOT, RunConfig, to_yaml
from dream3d.eval import (
    CLASSIFIER_FIGURES,
    FIGURES,
    SHIPPED_CLASSIFIER,
    EvalError,
    _view_figures,
    align_yaw,
    chamfer_distance,
    evaluate_mesh,
    format_table,
    match_prompt,
    occupancy,
    shape_figures,
    silhouette_difference,
    surface_samples,
)
from dream3d.eval import turn as turn_mesh
from dream3d.io import write_text
from dream3d.representations.mesh import TexturedMesh
from dream3d.shapeworld import get
from dream3d.shapeworld.classifier import ShapeClassifier, class_table, load_classifier, save_classifier

# the trained evaluation classifier; DREAM3D_EVAL_CLASSIFIER points the acceptance tests at another folder
CLASSIFIER = Path(os.environ.get("DREAM3D_EVAL_CLASSIFIER", PROJECT_ROOT / SHIPPED_CLASSIFIER))


def true_mesh(name: str, turn: float = 0.0, scale: float = 1.0, shift=(0.0, 0.0, 0.0)) -> TexturedMesh:
    """A catalogue object as a vertex-coloured mesh, turned by ``turn`` degrees about +Y, scaled, shifted."""
    obj = get(name)
    turned = turn_mesh(TexturedMesh(obj.verts, obj.faces, vertex_colors=obj.colors), turn)
    return dataclasses.replace(turned, verts=turned.verts * scale + torch.tensor(shift))


@pytest.fixture(scope="module")
def classifier():
    if not (CLASSIFIER / "config.json").is_file():
        pytest.skip("shipped classifier not found")
    return load_classifier(CLASSIFIER)


_SCORES: dict = {}


def score(classifier, name: str, prompt: str = "", turn: float = 0.0) -> dict:
    """evaluate_mesh of a catalogue object (16 views), computed once per module."""
    key = (name, prompt, turn)
    if key not in _SCORES:
        _SCORES[key] = evaluate_mesh(true_mesh(name, turn), prompt or get(name).caption, classifier, views=16)
    return _SCORES[key]


@pytest.fixture(scope="module")
def untrained_classifier_dir(tmp_path_factory):
    """A real but untrained classifier (random weights): for the plumbing only."""
    torch.manual_seed(0)
    return save_classifier(ShapeClassifier([8, 16], 32, class_table()), tmp_path_factory.mktemp("classifier"))


# ----------------------------------------------------------------------------------------- acceptance


@pytest.mark.parametrize("name", ["snowman", "car", "red_cube"])
def test_true_object_scores_full_marks(classifier, name):
    obj = get(name)
    r = score(classifier, name)
    assert r["r_precision"] >= 0.95 and r["object_accuracy"] >= 0.95 and r["colour_accuracy"] >= 0.95, r
    assert r["iou"] >= 0.95 and r["colour_error"] <= 0.02
    if obj.has_front:
        assert r["janus"] == 0.0 and r["front_ok"] and r["front_accuracy"] >= 0.8, r
    else:
        assert r["janus"] is None and "no front" in r["unavailable"]["janus"]


def test_wrong_object_scores_low(classifier):
    r = score(classifier, "blue_sphere", "a red cube")
    assert r["r_precision"] <= 0.1 and r["object_accuracy"] <= 0.1 and r["colour_accuracy"] <= 0.1, r
    assert r["iou"] < 0.85 and r["colour_error"] > 0.3
    assert r["top_caption"] == "a blue sphere"


@pytest.mark.parametrize("name", ["snowman", "house"])
def test_turned_mesh_flags_the_front(classifier, name):
    straight, turned = score(classifier, name), score(classifier, name, turn=180.0)
    assert turned["r_precision"] >= 0.8  # still the right object ...
    assert not turned["front_ok"] and abs(turned["front_azimuth"]) > 135.0, turned  # ... facing the wrong way
    assert turned["janus"] >= 0.25 and turned["front_accuracy"] <= 0.6  # a perfect 180: 3/9 and 6/12
    assert straight["front_ok"] and turned["front_accuracy"] < straight["front_accuracy"]


# ----------------------------------------------------------------------------------------- mechanics


def test_prompt_matching_strips_view_suffix():
    caption, obj = match_prompt("A  Snowman, front view")
    assert caption == "a snowman" and obj.name == "snowman"
    assert match_prompt("a red cube, overhead view")[1].name == "red_cube"
    caption, obj = match_prompt("a dragon, back view")
    assert caption == "a dragon" and obj is None


def test_scale_and_position_are_normalised():
    r = evaluate_mesh(true_mesh("snowman", scale=2.0, shift=(0.3, -1.0, 0.2)), "a snowman", None, views=6)
    assert r["iou"] > 0.99 and r["colour_error"] < 0.01
    assert all(r[k] is None and r["unavailable"][k] == "no classifier given" for k in CLASSIFIER_FIGURES)
    wrong = evaluate_mesh(true_mesh("blue_sphere", scale=0.3), "a red cube", None, views=6)
    assert wrong["iou"] < 0.85 and wrong["colour_error"] > 0.4


def test_view_figures_follow_the_classifier_views():
    """Janus / front figures from given view probabilities: right views, then every view turned by 180 deg."""
    cams = turntable(16, 15.0)
    labels = cams.view_labels()
    views = list(class_table()["views"])
    rows = [{"azimuth": a, "camera_view": lab, "counted": abs(abs(a) - 45) >= 10 and abs(abs(a) - 135) >= 10}
            for a, lab in zip(cams.azimuth.tolist(), labels)]
    right = torch.nn.functional.one_hot(torch.tensor([views.index(v) for v in labels]), 4).float()
    for row, lab in zip(rows, labels):
        row["view"] = lab
    good = _view_figures(rows, right, views)
    assert good["front_accuracy"] == 1.0 and good["janus"] == 0.0 and good["front_ok"]
    assert abs(good["front_azimuth"]) < 1.0
    swap = {"front": "back", "back": "front", "side": "side", "overhead": "overhead"}
    for row, lab in zip(rows, labels):
        row["view"] = swap[lab]
    turned = torch.nn.functional.one_hot(torch.tensor([views.index(swap[v]) for v in labels]), 4).float()
    bad = _view_figures(rows, turned, views)
    # counted: 3 front, 6 side, 3 back views; the back ones now say front, the front ones back
    assert bad["janus"] == pytest.approx(3 / 9) and bad["front_accuracy"] == 0.5 and not bad["front_ok"]
    assert abs(bad["front_azimuth"]) > 179.0


def test_outside_the_catalogue_reports_what_it_can(untrained_classifier_dir):
    r = evaluate_mesh(true_mesh("car"), "a dragon, side view", load_classifier(untrained_classifier_dir), views=4)
    assert not r["in_catalogue"] and r["caption"] == "a dragon"
    assert all(r[k] is None for k in FIGURES) and set(r["unavailable"]) == set(FIGURES)
    assert r["coverage"] > 0.05 and r["top_caption"] and all(row["caption"] for row in r["per_view"])


def make_run(folder: Path, prompt: str, prior: str = "assets/priors/shapeworld", mesh: str = "snowman") -> Path:
    write_text(folder / "config.yaml", to_yaml(RunConfig(prompt=prompt, prior=prior)))
    cli.export_shape_glb(get(mesh), folder / "export" / "model.glb")
    return folder


def test_eval_command_writes_eval_json(tmp_path, capsys, untrained_classifier_dir):
    prior = tmp_path / "prior"  # the run's prior folder holds the classifier: found without classifier=
    save_classifier(load_classifier(untrained_classifier_dir), prior / "classifier")
    run = make_run(tmp_path / "run", "a snowman", str(prior))
    assert cli.main(["eval", str(run), "views=4"]) == 0
    out = capsys.readouterr().out
    assert "r_precision" in out and "janus" in out and "eval.json" in out
    data = json.loads((run / "eval.json").read_text())
    assert data["object"] == "snowman" and data["views"] == 4 and len(data["per_view"]) == 4
    assert data["iou"] >= 0.95 and data["colour_error"] < 0.02  # the GLB round trip keeps the vertex colours
    assert data["volume_iou"] >= 0.99 and data["chamfer"] < 0.01  # ... and the geometry
    assert Path(data["classifier"]) == (prior / "classifier").resolve()
    assert not list(run.glob(".*tmp*"))  # written atomically
    picture = np.asarray(Image.open(run / "eval_silhouettes.png"))  # 4 views of 64 px in one row: the truth itself
    assert picture.shape == (64, 256, 3) and "eval_silhouettes.png" in out
    assert (picture[..., 1] == 255).mean() > 0.05 and (picture[..., 0] == 255).mean() < 0.01 \
        and (picture[..., 2] == 255).mean() < 0.01
    # a prompt outside the catalogue has no truth to draw against: the old picture goes
    write_text(run / "config.yaml", to_yaml(RunConfig(prompt="a dragon", prior=str(prior))))
    assert cli.main(["eval", str(run), "views=4"]) == 0
    assert not (run / "eval_silhouettes.png").exists() and "eval_silhouettes.png" not in capsys.readouterr().out


def test_silhouette_difference_colours_what_the_iou_counts():
    truth = torch.zeros(3, 8, 8)
    truth[:, 2:6, 2:6] = 1.0  # a square
    mesh = torch.zeros(3, 8, 8)
    mesh[:, 2:6, 4:8] = 1.0  # the square moved right by 2
    img = silhouette_difference(mesh[..., None], truth[..., None], per_row=2)
    assert img.shape == (16, 16, 3) and img.dtype == torch.uint8  # 2 views a row, 2 rows, the last tile blank
    tile = img[:8, :8]
    assert (tile[2:6, 4:6] == torch.tensor([0, 255, 0], dtype=torch.uint8)).all()  # both
    assert (tile[2:6, 6:8] == torch.tensor([255, 0, 0], dtype=torch.uint8)).all()  # the mesh only: too much
    assert (tile[2:6, 2:4] == torch.tensor([0, 0, 255], dtype=torch.uint8)).all()  # the truth only: missing
    assert int(tile.sum()) == 255 * 24 and int(img[8:, 8:].sum()) == 0


@pytest.mark.parametrize("args, needle", [
    ([], "config.yaml"),
    (["vews=4"], "views"),
    (["views=many"], "views"),
    (["classifier=/nonexistent/folder"], "classifier=/nonexistent/folder"),
])
def test_eval_command_errors_in_one_line(tmp_path, capsys, args, needle):
    run = tmp_path / "run"
    run.mkdir()
    if args:
        make_run(run, "a red cube", str(tmp_path / "no-prior"))
    assert cli.main(["eval", str(run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not (run / "eval.json").exists()


# ----------------------------------------------------------------------------------------- 3D shape figures


def test_shape_figures_true_object_against_itself():
    for name in ("snowman", "red_cube", "chair"):
        r = evaluate_mesh(true_mesh(name, scale=1.7, shift=(0.2, -0.4, 0.1)), get(name).caption, None, views=2)
        assert r["volume_iou"] >= 0.99 and r["chamfer"] <= 0.005, (name, r["volume_iou"], r["chamfer"])
    assert "3D occupancy IoU" in format_table(r) and "chamfer" in format_table(r)


@pytest.mark.parametrize("name, other, max_iou, min_chamfer", [
    ("red_sphere", "red_torus", 0.4, 0.08),  # same silhouette width, a hole through the middle
    ("red_cube", "blue_sphere", 0.6, 0.08),
    ("chair", "table", 0.1, 0.1),
    ("snowman", "red_cylinder", 0.5, 0.05),
])
def test_shape_figures_tell_different_shapes_apart(name, other, max_iou, min_chamfer):
    f = shape_figures(true_mesh(other), true_mesh(name))
    assert f["volume_iou"] <= max_iou and f["chamfer"] >= min_chamfer, f


def test_shape_figures_turned_object_scores_lower():
    straight, turned = shape_figures(true_mesh("car"), true_mesh("car")), shape_figures(true_mesh("car", 90.0), true_mesh("car"))
    assert straight["volume_iou"] == 1.0 and turned["volume_iou"] < 0.5 and turned["chamfer"] > 0.04


def test_occupancy_volumes_and_robustness():
    """Cube and sphere volumes; overlapping parts count as their union; orientation and small holes do not matter."""
    cube, sphere = get("red_cube"), get("red_sphere")
    cell = (1 / 64) ** 3
    assert float(occupancy(cube.verts, cube.faces).sum()) * cell == pytest.approx(0.9 ** 3, rel=0.03)
    assert float(occupancy(sphere.verts, sphere.faces).sum()) * cell == pytest.approx(math.pi / 6 * 0.9 ** 3, rel=0.03)
    inverted = occupancy(cube.verts, cube.faces.flip(1))
    assert torch.equal(inverted, occupancy(cube.verts, cube.faces))
    # two overlapping copies of the sphere (an overlapping union, as in the composites): the same solid
    doubled = occupancy(torch.cat([sphere.verts, sphere.verts * 0.7]),
                        torch.cat([sphere.faces, sphere.faces + sphere.verts.shape[0]]))
    assert torch.equal(doubled, occupancy(sphere.verts, sphere.faces))
    keep = torch.rand(sphere.num_faces, generator=torch.Generator().manual_seed(0)) > 0.05  # 5% of faces missing
    holey = occupancy(sphere.verts, sphere.faces[keep])
    full = occupancy(sphere.verts, sphere.faces)
    assert float((holey & full).sum()) / float((holey | full).sum()) > 0.98


def test_shape_figures_are_fast():
    import time

    start = time.perf_counter()
    shape_figures(true_mesh("pineapple"), true_mesh("snowman"))
    assert time.perf_counter() - start < 2.0
    assert chamfer_distance(torch.zeros(4, 3), torch.ones(3, 3)) == pytest.approx(math.sqrt(3))
    pts = surface_samples(get("red_cube").verts, get("red_cube").faces, 512)
    assert pts.shape == (512, 3) and float(pts.abs().max()) <= 0.45 + 1e-5


def test_objects_without_a_front_are_turned_to_meet_the_truth():
    """Which way a cube or a table faces is not in its prompt: a turned one is aligned before it is scored,
    and scores as well as the straight one; an object with a front is compared as it stands."""
    for name, deg in (("red_cube", 37.0), ("table", 120.0)):  # 37: 2 degrees off the search's 5-degree steps
        prompt = get(name).caption
        aligned = evaluate_mesh(true_mesh(name, deg), prompt, None, views=8)
        as_is = evaluate_mesh(true_mesh(name, deg), prompt, None, views=8, align=False)
        period = 90.0 if name == "red_cube" else 180.0  # the cube looks alike every 90 degrees, the table every 180
        off = (aligned["yaw"] + deg) % period  # the turn that undoes deg, up to the symmetry
        assert min(off, period - off) <= 5.0, (name, aligned["yaw"])
        assert aligned["iou"] >= 0.9 and aligned["volume_iou"] >= 0.85, (name, aligned["iou"], aligned["volume_iou"])
        assert as_is["yaw"] is None and as_is["iou"] < aligned["iou"] - 0.1, (name, as_is["iou"], aligned["iou"])
        assert "turned about the vertical" in format_table(aligned)
    straight = evaluate_mesh(true_mesh("red_cube"), "a red cube", None, views=4)
    assert straight["yaw"] == 0.0 and straight["volume_iou"] >= 0.99  # aligned already: not turned
    with pytest.raises(EvalError, match="yaw step=0"):
        align_yaw(true_mesh("red_cube"), true_mesh("red_cube"), step=0)
    car = evaluate_mesh(true_mesh("car", 90.0), "a car", None, views=4)
    assert car["yaw"] is None and car["volume_iou"] < 0.5  # a car facing sideways stays wrong
