"""Score Jacobian Chaining (guidance/sjc.py, representations/voxels.py, SJCSystem in systems/nerf.py, the
emptiness and centre-depth losses in systems/base.py, configs/sjc.yaml) on real (tiny) diffusers priors, through
the real trainer. The tests that take ``device`` run on ``DREAM3D_TEST_DEVICE`` (tests/conftest.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dream3d import cli
from dream3d.config import ConfigError, GuidanceConfig, load_config
from dream3d.guidance.sjc import SJCGuidance, paas
from dream3d.prior import PromptEmbeddings, load_prior


def small(size: int = 8) -> list[str]:
    """The sjc recipe at the tiny prior's size: 8 x 8 latents (its 32 px / 4), a coarse grid, quick export."""
    s = "stages.coarse"
    return ["video_views=4", "video_size=32", "texture_size=64", "mesh_resolution=32",
            f"{s}.camera.height={size}", f"{s}.camera.width={size}", f"{s}.camera.eval_size=16", f"{s}.val_every=4",
            f"{s}.ckpt_every=4", f"{s}.representation.voxel_resolution=16", f"{s}.renderer.num_samples=48"]


def closed_form_paas(prior, x, t, noises, cond, uncond, scale):
    """(1/K) Σ_k (D(x + σ n_k; σ) - x) / σ² with D(y; σ) = y - σ (e_u + s (e_c - e_u)) at sqrt(ᾱ) y, the two UNet
    terms computed by separate calls."""
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    sigma = ((1 - abar) / abar).sqrt()
    total = torch.zeros_like(x)
    for n in noises:
        y = x + sigma * n
        with torch.no_grad():
            e_c = prior.unet(abar.sqrt() * y, t, encoder_hidden_states=cond).sample
            e_u = prior.unet(abar.sqrt() * y, t, encoder_hidden_states=uncond).sample
        D = y - sigma * (e_u + scale * (e_c - e_u))
        total = total + (D - x) / sigma**2
    return total / len(noises), sigma


@pytest.mark.parametrize("samples", [1, 3])
def test_paas_matches_its_closed_form_on_fixed_noise(latent_prior_dir, device, samples):
    """PAAS with K noise draws, and the SJC gradient -σ PAAS that reaches the latent render, against the closed form."""
    prior = load_prior(str(latent_prior_dir), device, "fp32")
    h = prior.image_size // prior.vae_scale_factor
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, h, h, generator=gen).to(device)
    t = torch.tensor([40, 650], device=device)
    noise = torch.randn(samples, 2, 4, h, h, generator=gen).to(device)
    cond, uncond = PromptEmbeddings(prior, "a red cube")(["front", "back"])
    expected, sigma = closed_form_paas(prior, x, t, noise, cond, uncond, 20.0)
    got = paas(prior, x, t, noise, cond, uncond, 20.0)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)

    latents = x.clone().requires_grad_(True)
    out = SJCGuidance(GuidanceConfig(name="sjc", guidance_scale=20.0, paas_samples=samples), prior)(
        latents.permute(0, 2, 3, 1), cond, uncond, t=t, noise=noise, latents=latents)
    out["sjc"].backward()
    assert torch.allclose(latents.grad, -sigma * expected / 2, atol=1e-4, rtol=1e-4)  # the loss averages over B = 2
    assert float(out["t"]) == 345.0


def test_sjc_is_sds_with_uniform_weighting(pixel_prior_dir, device):
    """The same update from two derivations: -σ PAAS = ε̂ - n, SDS's gradient at w(t) = 1 (pixel prior, rgb input)."""
    from dream3d.guidance.sds import SDSGuidance

    prior = load_prior(str(pixel_prior_dir), device, "fp32")
    size = prior.image_size
    cond, uncond = PromptEmbeddings(prior, "a red cube")(["side"])
    t = torch.tensor([300], device=device)
    noise = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3)).to(device)
    grads = []
    for guidance in (SJCGuidance(GuidanceConfig(name="sjc", guidance_scale=7.5), prior),
                     SDSGuidance(GuidanceConfig(guidance_scale=7.5, weighting="uniform"), prior)):
        rgb = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(4)).to(device).requires_grad_(True)
        out = guidance(rgb, cond, uncond, t=t, noise=noise)
        next(v for k, v in out.items() if k in ("sjc", "sds")).backward()
        grads.append(rgb.grad)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-3)


def test_sjc_draws_sigma_among_the_configured_timesteps(pixel_prior):
    from dream3d.guidance.sjc import noise_level

    guidance = SJCGuidance(GuidanceConfig(name="sjc", t_min=0.01, t_max=0.97), pixel_prior)
    assert guidance.timestep_range(0) == (10, 970)
    abar = pixel_prior.alphas_cumprod[torch.tensor([10, 500])]
    assert torch.allclose(noise_level(pixel_prior, torch.tensor([10, 500])), ((1 - abar) / abar).sqrt())


# ---------------------------------------------------------------------------------------------- regularisers
def test_emptiness_loss_on_known_weights():
    from dream3d.systems.base import emptiness_loss

    w = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    value = emptiness_loss(w, slots=6)
    assert math.isclose(float(value.detach()), (math.log(1 + 5.0) + math.log(1 + 10.0)) / 6, rel_tol=1e-6)
    value.backward()  # d/dw log(1 + 10 w) / 6 = 10 / (6 (1 + 10 w)): steepest for faint samples
    assert torch.allclose(w.grad, 10.0 / (6 * (1 + 10.0 * w.detach())))


def test_renderer_weights_are_the_compositing_weights(device):
    """The packed sample weights the emptiness loss reads sum, per image, to the rendered opacity."""
    from dream3d.cameras import turntable
    from dream3d.render.background import Background
    from dream3d.render.volume import RendererConfig, VolumeRenderer
    from dream3d.representations.nerf import NeRFConfig
    from dream3d.representations.voxels import VoxelGrid

    torch.manual_seed(0)
    field = VoxelGrid(NeRFConfig(field="voxels", voxel_resolution=8, blob_density=5.0)).to(device)
    renderer = VolumeRenderer(RendererConfig(occupancy_grid=False, num_samples=32, early_stop=0.0), 1.0).to(device)
    cams = turntable(1, 20.0, 2.5, 40.0, 12).to(device)
    o, d = cams.rays()
    out = renderer(field, Background("solid"), o, d, cams.light_position)
    assert out["weights"].shape[0] == int(out["samples"])
    assert torch.allclose(out["weights"].sum(), out["opacity"].sum(), rtol=1e-4)


def test_center_depth_loss_on_known_input():
    from dream3d.systems.base import BACKGROUND_DEPTH, center_depth_loss

    depth, opacity = torch.zeros(1, 16, 16, 1), torch.zeros(1, 16, 16, 1)
    depth[:, 2:14, 2:14] = 2.0  # the centre box of a 16 x 16 render: int(16 * 50 / 64) = 12 pixels a side
    opacity[:, 2:14, 2:14] = 1.0
    depth.requires_grad_(True)
    value = center_depth_loss(depth, opacity)
    assert math.isclose(float(value.detach()), -math.log(BACKGROUND_DEPTH - 2.0), rel_tol=1e-6)
    value.backward()  # -log(border - centre): the centre's depth gradient is positive (pulled nearer)
    assert float(depth.grad[0, 8, 8, 0]) > 0
    # no object in front: the gap is 0 and the loss continues -log as its tangent below 0.1
    flat = center_depth_loss(torch.zeros(1, 16, 16, 1), torch.zeros(1, 16, 16, 1))
    assert math.isclose(float(flat), -math.log(0.1) + 1.0, rel_tol=1e-6)


# ------------------------------------------------------------------------------------------------ voxel field
def test_voxel_grid_interpolates_and_maps_latents_to_colours():
    from dream3d.representations.nerf import NeRFConfig, make_field
    from dream3d.representations.voxels import VoxelGrid

    cfg = NeRFConfig(field="voxels", voxel_resolution=4, blob_density=0.0, density_shift=-1.0, output="latent")
    grid = make_field(cfg)
    assert isinstance(grid, VoxelGrid) and grid.channels == 4
    with torch.no_grad():
        grid.density_grid.copy_(torch.arange(64.0).view(1, 1, 4, 4, 4))  # value at cell (i, j, k) = 16 k + 4 j + i
    centre = torch.tensor([[-0.75, -0.25, 0.25]])  # cell i=0, j=1, k=2
    assert torch.allclose(grid.density(centre), torch.nn.functional.softplus(torch.tensor([36.0 - 1.0])))
    between = torch.tensor([[-0.5, -0.25, 0.25]])  # halfway to i=1: trilinear
    assert torch.allclose(grid.density(between), torch.nn.functional.softplus(torch.tensor([36.5 - 1.0])))
    out = grid(centre, with_normals=True)
    assert out["albedo"].shape == (1, 4) and torch.allclose(out["normal"].norm(dim=-1), torch.ones(1))

    latent_rgb = torch.randn(5, 3)
    state = grid.rgb_state_from_latent({k: v.detach() for k, v in grid.state_dict().items()}, latent_rgb)
    rgb_grid = VoxelGrid(NeRFConfig(field="voxels", voxel_resolution=4))
    rgb_grid.load_state_dict(state)
    with torch.no_grad():
        grid.feature_grid.normal_()
        state = grid.rgb_state_from_latent({k: v.detach() for k, v in grid.state_dict().items()}, latent_rgb)
        rgb_grid.load_state_dict(state)
        points = torch.rand(10, 3) * 2 - 1
        mapped = grid(points)["albedo"] @ latent_rgb[:-1] + latent_rgb[-1]
        assert torch.allclose(rgb_grid(points)["albedo"], torch.sigmoid(4 * (mapped - 0.5)), atol=1e-5)


def test_fit_latent_rgb_recovers_an_affine_map():
    from dream3d.prior.latent import fit_latent_rgb

    torch.manual_seed(0)
    true = torch.randn(5, 3)
    z = torch.randn(200, 4)
    rgb = z @ true[:-1] + true[-1]
    assert torch.allclose(fit_latent_rgb(z, rgb, torch.zeros(5, 3), ridge=1e-6), true, atol=1e-4)
    # one colour spans no direction: the map stays at the anchor there
    anchor = torch.randn(5, 3)
    one = fit_latent_rgb(torch.zeros(50, 4), torch.full((50, 3), 0.5), anchor)
    assert torch.allclose(one[:-1], anchor[:-1], atol=1e-6)


# ---------------------------------------------------------------------------------------- through the trainer
def test_sjc_fit_resumes_and_exports_a_watertight_textured_mesh(latent_prior_dir, tmp_path, monkeypatch):
    from dream3d.systems.nerf import NeRFSystem

    original = NeRFSystem.training_step

    def interrupted(self, batch, batch_idx):
        if self.global_step == 5:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    args = ["fit", "prompt=a red cube", "recipe=sjc", f"prior={latent_prior_dir}", f"output_dir={tmp_path}",
            "name=sjc", "--quiet", "stages.coarse.steps=10", *small()]
    monkeypatch.setattr(NeRFSystem, "training_step", interrupted)
    assert cli.main(args) == 130
    monkeypatch.setattr(NeRFSystem, "training_step", original)
    run = tmp_path / "sjc" / "sjc"
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert cli.main(["fit", f"resume={run}", "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["stages"]["coarse"]["completed_steps"] == 10
    assert summary["stages"]["coarse"]["final"]["emptiness"] > 0
    import trimesh

    mesh = trimesh.load(run / "export" / "model.glb", force="mesh")
    assert mesh.visual.kind == "texture"
    solid = trimesh.Trimesh(mesh.vertices, mesh.faces)  # merged at the texture's seams (UV-split vertices)
    assert len(mesh.faces) > 0 and solid.is_watertight
    state = torch.load(run / "ckpts" / "coarse" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert state["particles.0.nerf.feature_grid"].shape == (1, 4, 16, 16, 16)  # a grid of the prior's 4 channels
    assert (run / "export" / "turntable.mp4").is_file()
    assert (run / "stages" / "coarse" / "val" / "step000010.png").is_file()


def test_sjc_refits_the_export_colours_to_its_renders(latent_prior_dir):
    """After a validation the particle's latent -> rgb map is fitted to its own decoded renders, not solid colours."""
    from dream3d.systems.nerf import SJCSystem

    prior = load_prior(str(latent_prior_dir), torch.device("cpu"), "fp32")
    cfg = load_config(["prompt=a red cube", "recipe=sjc", f"prior={latent_prior_dir}", *small(),
                       "stages.coarse.representation.blob_density=20"])  # opaque from the start: pixels to fit
    system = SJCSystem(cfg, "coarse", cfg.stages["coarse"], prior)
    solid = system.particles[0].latent_rgb.clone()
    system.save_validation(0)
    assert not torch.allclose(system.particles[0].latent_rgb, solid)
    assert torch.allclose(system.frozen["solid_rgb"], solid)


# ----------------------------------------------------------------------------------------------------- config
def test_sjc_recipe_settings_and_checks(latent_prior_dir, pixel_prior_dir, tmp_path, capsys):
    cfg = load_config(["prompt=a cube", "recipe=sjc", f"prior={latent_prior_dir}"])
    st = cfg.stages["coarse"]
    assert (st.system, st.guidance.name, st.representation.field, st.representation.output) == \
        ("sjc", "sjc", "voxels", "latent")
    assert load_config(["prompt=a cube", "recipe=dreamfusion", "guidance=sjc"]).stages["coarse"].guidance.guidance_scale \
        == 100.0
    with pytest.raises(ConfigError, match="representation.field: expected one of hashgrid, voxels, got 'octree'"):
        load_config(["prompt=a cube", "recipe=sjc", "stages.coarse.representation.field=octree"])
    with pytest.raises(ConfigError, match="voxel_resolution: expected an integer from 2 to 512, got 1"):
        load_config(["prompt=a cube", "recipe=sjc", "stages.coarse.representation.voxel_resolution=1"])
    with pytest.raises(ConfigError, match="guidance.paas_samples: expected an integer from 1 to 64, got 0"):
        load_config(["prompt=a cube", "recipe=sjc", "stages.coarse.guidance.paas_samples=0"])
    with pytest.raises(ConfigError, match="stages.refine.representation.field: hashgrid, but its init stage 'latent' "
                                          "has voxels \\(32 a side\\); expected the same field"):
        load_config(["prompt=a cube", "recipe=latent-nerf", "stages.latent.representation.field=voxels",
                     "stages.latent.representation.voxel_resolution=32"])
    code = cli.main(["fit", "prompt=a red cube", "recipe=sjc", f"prior={pixel_prior_dir}", f"output_dir={tmp_path}",
                     "--quiet", *small()])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "latent_channels" in err and "a pixel prior" in err


def test_fit_help_lists_sjc(capsys):
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    assert "sjc" in capsys.readouterr().out
