"""The settings of the stage systems that are not any one part's: loss weights, the optimiser, and what
starts and shapes a mesh stage. Kept apart from the systems so the config schema imports no Lightning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class MeshStageConfig:
    """Mesh stages (systems dmtet, dmtet-geometry, mesh-texture): what starts the DMTet and what is scored."""

    init: str = "sphere"  # without a stage `init`: sphere | ellipsoid | <mesh file> (with one: that stage's result)
    init_size: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # sphere/ellipsoid semi-axes (x, y, z)
    init_fit_steps: int = 200  # from a NeRF: steps fitting the sdf to the density's level set (0: off)
    texture_fit_steps: int = 200  # from a NeRF: steps distilling its albedo into the DMTet's texture field
    latent_mask_steps: int = 0  # geometry stage, latent priors: score [normal, mask] as latents before this step
    material: str = "albedo"  # texture stage: albedo (diffuse colour) | pbr (albedo, roughness, metallic, env light)
    light: str = "studio"  # pbr: environment light preset (studio | uniform)
    background_color: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])


@dataclass
class LossConfig:
    """Weights of the loss terms: numbers or schedules. Zero switches a term off (it is not computed)."""

    sds: Any = 1.0
    vsd: Any = 1.0
    lora: Any = 1.0
    orient: Any = field(default_factory=lambda: [0, 10.0, 1000.0, 5000])
    sparsity: Any = 0.0  # mean sqrt(opacity^2 + 0.01): fewer occupied pixels
    opacity: Any = 0.0  # binary entropy of opacity: crisp silhouettes
    distortion: Any = 0.0  # NeRF stages: Mip-NeRF 360's distortion, weight spread along rays (haze, fog)
    normal_consistency: Any = 0.0  # mesh stages: 1 - cos between the normals of adjacent faces
    laplacian: Any = 0.0  # mesh stages: squared distance of each vertex from its neighbours' mean (x resolution^2)
    sketch: Any = 0.0  # NeRF stages with the run's sketch mesh: Sketch-Shape (representations/sketch.py)
    sjc: Any = 1.0  # guidance sjc: Score Jacobian Chaining's PAAS update (guidance/sjc.py)
    emptiness: Any = 0.0  # NeRF stages: SJC's mean log(1 + 10 w) over ray samples (systems/base.py emptiness_loss)
    center_depth: Any = 0.0  # NeRF stages: SJC's -log(border depth - centre depth) (systems/base.py center_depth_loss)
    reference_mask: Any = 0.0  # the render from the run's reference camera: ½ Σ (opacity - mask)² (dream3d/reference.py)
    reference_rgb: Any = 0.0  # ... ½ Σ (colour - the reference picture)²


@dataclass
class OptimConfig:
    lr_encoding: float = 0.01  # the hash grid; with representation.field=voxels, the voxel grids
    lr_network: float = 0.001
    lr_background: float = 0.001
    lr_sdf: float = 0.001  # mesh stages: DMTet signed distances (scene units)
    lr_deformation: float = 0.005  # mesh stages: DMTet vertex offsets (pre-tanh)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-15
