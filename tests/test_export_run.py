"""`dream3d fit` ends with an export; `dream3d export` and `dream3d render` on a run folder; their bad input."""

from __future__ import annotations

import json
import shutil

import imageio_ffmpeg
import pytest
from test_fit import fit

from dream3d import cli
from dream3d.export.mesh import load_mesh


@pytest.fixture(scope="module")
def run(latent_prior_dir, tmp_path_factory):
    code, run = fit(latent_prior_dir, tmp_path_factory.mktemp("runs"), "exported")
    assert code == 0
    return run


def _frames(path):
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return meta, sum(1 for _ in reader)


def test_fit_ends_with_a_glb_and_a_turntable(run):
    glb, mp4 = run / "export" / "model.glb", run / "export" / "turntable.mp4"
    mesh = load_mesh(glb)
    assert mesh.num_faces > 0 and mesh.textured and mesh.texture.shape == (64, 64, 3)
    meta, count = _frames(mp4)
    assert count == 4 and tuple(meta["size"]) == (32, 32) and "h264" in meta["codec"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["export"]["faces"] == mesh.num_faces and summary["export"]["files"]["glb"] == "export/model.glb"


def test_export_command_writes_every_format(run, capsys):
    assert cli.main(["export", str(run), "format=glb,obj,ply", "resolution=24", "texture_size=32"]) == 0
    files = {p.name for p in (run / "export").iterdir()}
    assert {"model.glb", "model.obj", "model.mtl", "model.png", "model.ply"} <= files
    glb, obj = load_mesh(run / "export" / "model.glb"), load_mesh(run / "export" / "model.obj")
    assert (glb.num_verts, glb.num_faces) == (obj.num_verts, obj.num_faces)
    assert "exported stage 'coarse'" in capsys.readouterr().out


@pytest.mark.parametrize("mode,width", [("all", 96), ("volume", 32)])
def test_render_command_modes(run, mode, width):
    assert cli.main(["render", str(run), "views=3", "size=32", f"mode={mode}", "fps=10"]) == 0
    meta, count = _frames(run / "export" / f"turntable-{mode}.mp4")
    assert count == 3 and tuple(meta["size"]) == (width, 32)
    assert (run / "export" / f"turntable-{mode}.gif").stat().st_size > 0


def test_bad_input_gives_one_line_and_no_file(run, tmp_path, capsys):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    shutil.copy(run / "config.yaml", empty / "config.yaml")
    assert cli.main(["export", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no checkpoint found" in err and len(err.splitlines()) == 1
    assert not (empty / "export").exists()

    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    assert cli.main(["export", str(copy), "threshold=1e9"]) == 2
    err = capsys.readouterr().err.strip()
    assert "empty density field" in err and len(err.splitlines()) == 1
    assert not (copy / "export" / "model.glb").exists()

    assert cli.main(["export", str(copy), "format=glb,stl"]) == 2
    assert "format=stl" in capsys.readouterr().err
    assert cli.main(["render", str(copy), "mode=hologram"]) == 2
    assert "mode=hologram" in capsys.readouterr().err
    assert cli.main(["export", str(copy), "colour=red"]) == 2
    assert "unknown key 'colour'" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert not list(copy.rglob("*.glb")) and not [p for p in copy.rglob("*") if p.is_file() and p.stat().st_size == 0]
