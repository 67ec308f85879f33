"""scripts/sds_true_shape.py: the guidance's gradient reaches the true mesh's three scales through the real prior."""

from __future__ import annotations

import math

import pytest
from script_module import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("sds_true_shape.py")


def test_scales_move_under_the_guidance(script):
    lines = []
    out = script.true_shape_scales("red_cube", steps=4, lr=0.05, log=lines.append)
    assert out["caption"] == "a red cube" and len(out["scales"]) == 3
    assert all(math.isfinite(s) and 0.5 < s < 2.0 for s in out["scales"])
    # the means over steps 2 and 3 differ from 1: each step's SDS gradient reached the scales through the raster
    assert all(abs(s - 1.0) > 1e-4 for s in out["scales"])
    assert "height/width" in lines[0]


def test_unknown_object_and_stage_are_one_line_errors(script):
    with pytest.raises(SystemExit, match="unknown catalogue object 'red_cubes'"):
        script.true_shape_scales("red_cubes", steps=2)
    with pytest.raises(SystemExit, match="has no stage 'texture'"):
        script.true_shape_scales("red_cube", stage="texture", steps=2)


def test_main_runs_end_to_end(script, capsys):
    # main loads the config and the prior once before the objects' loop: the command a user types must run
    assert script.main(["red_cube", "blue_cone", "--steps", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["a red cube", "a blue cone"]
    with pytest.raises(SystemExit, match="expected at least 2 steps"):
        script.main(["red_cube", "--steps", "1"])


def test_a_squat_start_and_the_taper(script):
    # --start: the scales begin where asked (a squat cube stays near 0.8 after a few small steps); --taper: a fourth
    # number, the top's width over the bottom's, learnt through the same raster and reported
    lines = []
    out = script.true_shape_scales("red_cube", steps=4, lr=0.01, log=lines.append, start=(1.0, 0.8, 1.0), taper=True,
                                   at_step=599)
    assert 0.7 < out["scales"][1] < 0.9 and 0.7 < out["height_width"] < 0.9
    assert math.isfinite(out["taper"]) and out["taper"] != 1.0
    assert "top/bottom width" in lines[0]
    with pytest.raises(SystemExit, match="--start 1,0: expected three positive numbers"):
        script.main(["red_cube", "--start", "1,0"])


def test_the_probe_on_a_fitted_nerf(script, camera_prior_dir, tmp_path):
    # --run: a real (tiny) mvdream fit through the trainer, then its frozen coarse NeRF stretched by three learnt scales;
    # the SDS gradient reaches them through the volume renderer's rays
    from test_mesh_stages import tiny

    from dream3d.config import load_config
    from dream3d.run import fit

    cfg = load_config(["prompt=a red cube", f"prior={camera_prior_dir}", "recipe=mvdream", "stages.coarse.steps=3",
                       "stages.fine.steps=2", *tiny(["coarse", "fine"], fine__dmtet__resolution=16,
                                                    fine__mesh__init_fit_steps=2, fine__mesh__texture_fit_steps=2)])
    run = tmp_path / "run"
    assert fit(cfg, run, show_progress=False)["status"] == "done"
    lines = []
    out = script.fitted_nerf_scales(str(run), steps=4, lr=0.05, log=lines.append)
    assert out["caption"] == "a red cube" and all(math.isfinite(s) and abs(s - 1.0) > 1e-4 for s in out["scales"])
    assert "fitted coarse NeRF" in lines[0]
    with pytest.raises(SystemExit, match="is a mesh stage"):
        script.fitted_nerf_scales(str(run), stage="fine", steps=2)
    with pytest.raises(SystemExit, match="not a folder"):
        script.fitted_nerf_scales(str(tmp_path / "nothing"), steps=2)
