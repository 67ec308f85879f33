r"""Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm"): view-dependent negative
prompts made perpendicular to the positive direction, against objects with a front on every side (Janus).

DreamFusion's view words (", front view", ", side view", ", back view") are followed by a text prior only part
of the time; asking harder for "back view" with a plain negative prompt "front view" also removes what the two
views share, the object. Perp-Neg keeps only the part of the negative direction that is perpendicular to the
positive one. With the noise predictions of the prior at one noisy sample z_t and timestep t,

    e_pos = ε(z_t; y_pos) - ε(z_t; y_∅)                     (the positive direction)
    e_k   = ε(z_t; y_k)   - ε(z_t; y_∅)                     (one per negative prompt y_k)
    e_k⊥  = e_k - (<e_k, e_pos> / ‖e_pos‖²) e_pos            (its component perpendicular to e_pos, per image)
    ε̂     = ε(z_t; y_∅) + s (e_pos + Σ_k w_k e_k⊥)

(s: ``guidance_scale``; y_∅: the negative prompt, "" by default; <·,·> and ‖·‖ over all elements of one image).
The weights w_k are negative: the guidance moves away from y_k, but only sideways of e_pos. With every w_k = 0
this is plain classifier-free guidance.

The positive and negative prompts depend on the camera's azimuth a (degrees in [-180, 180), 0 = the front, as
everywhere in dream3d) through the embeddings of the three view prompts E_front, E_side, E_back:

* |a| < 90 (front to side), r = 1 - |a|/90 (1 at the front, 0 at the side):
  y_pos = r E_front + (1 - r) E_side, negatives (E_front, E_side) with w = (-f_fs(r), -f_sf(1 - r));
* |a| >= 90 (side to back), r = 2 - |a|/90 (1 at the side, 0 at the back):
  y_pos = r E_side + (1 - r) E_back, negatives (E_side, E_front) with w = (-f_sb(r), -f_fsb(r));
* an overhead camera (elevation above the camera's ``overhead_threshold``): y_pos = E_overhead, no negatives.

Each f is a shifted exponential decay f(r) = α exp(-β r) + γ, the three numbers a setting
(``guidance.perp_neg_f_fs`` ...). The defaults are the values the Perp-Neg paper's 3D experiments and
threestudio use: f_fs = f_sf = (4, 0.5, -2.426) (so f_fs(1) ≈ 0: at the front the front negative vanishes,
and the side is pushed away with weight ≈ 1.57), f_sb = (1, 0.5, -0.606), f_fsb = (1, 0.5, 0.967) (at the back
the front is pushed away with weight ≈ 1.97, the side with ≈ 0.39). A negative equal to the positive prompt
(E_front at the front) has no perpendicular part, so it contributes nothing whatever its weight.

Cost: 2 + 2 noise predictions per image instead of 2 (one batched UNet call). Where dream3d departs: the
paper interpolates text embeddings of SD's CLIP encoder, dream3d those of whichever text prior it runs (the
shipped prior's or Stable Diffusion's); a camera-conditioned prior is told the camera instead of view words
and takes no Perp-Neg (one line at the start of the stage).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor


def decay(f: Sequence[float], r: float) -> float:
    """The shifted exponential decay f(r) = α exp(-β r) + γ of ``f`` = (α, β, γ)."""
    a, b, c = (float(v) for v in f)
    return a * math.exp(-b * r) + c


def view_weights(azimuth: float, overhead: bool, cfg: Any) -> tuple[str, str, float, tuple[str, str], tuple[float, float]]:
    """The prompt mix of one camera (module docstring): (view A, view B, r, the two negative views, their
    weights), y_pos = r E_A + (1 - r) E_B. Overhead: ("overhead", "overhead", 1, ..., (0, 0))."""
    if overhead:
        return "overhead", "overhead", 1.0, ("overhead", "overhead"), (0.0, 0.0)
    a = abs((azimuth + 180.0) % 360.0 - 180.0)
    if a < 90.0:
        r = 1.0 - a / 90.0
        return "front", "side", r, ("front", "side"), (-decay(cfg.perp_neg_f_fs, r), -decay(cfg.perp_neg_f_sf, 1.0 - r))
    r = 2.0 - a / 90.0
    return "side", "back", r, ("side", "front"), (-decay(cfg.perp_neg_f_sb, r), -decay(cfg.perp_neg_f_fsb, r))


def embeddings(prompts, cameras, overhead_threshold: float, cfg: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The Perp-Neg conditioning of B cameras: (positive [B,L,D], unconditional [B,L,D], negatives [B,2,L,D],
    weights [B,2]). ``prompts`` is a :class:`dream3d.prior.prompts.PromptEmbeddings`; ``cfg`` a GuidanceConfig."""
    pos, negs, weights = [], [], []
    for el, az in zip(cameras.elevation.tolist(), cameras.azimuth.tolist()):
        a, b, r, (n1, n2), w = view_weights(az, el > overhead_threshold, cfg)
        pos.append(r * prompts.embed_view(a) + (1.0 - r) * prompts.embed_view(b))
        negs.append(torch.stack([prompts.embed_view(n1), prompts.embed_view(n2)]))
        weights.append(w)
    cond = torch.stack(pos)
    uncond = prompts.embed_negative().unsqueeze(0).expand_as(cond)
    return cond, uncond, torch.stack(negs), torch.tensor(weights, dtype=torch.float32)


def perpendicular(x: Tensor, y: Tensor, eps: float = 1e-12) -> Tensor:
    """The component of each x[i] perpendicular to y[i] (x, y [B,...]): x - (<x,y>/‖y‖²) y, over all elements."""
    dims = tuple(range(1, x.dim()))
    coef = (x * y).sum(dims, keepdim=True) / (y * y).sum(dims, keepdim=True).clamp_min(eps)
    return x - coef * y


def combine(eps_pos: Tensor, eps_uncond: Tensor, eps_negs: Tensor, weights: Tensor, scale: float) -> Tensor:
    """ε̂ = ε_∅ + s (e_pos + Σ_k w_k e_k⊥) from the predictions ε(y_pos) [B,...], ε(y_∅) [B,...], ε(y_k) [B,K,...]
    and the weights [B,K] (module docstring)."""
    e_pos = eps_pos - eps_uncond
    total = e_pos
    for k in range(eps_negs.shape[1]):
        w = weights[:, k].to(e_pos).view(-1, *([1] * (e_pos.dim() - 1)))
        total = total + w * perpendicular(eps_negs[:, k] - eps_uncond, e_pos)
    return eps_uncond + scale * total
