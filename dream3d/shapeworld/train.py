"""Train the shape-world prior: a small Stable-Diffusion-shaped text-to-image model, from scratch, on CPU.

Stages (each resumable, each logging its losses to ``<out>/training/<stage>.csv``):

1. **data**: rendered captioned views (:mod:`dream3d.shapeworld.data`), cached in ``cache``;
2. **tokenizer**: a CLIP BPE tokenizer over the caption words (:mod:`dream3d.shapeworld.tokenizer`);
3. **vae**: a diffusers ``AutoencoderKL`` with f=4 (64 px -> 16x16x4), L1 + L2 + image-gradient (edge) loss +
   a small KL; afterwards ``scaling_factor = 1 / std(latents)`` is written into its config, like SD;
4. **unet**: a transformers ``CLIPTextModel`` trained from scratch jointly with a diffusers
   ``UNet2DConditionModel`` (cross-attention) on the scaled VAE latents: epsilon prediction, SD's
   scaled-linear DDPM schedule (1000 steps; works with DDIM / DPM-Solver), 10% caption dropout for
   classifier-free guidance, optional min-SNR loss weights, AdamW, warm-up + cosine learning rate, optional EMA;
5. **classifier**: the evaluation CNN (:mod:`dream3d.shapeworld.classifier`), saved in ``<out>/classifier``;
6. **save**: the pipeline in the Stable Diffusion layout (``model_index.json``, ``unet/``, ``vae/``,
   ``text_encoder/``, ``tokenizer/``, ``scheduler/``; safetensors in ``save_dtype``) that plain
   ``StableDiffusionPipeline.from_pretrained(out)`` and :func:`dream3d.prior.load_prior` both load.

Checkpoints (model, optimizer, EMA, step, RNG states) go to ``<out>/training/<stage>.pt`` every
``checkpoint_every`` steps and at the end of the stage; with ``resume=True`` each stage continues from its
checkpoint (a finished stage is skipped), otherwise it starts over. Every random draw comes from generators
seeded by ``seed``, so a fresh run with the same seed on the same machine repeats itself, and a resumed run
continues as the uninterrupted one would have.

This module runs the stages in order (:func:`train`) and times one step of each (:func:`probe`). The stages
are :mod:`dream3d.shapeworld.pipeline` (3, 4 and 6) and :mod:`dream3d.shapeworld.classifier` (5), each on the
shared step loop of :mod:`dream3d.shapeworld.trainer`; the configuration and its presets are
:mod:`dream3d.shapeworld.config`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from dream3d.io import write_json
from dream3d.shapeworld.classifier import ShapeClassifier, class_table, classifier_losses, train_classifier
from dream3d.shapeworld.config import TrainConfig, config_to_dict
from dream3d.shapeworld.data import load_splits, render_dataset
from dream3d.shapeworld.pipeline import (
    build_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
    encode_dataset,
    folder_size_mb,
    latent_scaling_factor,
    replace_components,
    save_pipeline,
    train_text_unet,
    train_vae,
    vae_losses,
)
from dream3d.shapeworld.tokenizer import build_tokenizer
from dream3d.shapeworld.trainer import Log, autocast, count_parameters

# --------------------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, resume: bool = False, log: Log = print) -> dict:
    """Run every stage (see the module docstring). Returns a summary (timings, sizes, accuracy), also
    written to ``<out>/training/summary.json``."""
    previous_threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, resume, log)
    finally:
        torch.set_num_threads(previous_threads)


def _start(cfg: TrainConfig, log: Log):
    """The run's config written, the rendered splits loaded (or rendered): (timings, train split, test split)."""
    write_json(cfg.train_dir / "config.json", config_to_dict(cfg))
    t = time.perf_counter()
    train_data, test_data = load_splits(cfg.cache, cfg.n_train, cfg.n_test, cfg.seed, cfg.render, log)
    return {"data": time.perf_counter() - t}, train_data, test_data


def _finish(cfg: TrainConfig, timings: dict[str, float], summary: dict, log: Log) -> dict:
    """Checkpoints removed unless kept; the summary (timings, weights, ``summary``'s figures) written and logged."""
    out = Path(cfg.out)
    if not cfg.keep_checkpoints:
        for ckpt in cfg.train_dir.glob("*.pt"):
            ckpt.unlink()
    summary = {"seconds": {k: round(v, 1) for k, v in timings.items()},
               "total_minutes": round(sum(timings.values()) / 60, 1), **summary,
               "weights_mb": round(folder_size_mb(out), 2), "seed": cfg.seed, "threads": torch.get_num_threads()}
    write_json(cfg.train_dir / "summary.json", summary)
    log(f"saved {out} ({summary['weights_mb']} MB of weights) in {summary['total_minutes']} min")
    return summary


def _train(cfg: TrainConfig, resume: bool, log: Log) -> dict:
    if cfg.camera.base:
        return _train_camera(cfg, resume, log)
    out = Path(cfg.out)
    timings, train_data, test_data = _start(cfg, log)

    t = time.perf_counter()
    tokenizer = build_tokenizer(out / "tokenizer", train_data.captions, max_length=cfg.text.max_length)
    timings["tokenizer"] = time.perf_counter() - t

    t = time.perf_counter()
    vae = train_vae(cfg, train_data, resume, log)
    latents = encode_dataset(vae, train_data)
    scaling_factor = latent_scaling_factor(*latents, torch.Generator().manual_seed(cfg.seed + 13))
    vae.register_to_config(scaling_factor=scaling_factor)
    log(f"vae: latent scaling_factor {scaling_factor:.4f}")
    timings["vae"] = time.perf_counter() - t

    t = time.perf_counter()
    caption_ids = torch.from_numpy(train_data.caption_ids)
    text_encoder, unet = train_text_unet(cfg, latents, scaling_factor, caption_ids, train_data.captions,
                                         tokenizer, resume, log)
    timings["unet"] = time.perf_counter() - t

    t = time.perf_counter()
    accuracy = train_classifier(cfg, train_data, test_data, out / "classifier", resume, log)
    timings["classifier"] = time.perf_counter() - t

    t = time.perf_counter()
    save_pipeline(out, vae, text_encoder, tokenizer, unet, build_scheduler(), cfg.save_dtype)
    timings["save"] = time.perf_counter() - t
    return _finish(cfg, timings, {
        "parameters": {"vae": count_parameters(vae), "text_encoder": count_parameters(text_encoder),
                       "unet": count_parameters(unet)},
        "scaling_factor": scaling_factor, "classifier_accuracy": accuracy}, log)


def _train_camera(cfg: TrainConfig, resume: bool, log: Log) -> dict:
    """The ``camera`` preset: the base prior's UNet fine-tuned with a camera input (stage 4b; a base that is itself
    a camera prior is trained further, its camera tokens included), saved with the camera tokens in
    ``camera_encoder/``; every other component of the base is copied unchanged (the model card is
    not: it describes the base)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from dream3d.prior.camera import CAMERA_FOLDER, CameraTokens
    from dream3d.shapeworld.catalogue import catalogue
    from dream3d.shapeworld.pipeline import train_camera_unet

    base, out = Path(cfg.camera.base), Path(cfg.out)
    if base.resolve() == out.resolve():
        raise ValueError(f"camera prior: out ({out}) must differ from its base ({base})")
    if not (base / "model_index.json").is_file():
        raise ValueError(f"camera prior: base {base} is not a pipeline folder (no model_index.json)")
    timings, train_data, _ = _start(cfg, log)

    t = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(base / "tokenizer"))
    text_encoder = CLIPTextModel.from_pretrained(str(base / "text_encoder")).float().eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(str(base / "vae")).float().eval().requires_grad_(False)
    base_unet = UNet2DConditionModel.from_pretrained(str(base / "unet")).float()
    latents = encode_dataset(vae, train_data)
    scaling_factor = float(vae.config.scaling_factor)
    timings["encode"] = time.perf_counter() - t
    log(f"camera prior: base {base}, latents of {len(train_data)} images encoded, scaling_factor {scaling_factor:.4f}")

    t = time.perf_counter()
    objects = catalogue()
    # a camera prior as the base is trained further: its camera tokens go on learning instead of fresh ones
    base_camera = CameraTokens.load(base / CAMERA_FOLDER) if (base / CAMERA_FOLDER).is_dir() else None
    unet, camera = train_camera_unet(cfg, base_unet, text_encoder, tokenizer, latents, scaling_factor, train_data,
                                     [o.caption for o in objects], [o.has_front for o in objects], resume, log,
                                     base_camera)
    timings["unet"] = time.perf_counter() - t

    t = time.perf_counter()
    # the whole folder is staged beside ``out`` and moved in component by component, model_index.json last, so an
    # interrupted save never leaves a folder that loads as something else (a text prior, an old camera encoder)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        save_pipeline(staging, vae, text_encoder, tokenizer, unet, build_scheduler(), cfg.save_dtype)
        for extra in ("vae", "text_encoder", "tokenizer", "scheduler", "classifier", "dream3d.yaml"):
            source, target = base / extra, staging / extra  # the base's own files: byte-identical components
            if source.is_dir():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target)
            elif source.is_file():
                shutil.copy2(source, target)
        camera.save(staging / CAMERA_FOLDER)
        (out / "model_index.json").unlink(missing_ok=True)  # the old folder stops loading before it changes
        replace_components(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    timings["save"] = time.perf_counter() - t
    return _finish(cfg, timings, {
        "parameters": {"unet": count_parameters(unet), "camera_tokens": count_parameters(camera)}, "base": str(base)},
        log)


# --------------------------------------------------------------------------------------------------------------
# Timing probe
# --------------------------------------------------------------------------------------------------------------


def _seconds_per_step(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up (allocations, oneDNN kernel selection)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def probe(cfg: TrainConfig, repeats: int = 3, render_images: int = 580, log: Log = print) -> dict:
    """Measure rendering (images/s) and seconds per step of each stage at ``cfg``'s sizes and batches (random
    inputs, nothing saved), and estimate the run's minutes. Sizes (parameters, fp16/fp32 MB) included."""
    previous_threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _probe(cfg, repeats, render_images, log)
    finally:
        torch.set_num_threads(previous_threads)


def _probe(cfg: TrainConfig, repeats: int, render_images: int, log: Log) -> dict:
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    render_dataset(render_images, 0, cfg.render)
    render_rate = render_images / (time.perf_counter() - start)

    size = cfg.render.size
    vae = build_vae(cfg.vae, size)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    crop = cfg.vae.crop if 0 < cfg.vae.crop < size else size
    x = torch.rand(cfg.vae.batch, 3, crop, crop) * 2 - 1

    def vae_step() -> None:
        losses = vae_losses(vae, x, cfg.vae, gen, cfg.bf16)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()

    vae_s = _seconds_per_step(vae_step, repeats)
    vae.eval()
    with torch.no_grad():
        start = time.perf_counter()
        vae.encode(torch.rand(256, 3, size, size) * 2 - 1)
        encode_rate = 256 / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(tmp, max_length=cfg.text.max_length)
    text_encoder = build_text_encoder(cfg.text, tokenizer)
    factor = 2 ** (len(cfg.vae.block_out_channels) - 1)
    unet = build_unet(cfg.unet, size // factor, cfg.vae.latent_channels, cfg.text.hidden_size)
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    B = cfg.unet.batch
    z = torch.randn(B, cfg.vae.latent_channels, size // factor, size // factor)
    ids = torch.randint(0, len(tokenizer), (B, cfg.text.max_length), generator=gen)
    t = torch.randint(0, 1000, (B,), generator=gen)

    def unet_step() -> None:
        with autocast(cfg.bf16):
            pred = unet(z, t, text_encoder(ids)[0]).sample.float()
        loss = ((pred - z) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    unet_s = _seconds_per_step(unet_step, repeats)
    clf = ShapeClassifier(cfg.classifier.widths, cfg.classifier.image_size, class_table())
    copt = torch.optim.AdamW(clf.parameters(), lr=1e-4)
    cx = torch.rand(cfg.classifier.batch, 3, cfg.classifier.image_size, cfg.classifier.image_size) * 2 - 1
    entry = torch.randint(0, len(clf.classes["entries"]), (cfg.classifier.batch,), generator=gen)
    view = torch.randint(0, 4, (cfg.classifier.batch,), generator=gen)

    def classifier_step() -> None:
        loss = classifier_losses(clf, cx, entry, view, cfg.classifier.view_weight)["loss"]
        copt.zero_grad()
        loss.backward()
        copt.step()

    clf_s = _seconds_per_step(classifier_step, repeats)
    params_count = {"vae": count_parameters(vae), "text_encoder": count_parameters(text_encoder),
                    "unet": count_parameters(unet), "classifier": count_parameters(clf)}
    image_models = params_count["vae"] + params_count["unet"]  # saved in save_dtype; the text encoder in fp32
    minutes = {
        "data": (cfg.n_train + cfg.n_test) / render_rate / 60,
        "vae": cfg.vae.steps * vae_s / 60 + cfg.n_train / encode_rate / 60,
        "unet": cfg.unet.steps * unet_s / 60, "classifier": cfg.classifier.steps * clf_s / 60,
    }
    result = {
        "threads": torch.get_num_threads(), "bf16": cfg.bf16, "render_images_per_s": round(render_rate, 1),
        "vae_s_per_step": round(vae_s, 3), "vae_encode_images_per_s": round(encode_rate, 1),
        "unet_s_per_step": round(unet_s, 3),
        "classifier_s_per_step": round(clf_s, 3), "parameters": params_count,
        "saved_mb": round(((2 if cfg.save_dtype == "fp16" else 4) * image_models
                           + 4 * (params_count["text_encoder"] + params_count["classifier"])) / 1e6, 1),
        "minutes": {k: round(v, 1) for k, v in minutes.items()},
        "total_minutes": round(sum(minutes.values()), 1),
    }
    log(json.dumps(result, indent=2))
    return result
