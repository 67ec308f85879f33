"""Background colour behind the rendered object: learned from the view direction, fixed, or random."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn


class Background(nn.Module):
    """Background colour per ray: a learned function of the view direction (``mlp``), fixed, or random."""

    def __init__(self, kind: str = "mlp", color: tuple[float, ...] = (1.0, 1.0, 1.0), n_freq: int = 2):
        super().__init__()
        self.kind = kind
        self.n_freq = n_freq
        self.register_buffer("color", torch.tensor(color, dtype=torch.float32))
        if kind == "mlp":
            n_in = 3 + 3 * 2 * n_freq
            self.net = nn.Sequential(nn.Linear(n_in, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, dirs: Tensor, random_color: Optional[Tensor] = None) -> Tensor:
        """dirs [...,3] unit -> rgb [...,3] in [0,1]. ``random_color`` [3] overrides (training augmentation). A
        solid background's colour may have any number of channels (a latent NeRF's: the prior's latent of it)."""
        if random_color is not None:
            return random_color.expand(*dirs.shape[:-1], 3)
        if self.kind != "mlp":
            return self.color.expand(*dirs.shape[:-1], self.color.shape[0])
        feats = [dirs]
        for k in range(self.n_freq):
            feats += [torch.sin((2.0**k) * math.pi * dirs), torch.cos((2.0**k) * math.pi * dirs)]
        return torch.sigmoid(self.net(torch.cat(feats, dim=-1)))
