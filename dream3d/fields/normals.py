"""Normals of a density field: the negated density gradient (the NeRF's and the voxel grid's)."""

from __future__ import annotations

import torch
from torch import Tensor


def finite_difference_normal(density_fn, x: Tensor, eps: float) -> Tensor:
    """The negated density gradient at x [N,3] by central differences of step ``eps`` (not normalised): the
    ``normals: finite_difference`` of the NeRF and the voxel grid."""
    offsets = torch.eye(3, device=x.device) * eps  # [3,3]
    pts = torch.cat([x[:, None, :] + offsets, x[:, None, :] - offsets], dim=1).reshape(-1, 3)
    d = density_fn(pts).view(-1, 2, 3)
    return -(d[:, 0] - d[:, 1]) / (2 * eps)
