"""Shading of surface samples: albedo, diffuse (ambient + Lambert from a point light), textureless."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

SHADINGS = ("albedo", "diffuse", "textureless")


def shade(albedo: Tensor, normal: Optional[Tensor], light_dir: Optional[Tensor], shading: str, ambient: float) -> Tensor:
    """Per-sample colour [M,3]: albedo, diffuse (albedo x (ambient + (1-ambient) max(0, n.l))) or textureless (white)."""
    if shading == "albedo":
        return albedo
    lambert = (normal * light_dir).sum(-1, keepdim=True).clamp_min(0.0)
    light = ambient + (1.0 - ambient) * lambert
    if shading == "diffuse":
        return albedo * light
    if shading == "textureless":
        return light.expand(-1, 3)
    raise ValueError(f"shading: expected one of {', '.join(SHADINGS)}, got '{shading}'")
