"""Camera-conditioned priors (MVDream's camera input, one view at a time): the camera's 16 numbers, the prior
that takes them, guidance and sampling that pass them, VSD over such a prior, and a fit through the real trainer
without view words. Tiny real diffusers priors (``tests/tiny_prior.py``, ``camera=True``)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from dream3d import cli
from dream3d.cameras import CAMERA_CONDITION_DIM, camera_condition, make_cameras
from dream3d.config import GuidanceConfig, load_config
from dream3d.guidance.sds import SDSGuidance, cfg_noise
from dream3d.guidance.vsd import CameraEmbedding, VSDGuidance
from dream3d.prior import PromptEmbeddings, load_prior
from dream3d.prior.sample import sample


@pytest.fixture(scope="module")
def camera_prior(camera_prior_dir):
    return load_prior(str(camera_prior_dir))


@pytest.fixture(scope="module")
def text_prior(latent_prior_dir):
    return load_prior(str(latent_prior_dir))


def cams(azimuth: list[float], elevation: float = 15.0, distance: float = 2.0):
    n = len(azimuth)
    return make_cameras(torch.full((n,), elevation), torch.tensor(azimuth), torch.full((n,), distance),
                        torch.full((n,), 55.0), 32, 32)


def test_camera_condition_is_the_c2w_with_a_unit_translation():
    near, far = cams([30.0, -120.0], distance=1.2), cams([30.0, -120.0], distance=3.0)
    a, b = camera_condition(near.c2w), camera_condition(far.c2w)
    assert a.shape == (2, CAMERA_CONDITION_DIM)
    assert torch.allclose(a, b, atol=1e-6)  # the framing, not the distance, sets the image
    m = a.view(2, 4, 4)
    assert torch.allclose(m[:, :3, 3].norm(dim=-1), torch.ones(2))
    assert torch.allclose(m[:, :3, :3], near.c2w[:, :3, :3]) and torch.equal(m[:, 3], near.c2w[:, 3])
    assert not torch.allclose(a[0], a[1])  # another direction, another condition


def test_priors_say_whether_they_take_a_camera(camera_prior, text_prior):
    assert camera_prior.takes_camera and not text_prior.takes_camera
    text = camera_prior.encode_text(["a red cube", "a red cube"])
    c2w = cams([0.0, 180.0]).c2w
    assert torch.equal(text_prior.condition(text, c2w), text) and torch.equal(camera_prior.condition(text), text)
    told = camera_prior.condition(text, c2w)
    assert torch.equal(told[:, :-4], text[:, :-4]) and not torch.allclose(told[:, -4:], text[:, -4:])
    assert not torch.allclose(told[0], told[1])  # front and back: other tokens
    kept = camera_prior.condition(text, c2w, torch.tensor([True, False]))
    assert torch.equal(kept[0], told[0]) and torch.equal(kept[1], text[1])  # a dropped camera adds nothing
    with pytest.raises(ValueError, match="2 cameras for 3 prompts"):
        camera_prior.condition(torch.cat([text, text[:1]]), c2w)


def test_camera_tokens_start_at_zero_and_load_only_their_own_files(tmp_path):
    from dream3d.prior.camera import CameraTokens

    fresh = CameraTokens(8, tokens=2, hidden=16)
    text = torch.randn(3, 5, 8)
    assert torch.equal(fresh(text, cams([0.0, 90.0, 180.0]).c2w), text)  # a fresh encoder changes nothing
    fresh.save(tmp_path / "enc")
    loaded = CameraTokens.load(tmp_path / "enc")
    assert loaded.tokens == 2 and all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                                         loaded.state_dict().values()))
    for name, text in (("config.json", '{"format": "pickle", "dim": 8}'), ("config.json", "[]"),
                       ("model.safetensors", "not a tensor file")):
        broken = tmp_path / f"broken-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tmp_path / "enc", broken)
        (broken / name).write_text(text)
        with pytest.raises(ValueError, match="not a camera encoder") as err:
            CameraTokens.load(broken)
        assert len(str(err.value).splitlines()) == 1


def test_a_camera_encoder_that_does_not_fit_the_prior_is_one_line(camera_prior_dir, tmp_path):
    from dream3d.prior import PriorError
    from dream3d.prior.camera import CameraTokens

    prior = tmp_path / "prior"
    shutil.copytree(camera_prior_dir, prior)
    shutil.rmtree(prior / "camera_encoder")
    CameraTokens(64, tokens=4, hidden=8).save(prior / "camera_encoder")  # the text encoder is 32 wide
    with pytest.raises(PriorError, match="do not fit the text encoder"):
        load_prior(str(prior))


def test_guidance_hands_the_camera_to_a_camera_prior_only(camera_prior, text_prior):
    for prior, moves in ((camera_prior, True), (text_prior, False)):
        gen = torch.Generator().manual_seed(0)
        size = prior.image_size // prior.vae_scale_factor
        z_t = torch.randn(2, 4, size, size, generator=gen)
        t = torch.tensor([500, 500])
        cond, uncond = PromptEmbeddings(prior, "a red cube", view_dependent=False)(["front", "front"])
        front = cfg_noise(prior, z_t, t, cond, uncond, 7.5, cams([0.0, 0.0]).c2w)
        back = cfg_noise(prior, z_t, t, cond, uncond, 7.5, cams([180.0, 180.0]).c2w)
        none = cfg_noise(prior, z_t, t, cond, uncond, 7.5)
        assert (front - back).abs().max() > 1e-4 if moves else torch.equal(front, back)
        assert (front - none).abs().max() > 1e-4 if moves else torch.equal(front, none)

    prior = camera_prior  # SDS itself: the same draws, other cameras, another gradient
    rgb = torch.rand(2, prior.image_size, prior.image_size, 3, generator=torch.Generator().manual_seed(1))
    cond, uncond = PromptEmbeddings(prior, "a red cube", view_dependent=False)(["front", "front"])
    sds = SDSGuidance(GuidanceConfig(name="sds", guidance_scale=7.5), prior)
    fixed = dict(t=torch.tensor([400, 600]), noise=torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)))
    a = sds(rgb, cond, uncond, cameras=cams([0.0, 0.0]), generator=torch.Generator().manual_seed(3), **fixed)
    b = sds(rgb, cond, uncond, cameras=cams([180.0, 90.0]), generator=torch.Generator().manual_seed(3), **fixed)
    assert abs(float(a["sds"]) - float(b["sds"])) > 1e-6


def test_camera_cfg_leaves_the_unconditional_term_without_a_camera(camera_prior):
    prior = camera_prior
    gen = torch.Generator().manual_seed(0)
    size = prior.image_size // prior.vae_scale_factor
    z_t, t = torch.randn(2, 4, size, size, generator=gen), torch.tensor([300, 700])
    cond, uncond = PromptEmbeddings(prior, "a red cube", view_dependent=False)(["front", "front"])
    c2w = cams([0.0, 180.0]).c2w

    def eps(text):
        return prior.unet(z_t, t, encoder_hidden_states=text).sample

    with torch.no_grad():
        expected = eps(uncond) + 7.5 * (eps(prior.condition(cond, c2w)) - eps(uncond))  # the camera scaled as the text
        both = eps(prior.condition(uncond, c2w)) + 7.5 * (eps(prior.condition(cond, c2w)) - eps(prior.condition(uncond, c2w)))
    assert torch.allclose(cfg_noise(prior, z_t, t, cond, uncond, 7.5, c2w, camera_cfg=True), expected, atol=1e-5)
    assert torch.allclose(cfg_noise(prior, z_t, t, cond, uncond, 7.5, c2w), both, atol=1e-5)
    assert (expected - both).abs().max() > 1e-4
    one = sample(prior, "a red cube", 2, steps=3, c2w=c2w)  # sampling scales the camera by default
    assert torch.equal(one, sample(prior, "a red cube", 2, steps=3, c2w=c2w, camera_cfg=True))
    assert (one - sample(prior, "a red cube", 2, steps=3, c2w=c2w, camera_cfg=False)).abs().max() > 1e-3


def test_sampling_follows_the_camera_and_a_text_prior_refuses_one(camera_prior, text_prior):
    front = sample(camera_prior, "a red cube", 2, steps=3, c2w=cams([0.0]).c2w[0])  # one camera for both
    again = sample(camera_prior, "a red cube", 2, steps=3, c2w=cams([0.0]).c2w[0])
    back = sample(camera_prior, "a red cube", 2, steps=3, c2w=cams([180.0, 180.0]).c2w)
    assert torch.equal(front, again) and (front - back).abs().max() > 1e-3
    text_only = dataclasses.replace(camera_prior, camera_encoder=None)  # the same UNet without the tokens
    assert torch.equal(sample(camera_prior, "a red cube", 2, steps=2), sample(text_only, "a red cube", 2, steps=2))
    with pytest.raises(ValueError, match="3 cameras for 2 images"):
        sample(camera_prior, "a red cube", 2, steps=2, c2w=cams([0.0, 90.0, 180.0]).c2w)
    with pytest.raises(ValueError, match="takes no camera"):
        sample(text_prior, "a red cube", 1, steps=2, c2w=cams([0.0]).c2w)


def test_vsd_over_a_camera_prior_tells_its_lora_model_the_camera(camera_prior):
    prior = camera_prior
    guidance = VSDGuidance(GuidanceConfig(name="vsd", guidance_scale=7.5), prior)
    c = cams([0.0, 135.0])
    size = prior.image_size // prior.vae_scale_factor
    z_t = torch.randn(2, 4, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([300, 700])
    cond, _ = PromptEmbeddings(prior, "a red cube", view_dependent=False)(["front", "back"])
    told = prior.condition(cond, c.c2w)
    with torch.no_grad():  # at the start (LoRA and its camera embedding at zero) the LoRA model is the prior
        lora = guidance.estimate(z_t, t, told, CameraEmbedding.labels(c.c2w))
        plain = prior.unet(z_t, t, encoder_hidden_states=told).sample
    assert torch.allclose(lora, plain, atol=1e-5)
    rgb = torch.rand(2, prior.image_size, prior.image_size, 3, generator=torch.Generator().manual_seed(1))
    out = guidance(rgb, cond, cond[:, :0].new_zeros(cond.shape) + prior.encode_text([""]), cameras=c,
                   generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(out["vsd"]) and torch.isfinite(out["lora"])


def test_mvdream_fit_with_a_camera_prior_drops_the_view_words(camera_prior_dir, latent_prior_dir, tmp_path, monkeypatch):
    from dream3d.prior.prompts import PromptEmbeddings as Embeddings

    seen: dict[str, list[str]] = {}
    original = Embeddings.texts

    def recording(self, labels):
        texts = original(self, labels)
        seen.setdefault(Path(self.prior.path).name, []).extend(texts)
        return texts

    monkeypatch.setattr(Embeddings, "texts", recording)
    from test_mesh_stages import tiny

    from dream3d.run import fit

    for prior_dir in (camera_prior_dir, latent_prior_dir):  # the mvdream recipe; a text-only prior runs it too
        cfg = load_config(["prompt=a red cube", f"prior={prior_dir}", "recipe=mvdream", "stages.coarse.steps=4",
                           "stages.fine.steps=3", *tiny(["coarse", "fine"], fine__dmtet__resolution=16,
                                                        fine__mesh__init_fit_steps=5, fine__mesh__texture_fit_steps=5)])
        summary = fit(cfg, tmp_path / prior_dir.name, show_progress=False)
        assert summary["status"] == "done" and summary["export"]["watertight"] is True
    assert seen["camera"] and set(seen["camera"]) == {"a red cube"}  # the camera says where; no view words
    assert any(text.endswith(" view") for text in seen["latent"])  # a text-only prior still gets them


def test_mvdream_recipe_uses_the_camera_prior_and_its_settings():
    cfg = load_config(["prompt=a mug", "recipe=mvdream"])
    assert Path(cfg.prior).name == "shapeworld-camera"
    assert cfg.stages["fine"].system == "dmtet"
    assert load_prior(cfg.prior).takes_camera


def test_a_recipes_prior_brings_its_own_settings_and_an_override_replaces_them(camera_prior_dir, latent_prior_dir,
                                                                               tmp_path):
    prior = tmp_path / "grey-prior"
    shutil.copytree(camera_prior_dir, prior)
    (prior / "dream3d.yaml").write_text("stages:\n  renderer:\n    background: solid\n"
                                        "    background_color: [0.25, 0.5, 0.75]\n")
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(f"prior: {prior}\nstages:\n  coarse:\n    system: nerf-sds\n    steps: 10\n")
    ours = load_config(["prompt=a mug", f"recipe={recipe}"])
    assert ours.stages["coarse"].renderer.background_color == [0.25, 0.5, 0.75]  # the recipe's prior's world
    other = load_config(["prompt=a mug", f"recipe={recipe}", f"prior={latent_prior_dir}"])
    assert other.stages["coarse"].renderer.background_color != [0.25, 0.5, 0.75]  # the override's (none)


def test_prior_sample_command_takes_a_camera(camera_prior_dir, latent_prior_dir, tmp_path, capsys):
    from PIL import Image

    args = ["prior", "sample", "prompt=a red cube", "n=2", "steps=2"]
    front, back = tmp_path / "front.png", tmp_path / "back.png"
    assert cli.main([*args, f"prior={camera_prior_dir}", f"out={front}", "azimuth=0"]) == 0
    assert cli.main([*args, f"prior={camera_prior_dir}", f"out={back}", "azimuth=180", "elevation=20"]) == 0
    assert Image.open(front).tobytes() != Image.open(back).tobytes()
    capsys.readouterr()
    assert cli.main([*args, f"prior={latent_prior_dir}", f"out={tmp_path / 'x.png'}", "azimuth=90"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes no camera" in err[0] and not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def other_unet_prior(latent_prior_dir, tmp_path_factory):
    """The tiny text prior with another UNet (same tokenizer, text encoder and VAE as the tiny camera prior)."""
    from tiny_prior import build_tiny_prior

    root = tmp_path_factory.mktemp("text-prior")
    other = build_tiny_prior(root / "seed1", latent=True, seed=1)
    folder = root / "text"
    shutil.copytree(latent_prior_dir, folder)
    shutil.rmtree(folder / "unet")
    shutil.copytree(other / "unet", folder / "unet")
    return folder, other


def test_a_text_prior_gives_the_text_term_and_the_camera_prior_only_the_camera(camera_prior_dir, other_unet_prior):
    folder, _ = other_unet_prior
    prior = load_prior(str(camera_prior_dir), text_prior=str(folder))
    text = load_prior(str(folder))
    gen = torch.Generator().manual_seed(0)
    size = prior.image_size // prior.vae_scale_factor
    z_t, t = torch.randn(2, 4, size, size, generator=gen), torch.tensor([300, 700])
    cond, uncond = PromptEmbeddings(prior, "a red cube", view_dependent=False)(["front", "front"])
    c2w = cams([0.0, 180.0]).c2w
    with torch.no_grad():
        e_t0, e_ty = (text.unet(z_t, t, encoder_hidden_states=x).sample for x in (uncond, cond))
        e_yc = prior.unet(z_t, t, encoder_hidden_states=prior.condition(cond, c2w)).sample
        e_y = prior.unet(z_t, t, encoder_hidden_states=cond).sample
    expected = e_t0 + 7.5 * (e_ty - e_t0) + 3.0 * (e_yc - e_y)
    got = cfg_noise(prior, z_t, t, cond, uncond, 7.5, c2w, text_prior=True, camera_scale=3.0)
    assert torch.allclose(got, expected, atol=1e-5)
    # the camera prior as its own text prior with the camera scaled as the text: exactly camera_cfg
    itself = dataclasses.replace(prior, text_unet=prior.unet)
    assert torch.allclose(cfg_noise(itself, z_t, t, cond, uncond, 7.5, c2w, text_prior=True),
                          cfg_noise(prior, z_t, t, cond, uncond, 7.5, c2w, camera_cfg=True), atol=1e-5)
    sds = SDSGuidance(GuidanceConfig(name="sds", guidance_scale=7.5, text_prior=True), prior)  # SDS passes it on
    rgb = torch.rand(2, prior.image_size, prior.image_size, 3, generator=torch.Generator().manual_seed(1))
    fixed = dict(t=torch.tensor([400, 600]), noise=torch.randn(2, 4, size, size, generator=torch.Generator().manual_seed(2)))
    a = sds(rgb, cond, uncond, cameras=cams([0.0, 0.0]), **fixed)["sds"]
    b = SDSGuidance(GuidanceConfig(name="sds", guidance_scale=7.5), prior)(rgb, cond, uncond, cameras=cams([0.0, 0.0]), **fixed)["sds"]
    assert abs(float(a) - float(b)) > 1e-6
    loaded = load_prior(str(camera_prior_dir))
    with pytest.raises(ValueError, match="text_prior"):
        cfg_noise(loaded, z_t, t, cond, uncond, 7.5, c2w, text_prior=True)


def test_a_text_prior_must_read_prompts_and_images_alike(camera_prior_dir, latent_prior_dir, other_unet_prior):
    from dream3d.prior import PriorError

    _, other = other_unet_prior  # another seed: another text encoder
    with pytest.raises(PriorError, match=r"^text_prior: text_encoder/ of .* differs from the prior's"):
        load_prior(str(camera_prior_dir), text_prior=str(other))
    text = load_prior(str(latent_prior_dir), text_prior=str(other))  # a text prior itself: loaded as it is
    assert text.text_unet is None and not text.takes_camera
    z_t, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    cond, uncond = PromptEmbeddings(text, "a red cube", view_dependent=False)(["front"])
    assert torch.equal(cfg_noise(text, z_t, t, cond, uncond, 7.5, cams([0.0]).c2w, text_prior=True),
                       cfg_noise(text, z_t, t, cond, uncond, 7.5))  # the stages' flag changes nothing then
    from dream3d.config import ConfigError

    with pytest.raises(ConfigError, match=r"^stages.coarse.guidance.text_prior: true needs the run's text_prior"):
        load_config(["prompt=a mug", "recipe=mvdream", "stages.coarse.guidance.text_prior=true"])


def test_a_fit_with_a_text_prior_beside_the_camera_prior(camera_prior_dir, other_unet_prior, tmp_path):
    from test_mesh_stages import tiny

    from dream3d.run import fit

    folder, _ = other_unet_prior
    cfg = load_config(["prompt=a red cube", f"prior={camera_prior_dir}", f"text_prior={folder}", "recipe=mvdream",
                       "stages.coarse.steps=3", "stages.fine.steps=2", "stages.coarse.guidance.text_prior=true",
                       "stages.fine.guidance.text_prior=true", "video_views=0",
                       *tiny(["coarse", "fine"], fine__dmtet__resolution=16, fine__mesh__init_fit_steps=3,
                             fine__mesh__texture_fit_steps=3)])
    summary = fit(cfg, tmp_path / "run", show_progress=False)
    assert summary["status"] == "done"
    from dream3d.rundir import RunFolder

    assert RunFolder(tmp_path / "run").read_config().text_prior == str(folder)  # a resumed run loads it again


def test_sampling_with_a_text_prior_takes_its_text_term(camera_prior_dir, other_unet_prior):
    folder, _ = other_unet_prior
    split = load_prior(str(camera_prior_dir), text_prior=str(folder))
    c2w = cams([0.0, 180.0]).c2w
    assert torch.equal(sample(split, "a red cube", 2, steps=3), sample(str(folder), "a red cube", 2, steps=3))
    with_camera = sample(split, "a red cube", 2, steps=3, c2w=c2w)
    assert (with_camera - sample(split, "a red cube", 2, steps=3)).abs().max() > 1e-3  # the camera term acts
    # the camera prior as its own text prior: exactly its camera_cfg samples
    itself = dataclasses.replace(split, text_unet=split.unet)
    assert torch.allclose(sample(itself, "a red cube", 2, steps=3, c2w=c2w),
                          sample(load_prior(str(camera_prior_dir)), "a red cube", 2, steps=3, c2w=c2w), atol=1e-4)
