"""Perp-Neg (dream3d/guidance/perpneg.py): the negative terms are perpendicular to the positive direction, zero
weights give plain CFG, the prompt mix follows the azimuth, and a fit with ``guidance.perp_neg`` runs through the
real trainer on a real (tiny) diffusers prior."""

from __future__ import annotations

import math

import pytest
import torch

from dream3d import cli
from dream3d.cameras import make_cameras
from dream3d.config import ConfigError, GuidanceConfig, load_config
from dream3d.guidance import perpneg
from dream3d.guidance.sds import cfg_noise, predicted_noise
from dream3d.prior import PromptEmbeddings, load_prior


def cams(azimuths, elevation=10.0):
    n = len(azimuths)
    return make_cameras(torch.full((n,), elevation), torch.tensor(azimuths, dtype=torch.float32),
                        torch.full((n,), 2.5), torch.full((n,), 40.0), 8, 8)


def test_perpendicular_component_has_no_part_along_the_positive():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    p = perpneg.perpendicular(x, y)
    dots = (p * y).sum((1, 2, 3)) / (x.flatten(1).norm(dim=1) * y.flatten(1).norm(dim=1))
    assert dots.abs().max() < 1e-6
    assert (x - p).flatten(1).norm(dim=1).min() > 0  # something was removed: the test is not vacuous
    assert torch.allclose(perpneg.perpendicular(y, y), torch.zeros_like(y), atol=1e-5)


def test_weights_at_the_canonical_views_are_the_papers():
    cfg = GuidanceConfig()
    front = perpneg.view_weights(0.0, False, cfg)
    assert front[:3] == ("front", "side", 1.0) and front[3] == ("front", "side")
    assert front[4][0] == pytest.approx(0.0, abs=1e-3) and front[4][1] == pytest.approx(-1.574, abs=1e-3)
    back = perpneg.view_weights(180.0, False, cfg)
    assert back[:3] == ("side", "back", 0.0) and back[3] == ("side", "front")
    assert back[4] == pytest.approx((-0.394, -1.967), abs=1e-3)
    side = perpneg.view_weights(-90.0, False, cfg)  # either side of 90 degrees pushes away from the front alike
    just_before = perpneg.view_weights(89.999, False, cfg)
    assert side[4][1] == pytest.approx(just_before[4][0], abs=1e-3) == pytest.approx(-1.574, abs=1e-3)
    assert perpneg.view_weights(30.0, True, cfg)[4] == (0.0, 0.0)  # overhead: no negatives
    assert perpneg.decay([1.0, 0.5, 0.967], 0.0) == pytest.approx(1.967)


def test_embeddings_mix_the_view_prompts_by_azimuth(latent_prior_dir):
    prior = load_prior(str(latent_prior_dir), torch.device("cpu"), "fp32")
    prompts = PromptEmbeddings(prior, "a red cube")
    cond, uncond, neg, w = perpneg.embeddings(prompts, cams([45.0, -135.0, 0.0]), 60.0, GuidanceConfig())
    front, side, back = (prompts.embed_view(v) for v in ("front", "side", "back"))
    assert torch.allclose(cond[0], 0.5 * front + 0.5 * side, atol=1e-6)
    assert torch.allclose(cond[1], 0.5 * side + 0.5 * back, atol=1e-6)
    assert torch.allclose(cond[2], front)
    assert torch.equal(neg[1, 1], front) and torch.equal(neg[0, 0], front)
    assert torch.allclose(uncond[0], prompts.embed_negative())
    assert neg.shape == (3, 2, *front.shape) and w.shape == (3, 2) and bool((w <= 1e-3).all())


def test_perp_neg_noise_against_plain_cfg(latent_prior_dir, device):
    """Zero weights give exactly the plain CFG prediction; with the paper's weights the change from plain CFG is
    perpendicular to the positive direction e_pos = eps(y) - eps(0) of each image, and not zero."""
    prior = load_prior(str(latent_prior_dir), device, "fp32")
    prompts = PromptEmbeddings(prior, "a red cube")
    cameras = cams([30.0, 150.0])
    cond, uncond, neg, w = perpneg.embeddings(prompts, cameras, 60.0, GuidanceConfig())
    cond, uncond, neg = cond.to(device), uncond.to(device), neg.to(device)
    h = prior.image_size // prior.vae_scale_factor
    g = torch.Generator().manual_seed(0)
    z_t = torch.randn(2, 4, h, h, generator=g).to(device)
    t = torch.tensor([300, 800], device=device)
    plain = cfg_noise(prior, z_t, t, cond, uncond, 7.5)
    zero = cfg_noise(prior, z_t, t, cond, uncond, 7.5, negatives=(neg, torch.zeros_like(w)))
    assert torch.allclose(zero, plain, atol=1e-5)
    perp = cfg_noise(prior, z_t, t, cond, uncond, 7.5, negatives=(neg, w))
    with torch.no_grad():
        e = [predicted_noise(prior, z_t, t, prior.unet(z_t, t, encoder_hidden_states=c).sample) for c in (cond, uncond)]
    e_pos = e[0] - e[1]
    change = perp - plain
    cos = (change * e_pos).sum((1, 2, 3)) / (change.flatten(1).norm(dim=1) * e_pos.flatten(1).norm(dim=1))
    assert change.flatten(1).norm(dim=1).min() > 1e-4
    assert cos.abs().max() < 1e-4


def test_perp_neg_settings_are_checked():
    with pytest.raises(ConfigError, match="stages.coarse.guidance.perp_neg: true needs view_dependent=true"):
        load_config(["prompt=a red cube", "recipe=dreamfusion", "view_dependent=false",
                     "stages.coarse.guidance.perp_neg=true"])
    with pytest.raises(ConfigError, match=r"stages.coarse.guidance.perp_neg_f_sb: expected \[a, b, c\]"):
        load_config(["prompt=a red cube", "recipe=dreamfusion", "stages.coarse.guidance.perp_neg_f_sb=[1.0, 0.5]"])


def test_perp_neg_with_a_camera_prior_is_one_line(camera_prior_dir, tmp_path, capsys):
    code = cli.main(["fit", "prompt=a red cube", "recipe=dreamfusion", f"prior={camera_prior_dir}",
                     f"output_dir={tmp_path}", "--quiet", "stages.coarse.steps=2", "stages.coarse.guidance.perp_neg=true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "guidance.perp_neg" in err[-1] and "expected a text prior" in err[-1]


def test_fit_with_perp_neg(latent_prior_dir, tmp_path):
    """A short dreamfusion fit with Perp-Neg through the real trainer: finite losses, a changed NeRF."""
    import csv

    code = cli.main(["fit", "prompt=a red cube", "recipe=dreamfusion", f"prior={latent_prior_dir}",
                     f"output_dir={tmp_path}", "name=pn", "--quiet", "export=false", "stages.coarse.steps=4",
                     "stages.coarse.camera.height=32", "stages.coarse.camera.width=32",
                     "stages.coarse.camera.eval_size=32", "stages.coarse.val_every=4", "stages.coarse.ckpt_every=4",
                     "stages.coarse.representation.encoding.n_levels=8", "stages.coarse.guidance.perp_neg=true"])
    assert code == 0
    with open(tmp_path / "dreamfusion" / "pn" / "stages" / "coarse" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(math.isfinite(float(r["sds"])) and float(r["grad_norm"]) > 0 for r in rows)
