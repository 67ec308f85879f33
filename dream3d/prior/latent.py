"""A latent prior's latent space seen from RGB: the latent of a solid colour, and an affine map from latents back
to colours (Latent-NeRF and Latent-Paint: a field that outputs latents needs a background latent, a preview
and, for export and its RGB refinement, a colour per point).

The VAE is not a per-pixel map (its decoder is a convolutional network), so no exact latent -> colour function
of one point exists; :func:`latent_rgb_map` fits the best affine one on solid colours, where the latents are
nearly constant over the image. Latent-NeRF does the same for Stable Diffusion with a fixed 4x3 matrix.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def solid_latents(prior, colors: Tensor, chunk: int = 8) -> Tensor:
    """colors [N,3] in [0,1] -> [N,C]: the mean latent (posterior mean, times the VAE's scaling factor) of a solid
    image of each colour at the prior's size, ``chunk`` images per VAE call (125 images of Stable Diffusion's 512 px
    at once would need several GB for the encoder's activations)."""
    if not prior.is_latent:
        raise ValueError(f"prior {prior.path}: a pixel-space prior has no latent space (expected a latent prior)")
    size = prior.image_size
    out = []
    for part in colors.to(prior.device, torch.float32).split(chunk):
        images = part.view(-1, 3, 1, 1).expand(-1, 3, size, size)
        posterior = prior.vae.encode((images * 2 - 1).to(prior.dtype)).latent_dist
        out.append((posterior.mean * prior.vae.config.scaling_factor).float().mean(dim=(2, 3)))
    return torch.cat(out)


@torch.no_grad()
def latent_rgb_map(prior, levels: int = 5) -> Tensor:
    """The affine map M [C+1,3] with rgb ≈ [latent, 1] M, least squares over ``levels``^3 solid colours
    (:func:`solid_latents`) of the RGB cube."""
    axis = torch.linspace(0.0, 1.0, levels)
    colors = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    lat = solid_latents(prior, colors).cpu()
    X = torch.cat([lat, torch.ones(lat.shape[0], 1)], dim=1).double()
    return torch.linalg.lstsq(X, colors.double()).solution.float()


@torch.no_grad()
def fit_latent_rgb_decoded(prior, latents: Tensor, mask: Tensor, anchor: Tensor,
                           min_pixels: int = 16) -> Optional[Tensor]:
    """The affine map M [C+1,3] (rgb ≈ [latent, 1] M) that best explains the VAE's own decoding of some latent
    images: ``latents`` [N,C,h,w] (renders of a latent field), ``mask`` [N,1,h,w] (the pixels to fit: the object's),
    ridge-regularised towards ``anchor`` (:func:`fit_latent_rgb`). Each latent pixel is paired with the mean colour
    of the f x f pixels it decodes to. A field's latents are not the latents of solid colours (:func:`latent_rgb_map`),
    so this map, fitted on the field's own renders, is the one to carry its colours over (a yellow pineapple stays
    yellow). None when fewer than ``min_pixels`` pixels are masked."""
    f = prior.vae_scale_factor
    rgb = torch.cat([F.avg_pool2d(prior.decode(part.to(prior.device, prior.dtype)).float(), f).cpu()
                     for part in latents.split(4)])  # [N,3,h,w]; 4 at a time (a 512 px decoder's memory)
    keep = mask.cpu().bool().expand_as(latents[:, :1]).reshape(-1)
    if int(keep.sum()) < min_pixels:
        return None
    lat = latents.float().cpu().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])[keep]
    return fit_latent_rgb(lat, rgb.permute(0, 2, 3, 1).reshape(-1, 3)[keep], anchor.float().cpu())


def latents_to_rgb(latents: Tensor, latent_rgb: Tensor) -> Tensor:
    """latents [...,C] -> rgb [...,3] in [0,1] through the affine map [C+1,3] (:func:`latent_rgb_map`)."""
    M = latent_rgb.to(latents)
    return (latents @ M[:-1] + M[-1]).clamp(0.0, 1.0)


@torch.no_grad()
def fit_latent_rgb(latents: Tensor, rgb: Tensor, anchor: Tensor, weights: Optional[Tensor] = None,
                   ridge: float = 1.0) -> Tensor:
    """The affine map M [C+1,3] fitted to pairs of latents [N,C] and their colours [N,3] (an object's latents and
    the colours the VAE decodes where it renders them), with per-pair ``weights`` [N] (default 1), ridge-regularised
    towards ``anchor`` [C+1,3] (:func:`latent_rgb_map`): M = argmin Σ_n w_n ‖[z_n, 1] M - rgb_n‖² + ``ridge``
    ‖M - anchor‖², which keeps the directions the pairs do not span (an object of one colour) at the anchor's."""
    X = torch.cat([latents.double().cpu(), torch.ones(latents.shape[0], 1, dtype=torch.float64)], dim=1)
    w = torch.ones(X.shape[0], dtype=torch.float64) if weights is None else weights.double().cpu().reshape(-1)
    A = anchor.double().cpu()
    lhs = X.t() @ (w[:, None] * X) + ridge * torch.eye(X.shape[1], dtype=torch.float64)
    rhs = X.t() @ (w[:, None] * rgb.double().cpu()) + ridge * A
    return torch.linalg.solve(lhs, rhs).float().to(anchor.device)
