"""guidance.truth_steps (dream3d/guidance/truth.py): the catalogue's true object as the guidance, a diagnostic."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from dream3d import cli
from dream3d.cameras import CameraConfig, sample_cameras
from dream3d.config import ConfigError, load_config
from dream3d.errors import Dream3DError
from dream3d.guidance.truth import TruthTarget
from dream3d.render.mesh import render_mesh
from dream3d.render.shading import point_light_shader

WHITE = torch.ones(3)


def test_the_true_object_scores_zero_and_a_smaller_one_is_pulled_to_its_size():
    target = TruthTarget("a red cube, front view", framing_radius=0.6, ambient=0.35)
    assert float(target.verts.norm(dim=-1).max()) == pytest.approx(0.6)  # the prior's framing
    cams = sample_cameras(CameraConfig(height=32, width=32, framing="fill"), torch.Generator().manual_seed(0), 3)
    truth = target.render(cams, WHITE)
    assert truth.shape == (3, 32, 32, 3) and float(truth.min()) < 0.5 < float(truth.max())  # a red cube on white
    assert float(target(truth, cams, WHITE)["sds"]) == 0.0
    # the same cube at 80% of its size: a positive loss whose gradient says grow (d loss / d scale < 0)
    scale = torch.tensor(0.8, requires_grad=True)
    lit = point_light_shader(cams.light_position, "diffuse", 0.35)
    small = render_mesh(target.verts * scale, target.faces, cams, target.colors, shade=lit, background=WHITE)["rgb"]
    out = target(small, cams, WHITE)
    assert float(out["sds"].detach()) > 1.0 and float(out["t"]) == 0.0
    out["sds"].backward()
    assert float(scale.grad) < 0


def test_a_prompt_outside_the_catalogue_has_no_truth():
    with pytest.raises(Dream3DError, match="truth_steps: the prompt 'a dragon' is not a shape-world catalogue"):
        TruthTarget("a dragon", 0.6, 0.35)


@pytest.mark.parametrize("overrides, message", [
    (["stages.coarse.guidance.truth_steps=-1"], "truth_steps: expected an integer >= 0"),
    (["stages.coarse.renderer.textureless_prob=0.5", "stages.coarse.guidance.truth_steps=10"], "always-lit renders"),
    (["recipe=latent-nerf", "stages.latent.guidance.truth_steps=10"], "a latent-nerf stage is not supported"),
])
def test_truth_steps_are_checked_with_the_config(overrides, message):
    load_config(["prompt=a red cube", "recipe=mvdream", "stages.coarse.guidance.truth_steps=600",
                 "stages.fine.guidance.truth_steps=100"])  # the default recipe's two stages take it
    with pytest.raises(ConfigError, match=message):
        load_config(["prompt=a red cube", "recipe=mvdream", *overrides])


LIT = ["recipe=dreamfusion", "stages.coarse.steps=12", "stages.coarse.camera.height=32", "stages.coarse.camera.width=32",
       "stages.coarse.representation.encoding.n_levels=8", "stages.coarse.representation.encoding.log2_hashmap_size=14",
       "stages.coarse.renderer.albedo_prob=0", "stages.coarse.renderer.textureless_prob=0",
       "stages.coarse.renderer.ambient_only_steps=0", "stages.coarse.renderer.background=solid",
       "stages.coarse.renderer.background_color=[1,1,1]", "stages.coarse.val_every=12", "export=false", "--quiet"]


def test_a_fit_through_the_trainer_learns_the_true_object_in_its_truth_steps(latent_prior_dir, tmp_path):
    # 8 steps against the true red cube, then 4 of score distillation by the (tiny) prior
    code = cli.main(["fit", "prompt=a red cube", f"prior={latent_prior_dir}", f"output_dir={tmp_path}", "name=t", *LIT,
                     "stages.coarse.guidance.truth_steps=8"])
    assert code == 0
    with open(tmp_path / "dreamfusion" / "t" / "stages" / "coarse" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["t"]) == 0.0 for r in rows] == [True] * 8 + [False] * 4  # the prior's timesteps from step 8
    truth = [float(r["sds"]) for r in rows[:8]]
    assert all(math.isfinite(x) for x in truth) and sum(truth[-3:]) < sum(truth[:3])  # the grey blob turns red
    # the optimiser started afresh at the switch: its Adam moments hold the 4 guided steps only
    ckpt = torch.load(tmp_path / "dreamfusion" / "t" / "ckpts" / "coarse" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert steps == {4}


def test_a_fit_of_a_prompt_outside_the_catalogue_stops_with_one_line(latent_prior_dir, tmp_path, capsys):
    code = cli.main(["fit", "prompt=a dragon", f"prior={latent_prior_dir}", f"output_dir={tmp_path}", "name=d", *LIT,
                     "stages.coarse.guidance.truth_steps=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and "stages.coarse.guidance.truth_steps: the prompt 'a dragon'" in err[-1]
