"""Configuration of a shape-world prior training run: the stage configs, :class:`TrainConfig`, the presets.

:func:`preset` gives the shipped prior's configuration (``full``) or a tiny one (``smoke``); :func:`architecture`
is the part of a stage config that a checkpoint must match to be resumed (its model shapes, not its training
schedule). :mod:`dream3d.shapeworld.train` runs a :class:`TrainConfig`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dream3d.shapeworld.data import RenderConfig

TRAIN_DIR = "training"  # inside ``out``: checkpoints, loss CSVs, the resolved config


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
    """The evaluation CNN and its training (see :mod:`dream3d.shapeworld.classifier`)."""

    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    image_size: int = 48
    steps: int = 1200
    batch: int = 128
    lr: float = 2e-3
    view_weight: float = 0.5  # weight of the view head's loss (objects with a front only)


@dataclass
class CameraPriorConfig:
    """Camera conditioning (MVDream's idea, one view at a time) added to a trained prior by fine-tuning its UNet.

    ``base``: the pipeline folder to start from; empty means a from-scratch run without a camera. The base's
    tokenizer, text encoder, VAE and classifier are kept as they are (byte-identical components); its UNet is
    fine-tuned together with a fresh :class:`dream3d.prior.camera.CameraTokens` (``tokens`` context positions,
    an MLP of width ``hidden``), whose last layer starts at zero, so training starts from the base's exact
    predictions. ``front_share`` of each batch comes from the objects with a front: the other 48 look alike from
    every azimuth, so without it the camera's azimuth would be a signal in one sample of six. Per sample the
    camera is dropped with ``camera_dropout`` (the prior keeps working without one); with a camera the caption
    is the bare object caption with probability ``bare_caption``, else the caption with the view words the base
    was trained with.
    """

    base: str = ""
    tokens: int = 4
    hidden: int = 256
    steps: int = 3500
    batch: int = 64
    lr: float = 3e-4
    camera_lr_scale: float = 10.0  # the new camera embedding learns from zero: a larger step for it
    front_share: float = 0.5  # share of each batch drawn from the objects with a front (only their azimuth shows)
    warmup: int = 100
    weight_decay: float = 0.01
    cfg_dropout: float = 0.1
    camera_dropout: float = 0.15
    bare_caption: float = 0.7
    bare_without_camera: bool = False  # bare captions also without a camera (the prompt a text prior is asked with)
    snr_gamma: float = 5.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0


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
    camera: CameraPriorConfig = field(default_factory=CameraPriorConfig)
    bf16: bool = False  # bf16 autocast for the UNet and VAE (a win only on CPUs with native bf16)
    threads: int = 0  # torch threads during the run (restored after); 0 leaves torch's default (all cores)
    checkpoint_every: int = 250
    log_every: int = 25
    save_dtype: str = "fp16"  # fp16 | fp32: weights of the saved pipeline
    keep_checkpoints: bool = False  # False: delete the .pt checkpoints once the pipeline is saved

    @property
    def train_dir(self) -> Path:
        return Path(self.out) / TRAIN_DIR


CAMERA_PRIOR = "assets/priors/shapeworld-camera"


def preset(name: str, **overrides: Any) -> TrainConfig:
    """``full`` (the shipped prior: about 1.5 to 2 hours on 2 idle CPU cores, see :func:`probe`), ``camera``
    (the shipped camera-conditioned prior: the full prior's UNet fine-tuned with a camera input, about 33 minutes)
    or ``smoke`` (tiny sizes, well under a minute).

    ``overrides`` set top-level fields (``out=``, ``seed=``, ...).
    """
    if name == "full":
        cfg = TrainConfig()
    elif name == "camera":
        cfg = TrainConfig(out=CAMERA_PRIOR, camera=CameraPriorConfig(base="assets/priors/shapeworld"))
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
        raise ValueError(f"unknown preset {name!r}; expected full, camera or smoke")
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"unknown TrainConfig field {key!r}")
        setattr(cfg, key, value)
    return cfg


_TRAINING_FIELDS = {"steps", "batch", "lr", "warmup", "weight_decay", "cfg_dropout", "snr_gamma", "ema_decay",
                    "grad_clip", "kl_weight", "l2_weight", "edge_weight", "view_weight", "crop", "camera_lr_scale",
                    "camera_dropout", "bare_caption", "front_share"}


def architecture(stage_cfg: Any) -> dict:
    """The model-shape fields of a stage config (what a checkpoint must match to be resumed)."""
    return {k: v for k, v in asdict(stage_cfg).items() if k not in _TRAINING_FIELDS}


def config_to_dict(cfg: Any) -> dict:
    return asdict(cfg)
