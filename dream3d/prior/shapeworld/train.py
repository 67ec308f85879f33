"""Train the shape-world prior: a small Stable-Diffusion-shaped text-to-image model, from scratch, on CPU.

Stages (each resumable, each logging its losses to ``<out>/training/<stage>.csv``):

1. **data**: rendered captioned views (:mod:`dream3d.prior.shapeworld.data`), cached in ``cache``;
2. **tokenizer**: a CLIP BPE tokenizer over the caption words (:mod:`dream3d.prior.shapeworld.tokenizer`);
3. **vae**: a diffusers ``AutoencoderKL`` with f=4 (64 px -> 16x16x4), L1 + L2 + image-gradient (edge) loss +
   a small KL; afterwards ``scaling_factor = 1 / std(latents)`` is written into its config, like SD;
4. **unet**: a transformers ``CLIPTextModel`` trained from scratch jointly with a diffusers
   ``UNet2DConditionModel`` (cross-attention) on the scaled VAE latents: epsilon prediction, SD's
   scaled-linear DDPM schedule (1000 steps; works with DDIM / DPM-Solver), 10% caption dropout for
   classifier-free guidance, optional min-SNR loss weights, AdamW, warm-up + cosine learning rate, optional EMA;
5. **classifier**: the evaluation CNN (:mod:`dream3d.prior.shapeworld.classifier`), saved in ``<out>/classifier``;
6. **save**: the pipeline in the Stable Diffusion layout (``model_index.json``, ``unet/``, ``vae/``,
   ``text_encoder/``, ``tokenizer/``, ``scheduler/``; safetensors in ``save_dtype``) that plain
   ``StableDiffusionPipeline.from_pretrained(out)`` and :func:`dream3d.prior.load_prior` both load.

Checkpoints (model, optimizer, EMA, step, RNG states) go to ``<out>/training/<stage>.pt`` every
``checkpoint_every`` steps and at the end of the stage; with ``resume=True`` each stage continues from its
checkpoint (a finished stage is skipped), otherwise it starts over. Every random draw comes from generators
seeded by ``seed``, so a fresh run with the same seed on the same machine repeats itself, and a resumed run
continues as the uninterrupted one would have.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from dream3d.prior.shapeworld.data import RenderConfig, ShapeDataset, load_splits

Log = Callable[[str], None]
TRAIN_DIR = "training"  # inside ``out``: checkpoints, loss CSVs, the resolved config


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------


@dataclass
class VAEConfig:
    """AutoencoderKL with f = 2 ** (len(block_out_channels) - 1) and its training."""

    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    steps: int = 1500
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 100
    kl_weight: float = 2e-5  # times the KL per latent element (reconstruction terms are means per pixel value)
    l2_weight: float = 1.0
    edge_weight: float = 0.5  # L1 between image gradients (finite differences) of input and reconstruction
    crop: int = 32  # train on random crops of this many pixels (the VAE is convolutional; 4x cheaper); 0: whole


@dataclass
class TextConfig:
    """CLIPTextModel trained from scratch (cross_attention_dim of the UNet = hidden_size)."""

    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    max_length: int = 24  # tokens per prompt, BOS and EOS included (the tokenizer's model_max_length)


@dataclass
class UNetConfig:
    """UNet2DConditionModel on the VAE latents and its (joint with the text encoder) training."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    layers_per_block: int = 1
    down_block_types: list[str] = field(
        default_factory=lambda: ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"])
    up_block_types: list[str] = field(
        default_factory=lambda: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])
    attention_heads: int = 4  # per attention layer (diffusers' legacy ``attention_head_dim`` argument means this)
    norm_num_groups: int = 16
    steps: int = 4800
    batch: int = 64
    lr: float = 8e-4
    warmup: int = 200
    weight_decay: float = 0.01
    cfg_dropout: float = 0.1  # probability of training on the empty prompt (classifier-free guidance)
    snr_gamma: float = 5.0  # min-SNR-gamma loss weights; 0 disables
    ema_decay: float = 0.999  # 0 disables EMA
    grad_clip: float = 1.0


@dataclass
class ClassifierConfig:
    """The evaluation CNN and its training (see :mod:`dream3d.prior.shapeworld.classifier`)."""

    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    image_size: int = 48
    steps: int = 1200
    batch: int = 128
    lr: float = 2e-3
    view_weight: float = 0.5  # weight of the view head's loss (objects with a front only)


@dataclass
class TrainConfig:
    """Everything one training run depends on."""

    out: str = "assets/priors/shapeworld"
    cache: str = ".cache/shapeworld"
    seed: int = 0
    n_train: int = 29000  # rendered training views (500 per object)
    n_test: int = 2900  # held-out views (other seed) for the classifier's accuracy
    render: RenderConfig = field(default_factory=RenderConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    bf16: bool = False  # bf16 autocast for the UNet and VAE (a win only on CPUs with native bf16)
    threads: int = 0  # torch threads during the run (restored after); 0 leaves torch's default (all cores)
    checkpoint_every: int = 250
    log_every: int = 25
    save_dtype: str = "fp16"  # fp16 | fp32: weights of the saved pipeline
    keep_checkpoints: bool = False  # False: delete the .pt checkpoints once the pipeline is saved

    @property
    def train_dir(self) -> Path:
        return Path(self.out) / TRAIN_DIR


def preset(name: str, **overrides: Any) -> TrainConfig:
    """``full`` (the shipped prior: about 1.5 to 2 hours on 2 idle CPU cores, see :func:`probe`) or ``smoke``
    (tiny sizes, well under a minute).

    ``overrides`` set top-level fields (``out=``, ``seed=``, ...).
    """
    if name == "full":
        cfg = TrainConfig()
    elif name == "smoke":
        cfg = TrainConfig(
            n_train=232, n_test=116, checkpoint_every=10, log_every=5, threads=1,
            vae=VAEConfig(block_out_channels=[8, 16, 16], norm_num_groups=4, steps=8, batch=16, warmup=2, crop=32),
            text=TextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=16),
            unet=UNetConfig(block_out_channels=[16, 32, 32], attention_heads=2, norm_num_groups=8, steps=8,
                            batch=16, warmup=2),
            classifier=ClassifierConfig(widths=[8, 16, 16, 16], image_size=32, steps=8, batch=32),
        )
    else:
        raise ValueError(f"unknown preset {name!r}; expected full or smoke")
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"unknown TrainConfig field {key!r}")
        setattr(cfg, key, value)
    return cfg


_TRAINING_FIELDS = {"steps", "batch", "lr", "warmup", "weight_decay", "cfg_dropout", "snr_gamma", "ema_decay",
                    "grad_clip", "kl_weight", "l2_weight", "edge_weight", "view_weight", "crop"}


def architecture(stage_cfg: Any) -> dict:
    """The model-shape fields of a stage config (what a checkpoint must match to be resumed)."""
    return {k: v for k, v in asdict(stage_cfg).items() if k not in _TRAINING_FIELDS}


def config_to_dict(cfg: Any) -> dict:
    return asdict(cfg)


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


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------------------------
# Checkpoints, logs, schedules
# --------------------------------------------------------------------------------------------------------------


def lr_at(step: int, steps: int, base: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor * base`` at ``steps``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LossLog:
    """Rows of (step, named values) appended to a CSV; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, columns: list[str], resume_step: Optional[int]):
        self.path, self.columns = path, ["step", *columns]
        path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[list[str]] = []
        if resume_step is not None and path.is_file():
            with path.open() as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header == self.columns:
                    rows = [r for r in reader if r and int(r[0]) <= resume_step]
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([self.columns, *rows])

    def append(self, step: int, values: dict[str, float]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([step, *(f"{values[c]:.6g}" for c in self.columns[1:])])


class EMA:
    """Exponential moving average of parameters, decay warmed up as min(decay, (1 + n) / (10 + n))."""

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        self.decay = decay
        self.shadow = {k: {n: p.detach().clone() for n, p in m.named_parameters()} for k, m in modules.items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module]) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, module in modules.items():
            for name, p in module.named_parameters():
                self.shadow[key][name].lerp_(p.detach(), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, modules: dict[str, nn.Module]) -> None:
        for key, module in modules.items():
            for name, p in module.named_parameters():
                p.copy_(self.shadow[key][name])

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.shadow, self.updates, self.decay = state["shadow"], state["updates"], state["decay"]


class StageRunner:
    """The step loop every stage shares: resume, learning rate, logging, checkpoints, timing.

    ``step_fn(step) -> dict of losses`` does one optimisation step (the runner sets the learning rate first).
    The checkpoint holds the modules, optimizer, EMA, step, the stage generator's and torch's RNG states and
    ``signature`` (the stage's config: resuming with another one is an error).
    """

    def __init__(
        self, name: str, cfg: TrainConfig, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
        gen: torch.Generator, steps: int, lr: float, warmup: int, signature: dict, resume: bool, log: Log,
        ema: Optional[EMA] = None,
    ):
        self.name, self.cfg, self.modules, self.optimizer, self.gen = name, cfg, modules, optimizer, gen
        self.steps, self.lr, self.warmup, self.signature, self.log, self.ema = steps, lr, warmup, signature, log, ema
        self.path = cfg.train_dir / f"{name}.pt"
        self.start = self._load() if resume and self.path.is_file() else 0

    def _load(self) -> int:
        state = torch.load(self.path, map_location="cpu", weights_only=True)  # tensors and plain data only
        if state["signature"] != self.signature:
            raise ValueError(f"{self.path}: checkpoint was made with another {self.name} config; "
                             "run without resume to start over")
        for key, module in self.modules.items():
            module.load_state_dict(state["modules"][key])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        self.log(f"{self.name}: resumed at step {state['step']}/{self.steps} from {self.path}")
        return int(state["step"])

    def save(self, step: int) -> None:
        _atomic_torch_save({
            "step": step, "signature": self.signature,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
            "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
        }, self.path)

    def run(self, step_fn: Callable[[int], dict[str, float]], columns: list[str]) -> int:
        """Run the remaining steps. Returns the number of steps run in this call."""
        csv_log = LossLog(self.cfg.train_dir / f"{self.name}.csv", [*columns, "lr", "seconds"],
                          self.start if self.start else None)
        if self.start >= self.steps:
            self.log(f"{self.name}: already trained ({self.start} steps)")
            return 0
        for m in self.modules.values():
            m.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {c: 0.0 for c in columns}
        count = 0
        for step in range(self.start, self.steps):
            lr = lr_at(step, self.steps, self.lr, self.warmup)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            losses = step_fn(step)
            if self.ema is not None:
                self.ema.update(self.modules)
            elapsed = time.perf_counter() - t0
            csv_log.append(step + 1, {**losses, "lr": lr, "seconds": elapsed})
            for c in columns:
                sums[c] += losses[c]
            count += 1
            done = step + 1
            if done % self.cfg.checkpoint_every == 0 or done == self.steps:
                self.save(done)
            if done % self.cfg.log_every == 0 or done == self.steps:
                per_step = elapsed / (done - self.start)
                mean = "  ".join(f"{c} {sums[c] / count:.4f}" for c in columns)
                self.log(f"{self.name}: step {done}/{self.steps}  {mean}  lr {lr:.2e}  "
                         f"{per_step:.2f} s/step  eta {per_step * (self.steps - done) / 60:.1f} min")
                sums, count = {c: 0.0 for c in columns}, 0
        return self.steps - self.start


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


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
    with _autocast(bf16):
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
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scaling_factor
        drop = torch.rand(B, generator=gen) < cfg.unet.cfg_dropout
        ids = table[torch.where(drop, empty, caption_ids[idx])]
        t = torch.randint(0, T, (B,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        zt = scheduler.add_noise(z0, noise, t)
        with _autocast(cfg.bf16):
            text = text_encoder(ids)[0]
            pred = unet(zt, t, text).sample.float()
        per_sample = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(alphas_cumprod, t, cfg.unet.snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.unet.grad_clip)
        opt.step()
        return {"loss": loss.item(), "mse": per_sample.mean().item(), "grad_norm": grad_norm.item()}

    runner.run(step, ["loss", "mse", "grad_norm"])
    if ema is not None:
        ema.copy_to(modules)
    return text_encoder.eval().requires_grad_(False), unet.eval().requires_grad_(False)


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
        for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json"):  # the index last
            target = folder / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def folder_size_mb(folder: str | Path, pattern: str = "*.safetensors") -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob(pattern)) / 1e6


# --------------------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


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


def _train(cfg: TrainConfig, resume: bool, log: Log) -> dict:
    from dream3d.prior.shapeworld.classifier import train_classifier
    from dream3d.prior.shapeworld.tokenizer import build_tokenizer

    out = Path(cfg.out)
    timings: dict[str, float] = {}
    _write_json(cfg.train_dir / "config.json", config_to_dict(cfg))
    t = time.perf_counter()
    train_data, test_data = load_splits(cfg.cache, cfg.n_train, cfg.n_test, cfg.seed, cfg.render, log)
    timings["data"] = time.perf_counter() - t

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
    if not cfg.keep_checkpoints:
        for ckpt in cfg.train_dir.glob("*.pt"):
            ckpt.unlink()
    summary = {
        "seconds": {k: round(v, 1) for k, v in timings.items()}, "total_minutes": round(sum(timings.values()) / 60, 1),
        "parameters": {"vae": count_parameters(vae), "text_encoder": count_parameters(text_encoder),
                       "unet": count_parameters(unet)},
        "weights_mb": round(folder_size_mb(out), 2), "scaling_factor": scaling_factor,
        "classifier_accuracy": accuracy, "seed": cfg.seed, "threads": torch.get_num_threads(),
    }
    _write_json(cfg.train_dir / "summary.json", summary)
    log(f"saved {out} ({summary['weights_mb']} MB of weights) in {summary['total_minutes']} min")
    return summary


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
    from dream3d.prior.shapeworld.classifier import ShapeClassifier, class_table, classifier_losses
    from dream3d.prior.shapeworld.data import render_dataset
    from dream3d.prior.shapeworld.tokenizer import build_tokenizer

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
        with _autocast(cfg.bf16):
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
