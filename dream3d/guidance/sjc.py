r"""Score Jacobian Chaining (SJC; Wang, Du, Li, Yeh and Shakhnarovich, CVPR 2023), the ``sjc`` guidance.

Symbols: θ the 3D parameters (here a voxel grid, representations/voxels.py); π a camera; x_π = g(θ, π) the render
in the prior's model space (the latent render itself for a latent NeRF, the VAE latents of an RGB render, or
pixels in [-1, 1] for a pixel prior); N its number of elements; J_π = ∂x_π/∂θ the renderer's Jacobian; y the
(view-dependent) prompt, y_∅ the negative prompt, s the guidance scale (``guidance_scale``; SJC uses 100).

**Denoiser and score.** In the variance-exploding view of a diffusion model (Karras et al. 2022), data x₀ ~ p is
blurred by Gaussian noise of level σ, x = x₀ + σ n with n ~ N(0, I), giving the density p_σ = p * N(0, σ² I). The
denoiser D(x; σ) is the model's estimate of E[x₀ | x], and Tweedie's formula turns it into the score

    ∇_x log p_σ(x) = (D(x; σ) - x) / σ².

**Chaining.** If θ is as likely as its renders, log p̃_σ(θ) ∝ E_π[log p_σ(x_π)], the chain rule gives SJC's 3D score

    ∇_θ log p̃_σ(θ) = E_π[ ∇_x log p_σ(x_π) · J_π ]:

the 2D score of each render, back-propagated through the renderer (one random camera per step here).

**Why a clean render cannot be scored directly.** D(·; σ) was trained only on noisy inputs x₀ + σ n, which in N
dimensions lie about σ√N away from the data; a clean render x_π lies on (or near) the data, where the denoiser has
never been asked anything at level σ. (D(x_π; σ) - x_π)/σ² is therefore no estimate of the score there (the paper
shows it gives blank or broken images when used to sample).

**Perturb-and-Average Scoring (PAAS).** Score points the denoiser does know instead, the render perturbed at its
own level, and average:

    PAAS(x_π, √2σ) = E_n[ (D(x_π + σ n; σ) - (x_π + σ n)) / σ² ] = E_n[ (D(x_π + σ n; σ) - x_π) / σ² ],

the second form because E[n] = 0: dropping the zero-mean term -n/σ keeps the estimate's mean and removes most of
its variance (the authors' default, ``var_red`` in their code). The paper shows that this average approximates the
score of the data blurred to √2σ (the perturbation's σ and the denoiser's σ add in variance), ∇ log p_{√2σ}(x_π),
hence the name. dream3d estimates it with K = ``paas_samples`` noise draws n_1..n_K (one batched UNet call):

    PAAS ≈ (1/K) Σ_k (D(x_π + σ n_k; σ) - x_π) / σ².

**A DDPM/VP prior as a denoiser.** A variance-preserving prior with cumulative signal fraction ᾱ_t at timestep t
sees z_t = sqrt(ᾱ_t) x₀ + sqrt(1 - ᾱ_t) ε = sqrt(ᾱ_t) (x₀ + σ_t ε), so its timestep t is the noise level

    σ_t = sqrt((1 - ᾱ_t) / ᾱ_t),

its input for a VE point x is sqrt(ᾱ_t) x, and with its guided noise prediction
ε̂(z; t) = ε_φ(z; t, y_∅) + s (ε_φ(z; t, y) - ε_φ(z; t, y_∅)) (diffusers' convention, guidance/sds.py ``cfg_noise``)

    D(x; σ_t) = x - σ_t ε̂(sqrt(ᾱ_t) x; t).

For one draw, (D(x_π + σ_t n; σ_t) - x_π)/σ_t² = (n - ε̂)/σ_t.

**The update and the σ schedule.** SJC's released code ascends σ_t · PAAS rather than PAAS itself: the score scaled
by the noise level, as a Karras ODE step dx = -σ ∇ log p_σ dσ is, so a step has the same size at every σ. The loss
here is the stop-gradient surrogate ½‖x_π - sg(x_π - g)‖² / B (guidance/sds.py ``distillation_loss``) with

    g = ∇_{x_π} L = -σ_t · PAAS = (1/K) Σ_k (ε̂_k - n_k),

which is SDS's gradient with the uniform weighting w(t) = 1 for the same t and noise (tests/test_sjc.py checks both
this and the closed form): SJC and DreamFusion arrive at one update from two derivations; the recipes differ in
the σ schedule, the weighting (DreamFusion: w = 1 - ᾱ_t), the representation and the regularisers. σ is drawn
afresh each step, uniformly among the prior's discrete levels σ_t with t ∈ {10, ..., 969} of T = 1000 (SJC drops
the 30 largest and 10 smallest); here t ~ U{t_min T, ..., t_max T}, t_min = 0.01 and t_max = 0.97 in
configs/sjc.yaml, with no annealing. Optional ``grad_clip`` clamps g element-wise.

**The rest of the method** is configuration of other rooms (configs/sjc.yaml): a voxel grid whose colours are the
latent prior's channels (``representation.field: voxels``, ``output: latent``, system ``latent-nerf``, so the
render reaches this guidance as latents, with no VAE encoder), SJC's emptiness and centre-depth losses
(systems/base.py ``emptiness_loss``, ``center_depth_loss``), and the export's colours through the particle's
affine latent -> rgb map.

Where dream3d departs from SJC: Adam (the stage template's optimiser) instead of Adamax, over the same learning
rate; cameras, framing and background from the prior's world (its dream3d.yaml) rather than SJC's (radius 1.5,
fovy 40-70, a learned 4 x 4 background texture); renders of 16 x 16 latents on the shipped prior (its 64 px images
/ 4) instead of 64 x 64 for Stable Diffusion; and steps sized for a 2-core CPU (configs/sjc.yaml) instead of
10 000 (the recipe's comment gives the Stable Diffusion settings).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from dream3d.guidance.sds import cfg_noise, distillation_loss, timestep_range, to_model_space


def noise_level(prior, t: Tensor) -> Tensor:
    """σ_t = sqrt((1 - ᾱ_t) / ᾱ_t) of the prior's timesteps t [B] -> [B] (float32)."""
    abar = prior.alphas_cumprod[t]
    return ((1 - abar) / abar).sqrt()


def denoise(prior, x: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, scale: float, **cfg_kwargs: Any) -> Tensor:
    """D(x; σ_t) = x - σ_t ε̂(sqrt(ᾱ_t) x; t) for VE points x [B,C,h,w] (no gradient). ``cfg_kwargs`` go to
    :func:`dream3d.guidance.sds.cfg_noise` (camera, text prior, Perp-Neg)."""
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    sigma = ((1 - abar) / abar).sqrt()
    eps_hat = cfg_noise(prior, abar.sqrt() * x, t, cond, uncond, scale, **cfg_kwargs)
    return x - sigma * eps_hat


def paas(prior, x: Tensor, t: Tensor, noise: Tensor, cond: Tensor, uncond: Tensor, scale: float,
         c2w: Optional[Tensor] = None, negatives: Optional[tuple[Tensor, Tensor]] = None,
         **cfg_kwargs: Any) -> Tensor:
    """PAAS(x, √2σ_t) ≈ (1/K) Σ_k (D(x + σ_t n_k; σ_t) - x) / σ_t² for x [B,C,h,w], t [B], noise [K,B,C,h,w]; the K
    draws go through the UNet as one batch of K B (times the CFG terms). No gradient."""
    K, B = noise.shape[0], x.shape[0]
    xs = x.detach().repeat(K, 1, 1, 1)
    ts = t.repeat(K)
    sigma = noise_level(prior, ts).view(-1, 1, 1, 1)
    if c2w is not None:
        c2w = c2w.repeat(K, 1, 1)
    if negatives is not None:
        negatives = (negatives[0].repeat(K, 1, 1, 1), negatives[1].repeat(K, 1))
    D = denoise(prior, xs + sigma * noise.reshape(K * B, *x.shape[1:]), ts, cond.repeat(K, 1, 1),
                uncond.repeat(K, 1, 1), scale, c2w=c2w, negatives=negatives, **cfg_kwargs)
    return ((D - xs) / sigma**2).view(K, B, *x.shape[1:]).mean(0)


class SJCGuidance:
    """SJC as a function of renders: ``guidance(rgb, cond, uncond, step, latents=z) -> {"sjc", "grad_norm", "t"}``.

    ``cfg`` is a :class:`dream3d.guidance.GuidanceConfig` (``guidance_scale``, ``t_min``/``t_max``, ``paas_samples``,
    ``grad_clip``, and the camera and Perp-Neg settings SDS has; ``weighting`` and ``space`` are SDS's and unused).
    Holds no trainable state."""

    def __init__(self, cfg: Any, prior):
        self.cfg = cfg
        self.prior = prior

    def timestep_range(self, step: int) -> tuple[int, int]:
        return timestep_range(self.cfg, self.prior.num_train_timesteps, step)

    def __call__(
        self,
        rgb: Tensor,
        cond: Tensor,
        uncond: Tensor,
        step: int = 0,
        generator: Optional[torch.Generator] = None,
        t: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        cameras: Any = None,
        latents: Optional[Tensor] = None,
        negatives: Optional[tuple[Tensor, Tensor]] = None,
    ) -> dict[str, Tensor]:
        """rgb [B,H,W,3] in [0,1] or ``latents`` [B,C,h,w] (guidance/sds.py :func:`to_model_space`); cond/uncond
        [B,L,D]. ``t`` [B] and ``noise`` ([K,B,C,h,w], or [B,C,h,w] for K = 1) fix the random draws (tests)."""
        prior, cfg = self.prior, self.cfg
        x = to_model_space(prior, rgb, generator, latents)
        B = x.shape[0]
        if t is None:
            lo, hi = self.timestep_range(step)
            t = torch.randint(lo, hi + 1, (B,), generator=generator).to(x.device)
        if noise is None:
            noise = torch.randn((int(cfg.paas_samples), *x.shape), generator=generator).to(x.device)
        elif noise.dim() == x.dim():
            noise = noise[None]
        c2w = cameras.c2w.to(x.device) if cameras is not None else None
        score = paas(prior, x, t, noise.to(x.device), cond, uncond, cfg.guidance_scale, c2w=c2w, negatives=negatives,
                     camera_cfg=cfg.camera_cfg, text_prior=cfg.text_prior, camera_scale=cfg.camera_scale)
        sigma = noise_level(prior, t).view(-1, 1, 1, 1)
        loss, grad = distillation_loss(x, -sigma * score, cfg.grad_clip, step)
        return {"sjc": loss, "grad_norm": grad.norm().detach(), "t": t.float().mean().detach()}
