"""The shape-world prior's code: tokenizer, rendered data, a smoke training run saved in the SD layout, resume,
sampling, and the evaluation classifier (tiny sizes; real training is a separate, long run)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from script_module import load_script

from dream3d.cameras import VIEW_LABELS, make_cameras
from dream3d.shapeworld import caption_with_view, catalogue

SMOKE_STEPS = 4


# --------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------


def test_tokenizer_makes_caption_words_single_tokens(tmp_path):
    from transformers import AutoTokenizer

    from dream3d.shapeworld.tokenizer import build_tokenizer, caption_words

    build_tokenizer(tmp_path / "tok", max_length=16)
    assert (tmp_path / "tok" / "vocab.json").is_file() and (tmp_path / "tok" / "merges.txt").is_file()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    words = caption_words()
    assert {"a", "an", "snowman", "torus", "overhead", "view", "back", ","} <= set(words)
    for word in words:
        assert tok.tokenize(word) == [word + "</w>"], word
    vocab = tok.get_vocab()
    for text in ("a Zebra with 3 hats!", "a DSLR photo of a pineapple", "ünïcödé ☃"):
        pieces = tok.tokenize(text)
        assert pieces and all(p in vocab for p in pieces) and tok.unk_token not in pieces, text
    ids = tok(["a red cube, front view"], padding="max_length", max_length=16).input_ids[0]
    assert len(ids) == 16 and ids[0] == tok.bos_token_id and len(set(ids[1:7])) == 6


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------


def test_dataset_is_deterministic_and_captions_match_views(tmp_path):
    from dream3d.shapeworld.data import RenderConfig, load_or_render, render_dataset

    cfg = RenderConfig(size=32)
    a = render_dataset(10, seed=3, cfg=cfg)
    b = render_dataset(10, seed=3, cfg=cfg)
    c = render_dataset(10, seed=4, cfg=cfg)
    assert a.images.shape == (10, 32, 32, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and np.array_equal(a.caption_ids, b.caption_ids)
    assert not np.array_equal(a.images, c.images)
    objects = catalogue()
    cams = make_cameras(torch.from_numpy(a.elevation), torch.from_numpy(a.azimuth), torch.full((10,), 2.0),
                        torch.from_numpy(a.fovy), 32, 32)
    for i, label in enumerate(cams.view_labels()):
        assert VIEW_LABELS[a.view_ids[i]] == label
        assert a.caption(i) == caption_with_view(objects[a.object_ids[i]].caption, label)
    assert (a.elevation >= -10 - 1e-4).all() and (a.elevation <= 90 + 1e-4).all()
    assert (a.fovy >= 40 - 1e-4).all() and (a.fovy <= 70 + 1e-4).all()
    border = np.concatenate([a.images[:, 0], a.images[:, -1], a.images[:, :, 0], a.images[:, :, -1]], axis=1)
    assert (border == 255).mean() > 0.97  # white background, objects inside the frame
    covered = (a.images < 250).any(-1).mean(axis=(1, 2))
    assert (covered > 0.08).all()  # objects fill a good part of the frame

    first = load_or_render(tmp_path, 10, 3, cfg)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = load_or_render(tmp_path, 10, 3, cfg)
    assert np.array_equal(first.images, again.images) and again.captions == a.captions
    assert np.array_equal(again.images, a.images)


# --------------------------------------------------------------------------------------------------------------
# Smoke training: SD layout, loading, resume, sampling
# --------------------------------------------------------------------------------------------------------------


def _smoke_config(out, cache):
    from dream3d.shapeworld.config import preset

    cfg = preset("smoke", out=str(out), cache=str(cache), n_train=116, n_test=58, keep_checkpoints=True,
                 checkpoint_every=2, log_every=2, threads=1)
    cfg.vae.steps = cfg.unet.steps = cfg.classifier.steps = SMOKE_STEPS
    return cfg


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from dream3d.shapeworld.train import train

    root = tmp_path_factory.mktemp("shapeworld")
    cfg = _smoke_config(root / "prior", root / "cache")
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    return cfg, summary, lines


def _csv_steps(path):
    with open(path) as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def test_smoke_training_saves_a_stable_diffusion_folder(smoke_run):
    from diffusers import StableDiffusionPipeline

    from dream3d.prior import load_prior

    cfg, summary, _ = smoke_run
    out = cfg.train_dir.parent
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["requires_safety_checker"] is False
    assert "classifier" not in index
    for sub in ("unet", "vae", "text_encoder"):
        assert list((out / sub).glob("*.safetensors")), sub
    assert (out / "tokenizer" / "vocab.json").is_file() and (out / "tokenizer" / "merges.txt").is_file()
    vae_config = json.loads((out / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == pytest.approx(summary["scaling_factor"])
    assert summary["weights_mb"] < 40
    assert _csv_steps(cfg.train_dir / "unet.csv") == list(range(1, SMOKE_STEPS + 1))

    pipe = StableDiffusionPipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == pipe.text_encoder.dtype == pipe.vae.dtype == torch.float32
    image = pipe("a red cube, front view", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()

    prior = load_prior(str(out))
    assert prior.is_latent and prior.image_size == 64 and prior.vae_scale_factor == 4
    assert prior.encode_text(["a snowman, back view"]).shape == (1, 16, cfg.text.hidden_size)


class _Interrupt(Exception):
    pass


def _interrupt_then_resume(cfg, stage: str, step: int, check_stopped=lambda: True) -> list[str]:
    """Train ``cfg`` until ``stage`` logs ``step``, stop it there (``check_stopped()`` must then hold), resume
    it to the end; returns the resumed run's log lines."""
    from dream3d.shapeworld.train import train

    def crash(line: str) -> None:
        if line.startswith(f"{stage}: step {step}/"):
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(cfg, log=crash)
    assert check_stopped()
    lines: list[str] = []
    train(cfg, resume=True, log=lines.append)
    return lines


def test_resume_continues_where_an_interrupted_run_stopped(smoke_run, tmp_path):
    """Kill a run right after the UNet's mid-way checkpoint, resume it: same steps logged, same weights as the
    uninterrupted run (which also shows that a fresh run with the same seed repeats itself)."""
    from safetensors.torch import load_file


    reference, _, _ = smoke_run
    cfg = _smoke_config(tmp_path / "prior", reference.cache)
    half = SMOKE_STEPS // 2
    lines = _interrupt_then_resume(cfg, "unet", half,
                                   lambda: _csv_steps(cfg.train_dir / "unet.csv") == list(range(1, half + 1)))
    assert any(line.startswith("vae: already trained") for line in lines)
    assert any(line.startswith(f"unet: resumed at step {half}/{SMOKE_STEPS}") for line in lines)
    assert _csv_steps(cfg.train_dir / "unet.csv") == list(range(1, SMOKE_STEPS + 1))
    for sub, name in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        a = load_file(str(reference.train_dir.parent / sub / f"{name}.safetensors"))
        b = load_file(str(cfg.train_dir.parent / sub / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub


@pytest.mark.parametrize("sampler", ["dpm-solver++", "ddim", "ddpm"])
def test_sample_shapes(smoke_run, sampler, tmp_path):
    from dream3d.prior import load_prior
    from dream3d.prior.sample import sample, save_grid

    prior = load_prior(str(smoke_run[0].out))
    images = sample(prior, "a snowman, front view", n=2, steps=3, guidance=3.0, sampler=sampler, seed=1)
    assert images.shape == (2, 64, 64, 3) and images.min() >= 0 and images.max() <= 1
    again = sample(prior, "a snowman, front view", n=2, steps=3, guidance=3.0, sampler=sampler, seed=1)
    assert torch.equal(images, again)
    path = save_grid(images, tmp_path / "grid.png")
    from PIL import Image

    assert Image.open(path).size == (128, 64)


def test_unknown_sampler_is_a_clear_error(smoke_run):
    from dream3d.prior.sample import sample

    with pytest.raises(ValueError, match="unknown sampler"):
        sample(smoke_run[0].out, "a mug", n=1, steps=1, sampler="euler")


# --------------------------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------------------------


def test_smoke_classifier_is_saved_and_classifies(smoke_run):
    from dream3d.shapeworld.classifier import load_classifier

    cfg, summary, _ = smoke_run
    clf = load_classifier(cfg.train_dir.parent / "classifier")
    out = clf.classify(torch.rand(3, 48, 48, 3))
    assert out["entry_probs"].shape == (3, len(catalogue()))
    assert out["colour_probs"].shape == (3, 9) and out["object_probs"].shape == (3, 16)
    assert torch.allclose(out["object_probs"].sum(-1), torch.ones(3), atol=1e-5)
    assert len(out["captions"]) == 3 and out["captions"][0] in {o.caption for o in catalogue()}
    assert set(summary["classifier_accuracy"]) >= {"entry", "object", "colour"}


def test_classifier_loss_goes_down():
    from dream3d.shapeworld.classifier import ShapeClassifier, class_table, classifier_losses
    from dream3d.shapeworld.data import RenderConfig, render_dataset

    data = render_dataset(58, seed=0, cfg=RenderConfig(size=32))
    torch.manual_seed(0)
    model = ShapeClassifier([8, 16, 16, 16], 32, class_table())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = data.tensor() * 2 - 1
    entry, view = torch.from_numpy(data.object_ids), torch.from_numpy(data.view_ids)
    losses = []
    for _ in range(15):
        loss = classifier_losses(model, x, entry, view, 0.5)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# --------------------------------------------------------------------------------------------------------------
# Evaluation of a prior (scripts/evaluate_shapeworld_prior.py)
# --------------------------------------------------------------------------------------------------------------


def test_evaluate_prior_scores_every_caption_and_fills_the_model_card(smoke_run, tmp_path):

    from dream3d.prior import load_prior
    from dream3d.shapeworld.classifier import load_classifier
    from dream3d.shapeworld.evaluate import evaluate_prior, markdown_tables, summary_json

    cfg, _, _ = smoke_run
    prior, clf = load_prior(cfg.out), load_classifier(cfg.train_dir.parent / "classifier")
    captions = ["a red cube", "a snowman"]
    result = evaluate_prior(prior, clf, n=3, steps=2, captions=captions, views=1, log=lambda _: None)
    rows = result["rows"]
    assert [r["caption"] for r in rows] == captions and result["first"].shape[0] == 2
    for r in rows:
        for key in ("recognised", "object", "colour"):  # fractions of the 3 samples
            assert r[key] * 3 == pytest.approx(round(r[key] * 3)) and 0 <= r[key] <= 1
        assert (r["confused_with"] == "") == (r["recognised"] == 1.0)
    o = result["overall"]
    assert o["samples"] == 6 and o["recognised"] == pytest.approx(sum(r["recognised"] for r in rows) / 2)
    assert o["captions_below_90"] == [r["caption"] for r in rows if r["recognised"] < 0.9]
    views = result["views"]  # the snowman has a front, the cube has not: 1 object x 4 views x 1 sample
    assert views["objects"] == ["a snowman"] and sum(map(sum, views["confusion"])) == 4
    tables = markdown_tables(result)
    assert "| a red cube |" in tables and "| a snowman |" in tables and "prompted \\ seen" in tables
    assert "first" not in summary_json(result, 0.5)

    script = load_script("evaluate_shapeworld_prior.py")
    card = tmp_path / "README.md"
    card.write_text(f"# card\nbefore\n{script.BEGIN}\nold table\n{script.END}\nafter\n")
    assert script.update_card(card, tables)
    text = card.read_text()
    assert "old table" not in text and "| a snowman |" in text and text.endswith("after\n")
    assert not script.update_card(tmp_path / "missing.md", tables)

    with pytest.raises(ValueError, match="not catalogue captions"):
        evaluate_prior(prior, clf, n=1, steps=1, captions=["a plaid cube"], log=lambda _: None)


# --------------------------------------------------------------------------------------------------------------
# The camera preset: the smoke prior's UNet fine-tuned with a camera input
# --------------------------------------------------------------------------------------------------------------


def _camera_config(out, base):
    cfg = _smoke_config(out, base.cache)
    cfg.camera.base, cfg.camera.steps, cfg.camera.batch = str(base.out), SMOKE_STEPS, 8
    return cfg


@pytest.fixture(scope="module")
def camera_run(smoke_run, tmp_path_factory):
    from dream3d.shapeworld.train import train

    cfg = _camera_config(tmp_path_factory.mktemp("camera") / "prior", smoke_run[0])
    lines: list[str] = []
    summary = train(cfg, log=lines.append)
    return cfg, summary, lines


def test_camera_preset_trains_the_unet_and_keeps_every_other_component(camera_run, smoke_run):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from dream3d.prior import load_prior

    cfg, summary, lines = camera_run
    base, out = smoke_run[0].train_dir.parent, cfg.train_dir.parent
    for sub in ("vae", "text_encoder", "tokenizer", "scheduler", "classifier"):
        for f in (base / sub).iterdir():
            assert (out / sub / f.name).read_bytes() == f.read_bytes(), f"{sub}/{f.name}"
    trained = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    before = load_file(str(base / "unet" / "diffusion_pytorch_model.safetensors"))
    assert trained.keys() == before.keys()  # the same UNet architecture: plain diffusers loads it
    assert any(not torch.equal(trained[k], before[k]) for k in before)  # ... fine-tuned
    tokens = load_file(str(out / "camera_encoder" / "model.safetensors"))
    assert tokens["mlp.4.weight"].abs().sum() > 0  # the camera tokens left zero
    assert _csv_steps(cfg.train_dir / "unet_camera.csv") == list(range(1, SMOKE_STEPS + 1))
    assert summary["weights_mb"] < 40 and summary["parameters"]["camera_tokens"] > 0
    assert load_prior(str(out)).takes_camera and not load_prior(str(base)).takes_camera
    pipe = StableDiffusionPipeline.from_pretrained(str(out))  # plain diffusers: a text-to-image pipeline
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a red cube", num_inference_steps=2, output_type="np").images.shape == (1, 64, 64, 3)


def test_camera_preset_resumes_where_it_stopped(camera_run, smoke_run, tmp_path):
    from safetensors.torch import load_file


    reference = camera_run[0]
    cfg = _camera_config(tmp_path / "prior", smoke_run[0])
    half = SMOKE_STEPS // 2
    lines = _interrupt_then_resume(cfg, "unet_camera", half)
    assert any(line.startswith(f"unet_camera: resumed at step {half}/{SMOKE_STEPS}") for line in lines)
    for name in ("unet/diffusion_pytorch_model.safetensors", "camera_encoder/model.safetensors"):
        a, b = load_file(str(reference.train_dir.parent / name)), load_file(str(cfg.train_dir.parent / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_camera_prior_as_the_base_is_trained_further(camera_run, tmp_path):
    from safetensors.torch import load_file

    from dream3d.prior.camera import CameraTokens
    from dream3d.shapeworld.train import train

    first = camera_run[0].train_dir.parent
    cfg = _camera_config(tmp_path / "prior", camera_run[0])
    cfg.camera.base, cfg.camera.steps, cfg.camera.lr = str(first), 2, 0.0  # no step moves a weight: starts = ends
    cfg.camera.warmup, cfg.camera.bare_without_camera = 1, True
    lines: list[str] = []
    train(cfg, log=lines.append)
    assert any(f"from {first}" in line for line in lines)
    a, b = load_file(str(first / "camera_encoder/model.safetensors")), load_file(
        str(cfg.train_dir.parent / "camera_encoder/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the base's camera tokens, not fresh zero ones
    cfg.camera.base, cfg.camera.hidden = str(first), 7
    with pytest.raises(ValueError, match="hidden 7"):
        train(cfg, log=lambda _: None)
    assert CameraTokens.load(cfg.train_dir.parent / "camera_encoder").hidden == a["mlp.0.weight"].shape[0]


def test_camera_settings_from_the_command_line():
    script = load_script("train_shapeworld_prior.py")
    from dream3d.shapeworld.config import CameraPriorConfig

    cam = CameraPriorConfig()
    assert script.set_camera_field(cam, "lr=1e-4") == "" and cam.lr == 1e-4
    assert script.set_camera_field(cam, "bare_without_camera=true") == "" and cam.bare_without_camera is True
    assert script.set_camera_field(cam, "steps=12") == "" and cam.steps == 12
    assert "expected a float for lr" in script.set_camera_field(cam, "lr=fast")
    assert "expected key=value" in script.set_camera_field(cam, "base=elsewhere")
    assert "expected key=value" in script.set_camera_field(cam, "nonsense")
    assert script.main(["--preset", "full", "--camera-set", "lr=1"]) == 2


def test_camera_preset_refuses_its_base_as_out(smoke_run):
    from dream3d.shapeworld.train import train

    base = smoke_run[0]
    cfg = _camera_config(base.out, base)
    with pytest.raises(ValueError, match="must differ from its base"):
        train(cfg, log=lambda _: None)


def test_evaluate_a_camera_prior_asks_views_by_camera(camera_run):
    from dream3d.prior import load_prior
    from dream3d.shapeworld.classifier import load_classifier
    from dream3d.shapeworld.evaluate import evaluate_prior, markdown_tables, view_cameras

    cfg = camera_run[0]
    prior, clf = load_prior(cfg.out), load_classifier(cfg.train_dir.parent / "classifier")
    result = evaluate_prior(prior, clf, n=1, steps=2, captions=["a snowman"], views=2, log=lambda _: None)
    cam = result["camera_views"]
    assert cam["objects"] == ["a snowman"] and sum(map(sum, cam["confusion"])) == 8
    assert 0 <= result["overall"]["recognised_with_cameras"] <= 1  # from the 3D stages' cameras too
    assert "camera in \\ seen" in markdown_tables(result) and "With random cameras" in markdown_tables(result)
    from dream3d.cameras import make_cameras  # noqa: F401

    gen = torch.Generator().manual_seed(0)
    for view in ("front", "side", "back", "overhead"):  # every asked camera lies in its view's region
        c2w = view_cameras(view, 16, gen)
        position = c2w[:, :3, 3]
        elevation = torch.rad2deg(torch.asin(position[:, 1] / position.norm(dim=-1)))
        azimuth = torch.rad2deg(torch.atan2(position[:, 0], position[:, 2]))
        labels = make_cameras(elevation, azimuth, torch.ones(16), torch.full((16,), 55.0), 8, 8).view_labels()
        assert set(labels) == {view}


def test_the_script_takes_base_only_with_the_camera_preset(capsys):
    script = load_script("train_shapeworld_prior.py")
    for argv in (["--base", "/tmp/x"], ["--preset", "smoke", "--out", "/tmp/y", "--steps-camera", "3"]):
        assert script.main(argv) == 2  # never a camera fine-tune into the default prior's folder
        assert "go with --preset camera" in capsys.readouterr().err
