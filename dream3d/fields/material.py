"""PBR material field: a hash-grid encoding + small MLP from surface points to glTF metallic-roughness values.

The appearance field of Fantasia3D's appearance stage: at world points ``[N,3]`` in the scene box
``[-radius, radius]^3`` it returns

* ``albedo [N,3]`` in (0, 1): ``sigmoid(raw[:, 0:3])`` (base colour, linear),
* ``roughness [N,1]`` in ``roughness_range``: ``r_min + (r_max - r_min) sigmoid(raw[:, 3])``,
* ``metallic [N,1]`` in (0, 1): ``sigmoid(raw[:, 4])``,

for :func:`dream3d.render.shading.pbr_shade`. Built exactly like the NeRF's field (:mod:`dream3d.fields`:
:func:`~dream3d.fields.make_encoding` on the box normalised to ``[0,1]^3``, then an :class:`~dream3d.fields.MLP`
with ReLU hidden layers), with the torch hash grid as the always-available backend.

Initial values. The hash tables start at ~1e-4, so at initialisation every point gets nearly the same
features and the MLP's output is nearly a constant; the output layer's bias is set so that this constant is
exactly ``(0, 0, 0, logit(roughness), logit(metallic))`` (computed at zero features, so the random hidden
biases do not shift it):

* roughness ~0.7: a broad, forgiving highlight. Early in distillation the guidance sees mostly the object's
  colour; a glossy start puts sharp environment reflections on a surface whose normals and colours are still
  noise, which the guidance then explains away by baking highlights into the albedo. Rough surfaces also give
  smooth gradients (the pre-filtered light changes slowly with roughness there).
* metallic ~0.05: most everyday objects are dielectrics, and a metal has no diffuse term, so a metallic start
  would hide the albedo from the loss. 0.05 instead of 0 keeps the sigmoid out of saturation (its slope there
  is 0.0475, about a fifth of the maximum), so the field can still become metal where the prompt asks for it.
* albedo 0.5: mid grey, the sigmoid's centre (largest slope).

``roughness_range`` keeps roughness away from 0 (0.08 by default): a perfect mirror of an order-2 environment
is still smooth, but a mirror's split-sum BRDF and its reflection vector are the most sensitive to normal noise,
and real materials are rarely that smooth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dream3d.fields.encoding import HashGridConfig, make_encoding
from dream3d.fields.mlp import MLP

__all__ = ["MaterialConfig", "MaterialField"]


@dataclass
class MaterialConfig:
    """Material field hyper-parameters (the NeRF field's, plus the initial material and the roughness range)."""

    radius: float = 1.0  # scene box [-radius, radius]^3
    encoding: HashGridConfig = field(default_factory=HashGridConfig)
    backend: str = "auto"  # hash grid: auto | torch | tcnn
    hidden: int = 64  # MLP width
    hidden_layers: int = 1
    init_roughness: float = 0.7  # roughness everywhere at initialisation (inside roughness_range)
    init_metallic: float = 0.05  # metallic everywhere at initialisation, in (0, 1)
    roughness_range: list[float] = field(default_factory=lambda: [0.08, 1.0])  # [min, max], min > 0: no mirrors


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class MaterialField(nn.Module):
    """Points ``[N,3]`` (world, in ``[-radius, radius]^3``) -> ``{"albedo" [N,3], "roughness" [N,1], "metallic" [N,1]}``.

    See the module docstring for the output mapping and the initialisation. ``cfg`` is a
    :class:`MaterialConfig` or any object with the same attributes (e.g. an OmegaConf node).
    """

    N_OUTPUTS = 5  # albedo (3), roughness, metallic

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        cfg = MaterialConfig() if cfg is None else cfg
        self.cfg = cfg
        self.radius = float(cfg.radius)
        r_min, r_max = (float(v) for v in cfg.roughness_range)
        if not 0.0 <= r_min < r_max <= 1.0:
            raise ValueError(f"MaterialConfig.roughness_range: need 0 <= min < max <= 1, got {list(cfg.roughness_range)}")
        if not r_min < float(cfg.init_roughness) < r_max:
            raise ValueError(f"MaterialConfig.init_roughness: must lie strictly inside roughness_range "
                             f"[{r_min}, {r_max}], got {cfg.init_roughness}")
        if not 0.0 < float(cfg.init_metallic) < 1.0:
            raise ValueError(f"MaterialConfig.init_metallic: must lie in (0, 1), got {cfg.init_metallic}")
        self.roughness_min, self.roughness_max = r_min, r_max
        self.encoding = make_encoding(cfg.encoding, cfg.backend)
        self.network = MLP(self.encoding.n_output_dims, self.N_OUTPUTS, cfg.hidden, cfg.hidden_layers, activation="relu")
        self._init_output_bias()

    @torch.no_grad()
    def _init_output_bias(self) -> None:
        """Make the raw output at zero features exactly the logits of the initial material."""
        target = torch.tensor([
            0.0, 0.0, 0.0,  # albedo 0.5
            _logit((float(self.cfg.init_roughness) - self.roughness_min) / (self.roughness_max - self.roughness_min)),
            _logit(float(self.cfg.init_metallic)),
        ])
        last = self.network.layers[-1]
        zeros = torch.zeros(1, self.network.n_input, dtype=last.weight.dtype, device=last.weight.device)
        offset = self.network.layers(zeros)[0] - last.bias  # the hidden layers' contribution at zero features
        last.bias.copy_(target.to(last.bias) - offset)

    def raw(self, points: Tensor) -> Tensor:
        """points [N,3] world -> raw MLP outputs [N,5] (albedo logits, roughness logit, metallic logit)."""
        u = ((points / self.radius) + 1.0) * 0.5
        return self.network(self.encoding(u.clamp(0.0, 1.0)))

    def forward(self, points: Tensor) -> dict[str, Tensor]:
        """points [N,3] -> {"albedo": [N,3] in (0,1), "roughness": [N,1] in roughness_range, "metallic": [N,1] in (0,1)}."""
        raw = self.raw(points)
        span = self.roughness_max - self.roughness_min
        return {
            "albedo": torch.sigmoid(raw[:, 0:3]),
            "roughness": self.roughness_min + span * torch.sigmoid(raw[:, 3:4]),
            "metallic": torch.sigmoid(raw[:, 4:5]),
        }

    def parameter_groups(self, lr_encoding: float, lr_network: float) -> list[dict]:
        """Adam parameter groups, named like the NeRF's (``encoding``, ``network``)."""
        return [
            {"params": list(self.encoding.parameters()), "lr": lr_encoding, "name": "encoding"},
            {"params": list(self.network.parameters()), "lr": lr_network, "name": "network"},
        ]
