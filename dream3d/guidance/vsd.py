r"""Variational Score Distillation (ProlificDreamer, Wang et al. 2023).

VSD treats the 3D parameters θ⁽¹⁾..θ⁽ᴺ⁾ of N *particles* as samples of a distribution μ(θ | y) and moves
them so that their renders x = g(θ, c) from cameras c match the frozen prior's image distribution. The
score of the renders' own (noised) distribution is not known, so a second diffusion model, ε_ψ, learns it
online: a LoRA-adapted view of the frozen prior's UNet, also conditioned on the camera.

Symbols: z = E(x) the render in model space (VAE latents, or pixels in [-1, 1]); t the diffusion timestep;
ᾱ_t the scheduler's cumulative signal fraction; ε ~ N(0, I); z_t = sqrt(ᾱ_t) z + sqrt(1-ᾱ_t) ε; y the
(view-dependent) prompt and y_∅ the negative prompt; s the guidance scale (``guidance_scale``, 7.5 in the
paper); c the camera (its 4x4 camera-to-world matrix); φ the frozen prior; ψ = (LoRA adapters A, B of
the attention projections, camera embedding e) the trainable part.

**Particle update** (``"vsd"`` term). With the frozen prior's classifier-free prediction in the diffusers
convention used everywhere in dream3d,

    ε̂_φ(z_t; t, y) = ε_φ(z_t; t, y_∅) + s · (ε_φ(z_t; t, y) - ε_φ(z_t; t, y_∅)),

the gradient sent into each particle's render is

    ∇_z L_VSD = w(t) · (ε̂_φ(z_t; t, y) - ε_ψ(z_t; t, y, c)),        t ~ U[t_min·T, t_max·T],

with the same weighting w(t) as SDS (1 - ᾱ_t by default) and no UNet Jacobian; it is realised with the
stop-gradient surrogate ½‖z - sg(z - ∇_z L)‖² / B of :func:`dream3d.guidance.sds.distillation_loss`. SDS is
the special case where the particle distribution is a single point (a Dirac): the noisy render's score is
then known exactly, ε_ψ = ε, and the update becomes SDS's w(t)(ε̂ - ε). ProlificDreamer anneals
t_max from 0.98 to 0.5 after a set step: a schedule ``t_max: [k, 0.98, 0.5, k]`` switches at step k.

**LoRA update** (``"lora"`` term). ε_ψ is fitted to the renders themselves, detached from θ, with the
standard denoising loss at fresh draws t' ~ U{0..T-1}, ε' ~ N(0, I):

    L_LoRA = E ‖ ε_ψ(z_t'; t', y, c̃) - ε' ‖²,        z_t' = sqrt(ᾱ_t') sg(z) + sqrt(1-ᾱ_t') ε',

(the target is the velocity or z itself for v- or x0-prediction priors), where c̃ is the camera dropped
(embedding zero) with probability ``camera_dropout`` = 0.1 for classifier-free training. Only ψ receives
gradients: the LoRA model shares the frozen prior's weight tensors (a structural copy of the UNet whose
parameters *are* the prior's), peft injects rank-r adapters into its attention projections (to_q, to_k,
to_v, to_out.0), and the camera embedding e(c) = MLP(vec(c)) is added to the timestep embedding through
the UNet's class-embedding slot. B of every adapter and the last layer of e start at zero, so at
initialisation ε_ψ(z_t; t, y, c) = ε_φ(z_t; t, y) exactly, and then

    ∇_z L_VSD = w(t)(ε̂_φ - ε_φ(·, y)) = [w(t)(ε̂_φ - ε)]  -  [w(t)(ε_φ(·, y) - ε)]
              = SDS gradient at scale s  -  SDS gradient at scale 1      (same t and ε),

which ``tests/test_vsd.py`` checks. Only ψ goes into checkpoints (the ``adapters`` and ``camera``
submodules); the frozen prior is held outside the module tree.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream3d.guidance.sds import (
    cfg_noise,
    distillation_loss,
    draw_noisy,
    predicted_noise,
    timestep_range,
    to_model_space,
    weighting,
)

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class CameraEmbedding(nn.Module):
    """Camera-to-world [B,4,4] (+ a keep flag [B]) -> an embedding [B,D] added to the UNet's timestep
    embedding. The last layer starts at zero (no effect at initialisation); a dropped camera (keep = 0)
    contributes exactly zero, the "no camera" condition of classifier-free training."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(16, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    @staticmethod
    def labels(c2w: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        """What the UNet's ``class_labels`` carries: flattened c2w and the keep flag, [B,17]."""
        keep = torch.ones(c2w.shape[0], device=c2w.device) if keep is None else keep.float()
        return torch.cat([c2w.reshape(-1, 16).float(), keep[:, None]], dim=1)

    def forward(self, labels: Tensor) -> Tensor:  # [B,17] -> [B,D]
        w = self.mlp[0].weight
        return self.mlp(labels[:, :16].to(w.dtype)) * labels[:, 16:].to(w.dtype)


def lora_view(unet: nn.Module, rank: int, alpha: float) -> nn.Module:
    """A structural copy of ``unet`` whose parameters and buffers are the original tensors (no weight is
    copied), with peft LoRA adapters in its attention projections. The original UNet is left untouched."""
    from peft import LoraConfig, inject_adapter_in_model

    memo = {id(t): t for t in list(unet.parameters()) + list(unet.buffers())}
    view = copy.deepcopy(unet, memo)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, init_lora_weights=True)
    view = inject_adapter_in_model(config, view)
    for name, p in view.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()  # adapters train in fp32 even over an fp16 prior
        else:
            p.requires_grad_(False)
    return view


class VSDGuidance(nn.Module):
    """VSD as a function of renders and their cameras:
    ``guidance(rgb, cond, uncond, step, cameras=cams) -> {"vsd", "lora", "grad_norm", "t"}``.

    Its submodules (``adapters``, ``camera``) are the trainable state that goes into checkpoints and into the
    system's optimiser (``parameter_groups``); the frozen prior and the LoRA view of its UNet are not.
    """

    def __init__(self, cfg: Any, prior):
        super().__init__()
        self.cfg = cfg
        view = lora_view(prior.unet, cfg.lora_rank, cfg.lora_alpha or cfg.lora_rank)
        dim = view.time_embedding.linear_2.out_features
        self.camera = CameraEmbedding(dim, cfg.camera_hidden).to(prior.device)
        view.class_embedding = self.camera
        self.frozen = {"prior": prior, "unet": view}
        from peft.tuners.lora import LoraLayer

        self.adapters = nn.ModuleDict({
            name.replace(".", "_"): nn.ModuleDict({"lora_A": m.lora_A, "lora_B": m.lora_B})
            for name, m in view.named_modules() if isinstance(m, LoraLayer)
        })
        if not len(self.adapters):
            raise ValueError(f"guidance vsd: the prior's UNet has no attention projections named {LORA_TARGETS}")

    @property
    def prior(self):
        return self.frozen["prior"]

    def parameter_groups(self) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": self.cfg.lora_lr, "name": "lora"}]

    def timestep_range(self, step: int) -> tuple[int, int]:
        return timestep_range(self.cfg, self.prior.num_train_timesteps, step)

    def estimate(self, z_t: Tensor, t: Tensor, cond: Tensor, labels: Tensor) -> Tensor:
        """ε_ψ(z_t; t, y, c): the LoRA model's noise prediction (differentiable in ψ)."""
        prior = self.prior
        out = self.frozen["unet"](z_t.to(prior.dtype), t, encoder_hidden_states=cond, class_labels=labels).sample
        return predicted_noise(prior, z_t, t, out.float())

    def _target(self, z: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        kind = self.prior.scheduler.config.prediction_type
        if kind == "v_prediction":
            return self.prior.scheduler.get_velocity(z, noise, t)
        return z if kind == "sample" else noise

    def forward(
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
        """rgb [B,H,W,3] in [0,1]; cond/uncond [B,L,D]; ``cameras`` (B cameras, required). ``t`` [B] and
        ``noise`` fix the particle update's draws (tests); the LoRA update always draws its own. ``negatives``:
        Perp-Neg in the pretrained term (guidance/sds.py ``cfg_noise``); the LoRA model is told the positive."""
        if cameras is None:
            raise ValueError("guidance vsd: needs the cameras of the renders (cameras=...)")
        prior = self.prior
        cfg = self.cfg
        z = to_model_space(prior, rgb, generator, latents)
        B = z.shape[0]
        c2w = cameras.c2w.to(z.device)
        t, noise, z_t = draw_noisy(prior, z, *self.timestep_range(step), generator, t, noise)
        eps_hat = cfg_noise(prior, z_t, t, cond, uncond, cfg.guidance_scale, c2w, cfg.camera_cfg, cfg.text_prior,
                            cfg.camera_scale, negatives)
        with torch.no_grad():  # over a camera-conditioned prior the LoRA model is told the camera the same way too
            eps_psi = self.estimate(z_t, t, prior.condition(cond, c2w), CameraEmbedding.labels(c2w))
        abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
        loss, grad = distillation_loss(z, weighting(cfg.weighting, abar) * (eps_hat - eps_psi), cfg.grad_clip, step)

        # the LoRA model's denoising loss on the detached renders, cameras dropped with p = camera_dropout
        T = prior.num_train_timesteps
        t2, noise2, z_t2 = draw_noisy(prior, z.detach(), 0, T - 1, generator)
        keep = (torch.rand(B, generator=generator) >= cfg.camera_dropout).to(z.device)
        pred = self.frozen["unet"](z_t2.to(prior.dtype), t2, encoder_hidden_states=prior.condition(cond, c2w, keep),
                                   class_labels=CameraEmbedding.labels(c2w, keep)).sample.float()
        lora = F.mse_loss(pred, self._target(z.detach(), noise2, t2))
        return {"vsd": loss, "lora": lora, "grad_norm": grad.norm().detach(), "t": t.float().mean().detach()}
