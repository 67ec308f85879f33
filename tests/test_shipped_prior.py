"""The shipped shape-world prior: plain diffusers loads it, it draws what it is asked, its card holds its figures."""

from __future__ import annotations

import json

import pytest
import torch

from dream3d.config import DEFAULT_PRIOR, PROJECT_ROOT

PRIOR = PROJECT_ROOT / DEFAULT_PRIOR


def test_layout_sizes_and_dtypes():
    index = json.loads((PRIOR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    weights = list(PRIOR.rglob("*.safetensors"))
    assert len(weights) == 4 and not list(PRIOR.rglob("*.bin")) and not list(PRIOR.rglob("*.pt"))
    assert sum(w.stat().st_size for w in weights) < 40e6
    assert not (PRIOR / "training").exists()  # checkpoints stay out of the repository
    from safetensors import safe_open

    with safe_open(str(PRIOR / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16


def test_plain_diffusers_draws_a_red_cube():
    from diffusers import StableDiffusionPipeline

    from dream3d.shapeworld.classifier import load_classifier

    pipe = StableDiffusionPipeline.from_pretrained(str(PRIOR))  # no dream3d code in the loading
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a red cube"] * 4, num_inference_steps=20, guidance_scale=7.5, output_type="pt",
               generator=torch.Generator().manual_seed(0))
    images = out.images.permute(0, 2, 3, 1)  # [4,64,64,3] in [0,1]
    assert images.shape == (4, 64, 64, 3)
    verdict = load_classifier(PRIOR / "classifier").classify(images)
    assert verdict["captions"].count("a red cube") >= 3, verdict["captions"]


def test_classifier_and_card_record_the_measured_figures():
    held_out = json.loads((PRIOR / "classifier" / "config.json").read_text())["metrics"]["held_out"]
    assert held_out["entry"] >= 0.97 and held_out["n"] >= 1000
    evaluation = json.loads((PRIOR / "evaluation.json").read_text())
    assert evaluation["overall"]["samples"] == 16 * 58 and evaluation["overall"]["recognised"] >= 0.9
    assert evaluation["seconds_per_image_20_steps"] < 2.0
    card = (PRIOR / "README.md").read_text()
    assert f"{evaluation['overall']['recognised']:.1%}" in card and "| a red cube |" in card
    assert "samples.png" in card and (PRIOR / "samples.png").is_file()


@pytest.mark.parametrize("prompt", ["a red cube, front view", "a snowman"])
def test_dream3d_loader_encodes_view_prompts(prompt):
    from dream3d.prior import load_prior

    prior = load_prior(str(PRIOR))
    emb = prior.encode_text([prompt])
    assert emb.shape == (1, 24, 128) and torch.isfinite(emb).all()


# ---------------------------------------------------------------------------------------- the camera prior
CAMERA_PRIOR = PROJECT_ROOT / "assets/priors/shapeworld-camera"


def test_camera_prior_is_the_base_with_a_fine_tuned_unet_and_camera_tokens():
    index = json.loads((CAMERA_PRIOR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and "camera_encoder" not in index
    for sub in ("vae", "text_encoder", "tokenizer", "scheduler", "classifier"):  # the base's files, byte for byte
        for f in (PRIOR / sub).iterdir():
            assert (CAMERA_PRIOR / sub / f.name).read_bytes() == f.read_bytes(), f"{sub}/{f.name}"
    assert (CAMERA_PRIOR / "dream3d.yaml").read_bytes() == (PRIOR / "dream3d.yaml").read_bytes()
    shipped = list(PRIOR.rglob("*.safetensors")) + list(CAMERA_PRIOR.rglob("*.safetensors"))
    assert sum(w.stat().st_size for w in shipped) < 40e6  # both priors together
    assert not (CAMERA_PRIOR / "training").exists() and not list(CAMERA_PRIOR.rglob("*.pt"))


def test_camera_prior_draws_the_side_it_is_asked_for():
    """Front and back of two objects with a front, 4 samples each, 20 steps: the classifier's view head must see
    the asked side in at least 10 of 16 (the text prior's ", front/back view" words: 12 of 48, docs)."""
    from dream3d.prior import load_prior
    from dream3d.prior.sample import sample
    from dream3d.shapeworld.classifier import load_classifier
    from dream3d.shapeworld.evaluate import view_cameras

    prior = load_prior(str(CAMERA_PRIOR))
    assert prior.takes_camera
    classifier = load_classifier(CAMERA_PRIOR / "classifier")
    hits, recognised = 0, 0
    for caption in ("a house", "a car"):
        for v, view in enumerate(("front", "back")):
            c2w = view_cameras(view, 4, torch.Generator().manual_seed(v))
            out = classifier.classify(sample(prior, caption, 4, 20, 7.5, seed=v, c2w=c2w))
            hits += out["views"].count(view)
            recognised += out["captions"].count(caption)
    assert hits >= 10 and recognised >= 14, (hits, recognised)
