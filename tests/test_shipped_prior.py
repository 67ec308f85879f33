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
