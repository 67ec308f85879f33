"""Text-to-image sampling from a prior (to look at what it learned) and image grids.

Classifier-free guidance uses the diffusers convention everywhere in dream3d:
``eps = eps_uncond + guidance * (eps_cond - eps_uncond)`` (``guidance = 1`` is the plain conditional model).
Samplers are diffusers schedulers built from the prior's own scheduler config (same betas and timesteps):
``"dpm-solver++"`` (DPMSolverMultistepScheduler, ``algorithm_type="dpmsolver++"``), ``"ddim"`` (eta 0) and
``"ddpm"`` (ancestral).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from dream3d.prior.loader import Prior, load_prior

SAMPLERS = ("dpm-solver++", "ddim", "ddpm")


def make_sampler(scheduler_config, sampler: str):
    """A fresh diffusers scheduler of kind ``sampler`` from a (DDPM) training scheduler config."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if sampler == "dpm-solver++":
        return DPMSolverMultistepScheduler.from_config(scheduler_config, algorithm_type="dpmsolver++")
    if sampler == "ddim":
        return DDIMScheduler.from_config(scheduler_config)
    if sampler == "ddpm":
        return DDPMScheduler.from_config(scheduler_config)
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")


@torch.no_grad()
def sample(
    prior: Union[str, Path, Prior], prompt: str, n: int = 4, steps: int = 20, guidance: float = 7.5,
    sampler: str = "dpm-solver++", seed: int = 0, negative_prompt: str = "", c2w: Optional[Tensor] = None,
    camera_cfg: bool = True,
) -> Tensor:
    """Generate ``n`` images of ``prompt``: float [n,H,W,3] in [0,1] (H = W = the prior's ``image_size``).

    ``prior`` is a loaded :class:`Prior` or a path for :func:`load_prior`. Deterministic in ``seed`` (initial
    noise and the DDPM sampler's noise come from one CPU generator). ``c2w`` [n,4,4] (or one [4,4] / [1,4,4] for all)
    are the cameras a camera-conditioned prior draws from (none: no camera tokens, a text prior); a text-only
    prior refuses them. ``camera_cfg``: the unconditional term of classifier-free guidance has no camera, so the
    guidance scale amplifies the camera as well as the text (false: both terms told the camera, as MVDream does;
    the asked view is drawn less often, docs/quality.md round 7). A camera prior loaded with a text prior
    (``load_prior(..., text_prior=)``) samples with the text prior's UNet, plus the camera term
    ``guidance (eps(y, c) - eps(y))`` of the camera prior when ``c2w`` is given (``camera_cfg`` does not apply).
    """
    if n < 1 or steps < 1:
        raise ValueError(f"sample needs n >= 1 and steps >= 1, got n={n}, steps={steps}")
    if not isinstance(prior, Prior):
        prior = load_prior(str(prior))
    scheduler = make_sampler(prior.scheduler.config, sampler)
    scheduler.set_timesteps(steps, device=prior.device)
    unet = prior.unet
    size = int(unet.config.sample_size)
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, int(unet.config.in_channels), size, size, generator=gen)
    x = (x * scheduler.init_noise_sigma).to(prior.device, prior.dtype)
    cond = prior.encode_text([prompt]).expand(n, -1, -1)
    guided = guidance != 1.0
    if guided:
        text = torch.cat([prior.encode_text([negative_prompt]).expand(n, -1, -1), cond])
    else:
        text = cond
    split = prior.text_unet is not None  # a camera prior with a text prior beside it (loader.with_text_prior)
    if split:
        unet = prior.text_unet  # the text term (and, without a camera, everything)
    if c2w is not None:
        if not prior.takes_camera:
            raise ValueError(f"sample: the prior {prior.path} takes no camera")
        c2w = c2w.reshape(-1, 4, 4)
        c2w = c2w.expand(n, 4, 4) if c2w.shape[0] == 1 else c2w
        if c2w.shape[0] != n:
            raise ValueError(f"sample: {c2w.shape[0]} cameras for {n} images")
        if split:  # the camera term: eps(y, c) - eps(y), scaled as the text
            camera_text = prior.condition(torch.cat([cond, cond]), torch.cat([c2w, c2w]),
                                          torch.cat([torch.ones(n), torch.zeros(n)]))
        else:
            keep = torch.cat([torch.full((n,), 0.0 if camera_cfg else 1.0), torch.ones(n)]) if guided else None
            text = prior.condition(text, torch.cat([c2w, c2w]) if guided else c2w, keep)
    for t in scheduler.timesteps:
        inp = torch.cat([x, x]) if guided else x
        inp = scheduler.scale_model_input(inp, t)
        eps = unet(inp, t, encoder_hidden_states=text).sample
        if guided:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        if split and c2w is not None:
            one = scheduler.scale_model_input(x, t)
            with_camera, without = prior.unet(torch.cat([one, one]), t, encoder_hidden_states=camera_text).sample.chunk(2)
            eps = eps + guidance * (with_camera - without)
        x = scheduler.step(eps, t, x, generator=gen).prev_sample
    return prior.decode(x).permute(0, 2, 3, 1).float().cpu()


def save_grid(images: Tensor, path: Union[str, Path], columns: int | None = None) -> Path:
    """Write images [N,H,W,3] in [0,1] as one PNG grid (white gaps), atomically. Returns the path.

    ``columns`` defaults to ceil(sqrt(N)).
    """
    from PIL import Image

    images = torch.as_tensor(images).detach().float().cpu()
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"save_grid expects images [N,H,W,3], got {tuple(images.shape)}")
    n, h, w, _ = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    pixels = (images.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    grid = np.full((rows * h, columns * w, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = pixels[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        Image.fromarray(grid).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
