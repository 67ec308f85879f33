"""A colour field on a given surface (Latent-Paint): a hash-grid encoding + small MLP from world points to colours.

Built like the NeRF's field without the density (:mod:`dream3d.representations.nerf`, whose config it reads:
``radius``, ``encoding``, ``backend``, ``hidden``, ``hidden_layers``, ``output``, ``latent_channels``): points in the
box [-radius, radius]^3 -> rgb [N,3] in (0, 1) (``output: rgb``, a sigmoid) or the prior's C latent channels
(``output: latent``, no activation).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from dream3d.fields.encoding import make_encoding
from dream3d.fields.mlp import MLP


class ColourField(nn.Module):
    """Points [N,3] (world) -> colours [N,3] or latents [N,C] (module docstring)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.radius = float(cfg.radius)
        self.channels = int(cfg.latent_channels) if cfg.output == "latent" else 3
        self.encoding = make_encoding(cfg.encoding, cfg.backend)
        self.network = MLP(self.encoding.n_output_dims, self.channels, cfg.hidden, cfg.hidden_layers, activation="relu")

    def forward(self, x: Tensor) -> Tensor:
        u = ((x / self.radius + 1.0) * 0.5).clamp(0.0, 1.0)
        raw = self.network(self.encoding(u))
        return raw.sigmoid() if self.cfg.output == "rgb" else raw

    def parameter_groups(self, lr_encoding: float, lr_network: float) -> list[dict]:
        return [{"params": list(self.encoding.parameters()), "lr": lr_encoding, "name": "encoding"},
                {"params": list(self.network.parameters()), "lr": lr_network, "name": "network"}]
