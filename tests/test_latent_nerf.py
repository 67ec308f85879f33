"""Latent-NeRF (systems/nerf.py LatentNeRFSystem, configs/latent-nerf.yaml) and Sketch-Shape
(representations/sketch.py) through the real trainer on real (tiny) diffusers priors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dream3d import cli
from dream3d.cameras import turntable
from dream3d.config import ConfigError, load_config
from dream3d.representations.nerf import NeRF, rgb_head_from_latent


def small(stages=("latent", "refine"), size=8, **per_stage) -> list[str]:
    out = ["video_views=4", "video_size=32", "texture_size=64", "mesh_resolution=32"]
    for s in stages:
        px = size if s == "latent" else 32
        out += [f"stages.{s}.camera.height={px}", f"stages.{s}.camera.width={px}", f"stages.{s}.camera.eval_size=16",
                f"stages.{s}.val_every=4", f"stages.{s}.ckpt_every=4",
                f"stages.{s}.representation.encoding.n_levels=8"]
    out += [f"stages.{k.replace('__', '.')}={v}" for k, v in per_stage.items()]
    return out


def cube_file(tmp_path, half: float = 0.5):
    import trimesh

    path = tmp_path / "cube.ply"
    trimesh.creation.box(extents=(2 * half,) * 3).export(path)
    return path


def test_the_latent_render_reaches_the_unet_without_an_encoder(latent_prior_dir, monkeypatch):
    """A training step of the latent stage: the render has the prior's 4 latent channels at the latent size, the
    UNet gets it as it is, and the VAE encoder never runs."""
    from dream3d.prior import load_prior
    from dream3d.systems.nerf import LatentNeRFSystem

    prior = load_prior(str(latent_prior_dir), torch.device("cpu"), "fp32")
    cfg = load_config(["prompt=a red cube", "recipe=latent-nerf", f"prior={latent_prior_dir}", *small()])
    system = LatentNeRFSystem(cfg, "latent", cfg.stages["latent"], prior)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the VAE encoder ran")

    seen = []
    unet_forward = prior.unet.forward

    def recording(sample, *args, **kwargs):
        seen.append(tuple(sample.shape))
        return unet_forward(sample, *args, **kwargs)

    monkeypatch.setattr(prior.vae, "encode", no_encoder)
    monkeypatch.setattr(prior.unet, "forward", recording)
    loss = system.training_step(None, 0)
    loss.backward()
    cams = turntable(1, 10.0, 2.5, 40.0, 8)
    out = system.render(cams)
    assert out["rgb"].shape == (1, 8, 8, 4)  # the prior's latent channels, at its latent resolution (32 px / 4)
    assert seen and seen[0][1:] == (4, 8, 8)
    grads = [p.grad for p in system.particles[0].nerf.network.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    # the background is the prior's latent of white, not a colour
    assert system.particles[0].background.color.shape == (4,)


def test_rgb_head_from_latent_starts_at_the_mapped_colours():
    torch.manual_seed(0)
    weight, bias = torch.randn(5, 16), torch.randn(5)
    latent_rgb = torch.randn(5, 3) * 0.2
    w, b = rgb_head_from_latent(weight, bias, latent_rgb)
    h = torch.randn(7, 16)
    latent = h @ weight[1:].t() + bias[1:]
    mapped = latent @ latent_rgb[:-1] + latent_rgb[-1]
    out = h @ w.t() + b
    assert torch.allclose(out[:, 0], h @ weight[0] + bias[0], atol=1e-5)  # the density row is kept
    assert torch.allclose(out[:, 1:], 4 * (mapped - 0.5), atol=1e-5)


def test_latent_nerf_fit_resumes_and_exports_a_watertight_textured_mesh(latent_prior_dir, tmp_path, monkeypatch):
    from dream3d.systems.nerf import NeRFSystem

    original = NeRFSystem.training_step

    def interrupted(self, batch, batch_idx):
        if self.stage_name == "refine" and self.global_step == 2:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    args = ["fit", "prompt=a red cube", "recipe=latent-nerf", f"prior={latent_prior_dir}", f"output_dir={tmp_path}",
            "name=ln", "--quiet", "stages.latent.steps=8", "stages.refine.steps=6", *small()]
    monkeypatch.setattr(NeRFSystem, "training_step", interrupted)
    assert cli.main(args) == 130
    monkeypatch.setattr(NeRFSystem, "training_step", original)
    run = tmp_path / "latent-nerf" / "ln"
    assert cli.main(["fit", f"resume={run}", "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done"
    assert [summary["stages"][s]["completed_steps"] for s in ("latent", "refine")] == [8, 6]
    import trimesh

    mesh = trimesh.load(run / "export" / "model.glb", force="mesh")
    assert mesh.visual.kind == "texture"
    solid = trimesh.Trimesh(mesh.vertices, mesh.faces)  # merged at the texture's seams (UV-split vertices)
    assert len(mesh.faces) > 0 and solid.is_watertight
    latent = torch.load(run / "ckpts" / "latent" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    refine = torch.load(run / "ckpts" / "refine" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert latent["particles.0.nerf.network.layers.2.weight"].shape[0] == 5  # density + 4 latent channels
    assert refine["particles.0.nerf.network.layers.2.weight"].shape[0] == 4  # density + rgb
    assert (run / "stages" / "latent" / "val" / "step000008.png").is_file()  # decoded by the VAE for the grid


def silhouette_iou(nerf, half: float) -> float:
    """Mean IoU over 8 views of the NeRF's opacity > 0.5 against the cube [-half, half]^3's silhouette."""
    from dream3d.render.background import Background
    from dream3d.render.volume import RendererConfig, VolumeRenderer, ray_aabb

    renderer = VolumeRenderer(RendererConfig(occupancy_grid=False, num_samples=96), 1.0)
    cams = turntable(8, 20.0, 2.5, 40.0, 48)
    o, d = cams.rays()
    with torch.no_grad():
        out = renderer(nerf, Background("solid"), o, d, cams.light_position)
    mask = out["opacity"][..., 0] > 0.5
    _, _, hit = ray_aabb(o.reshape(-1, 3), d.reshape(-1, 3), half)
    truth = hit.view(mask.shape)
    return float(((mask & truth).sum((1, 2)) / (mask | truth).sum((1, 2))).mean())


def test_sketch_shape_holds_a_cube(latent_prior_dir, tmp_path):
    """A short latent-nerf fit with a cube sketch: the NeRF's silhouettes match the cube's (IoU >= 0.8) where the
    untrained NeRF (Magic3D's blob, a ball) does not."""
    from dream3d.export.run import load_stage

    sketch = cube_file(tmp_path)
    run = tmp_path / "latent-nerf" / "sk"
    code = cli.main(["fit", "prompt=a red cube", "recipe=latent-nerf", f"prior={latent_prior_dir}", f"sketch={sketch}",
                     f"output_dir={tmp_path}", "name=sk", "--quiet", "export=false", "stages.latent.steps=150",
                     "stages.refine.steps=2", *small()])
    assert code == 0
    cfg = load_config(["prompt=a red cube", "recipe=latent-nerf", f"prior={latent_prior_dir}", *small()])
    untrained = NeRF(cfg.stages["refine"].representation)
    fitted = load_stage(run, "refine").particles[0].nerf
    assert silhouette_iou(untrained, 0.5) < 0.6
    iou = silhouette_iou(fitted, 0.5)
    assert iou >= 0.8, iou


def test_sketch_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="sketch: .*nothing.ply: expected a mesh file"):
        load_config(["prompt=a cube", "recipe=latent-nerf", f"sketch={tmp_path / 'nothing.ply'}"])
    cube = cube_file(tmp_path)
    with pytest.raises(ConfigError, match="sketch: no NeRF stage of recipe 'dreamfusion' weights loss.sketch"):
        load_config(["prompt=a cube", "recipe=dreamfusion", f"sketch={cube}"])
    assert load_config(["prompt=a cube", "recipe=dreamfusion", f"sketch={cube}",
                        "stages.coarse.loss.sketch=1.0"]).sketch == str(cube.resolve())
    with pytest.raises(ConfigError, match="representation.output: 'latent' with system 'nerf-sds'"):
        load_config(["prompt=a cube", "recipe=dreamfusion", "stages.coarse.representation.output=latent"])


def test_latent_nerf_needs_a_latent_prior(pixel_prior_dir, tmp_path, capsys):
    code = cli.main(["fit", "prompt=a red cube", "recipe=latent-nerf", f"prior={pixel_prior_dir}",
                     f"output_dir={tmp_path}", "--quiet", *small()])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "latent_channels" in err and "a pixel prior" in err


def test_latent_rgb_map_recovers_solid_colours(latent_prior_dir):
    """The affine latent -> rgb fit reproduces the solid colours it was fitted on better than a constant grey."""
    from dream3d.prior import load_prior
    from dream3d.prior.latent import latent_rgb_map, latents_to_rgb, solid_latents

    prior = load_prior(str(latent_prior_dir), torch.device("cpu"), "fp32")
    M = latent_rgb_map(prior)
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.2, 0.8, 0.2]])
    err = (latents_to_rgb(solid_latents(prior, colors), M) - colors).abs().mean()
    assert math.isfinite(float(err)) and float(err) < float((colors - 0.5).abs().mean())


def test_a_pixel_prior_has_no_latent_colours(pixel_prior):
    from dream3d.prior.latent import solid_latents

    with pytest.raises(ValueError, match="pixel-space prior"):
        solid_latents(pixel_prior, torch.ones(1, 3))
