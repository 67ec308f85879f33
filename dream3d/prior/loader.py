"""Load a frozen text-to-image diffusion prior from a diffusers pipeline folder or a hub id.

The same code serves the shipped shape-world prior and Stable Diffusion: every component is read with
``from_pretrained(path, subfolder=...)``. Latent priors have a ``vae/``; pixel-space priors do not; a
camera-conditioned prior also has a ``camera_encoder/`` (:mod:`dream3d.prior.camera`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from dream3d.errors import Dream3DError
from dream3d.prior.camera import CAMERA_FOLDER, CameraTokens


class PriorError(Dream3DError, RuntimeError):
    """One-line error while loading a prior."""

    exit_code = 1


@dataclass
class Prior:
    """Frozen components of a text-to-image diffusion model (requires_grad False, eval mode)."""

    unet: Any  # diffusers UNet2DConditionModel
    text_encoder: Any  # transformers CLIPTextModel (or compatible)
    tokenizer: Any
    scheduler: Any  # diffusers DDPM-compatible scheduler: alphas_cumprod, add_noise
    vae: Optional[Any]  # AutoencoderKL for latent priors, None for pixel-space priors
    path: str
    device: torch.device
    dtype: torch.dtype
    camera_encoder: Optional[Any] = None  # dream3d.prior.camera.CameraTokens of a camera-conditioned prior
    # the UNet of a run's text_prior (:func:`with_text_prior`): a text-only prior with the same text encoder and
    # VAE, whose text term the guidance can take instead of this (camera) prior's own (guidance/sds.py cfg_noise)
    text_unet: Optional[Any] = None

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """Pixel resolution the prior was trained at (renders are resized to it)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def takes_camera(self) -> bool:
        """Whether the prior is camera-conditioned: its folder has a ``camera_encoder/`` (:mod:`dream3d.prior.camera`)."""
        return self.camera_encoder is not None

    def condition(self, text: Tensor, c2w: Optional[Tensor] = None, keep: Optional[Tensor] = None) -> Tensor:
        """Text embeddings [B,L,D] told the cameras c2w [B,4,4] (``keep`` [B]: which of them) when the prior takes a
        camera; unchanged otherwise, and without cameras."""
        if self.camera_encoder is None or c2w is None:
            return text
        return self.camera_encoder(text, c2w.to(self.device), None if keep is None else keep.to(self.device))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def alphas_cumprod(self) -> Tensor:  # [T] on the prior's device, float32
        return self.scheduler.alphas_cumprod.to(self.device, torch.float32)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """[N, L, D] text embeddings (last hidden state), in the prior's dtype."""
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)

    def encode_images(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """images [B,3,H,W] in [0,1] at ``image_size`` -> model space [B,C,h,w] (differentiable).

        Latent priors: a sample of the VAE posterior times ``scaling_factor``. Pixel priors: images in [-1,1].
        """
        x = images * 2.0 - 1.0
        if self.vae is None:
            return x.to(self.dtype)
        posterior = self.vae.encode(x.to(self.dtype)).latent_dist
        return posterior.sample(generator) * self.vae.config.scaling_factor

    def decode(self, z: Tensor) -> Tensor:
        """Model space [B,C,h,w] -> images [B,3,H,W] in [0,1]."""
        if self.vae is not None:
            z = self.vae.decode(z / self.vae.config.scaling_factor).sample
        return (z.float() / 2 + 0.5).clamp(0, 1)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _read_index(path: Path) -> dict:
    """model_index.json as a mapping, or a one-line PriorError naming the file."""
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PriorError(f"prior: {path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(index, dict):
        raise PriorError(f"prior: {path}: expected a JSON object of components, got {type(index).__name__}")
    return index


def _has_component(path: str, name: str) -> bool:
    local = Path(path)
    if local.is_dir():
        index = local / "model_index.json"
        if index.is_file():
            entry = _read_index(index).get(name)
            return bool(entry) and entry[0] is not None and (local / name).is_dir()
        return (local / name).is_dir()
    from huggingface_hub import hf_hub_download

    try:
        index_path = Path(hf_hub_download(path, "model_index.json"))
    except Exception as exc:
        raise PriorError(f"prior: cannot read model_index.json of '{path}': {str(exc).splitlines()[0]}") from None
    entry = _read_index(index_path).get(name)
    return bool(entry) and entry[0] is not None


def load_prior(path: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto",
               text_prior: str = "") -> Prior:
    """Load and freeze the prior at ``path`` (folder or hub id) on ``device``; with ``text_prior`` (a run's key of that
    name) also that prior's UNet beside it (:func:`with_text_prior`)."""
    if text_prior:
        return with_text_prior(load_prior(path, device, dtype), text_prior)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from dream3d.logs import quiet_loaders

    quiet_loaders()
    device = torch.device(device)
    torch_dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype

    local = Path(path)
    if local.is_dir() and (local / "model_index.json").is_file():
        _read_index(local / "model_index.json")  # a corrupted index: one line, before any component loads

    def load(cls, sub, **kw):
        try:
            return cls.from_pretrained(path, subfolder=sub, **kw)
        except Exception as exc:
            raise PriorError(f"prior: cannot load {sub}/ of '{path}': {str(exc).splitlines()[0]}") from None

    # Never run code shipped in a prior folder (transformers would otherwise ask on stdin, and run it on "y").
    tokenizer = load(AutoTokenizer, "tokenizer", trust_remote_code=False)
    text_encoder = load(CLIPTextModel, "text_encoder", torch_dtype=torch_dtype, trust_remote_code=False)
    unet = load(UNet2DConditionModel, "unet", torch_dtype=torch_dtype)
    scheduler = load(DDPMScheduler, "scheduler")
    vae = load(AutoencoderKL, "vae", torch_dtype=torch_dtype) if _has_component(path, "vae") else None
    camera = None
    if local.is_dir() and (local / CAMERA_FOLDER).is_dir():
        try:
            camera = CameraTokens.load(local / CAMERA_FOLDER).to(device, torch_dtype)
        except ValueError as exc:
            raise PriorError(f"prior: {exc}") from None
        width, length = int(text_encoder.config.hidden_size), int(tokenizer.model_max_length)
        if camera.dim != width or camera.tokens >= length:
            raise PriorError(f"prior: {local / CAMERA_FOLDER}: {camera.tokens} camera tokens of width {camera.dim} "
                             f"do not fit the text encoder ({length} tokens of width {width})")
    for module in (text_encoder, unet, vae):
        if module is not None:
            module.requires_grad_(False)
            module.eval()
            module.to(device)
    return Prior(unet, text_encoder, tokenizer, scheduler, vae, str(path), device, torch_dtype, camera)


def _same_weights(a: Any, b: Any) -> bool:
    """Whether two modules (or both None) hold equal tensors under equal names."""
    if a is None or b is None:
        return a is None and b is None
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def with_text_prior(prior: Prior, path: str) -> Prior:
    """``prior`` (camera-conditioned) with the UNet of the text prior at ``path`` beside it: the guidance can then take
    the text term from the text prior and only the camera term from ``prior`` (``guidance.text_prior``). A prior that
    takes no camera is returned as it is (it is a text prior itself; the stages' flags then change nothing). Both must
    read text and images alike: the same tokenizer output, text encoder and VAE weights (a one-line PriorError
    otherwise). ``prior`` itself is not changed (a loaded prior can be shared by several runs)."""
    from dataclasses import replace

    if not prior.takes_camera:  # a text prior already (e.g. Stable Diffusion asked for in a camera recipe): as it is
        return prior
    text = load_prior(path, prior.device, prior.dtype)
    probe = "a red cube"
    same_tokens = torch.equal(text.tokenizer([probe], return_tensors="pt").input_ids,
                              prior.tokenizer([probe], return_tensors="pt").input_ids)
    for name, ok in (("tokenizer", same_tokens), ("text_encoder", _same_weights(text.text_encoder, prior.text_encoder)),
                     ("vae", _same_weights(text.vae, prior.vae))):
        if not ok:
            raise PriorError(f"text_prior: {name}/ of '{path}' differs from the prior's ('{prior.path}'); the text "
                             "prior must read prompts and images exactly as the camera prior does")
    return replace(prior, text_unet=text.unet)
