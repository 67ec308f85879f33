"""Tiny, randomly initialised diffusers text-to-image pipelines for tests and benchmarks (a test fixture:
``tests/conftest.py`` and ``scripts/bench.py`` use it; ``python tests/tiny_prior.py <folder>`` writes one).

They are real diffusers/transformers models (UNet2DConditionModel, CLIPTextModel, CLIPTokenizer,
DDPMScheduler and, for latent priors, AutoencoderKL), only very small, saved with ``save_pretrained`` in
the Stable Diffusion folder layout and loaded back through :func:`dream3d.prior.load_prior` like any
other prior. Their samples are noise; they exist to exercise the real code paths quickly.
"""

from __future__ import annotations

import json
from pathlib import Path

from dream3d.shapeworld.tokenizer import byte_vocab


def write_char_tokenizer(folder: Path, max_length: int = 77) -> int:
    """Write a character-level CLIP tokenizer (vocab.json + an empty merges.txt). Returns the vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_vocab()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tok.save_pretrained(str(folder))
    return len(tokens)


def build_tiny_prior(
    folder: str | Path,
    latent: bool = True,
    resolution: int = 32,
    width: int = 32,
    prediction_type: str = "epsilon",
    seed: int = 0,
    camera: bool = False,
) -> Path:
    """Build and save a tiny random prior.

    latent=True: Stable Diffusion layout with an f=4 AutoencoderKL (images ``resolution`` px, latents
    ``resolution/4``). latent=False: a pixel-space prior (3-channel UNet at ``resolution`` px, no vae).
    ``width`` is the UNet's first block width (parameters grow with its square). ``camera``: a camera-conditioned
    prior like the shape world's (a ``camera_encoder/``: :class:`dream3d.prior.camera.CameraTokens`, its last
    layer randomly initialised so that the camera changes the predictions).
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vocab_size = write_char_tokenizer(folder / "tokenizer")
    hidden = 32
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        )
    )
    text_encoder.save_pretrained(folder / "text_encoder")
    factor = 4 if latent else 1
    unet = UNet2DConditionModel(
        sample_size=resolution // factor,
        in_channels=4 if latent else 3,
        out_channels=4 if latent else 3,
        layers_per_block=1,
        block_out_channels=(width, width * 2),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    unet.save_pretrained(folder / "unet")
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type, clip_sample=False, steps_offset=1,
    )
    scheduler.save_pretrained(folder / "scheduler")
    components = {
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    if latent:
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=resolution,
            block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        )
        vae.save_pretrained(folder / "vae")
        components["vae"] = ["diffusers", "AutoencoderKL"]
        index = {"_class_name": "StableDiffusionPipeline", "safety_checker": [None, None],
                 "feature_extractor": [None, None], "requires_safety_checker": False, **components}
    else:
        index = {"_class_name": "Dream3DPixelPipeline", **components}
    from diffusers import __version__ as diffusers_version

    index["_diffusers_version"] = diffusers_version
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    if camera:
        from dream3d.prior.camera import CAMERA_FOLDER, CameraTokens

        tokens = CameraTokens(hidden, tokens=4, hidden=32)
        torch.nn.init.normal_(tokens.mlp[-1].weight, std=0.5)
        tokens.save(folder / CAMERA_FOLDER)
    return folder


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Write a tiny random diffusers prior (plumbing checks only: it samples noise).")
    ap.add_argument("folder")
    ap.add_argument("--pixel", action="store_true", help="pixel-space prior (no vae)")
    a = ap.parse_args()
    print(build_tiny_prior(a.folder, latent=not a.pixel))
