"""Differentiable renderers: volume (NeRF) and mesh, with their optional CUDA accelerators."""

from __future__ import annotations

from typing import Callable, Optional

import torch


def use_accelerator(what: str, backend: str, backends: tuple[str, ...], accelerator: str, device: torch.device,
                    why_unavailable: Callable[[], Optional[str]]) -> bool:
    """The one rule of a renderer's ``backend`` setting (auto | torch | ``accelerator``): whether ``accelerator``
    does a render on ``device``. ``auto`` picks it on CUDA when it can run (``why_unavailable()`` is None, else a
    phrase saying what is missing); ``torch`` never; asking for it where it cannot run is a ValueError naming why.
    ``what`` names the renderer in messages."""
    if backend not in backends:
        raise ValueError(f"{what} backend: expected one of {', '.join(backends)}, got '{backend}'")
    if backend == "torch":
        return False
    if device.type != "cuda":
        if backend == accelerator:
            raise ValueError(f"{what} backend {accelerator}: needs CUDA tensors (this render is on the CPU); use "
                             "backend=torch or auto")
        return False
    why = why_unavailable()
    if backend == accelerator and why is not None:
        raise ValueError(f"{what} backend {accelerator}: {why}")
    return why is None
