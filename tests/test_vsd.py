"""VSD (ProlificDreamer): what trains, what stays frozen, what is checkpointed and resumed, particles, and the
algebra that ties VSD to SDS. Real (tiny) diffusers priors, peft adapters and the real Lightning trainer. The
guidance-step tests run on ``DREAM3D_TEST_DEVICE`` (the ``device_prior`` fixture; tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_fit import SMALL, ctrl_c_at

from dream3d import cli
from dream3d.cameras import sample_cameras
from dream3d.config import CameraConfig, ConfigError, GuidanceConfig, load_config
from dream3d.guidance.sds import SDSGuidance
from dream3d.guidance.vsd import CameraEmbedding, VSDGuidance
from dream3d.prior import PromptEmbeddings, load_prior

VSD = ["recipe=prolificdreamer", *SMALL]


def vsd_fit(prior_dir, out, name, *extra) -> tuple[int, Path]:
    code = cli.main(["fit", "prompt=a red cube", f"prior={prior_dir}", f"output_dir={out}", f"name={name}", "--quiet",
                     "export=false", *VSD, *extra])
    return code, Path(out) / "prolificdreamer" / name


def state(run: Path) -> dict:
    return torch.load(run / "ckpts" / "coarse" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def draws(prior, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    size = prior.image_size
    rgb = torch.rand(batch, size, size, 3, generator=gen).to(prior.device)
    cams = sample_cameras(CameraConfig(height=size, width=size), gen, batch).to(prior.device)
    cond, uncond = PromptEmbeddings(prior, "a red cube")(cams.view_labels())
    return rgb, cams, cond, uncond


@pytest.fixture(scope="module")
def latent_prior(latent_prior_dir):
    return load_prior(str(latent_prior_dir))


@pytest.fixture(scope="module")
def device_prior(latent_prior_dir, device):
    """The latent prior on the test device, in fp32 (the tests compare with closed forms)."""
    return load_prior(str(latent_prior_dir), device, "fp32")


def test_only_lora_and_camera_get_gradients(device_prior):
    prior = device_prior
    guidance = VSDGuidance(GuidanceConfig(name="vsd", guidance_scale=7.5), prior)
    rgb, cams, cond, uncond = draws(prior)
    rgb.requires_grad_(True)
    out = guidance(rgb, cond, uncond, cameras=cams, generator=torch.Generator().manual_seed(1))
    (out["vsd"] + out["lora"]).backward()
    trainable = dict(guidance.named_parameters())
    assert trainable and all(("lora_" in k or k.startswith("camera.")) for k in trainable)
    lora_b = [p for k, p in trainable.items() if "lora_B" in k]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)  # B starts at zero, gets a gradient
    assert trainable["camera.mlp.2.weight"].grad.abs().sum() > 0
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0  # the particle's render is moved by "vsd"
    for module in (prior.unet, prior.text_encoder, prior.vae):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    # the LoRA view shares the prior's tensors instead of copying them
    shared = {p.data_ptr() for p in prior.unet.parameters()}
    view = [p for k, p in guidance.frozen["unet"].named_parameters() if "lora_" not in k and "class_embedding" not in k]
    assert view and all(p.data_ptr() in shared for p in view)


def test_at_initialisation_vsd_is_sds_at_scale_s_minus_sds_at_scale_1(device_prior):
    """LoRA B = 0 and a zero camera embedding make ε_ψ(z_t; t, y, c) = ε_φ(z_t; t, y) exactly, so
    w(ε̂_s - ε_ψ) = w(ε̂_s - ε) - w(ε̂_1 - ε) with the same t and ε (ε̂_1 = ε_φ(·, y))."""
    prior = device_prior
    rgb, cams, cond, uncond = draws(prior, seed=3)
    h = prior.image_size // prior.vae_scale_factor
    t = torch.tensor([150, 800], device=prior.device)
    noise = torch.randn(2, 4, h, h, generator=torch.Generator().manual_seed(4)).to(prior.device)

    def grad_of(guidance, key, scale):
        guidance.cfg.guidance_scale = scale
        x = rgb.clone().requires_grad_(True)
        # the VAE draws from its posterior: the same generator seed gives the same latents z in every call
        guidance(x, cond, uncond, t=t, noise=noise, cameras=cams, generator=torch.Generator().manual_seed(5))[key].backward()
        return x.grad

    vsd = grad_of(VSDGuidance(GuidanceConfig(name="vsd"), prior), "vsd", 7.5)
    sds = SDSGuidance(GuidanceConfig(), prior)
    sds_s, sds_1 = grad_of(sds, "sds", 7.5), grad_of(sds, "sds", 1.0)
    assert vsd.abs().sum() > 0
    assert torch.allclose(vsd, sds_s - sds_1, atol=1e-6, rtol=1e-4)

    # and the LoRA model's prediction is the frozen conditional prediction, bit for bit
    guidance = VSDGuidance(GuidanceConfig(name="vsd"), prior)
    z_t = torch.randn(2, 4, h, h, generator=torch.Generator().manual_seed(6)).to(prior.device)
    with torch.no_grad():
        ours = guidance.estimate(z_t, t, cond, CameraEmbedding.labels(cams.c2w))
        frozen = prior.unet(z_t, t, encoder_hidden_states=cond).sample
    assert torch.equal(ours, frozen)


def test_lora_model_learns_the_renders(latent_prior):
    """The LoRA model's denoising loss on a fixed set of renders goes down as it trains (and the camera matters
    only through the embedding, which trains too)."""
    prior = latent_prior
    guidance = VSDGuidance(GuidanceConfig(name="vsd", lora_rank=8), prior)
    rgb, cams, cond, uncond = draws(prior, batch=4, seed=7)

    def held_out_loss() -> float:
        gen = torch.Generator().manual_seed(99)
        with torch.no_grad():
            return sum(float(guidance(rgb, cond, uncond, cameras=cams, generator=gen)["lora"]) for _ in range(8)) / 8

    before = held_out_loss()
    opt = torch.optim.Adam(guidance.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        opt.zero_grad()
        guidance(rgb, cond, uncond, cameras=cams, generator=gen)["lora"].backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.9 * before, (before, after)


@pytest.fixture(scope="module")
def vsd_run(latent_prior_dir, tmp_path_factory):
    code, run = vsd_fit(latent_prior_dir, tmp_path_factory.mktemp("vsd"), "straight")
    assert code == 0
    return run


def test_checkpoint_holds_lora_and_camera_but_no_frozen_weights(vsd_run, latent_prior):
    ckpt = state(vsd_run)
    guidance_keys = [k for k in ckpt if k.startswith("guidance.")]
    assert guidance_keys and all(k.startswith(("guidance.adapters.", "guidance.camera.")) for k in guidance_keys)
    assert any("lora_A" in k for k in guidance_keys) and any("lora_B" in k for k in guidance_keys)
    assert all(k.startswith(("particles.", "guidance.")) for k in ckpt)
    n_frozen = sum(p.numel() for p in latent_prior.unet.parameters())
    n_guidance = sum(ckpt[k].numel() for k in guidance_keys)
    assert n_guidance < 0.5 * n_frozen  # adapters + camera MLP, not a copy of the UNet
    assert any(ckpt[k].abs().sum() > 0 for k in guidance_keys if "lora_B" in k)  # trained: B left zero
    cfg = (vsd_run / "config.yaml").read_text()
    assert "name: vsd" in cfg and "guidance_scale: 7.5" in cfg
    rows = (vsd_run / "stages" / "coarse" / "metrics.csv").read_text().splitlines()
    assert "vsd" in rows[0] and "lora" in rows[0] and len(rows) == 21


def test_frozen_prior_is_bit_identical_after_a_vsd_run(latent_prior_dir, tmp_path):
    from dream3d.run import fit

    prior = load_prior(str(latent_prior_dir))
    before = {f"{name}.{k}": v.clone() for name in ("unet", "text_encoder", "vae")
              for k, v in getattr(prior, name).state_dict().items()}
    cfg = load_config(["prompt=a red cube", f"prior={latent_prior_dir}", "export=false", *VSD, "steps=6"])
    fit(cfg, tmp_path / "run", show_progress=False, prior=prior)
    after = {f"{name}.{k}": v for name in ("unet", "text_encoder", "vae") for k, v in getattr(prior, name).state_dict().items()}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert prior.unet.class_embedding is None  # the camera embedding lives on the LoRA view only


def test_resume_continues_the_lora_state(vsd_run, latent_prior_dir, tmp_path, monkeypatch):
    restore = ctrl_c_at(monkeypatch, 8)
    code, run = vsd_fit(latent_prior_dir, tmp_path, "stopped")
    assert code == 130
    restore()
    stopped = state(run)
    assert cli.main(["fit", f"resume={run}", "--quiet"]) == 0
    resumed, straight = state(run), state(vsd_run)
    lora = [k for k in straight if k.startswith("guidance.")]
    assert any(not torch.equal(stopped[k], resumed[k]) for k in lora)  # training went on from step 8
    for k in straight:  # ... to exactly where the uninterrupted run got
        assert torch.allclose(resumed[k].float(), straight[k].float(), atol=1e-5), k


def test_two_particles_from_one_seed_differ(latent_prior_dir, tmp_path):
    code, run = vsd_fit(latent_prior_dir, tmp_path, "two", "particles=2", "export=true")
    assert code == 0
    ckpt = state(run)
    p0 = {k[len("particles.0."):]: v for k, v in ckpt.items() if k.startswith("particles.0.")}
    p1 = {k[len("particles.1."):]: v for k, v in ckpt.items() if k.startswith("particles.1.")}
    assert p0.keys() == p1.keys() and not any(k.startswith("particles.2.") for k in ckpt)
    assert any(not torch.equal(p0[k], p1[k]) for k in p0 if k.startswith("nerf."))
    from dream3d.export.mesh import load_mesh
    from dream3d.rundir import RunFolder

    meshes = RunFolder(run).particle_meshes()
    assert [m.relative_to(run).as_posix() for m in meshes] == ["export/model.glb", "export/particle1/model.glb"]
    a, b = (load_mesh(m) for m in meshes)
    assert a.num_faces > 0 and b.num_faces > 0
    assert (a.num_verts, a.num_faces) != (b.num_verts, b.num_faces) or not torch.equal(a.verts, b.verts)
    assert (run / "export" / "particle1" / "turntable.mp4").stat().st_size > 0
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["export"]["particle_faces"]) == 2


def test_guidance_shorthand_sets_the_paper_scale_and_bad_values_fail(latent_prior_dir):
    base = ["prompt=a red cube", f"prior={latent_prior_dir}", "recipe=dreamfusion"]
    cfg = load_config([*base, "guidance=vsd"])
    assert cfg.stages["coarse"].guidance.name == "vsd" and cfg.stages["coarse"].guidance.guidance_scale == 7.5
    cfg = load_config([*base, "guidance=vsd", "stages.coarse.guidance.guidance_scale=20"])
    assert cfg.stages["coarse"].guidance.guidance_scale == 20
    cfg = load_config([*base, "recipe=prolificdreamer", "guidance=sds"])
    assert cfg.stages["coarse"].guidance.guidance_scale == 100
    with pytest.raises(ConfigError, match="particles"):
        load_config([*base, "particles=0"])
    with pytest.raises(ConfigError, match="lora_rank"):
        load_config([*base, "recipe=prolificdreamer", "stages.coarse.guidance.lora_rank=0"])
    with pytest.raises(ConfigError, match="guidance.name"):
        load_config([*base, "guidance=vds"])
