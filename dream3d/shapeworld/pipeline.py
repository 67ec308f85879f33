"""The Stable Diffusion pipeline of the shape-world prior: its models, their two training stages, its folder.

* models: a diffusers ``AutoencoderKL``, a transformers ``CLIPTextModel`` and a diffusers
  ``UNet2DConditionModel`` built from scratch, and SD's DDPM training schedule;
* stage 3, :func:`train_vae`: L1 + L2 + image-gradient (edge) loss + a small KL on random crops; then
  :func:`latent_scaling_factor` gives SD's ``scaling_factor = 1 / std(latents)``;
* stage 4, :func:`train_text_unet`: the text encoder and the UNet jointly, epsilon prediction with caption
  dropout for classifier-free guidance, optional min-SNR weights and EMA;
* stage 6, :func:`save_pipeline`: the folder in the Stable Diffusion layout.

Both training stages run on :class:`~dream3d.shapeworld.trainer.StageRunner`; :mod:`dream3d.shapeworld.train`
runs them in order.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from dream3d.shapeworld.config import TextConfig, TrainConfig, UNetConfig, VAEConfig, architecture
from dream3d.shapeworld.data import ShapeDataset
from dream3d.shapeworld.trainer import EMA, Log, StageRunner, autocast, count_parameters

# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------


def build_vae(cfg: VAEConfig, image_size: int):
    """A fresh ``AutoencoderKL``: images [B,3,S,S] in [-1,1] <-> latents [B,C,S/f,S/f]."""
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels, sample_size=image_size,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
    )


def build_text_encoder(cfg: TextConfig, tokenizer):
    """A fresh ``CLIPTextModel`` over ``tokenizer``'s vocabulary: ids [B,L] -> last hidden state [B,L,hidden]."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def build_unet(cfg: UNetConfig, latent_size: int, latent_channels: int, cross_attention_dim: int):
    """A fresh ``UNet2DConditionModel``: (latents [B,C,h,w], t [B], text [B,L,D]) -> epsilon [B,C,h,w]."""
    from diffusers import UNet2DConditionModel

    if not (len(cfg.block_out_channels) == len(cfg.down_block_types) == len(cfg.up_block_types)):
        raise ValueError("unet: block_out_channels, down_block_types and up_block_types need the same length")
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        layers_per_block=cfg.layers_per_block, block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=tuple(cfg.down_block_types), up_block_types=tuple(cfg.up_block_types),
        cross_attention_dim=cross_attention_dim, attention_head_dim=cfg.attention_heads,
        norm_num_groups=cfg.norm_num_groups,
    )


def build_scheduler():
    """Stable Diffusion's training schedule: 1000 steps, scaled-linear betas 0.00085..0.012, epsilon."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False, steps_offset=1,
        timestep_spacing="leading",
    )


# --------------------------------------------------------------------------------------------------------------
# Stage 3: VAE
# --------------------------------------------------------------------------------------------------------------


def _edge_l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean L1 distance between horizontal and vertical finite differences of images a, b [B,C,H,W]."""
    dxa, dxb = a[..., :, 1:] - a[..., :, :-1], b[..., :, 1:] - b[..., :, :-1]
    dya, dyb = a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :]
    return 0.5 * ((dxa - dxb).abs().mean() + (dya - dyb).abs().mean())


def random_crops(images: Tensor, crop: int, gen: torch.Generator) -> Tensor:
    """One random ``crop`` x ``crop`` window of each image [B,H,W,C] -> [B,crop,crop,C] (all of it if crop is 0)."""
    size = images.shape[1]
    if crop <= 0 or crop >= size:
        return images
    offsets = torch.randint(0, size - crop + 1, (images.shape[0], 2), generator=gen).tolist()
    return torch.stack([im[y:y + crop, x:x + crop] for im, (y, x) in zip(images, offsets)])


def vae_losses(vae, x: Tensor, cfg: VAEConfig, gen: torch.Generator, bf16: bool) -> dict[str, Tensor]:
    """Losses of one batch x [B,3,H,W] in [-1,1]: l1, l2, edge, kl (per latent element) and their weighted total."""
    with autocast(bf16):
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        rec = vae.decode(z).sample.float()
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    l1, l2, edge = (rec - x).abs().mean(), ((rec - x) ** 2).mean(), _edge_l1(rec, x)
    total = l1 + cfg.l2_weight * l2 + cfg.edge_weight * edge + cfg.kl_weight * kl
    return {"loss": total, "l1": l1, "l2": l2, "edge": edge, "kl": kl}


def train_vae(cfg: TrainConfig, data: ShapeDataset, resume: bool, log: Log):
    """Stage 3. Returns the trained AutoencoderKL (eval mode, scaling_factor not yet set)."""
    torch.manual_seed(cfg.seed + 11)
    vae = build_vae(cfg.vae, data.size)
    log(f"vae: {count_parameters(vae) / 1e6:.2f}M parameters, f={2 ** (len(cfg.vae.block_out_channels) - 1)}")
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 12)
    signature = {"vae": architecture(cfg.vae), "n": len(data), "size": data.size}
    runner = StageRunner("vae", cfg, {"vae": vae}, opt, gen, cfg.vae.steps, cfg.vae.lr, cfg.vae.warmup,
                         signature, resume, log)
    images = torch.from_numpy(data.images)

    def step(_: int) -> dict[str, float]:
        idx = torch.randint(len(data), (cfg.vae.batch,), generator=gen)
        x = random_crops(images[idx], cfg.vae.crop, gen).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        losses = vae_losses(vae, x, cfg.vae, gen, cfg.bf16)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        return {k: v.item() for k, v in losses.items()}

    runner.run(step, ["loss", "l1", "l2", "edge", "kl"])
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(vae, data: ShapeDataset, batch: int = 256) -> tuple[Tensor, Tensor]:
    """Posterior mean and std [N,C,h,w] (float32, unscaled) of every image of ``data``."""
    means, stds = [], []
    for start in range(0, len(data), batch):
        x = data.tensor(torch.arange(start, min(start + batch, len(data)))) * 2.0 - 1.0
        posterior = vae.encode(x).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)


def latent_scaling_factor(mean: Tensor, std: Tensor, gen: torch.Generator, limit: int = 4096) -> float:
    """1 / std of posterior samples (of at most ``limit`` images), as Stable Diffusion's ``scaling_factor``."""
    idx = torch.randperm(mean.shape[0], generator=gen)[:limit]
    z = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
    return float(1.0 / z.std())


# --------------------------------------------------------------------------------------------------------------
# Stage 4: text encoder + UNet
# --------------------------------------------------------------------------------------------------------------


def tokenize(tokenizer, texts: list[str]) -> Tensor:
    """Token ids [N,L] padded to ``model_max_length`` exactly as StableDiffusionPipeline pads prompts."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def min_snr_weights(alphas_cumprod: Tensor, t: Tensor, gamma: float) -> Tensor:
    """Per-sample weights [B] min(SNR, gamma) / SNR of epsilon prediction (1 everywhere when gamma <= 0)."""
    if gamma <= 0:
        return torch.ones(t.shape[0])
    snr = alphas_cumprod[t] / (1.0 - alphas_cumprod[t])
    return snr.clamp(max=gamma) / snr


def latent_sample(mean: Tensor, std: Tensor, idx: Tensor, scaling_factor: float, gen: torch.Generator) -> Tensor:
    """A draw of the VAE posteriors of images ``idx`` (means and stds [N,C,h,w]), scaled like SD's latents."""
    return (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scaling_factor


def epsilon_update(opt, params: list, grad_clip: float, pred: Tensor, noise: Tensor, weights: Tensor) -> dict[str, float]:
    """One optimiser step on the weighted epsilon loss mean_b(w_b * mean((pred_b - noise_b)^2)), gradients clipped
    to ``grad_clip`` over ``params``. Returns the step's loss, unweighted mse and gradient norm."""
    per_sample = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
    loss = (per_sample * weights).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    return {"loss": loss.item(), "mse": per_sample.mean().item(), "grad_norm": grad_norm.item()}


def train_text_unet(
    cfg: TrainConfig, latents: tuple[Tensor, Tensor], scaling_factor: float, caption_ids: Tensor,
    captions: list[str], tokenizer, resume: bool, log: Log,
):
    """Stage 4. latents: posterior (mean, std) [N,C,h,w]; caption_ids [N] index ``captions``.

    Returns (text_encoder, unet), with the EMA weights when ``ema_decay > 0``, in eval mode.
    """
    mean, std = latents
    torch.manual_seed(cfg.seed + 21)
    text_encoder = build_text_encoder(cfg.text, tokenizer)
    unet = build_unet(cfg.unet, mean.shape[-1], mean.shape[1], cfg.text.hidden_size)
    log(f"unet: {count_parameters(unet) / 1e6:.2f}M parameters, text encoder "
        f"{count_parameters(text_encoder) / 1e6:.2f}M, latents {tuple(mean.shape[1:])}")
    scheduler = build_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod.float()
    modules = {"text_encoder": text_encoder, "unet": unet}
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.unet.lr, weight_decay=cfg.unet.weight_decay)
    ema = EMA(modules, cfg.unet.ema_decay) if cfg.unet.ema_decay > 0 else None
    gen = torch.Generator().manual_seed(cfg.seed + 22)
    signature = {"unet": architecture(cfg.unet), "text": architecture(cfg.text), "n": int(mean.shape[0]),
                 "latent": list(mean.shape[1:]), "vocab": len(tokenizer)}
    runner = StageRunner("unet", cfg, modules, opt, gen, cfg.unet.steps, cfg.unet.lr, cfg.unet.warmup,
                         signature, resume, log, ema)
    table = tokenize(tokenizer, [*captions, ""])  # [K+1, L]; the last row is the empty (unconditional) prompt
    empty = len(captions)
    T = scheduler.config.num_train_timesteps

    def step(_: int) -> dict[str, float]:
        B = cfg.unet.batch
        idx = torch.randint(mean.shape[0], (B,), generator=gen)
        z0 = latent_sample(mean, std, idx, scaling_factor, gen)
        drop = torch.rand(B, generator=gen) < cfg.unet.cfg_dropout
        ids = table[torch.where(drop, empty, caption_ids[idx])]
        t = torch.randint(0, T, (B,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        zt = scheduler.add_noise(z0, noise, t)
        with autocast(cfg.bf16):
            text = text_encoder(ids)[0]
            pred = unet(zt, t, text).sample.float()
        return epsilon_update(opt, params, cfg.unet.grad_clip, pred, noise,
                              min_snr_weights(alphas_cumprod, t, cfg.unet.snr_gamma))

    runner.run(step, ["loss", "mse", "grad_norm"])
    if ema is not None:
        ema.copy_to(modules)
    return text_encoder.eval().requires_grad_(False), unet.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------------------
# Stage 4b: camera conditioning (camera tokens, dream3d.prior.camera), fine-tuned from a trained prior
# --------------------------------------------------------------------------------------------------------------


def train_camera_unet(
    cfg: TrainConfig, unet, text_encoder, tokenizer, latents: tuple[Tensor, Tensor], scaling_factor: float,
    data: ShapeDataset, object_captions: list[str], has_front: list[bool], resume: bool, log: Log,
    camera=None,
):
    """Stage 4b (:class:`~dream3d.shapeworld.config.CameraPriorConfig`): a trained prior's UNet learns, with a fresh
    :class:`~dream3d.prior.camera.CameraTokens` (or ``camera``, the tokens of a camera prior trained further), to
    draw the view of a camera; the text encoder stays frozen.
    Returns (unet, camera tokens), with the EMA weights when ``ema_decay > 0``, in eval mode.

    ``object_captions`` and ``has_front`` are per catalogue object (``data.object_ids`` index them). Per sample
    (``front_share`` of them from objects with a front): the camera is kept with probability
    1 - ``camera_dropout`` (else the text prior's own input: no camera tokens); the caption is the bare object
    caption with probability ``bare_caption``, else the captioned view of the dataset (``bare_without_camera``
    false: bare captions only with a camera, as the first shipped camera prior was trained);
    then the usual caption dropout to the empty prompt for classifier-free guidance. Epsilon loss with min-SNR
    weights, as in stage 4.
    """
    from dream3d.cameras import make_cameras
    from dream3d.prior.camera import CameraTokens

    ccfg = cfg.camera
    mean, std = latents
    torch.manual_seed(cfg.seed + 31)
    unet = unet.float()
    if camera is None:
        camera = CameraTokens(int(unet.config.cross_attention_dim), ccfg.tokens, ccfg.hidden)
    elif (camera.tokens, camera.hidden) != (ccfg.tokens, ccfg.hidden):
        raise ValueError(f"camera prior: the base's camera tokens ({camera.tokens} tokens, hidden {camera.hidden}) "
                         f"differ from the settings (tokens {ccfg.tokens}, hidden {ccfg.hidden})")
    camera = camera.float().train().requires_grad_(True)
    log(f"unet_camera: {count_parameters(unet) / 1e6:.2f}M UNet parameters, {count_parameters(camera)} in "
        f"{ccfg.tokens} camera tokens, from {ccfg.base}")
    scheduler = build_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod.float()
    groups = [{"params": list(unet.parameters()), "lr_scale": 1.0},
              {"params": list(camera.parameters()), "lr_scale": ccfg.camera_lr_scale}]
    opt = torch.optim.AdamW(groups, lr=ccfg.lr, weight_decay=ccfg.weight_decay)
    modules = {"unet": unet, "camera": camera}
    ema = EMA(modules, ccfg.ema_decay) if ccfg.ema_decay > 0 else None
    gen = torch.Generator().manual_seed(cfg.seed + 32)
    signature = {"unet": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(unet.config).items()
                          if not k.startswith("_")},
                 "tokens": ccfg.tokens, "hidden": ccfg.hidden, "n": int(mean.shape[0]), "base": ccfg.base}
    runner = StageRunner("unet_camera", cfg, modules, opt, gen, ccfg.steps, ccfg.lr, ccfg.warmup, signature,
                         resume, log, ema)
    n = len(data)
    c2w = make_cameras(torch.from_numpy(data.elevation).float(), torch.from_numpy(data.azimuth).float(),
                       torch.ones(n), torch.from_numpy(data.fovy).float(), data.size, data.size).c2w  # [N,4,4]
    with torch.no_grad():
        texts = tokenize(tokenizer, [*data.captions, *object_captions, ""])
        table = torch.cat([text_encoder(chunk)[0] for chunk in texts.split(256)]).float()  # [K+O+1, L, D]
    bare0, empty = len(data.captions), len(data.captions) + len(object_captions)
    caption_ids = torch.from_numpy(data.caption_ids)
    object_ids = torch.from_numpy(data.object_ids)
    T = scheduler.config.num_train_timesteps
    fronted = torch.tensor([bool(front) for front in has_front])[object_ids].nonzero().squeeze(1)

    def step(_: int) -> dict[str, float]:
        B = ccfg.batch
        idx = torch.randint(n, (B,), generator=gen)
        if len(fronted):
            from_front = torch.rand(B, generator=gen) < ccfg.front_share
            idx = torch.where(from_front, fronted[torch.randint(len(fronted), (B,), generator=gen)], idx)
        z0 = latent_sample(mean, std, idx, scaling_factor, gen)
        keep = torch.rand(B, generator=gen) >= ccfg.camera_dropout
        bare = torch.rand(B, generator=gen) < ccfg.bare_caption
        if not ccfg.bare_without_camera:
            bare = bare & keep
        drop = torch.rand(B, generator=gen) < ccfg.cfg_dropout
        rows = torch.where(bare, bare0 + object_ids[idx], caption_ids[idx])
        rows = torch.where(drop, torch.full_like(rows, empty), rows)
        t = torch.randint(0, T, (B,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        zt = scheduler.add_noise(z0, noise, t)
        with autocast(cfg.bf16):
            context = camera(table[rows], c2w[idx], keep)
            pred = unet(zt, t, context).sample.float()
        return epsilon_update(opt, [p for g in groups for p in g["params"]], ccfg.grad_clip, pred, noise,
                              min_snr_weights(alphas_cumprod, t, ccfg.snr_gamma))

    runner.run(step, ["loss", "mse", "grad_norm"])
    if ema is not None:
        ema.copy_to(modules)
    return unet.eval().requires_grad_(False), camera.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------------------
# Stage 6: save in the Stable Diffusion layout
# --------------------------------------------------------------------------------------------------------------


def save_pipeline(folder: str | Path, vae, text_encoder, tokenizer, unet, scheduler, dtype: str = "fp16") -> Path:
    """Write a ``StableDiffusionPipeline`` folder (no safety checker) with safetensors weights.

    The UNet and VAE are stored in ``dtype`` (fp16 or fp32); the text encoder always in fp32, because
    transformers loads a checkpoint in its stored dtype while diffusers loads fp32 unless told otherwise, and a
    plain ``StableDiffusionPipeline.from_pretrained(folder)`` must give one dtype throughout (the text encoder
    is small). The tokenizer folder also gets CLIP's ``vocab.json`` and ``merges.txt``. The pipeline is saved
    into a temporary sibling folder and its components then moved into ``folder`` one by one, so other
    contents of ``folder`` (``classifier/``, ``training/``, a model card) stay.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    torch_dtype = {"fp16": torch.float16, "fp32": torch.float32}.get(dtype)
    if torch_dtype is None:
        raise ValueError(f"save dtype must be fp16 or fp32, got {dtype!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # casting with .to() warns about modules to keep in fp32: none here
    try:
        pipe = StableDiffusionPipeline(
            vae=copy.deepcopy(vae).to(torch_dtype), unet=copy.deepcopy(unet).to(torch_dtype),
            text_encoder=copy.deepcopy(text_encoder).to(torch.float32), tokenizer=tokenizer, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    finally:
        diffusers_logging.set_verbosity(verbosity)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        tokenizer.backend_tokenizer.model.save(str(tmp / "tokenizer"))  # vocab.json + merges.txt
        replace_components(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def replace_components(source: Path, folder: Path) -> None:
    """Move every entry of ``source`` into ``folder``, replacing what is there, ``model_index.json`` last (a pipeline
    folder loads only once its index is back)."""
    for entry in sorted(Path(source).iterdir(), key=lambda p: p.name == "model_index.json"):
        target = Path(folder) / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)


def folder_size_mb(folder: str | Path, pattern: str = "*.safetensors") -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob(pattern)) / 1e6
