#!/usr/bin/env python
"""Per-step time and peak GPU memory of dream3d's stages with a Stable Diffusion-sized prior (random weights).

    python scripts/sd_step.py --device cuda [--iters 5] [--json sd_step.json]     # the measurement (GPU)
    python scripts/sd_step.py --device cpu --tiny --dtype fp32 --iters 1          # the same code, tiny (a test)

Weights do not change the cost of a step, so the prior is built here from configs written below, with Stable
Diffusion 2.1's architecture and random weights: the UNet (``UNet2DConditionModel``: blocks 320/640/1280/1280,
two layers each, cross-attention 1024 wide, head dims 5/10/20/20, linear projections), the VAE (``AutoencoderKL``:
128/256/512/512, 4 latent channels, f=8) and the text encoder (OpenCLIP ViT-H's text tower as a ``CLIPTextModel``:
1024 wide, 16 heads, 23 layers, the penultimate layer SD 2 reads). ``--sample-size 64`` (the default) is
2.1-base, the 512 px model threestudio's recipes use; 96 is the 768 px 2.1 (otherwise the same weights' shapes).
The folder is saved in the diffusers layout (fp16 weights) and loaded back by :func:`dream3d.prior.load_prior`,
so the step that runs is dream3d's own: the stage systems' ``training_step``, backward and optimiser step.

Stages, at threestudio's published render sizes (batch 1, fp16 prior, latent-space SDS as threestudio):

* ``dreamfusion``: NeRF rendered at 64 px, upsampled to the prior's 512, VAE encoder, UNet with CFG, SDS;
* ``magic3d-fine``: the DMTet mesh rendered at 512 px, VAE encoder, UNet, SDS (guidance scale as the recipe);
* ``prolificdreamer``: NeRF at 64 px with VSD: the frozen UNet with CFG and the LoRA UNet, its loss too.

For each: median milliseconds of the whole step and its split (render, guidance, backward, optimizer), and the
peak GPU memory of the step (``torch.cuda.max_memory_allocated`` after a reset, the prior's weights included).
Writes a table to stdout and, with ``--json``, the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tiny_prior's character tokenizer


def sd21_configs(sample_size: int = 64, tiny: bool = False) -> dict[str, dict]:
    """Keyword arguments of the UNet, VAE and text encoder of Stable Diffusion 2.1 (``tiny``: the same blocks,
    narrow and shallow, for a CPU check of this script)."""
    unet = dict(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=[320, 640, 1280, 1280],
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True,
        upcast_attention=sample_size == 96, norm_num_groups=32, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
    )
    vae = dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=sample_size * 8,
        block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32, act_fn="silu",
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, scaling_factor=0.18215,
    )
    text = dict(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=512, layer_norm_eps=1e-5,
    )
    if tiny:  # 64 px images, 8 px latents
        unet.update(sample_size=8, block_out_channels=[32, 32, 64, 64], layers_per_block=1, cross_attention_dim=32,
                    attention_head_dim=[2, 2, 4, 4], norm_num_groups=8)
        vae.update(sample_size=64, block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4)
        text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    return {"unet": unet, "vae": vae, "text_encoder": text}


def build_prior(folder: Path, sample_size: int = 64, tiny: bool = False) -> Path:
    """Save a random prior of SD 2.1's architecture in the diffusers layout (fp16 weights unless ``tiny``)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers import __version__ as diffusers_version
    from tiny_prior import write_char_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = sd21_configs(sample_size, tiny)
    n_tokens = write_char_tokenizer(folder / "tokenizer")  # a character tokenizer: ids below SD's vocabulary
    dtype = torch.float32 if tiny else torch.float16
    text = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"], bos_token_id=n_tokens - 2, eos_token_id=n_tokens - 1,
                                        pad_token_id=n_tokens - 1))
    text.to(dtype).save_pretrained(folder / "text_encoder")
    del text
    UNet2DConditionModel(**cfg["unet"]).to(dtype).save_pretrained(folder / "unet")
    AutoencoderKL(**cfg["vae"]).to(dtype).save_pretrained(folder / "vae")
    DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  prediction_type="epsilon", clip_sample=False, steps_offset=1).save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers_version,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def stage_settings(name: str, tiny: bool) -> tuple[list[str], str]:
    """(recipe overrides, stage name) of one measured stage at threestudio's render sizes (``tiny``: a CPU check)."""
    nerf_px, mesh_px = (16, 32) if tiny else (64, 512)
    if name == "dreamfusion":
        return ["recipe=dreamfusion", f"stages.coarse.camera.height={nerf_px}", f"stages.coarse.camera.width={nerf_px}",
                "stages.coarse.camera.batch_size=1", "stages.coarse.guidance.space=latent"], "coarse"
    if name == "magic3d-fine":
        return ["recipe=magic3d", f"stages.fine.camera.height={mesh_px}", f"stages.fine.camera.width={mesh_px}",
                "stages.fine.camera.batch_size=1", "stages.fine.guidance.space=latent"], "fine"
    if name == "prolificdreamer":
        return ["recipe=prolificdreamer", f"stages.coarse.camera.height={nerf_px}",
                f"stages.coarse.camera.width={nerf_px}", "stages.coarse.camera.batch_size=1"], "coarse"
    raise ValueError(f"stage: expected dreamfusion, magic3d-fine or prolificdreamer, got '{name}'")


STAGES = ("dreamfusion", "magic3d-fine", "prolificdreamer")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, prior, prior_path: str, device: torch.device, dtype: str, iters: int, warmup: int,
            tiny: bool) -> dict:
    """Median step time (ms, split) and peak GPU memory (MiB) of one stage's training step on ``device``."""
    from dream3d.config import load_config
    from dream3d.registry import SYSTEMS, resolve

    overrides, stage = stage_settings(name, tiny)
    cfg = load_config(["prompt=a pineapple", f"prior={prior_path}", f"device={device.type}", f"prior_dtype={dtype}",
                       "export=false", *overrides])
    st = cfg.stages[stage]
    torch.manual_seed(0)
    system = resolve(SYSTEMS, st.system, "system")(cfg, stage, st, prior, None).to(device)
    opt = system.configure_optimizers()
    opt = opt[0][0] if isinstance(opt, tuple) else opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rows = []
    for i in range(warmup + iters):
        system.manual_step = 1000 + i  # past the warm-ups (albedo-only shading), as mid-run
        system.timings = {}
        _sync(device)
        t0 = time.perf_counter()
        loss = system.training_step(None, i)
        _sync(device)
        t1 = time.perf_counter()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        t3 = time.perf_counter()
        if not torch.isfinite(loss.detach()).all():
            raise RuntimeError(f"{name}: non-finite loss at step {i}")
        if i >= warmup:
            rows.append({**system.timings, "backward": (t2 - t1) * 1000, "optimizer": (t3 - t2) * 1000,
                         "total": (t3 - t0) * 1000})
    system.timings = None
    keys = ["render", "guidance", "backward", "optimizer", "total"]
    out = {f"{k}_ms": round(statistics.median([r.get(k, 0.0) for r in rows]), 2) for k in keys}
    out.update(render_px=st.camera.height, prior_px=prior.image_size, guidance=st.guidance.name,
               guidance_scale=st.guidance.guidance_scale, iters=iters)
    out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None
    del system, opt
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help="the prior's dtype")
    ap.add_argument("--sample-size", type=int, default=64, choices=[64, 96], help="64: SD 2.1-base (512 px); 96: 2.1")
    ap.add_argument("--tiny", action="store_true", help="narrow, shallow models and small renders (a CPU check)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    ap.add_argument("--prior-dir", default=None, help="where the random prior is written (default: a temp folder)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("sd_step: --device cuda: no CUDA device is available here", file=sys.stderr)
        return 2
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    for s in stages:
        stage_settings(s, args.tiny)  # an unknown name fails here, before minutes of building
    from dream3d.prior import load_prior

    tmp = tempfile.TemporaryDirectory() if args.prior_dir is None else None
    folder = Path(args.prior_dir or tmp.name) / "sd21-random"
    t0 = time.perf_counter()
    build_prior(folder, args.sample_size, args.tiny)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    prior = load_prior(str(folder), device, args.dtype)
    load_s = time.perf_counter() - t0
    counts = {k: sum(p.numel() for p in getattr(prior, k).parameters()) for k in ("unet", "vae", "text_encoder")}
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "dtype": args.dtype, "tiny": args.tiny,
        "architecture": f"Stable Diffusion 2.1{'-base' if args.sample_size == 64 else ''} (random weights)",
        "parameters_m": {k: round(v / 1e6, 1) for k, v in counts.items()},
        "build_s": round(build_s, 1), "load_s": round(load_s, 1), "stages": {},
    }
    print(f"sd_step: prior {result['architecture']}, UNet {counts['unet'] / 1e6:.0f}M, VAE {counts['vae'] / 1e6:.0f}M, "
          f"text {counts['text_encoder'] / 1e6:.0f}M parameters, {args.dtype} on {result['device']}", flush=True)
    for name in stages:
        try:
            result["stages"][name] = measure(name, prior, str(folder), device, args.dtype, args.iters, args.warmup,
                                             args.tiny)
        except torch.cuda.OutOfMemoryError as exc:
            result["stages"][name] = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
        print(f"sd_step: {name}: {json.dumps(result['stages'][name])}", flush=True)
    cols = ["render_ms", "guidance_ms", "backward_ms", "optimizer_ms", "total_ms", "peak_gpu_mib"]
    print("| stage | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in result["stages"].items():
        print(f"| {name} | " + " | ".join(str(row.get(c, row.get("error", ""))) for c in cols) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 1 if any("error" in r for r in result["stages"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
