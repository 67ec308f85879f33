"""Score distillation guidances (SDS in :mod:`~dream3d.guidance.sds`, VSD in :mod:`~dream3d.guidance.vsd`, SJC's
PAAS in :mod:`~dream3d.guidance.sjc`) and their settings. This package imports nothing heavy; import the submodule you need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class GuidanceConfig:
    """Score distillation. ``guidance_scale`` follows diffusers: eps = uncond + s * (cond - uncond)."""

    name: str = "sds"
    guidance_scale: float = 100.0
    t_min: Any = 0.02  # fraction of the scheduler's training timesteps; number or schedule
    t_max: Any = 0.98
    weighting: str = "sds"  # sds: w = 1 - alphā_t | uniform: w = 1 | fantasia: w = sqrt(alphā_t)(1 - alphā_t)
    grad_clip: Any = None  # clip the per-element SDS gradient to [-c, c]; number, schedule or null
    # SDS only: where the residual is taken. latent: w(t) (eps_hat - eps) on the latents (DreamFusion); image:
    # the render against the decoded one-step estimate of the clean image (guidance/sds.py)
    space: str = "latent"
    # a camera-conditioned prior (dream3d/prior/camera.py): false tells both CFG terms the camera, as MVDream does
    # (the scale then amplifies the text only); true leaves the unconditional term without one, so the scale
    # amplifies the camera too (the prior's own samples show the asked view more often: docs/quality.md, round 7)
    camera_cfg: bool = False
    # with a run's text_prior (beside a camera-conditioned prior): the text term from the text prior, the camera
    # term from the camera prior, eps = eps_t(0) + s (eps_t(y) - eps_t(0)) + s_c (eps(y, c) - eps(y)) with
    # s_c = camera_scale (null: the guidance scale); four UNet calls instead of two (guidance/sds.py cfg_noise)
    text_prior: bool = False
    camera_scale: Optional[float] = None
    # Perp-Neg (guidance/perpneg.py; SDS and VSD over a text prior with view words): the positive prompt mixed
    # from the view prompts by azimuth, the other views as negatives perpendicular to it; 2 more UNet terms a step.
    # Each weight function is f(r) = a exp(-b r) + c, [a, b, c]; the defaults are the paper's
    perp_neg: bool = False
    perp_neg_f_fs: list[float] = field(default_factory=lambda: [4.0, 0.5, -2.426])
    perp_neg_f_sf: list[float] = field(default_factory=lambda: [4.0, 0.5, -2.426])
    perp_neg_f_sb: list[float] = field(default_factory=lambda: [1.0, 0.5, -0.606])
    perp_neg_f_fsb: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.967])
    # VSD only (guidance/vsd.py): the LoRA model of the particles' render distribution
    lora_rank: int = 4  # rank of the adapters on the UNet's attention projections
    lora_alpha: Optional[float] = None  # LoRA scale alpha / rank; null: alpha = rank
    lora_lr: float = 1e-4
    camera_dropout: float = 0.1  # probability of training the LoRA model without the camera
    camera_hidden: int = 128  # hidden width of the camera embedding MLP
    # a diagnostic (guidance/truth.py): for the first truth_steps steps, the render's error against the catalogue's
    # true object from the same camera replaces the guidance (the prompt must be a catalogue caption)
    truth_steps: int = 0
    # SJC only (guidance/sjc.py): noise draws averaged in Perturb-and-Average Scoring (one batched UNet call)
    paas_samples: int = 1
