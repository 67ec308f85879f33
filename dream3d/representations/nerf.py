"""NeRF representation: an implicit volume (density + albedo) over the scene box [-radius, radius]^3.

``field: hashgrid`` (this file's :class:`NeRF`) or ``field: voxels`` (SJC's dense voxel grid,
:class:`dream3d.representations.voxels.VoxelGrid`); :func:`make_field` builds the one a config names.

A hash-grid encoding feeds one small MLP with 4 outputs: raw density and albedo logits (``output: rgb``), or
1 + ``latent_channels`` outputs, raw density and the prior's latent features without an activation
(``output: latent``, Latent-NeRF: the field's "albedo" is then a point in the prior's latent space). Density adds the
Magic3D "blob" bias, ``blob_density * (1 - |x| / blob_radius)``, so optimisation starts from a soft ball at
the origin instead of empty space. Normals are the negated, normalised density gradient, by autograd
(``analytic``, differentiable for the orientation loss) or central finite differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from dream3d.fields import MLP, get_activation, make_encoding
from dream3d.fields.encoding import HashGridConfig
from dream3d.fields.normals import finite_difference_normal


@dataclass
class NeRFConfig:
    """Implicit volume: hash-grid encoding + one small MLP for density and albedo."""

    radius: float = 1.0  # scene box [-radius, radius]^3
    encoding: HashGridConfig = field(default_factory=HashGridConfig)
    backend: str = "auto"  # hash grid: auto | torch | tcnn
    hidden: int = 64
    hidden_layers: int = 1
    density_activation: str = "softplus"
    blob_density: float = 10.0  # Magic3D blob: bias = blob_density * (1 - |x| / blob_radius)
    blob_radius: float = 0.5
    normals: str = "analytic"  # analytic (autograd of density) | finite_difference
    finite_difference_eps: float = 0.01
    output: str = "rgb"  # rgb: albedo in (0, 1) | latent: the prior's latent channels (Latent-NeRF)
    latent_channels: int = 4  # with output=latent: the prior's latent channel count (checked against the prior)
    field: str = "hashgrid"  # hashgrid: hash grid + MLP (this file) | voxels: a dense voxel grid (SJC; voxels.py)
    voxel_resolution: int = 100  # field=voxels: cells a side (SJC: 100)
    density_shift: float = 0.0  # added to the raw density before the activation (SJC's voxels: -1)


class NeRF(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.radius = float(cfg.radius)
        self.encoding = make_encoding(cfg.encoding, cfg.backend)
        self.channels = int(cfg.latent_channels) if cfg.output == "latent" else 3
        self.network = MLP(self.encoding.n_output_dims, 1 + self.channels, cfg.hidden, cfg.hidden_layers,
                           activation="relu")
        self.density_act = get_activation(cfg.density_activation)

    def _features(self, x: Tensor) -> Tensor:
        """x [N,3] world -> raw [N,1+C] (density logit with blob bias, albedo logits or latents)."""
        u = ((x / self.radius) + 1.0) * 0.5
        return self._add_blob(self.network(self.encoding(u.clamp(0.0, 1.0))), x)

    def _add_blob(self, raw: Tensor, x: Tensor) -> Tensor:
        blob = self.cfg.blob_density * (1.0 - x.norm(dim=-1) / self.cfg.blob_radius) + self.cfg.density_shift
        return torch.cat([raw[:, :1] + blob[:, None], raw[:, 1:]], dim=-1)

    def _features_and_gradient(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N,3] -> raw [N,4] and d raw_density / d x [N,3] in closed form (encoding Jacobian, MLP sweep).

        The density activation is monotonic, so the normal direction only needs the raw gradient.
        """
        u = ((x / self.radius) + 1.0) * 0.5
        enc, jac = self.encoding.forward_with_jacobian(u)  # [N,D], [3,N,D] (d/du)
        raw, g = self.network.forward_with_input_grad(enc, 0)  # [N,4], [N,D]
        grad = (jac * g).sum(-1).t() * (0.5 / self.radius)  # [N,3]
        grad = grad - (self.cfg.blob_density / self.cfg.blob_radius) * x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return self._add_blob(raw, x), grad

    def density(self, x: Tensor) -> Tensor:
        """x [N,3] -> sigma [N] >= 0."""
        return self.density_act(self._features(x)[:, 0])

    def forward(self, x: Tensor, with_normals: bool = False) -> dict[str, Tensor]:
        """x [N,3] -> {"density": [N], "albedo": [N,3] in (0,1) (latent: [N,C]), "normal": [N,3] unit (if asked)}."""
        if with_normals and self.cfg.normals == "analytic" and hasattr(self.encoding, "forward_with_jacobian"):
            feat, grad = self._features_and_gradient(x)
            sigma = self.density_act(feat[:, 0])
            normal = -grad
        elif with_normals and self.cfg.normals == "analytic":  # e.g. tiny-cuda-nn: autograd, double backward
            need_graph = torch.is_grad_enabled()
            with torch.enable_grad():
                xg = x if x.requires_grad else x.detach().requires_grad_(True)
                feat = self._features(xg)
                sigma = self.density_act(feat[:, 0])
                (grad,) = torch.autograd.grad(sigma.sum(), xg, create_graph=need_graph)
            if not need_graph:
                feat, sigma = feat.detach(), sigma.detach()
            normal = -grad
        else:
            feat = self._features(x)
            sigma = self.density_act(feat[:, 0])
            normal = None
            if with_normals:
                normal = finite_difference_normal(self.density, x, self.cfg.finite_difference_eps)
        out = {"density": sigma, "albedo": torch.sigmoid(feat[:, 1:]) if self.cfg.output == "rgb" else feat[:, 1:]}
        if normal is not None:
            out["normal"] = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return out

    def parameter_groups(self, optim_cfg) -> list[dict]:
        return [
            {"params": list(self.encoding.parameters()), "lr": optim_cfg.lr_encoding, "name": "encoding"},
            {"params": list(self.network.parameters()), "lr": optim_cfg.lr_network, "name": "network"},
        ]

    def iso_level(self, resolution: int) -> Optional[float]:
        """The export's marching-cubes level: None, :func:`dream3d.export.mesh.auto_threshold`'s rule."""
        return None

    def surface_albedo(self, x: Tensor) -> Tensor:
        """The colour the export bakes at surface points x [N,3]: the albedo there (an MLP field is smooth)."""
        return self(x)["albedo"]

    def rgb_state_from_latent(self, state: dict[str, Tensor], latent_rgb: Tensor) -> dict[str, Tensor]:
        """This field's state (keys without the particle prefix) of a latent NeRF as the state of an RGB NeRF whose
        colour head starts at the latent colours (:func:`rgb_head_from_latent`)."""
        state = dict(state)
        key = f"network.layers.{len(self.network.layers) - 1}"
        state[key + ".weight"], state[key + ".bias"] = rgb_head_from_latent(
            state[key + ".weight"], state[key + ".bias"], latent_rgb)
        return state


def make_field(cfg) -> nn.Module:
    """The field a NeRF stage's ``representation`` names: ``field: hashgrid`` -> :class:`NeRF`, ``voxels`` ->
    :class:`dream3d.representations.voxels.VoxelGrid` (the same interface)."""
    if cfg.field == "voxels":
        from dream3d.representations.voxels import VoxelGrid

        return VoxelGrid(cfg)
    return NeRF(cfg)


def rgb_head_from_latent(weight: Tensor, bias: Tensor, latent_rgb: Tensor, keep: int = 1) -> tuple[Tensor, Tensor]:
    """The output layer of an RGB field that starts where a latent field's colours are (Latent-NeRF's RGB
    refinement, Latent-Paint's RGB stage).

    ``weight`` [k+C, H], ``bias`` [k+C]: the latent field's output layer (``keep`` = k leading rows that are not
    colour, the NeRF's density row, then C latent rows); ``latent_rgb`` [C+1, 3]: the affine map rgb ≈ [latent, 1] M
    (:func:`dream3d.prior.latent.latent_rgb_map`). The leading rows are kept; the colour logits become
    4 (rgb - 1/2) with rgb the mapped latent, so that sigmoid(logit) ≈ rgb over most of [0, 1] (sigmoid(4 (x - 1/2))
    is within 0.12 of x). Returns ([k+3, H], [k+3])."""
    A, c = latent_rgb[:-1].to(weight), latent_rgb[-1].to(weight)  # [C,3], [3]
    w_rgb = 4.0 * A.t() @ weight[keep:]  # [3,H]
    b_rgb = 4.0 * (A.t() @ bias[keep:] + c - 0.5)
    return torch.cat([weight[:keep], w_rgb]), torch.cat([bias[:keep], b_rgb])
