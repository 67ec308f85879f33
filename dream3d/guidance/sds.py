r"""Score Distillation Sampling (DreamFusion, Poole et al. 2022).

Given a render x (pixels, or VAE latents z = E(x) for latent priors), SDS draws a timestep
t ~ U[t_min·T, t_max·T] and noise ε ~ N(0, I), forms the noisy sample

    z_t = sqrt(ᾱ_t) z + sqrt(1 - ᾱ_t) ε                     (scheduler.add_noise)

and asks the frozen prior for its noise prediction with classifier-free guidance, in the diffusers
convention used everywhere in dream3d:

    ε̂ = ε_φ(z_t; t, y_∅) + s · (ε_φ(z_t; t, y) - ε_φ(z_t; t, y_∅))

(y: the view-dependent prompt, y_∅: the negative/empty prompt, s: ``guidance_scale``; DreamFusion uses
s = 100). The SDS gradient with respect to z is

    ∇_z L_SDS = w(t) · (ε̂ - ε)

with w(t) = 1 - ᾱ_t ("sds"), 1 ("uniform") or sqrt(ᾱ_t)(1 - ᾱ_t) ("fantasia"). The UNet's Jacobian is
skipped. We realise the gradient with the usual trick: target = (z - ∇_z L).detach() and
L = ½‖z - target‖² / B, whose gradient with respect to z is exactly ∇_z L_SDS (per image; the loss is summed
over elements and averaged over the batch). Optional ``grad_clip`` clamps ∇_z L element-wise to [-c, c].
v-prediction and x0-prediction priors are converted to ε first.

``space="image"`` takes the same residual in pixel space instead. With the one-step estimate of the clean
latent ẑ_0 = (z_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t), the latent residual is z - ẑ_0 = sqrt((1 - ᾱ_t) / ᾱ_t) (ε̂ - ε),
so the SDS gradient is w(t) sqrt(ᾱ_t / (1 - ᾱ_t)) (z - ẑ_0). The image variant replaces z - ẑ_0 by x - D(ẑ_0),
the render (resized to the prior's size) minus the decoded estimate, with the same weight times
:data:`IMAGE_SCALE`; the VAE encoder is then used without gradient. Its Jacobian is what turns latent
residuals into high-frequency pixel patterns: on the shipped prior, 2D SDS on pixels paints a hatched
texture in latent space and smooth, shaded objects in image space (docs/quality.md). Related: HiFA's
image-space loss (Zhu et al. 2023).
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dream3d.schedule import scheduled


def predicted_noise(prior, z_t: Tensor, t: Tensor, eps_or_v: Tensor) -> Tensor:
    """Convert the UNet's output to a noise prediction ε according to the scheduler's prediction_type."""
    kind = prior.scheduler.config.prediction_type
    if kind == "epsilon":
        return eps_or_v
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1).to(z_t.dtype)
    if kind == "v_prediction":  # v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0  =>  ε = sqrt(ᾱ) v + sqrt(1-ᾱ) z_t
        return abar.sqrt() * eps_or_v + (1 - abar).sqrt() * z_t
    if kind == "sample":  # x0 prediction
        return (z_t - abar.sqrt() * eps_or_v) / (1 - abar).sqrt()
    raise ValueError(f"scheduler prediction_type '{kind}' is not supported (expected epsilon, v_prediction or sample)")


def cfg_noise(prior, z_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, scale: float,
              c2w: Optional[Tensor] = None, camera_cfg: bool = False, text_prior: bool = False,
              camera_scale: Optional[float] = None, negatives: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
    """Classifier-free guided noise prediction ε̂ = ε(∅, c) + s (ε(y, c) - ε(∅, c)); one batched UNet call.

    A camera-conditioned prior (``prior.takes_camera``) is told the renders' cameras c2w [B,4,4] in both terms,
    as MVDream does (the guidance is over the text only), or with ``camera_cfg`` only in the conditional one:
    ε̂ = ε(∅) + s (ε(y, c) - ε(∅)), the guidance over text and camera together; a text-only prior ignores them.

    ``text_prior`` (a camera prior loaded with a run's ``text_prior``, :func:`dream3d.prior.loader.with_text_prior`):
    the text term from the text prior's UNet ε_t, only the camera term from the camera prior's ε:
    ε̂ = ε_t(∅) + s (ε_t(y) - ε_t(∅)) + s_c (ε(y, c) - ε(y)), s_c = ``camera_scale`` (None: s). The camera prior's
    fine-tuning moved its colours (docs/quality.md, round 8); the text prior keeps them. With ε_t = ε and s_c = s
    this is the ``camera_cfg`` form. Two batched UNet calls (four terms).

    ``negatives`` (``guidance.perp_neg``: negative prompts [B,K,L,D] and their weights [B,K], from
    :func:`dream3d.guidance.perpneg.embeddings`): Perp-Neg's ε̂ = ε(∅) + s (e_pos + Σ_k w_k e_k⊥), one batched call
    of 2 + K terms; a text prior only."""
    B = z_t.shape[0]
    if negatives is not None:
        return _perp_neg_noise(prior, z_t, t, cond, uncond, scale, negatives)
    if text_prior and prior.takes_camera:  # a text-only prior: the plain form below
        if prior.text_unet is None:
            raise ValueError("guidance.text_prior: the prior was loaded without a text prior (set the run's text_prior)")
        x, tt = torch.cat([z_t, z_t]).to(prior.dtype), torch.cat([t, t])
        with torch.no_grad():
            text = prior.text_unet(x, tt, encoder_hidden_states=torch.cat([uncond, cond]).to(prior.dtype)).sample
            eps_t = predicted_noise(prior, x, tt, text.float())
            guided = eps_t[:B] + scale * (eps_t[B:] - eps_t[:B])
            if c2w is None:  # no camera: the text prior alone
                return guided
            context = torch.cat([prior.condition(cond, c2w), prior.condition(cond, c2w, torch.zeros(B))])
            cam = prior.unet(x, tt, encoder_hidden_states=context).sample
            eps_c = predicted_noise(prior, x, tt, cam.float())
        s_c = scale if camera_scale is None else camera_scale
        return guided + s_c * (eps_c[:B] - eps_c[B:])
    off = torch.zeros(B) if camera_cfg and c2w is not None else None  # the unconditional term: no camera
    cond, uncond = prior.condition(cond, c2w), prior.condition(uncond, c2w, off)
    with torch.no_grad():
        out = prior.unet(
            torch.cat([z_t, z_t]).to(prior.dtype), torch.cat([t, t]), encoder_hidden_states=torch.cat([cond, uncond]),
        ).sample
        eps = predicted_noise(prior, torch.cat([z_t, z_t]), torch.cat([t, t]), out.float())
    eps_cond, eps_uncond = eps[:B], eps[B:]
    return eps_uncond + scale * (eps_cond - eps_uncond)


def _perp_neg_noise(prior, z_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, scale: float,
                    negatives: tuple[Tensor, Tensor]) -> Tensor:
    """:func:`cfg_noise` with Perp-Neg's negative prompts (:mod:`dream3d.guidance.perpneg`)."""
    from dream3d.guidance import perpneg

    if prior.takes_camera:
        raise ValueError("guidance.perp_neg: the prior is told the camera, not view words; Perp-Neg needs a text prior")
    neg, weights = negatives
    B, K = neg.shape[:2]
    context = torch.cat([cond, uncond, neg.transpose(0, 1).reshape(K * B, *neg.shape[2:])]).to(prior.dtype)
    x, tt = z_t.repeat(2 + K, 1, 1, 1), t.repeat(2 + K)
    with torch.no_grad():
        out = prior.unet(x.to(prior.dtype), tt, encoder_hidden_states=context).sample
        eps = predicted_noise(prior, x, tt, out.float())
    eps_negs = eps[2 * B:].view(K, B, *eps.shape[1:]).transpose(0, 1)
    return perpneg.combine(eps[:B], eps[B:2 * B], eps_negs, weights.to(eps.device), scale)


def weighting(name: str, abar: Tensor) -> Tensor:
    if name == "sds":
        return 1 - abar
    if name == "uniform":
        return torch.ones_like(abar)
    if name == "fantasia":
        return abar.sqrt() * (1 - abar)
    raise ValueError(f"guidance.weighting: unknown '{name}' (expected sds, uniform or fantasia)")


def to_model_space(prior, rgb: Tensor, generator: Optional[torch.Generator] = None,
                   latents: Optional[Tensor] = None) -> Tensor:
    """rgb [B,H,W,3] in [0,1] -> the prior's input space [B,C,h,w], resized to the prior's resolution.

    ``latents`` [B,C,h',w'] given instead (Fantasia3D's early geometry phase feeds [normal, mask] as latents):
    only resized to the model's size, ``rgb`` is ignored."""
    if latents is not None:
        size = prior.image_size // prior.vae_scale_factor
        return F.interpolate(latents.float(), (size, size), mode="bilinear", align_corners=False)
    return prior.encode_images(at_prior_size(prior, rgb), generator).float()


def at_prior_size(prior, rgb: Tensor) -> Tensor:
    """rgb [B,H,W,3] -> [B,3,S,S] at the prior's image size S (bilinear when H or W differ)."""
    x = rgb.permute(0, 3, 1, 2)
    size = prior.image_size
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
    return x


def timestep_range(cfg: Any, num_train_timesteps: int, step: int) -> tuple[int, int]:
    """The integer timestep range [lo, hi] of ``cfg.t_min`` / ``cfg.t_max`` (fractions of T, schedules) at ``step``."""
    T = num_train_timesteps
    lo = int(scheduled(cfg.t_min, step) * T)
    hi = int(scheduled(cfg.t_max, step) * T)
    return max(lo, 0), min(max(hi, lo + 1), T - 1)


def draw_noisy(prior, z: Tensor, lo: int, hi: int, generator: Optional[torch.Generator] = None,
               t: Optional[Tensor] = None, noise: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """t ~ U{lo..hi} [B] and ε ~ N(0, I) unless given; returns (t, ε, z_t = sqrt(ᾱ_t) z + sqrt(1-ᾱ_t) ε), z detached."""
    B = z.shape[0]
    if t is None:
        t = torch.randint(lo, hi + 1, (B,), generator=generator).to(z.device)
    if noise is None:
        noise = torch.randn(z.shape, generator=generator).to(z.device)
    return t, noise, prior.scheduler.add_noise(z.detach(), noise, t)


def distillation_loss(z: Tensor, grad: Tensor, grad_clip: Any, step: int) -> tuple[Tensor, Tensor]:
    """The surrogate loss whose gradient with respect to z [B,C,h,w] is ``grad`` / B (optionally clipped
    element-wise): L = ½‖z - sg(z - g)‖² / B. Returns (L, the gradient actually used). A nan or inf in ``g`` is
    kept (not zeroed): it makes L non-finite, and the stage's guard stops the run naming the term."""
    clip = scheduled(grad_clip, step) if grad_clip is not None else 0.0
    if clip > 0:
        grad = grad.clamp(-clip, clip)
    target = (z - grad).detach()
    return 0.5 * F.mse_loss(z, target, reduction="sum") / z.shape[0], grad


# image-space residuals (pixels in [0, 1], 3 channels at the prior's resolution) are smaller than latent ones
# (unit-variance latents, 4 channels at 1/f the resolution); this brings the gradient that reaches the render
# to the latent variant's size at guidance scale 20 on the shipped prior (median ratio 2.3 over 12 catalogue
# objects, noisy renders, t in [0.02, 0.98]; at scale 100 the latent one is 5x larger, the image one 1.5x)
IMAGE_SCALE = 2.0


def image_space_loss(prior, rgb: Tensor, z_t: Tensor, abar: Tensor, eps_hat: Tensor, weight: Tensor,
                     grad_clip: Any, step: int) -> tuple[Tensor, Tensor]:
    """The image-space surrogate (module docstring): L = ½ Σ (x - sg(x - g))² / B with
    g = IMAGE_SCALE w(t) sqrt(ᾱ/(1-ᾱ)) (x - D(ẑ_0)). rgb [B,H,W,3], ᾱ_t [B,1,1,1] -> (L, g [B,3,S,S])."""
    x = at_prior_size(prior, rgb)
    with torch.no_grad():
        z0 = (z_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
        x0 = prior.decode(z0.to(prior.dtype)).float()
    grad = IMAGE_SCALE * weight * (abar / (1 - abar)).sqrt() * (x.detach() - x0)
    return distillation_loss(x, grad, grad_clip, step)


class SDSGuidance:
    """SDS as a function of renders: ``guidance(rgb, cond, uncond, step) -> {"sds": loss}`` plus diagnostics.

    ``cfg`` is a :class:`dream3d.config.GuidanceConfig`. Holds no trainable state, so it is not an nn.Module
    and nothing of the frozen prior can end up in a checkpoint.
    """

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
        """rgb [B,H,W,3] in [0,1] (or ``latents``, see :func:`to_model_space`); cond/uncond [B,L,D]. ``t`` [B]
        and ``noise`` fix the random draws (tests). ``cameras`` (the renders' B cameras) reach a
        camera-conditioned prior; a text-only prior ignores them. ``negatives``: Perp-Neg (:func:`cfg_noise`)."""
        prior = self.prior
        in_image = self.cfg.space == "image" and latents is None and prior.is_latent
        with torch.no_grad() if in_image else contextlib.nullcontext():
            z = to_model_space(prior, rgb, generator, latents)
        t, noise, z_t = draw_noisy(prior, z, *self.timestep_range(step), generator, t, noise)
        c2w = cameras.c2w.to(z.device) if cameras is not None else None
        eps_hat = cfg_noise(prior, z_t, t, cond, uncond, self.cfg.guidance_scale, c2w, self.cfg.camera_cfg,
                            self.cfg.text_prior, self.cfg.camera_scale, negatives)
        abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
        w = weighting(self.cfg.weighting, abar)
        if in_image:
            loss, grad = image_space_loss(prior, rgb, z_t, abar, eps_hat, w, self.cfg.grad_clip, step)
        else:
            loss, grad = distillation_loss(z, w * (eps_hat - noise), self.cfg.grad_clip, step)
        return {"sds": loss, "grad_norm": grad.norm().detach(), "t": t.float().mean().detach()}
