"""A textured triangle mesh: what exporters write, what turntables render, and what mesh stages start from.

Conventions (the same as the shape world and the cameras): Y up, the object's front facing +Z, units of the
scene (the objects fit in a ball of radius ~1). ``uv`` has one row per vertex (vertices are split along UV
seams, as xatlas returns them), origin at the texture's *bottom-left* as in glTF/OBJ after the V flip that
the writers apply: here ``uv[:, 1] = 0`` is the **top** row of ``texture`` (image row 0), like
``torch.nn.functional.grid_sample`` with ``(u * 2 - 1, v * 2 - 1)``. Writers flip V on the way out and
:func:`dream3d.export.mesh.load_mesh` flips it back, so a written and re-loaded mesh equals the original up
to precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class TexturedMesh:
    verts: Tensor  # [V,3] float32
    faces: Tensor  # [F,3] int64
    uv: Optional[Tensor] = None  # [V,2] in [0,1]; row 0 of ``texture`` at v = 0
    texture: Optional[Tensor] = None  # [H,W,3] albedo in [0,1]
    vertex_colors: Optional[Tensor] = None  # [V,3] in [0,1] (PLY, previews, meshes without UVs)
    roughness: Optional[float] = None
    metallic: Optional[float] = None

    def __post_init__(self) -> None:
        self.verts = torch.as_tensor(self.verts, dtype=torch.float32)
        self.faces = torch.as_tensor(self.faces, dtype=torch.long)
        if self.verts.dim() != 2 or self.verts.shape[-1] != 3:
            raise ValueError(f"mesh verts must be [V,3], got {tuple(self.verts.shape)}")
        if self.faces.dim() != 2 or self.faces.shape[-1] != 3:
            raise ValueError(f"mesh faces must be [F,3], got {tuple(self.faces.shape)}")
        if self.faces.numel() and (int(self.faces.min()) < 0 or int(self.faces.max()) >= self.verts.shape[0]):
            raise ValueError("mesh faces index vertices that do not exist")
        if self.uv is not None:
            self.uv = torch.as_tensor(self.uv, dtype=torch.float32)
            if self.uv.shape != (self.verts.shape[0], 2):
                raise ValueError(f"mesh uv must be [V,2] = [{self.verts.shape[0]},2], got {tuple(self.uv.shape)}")
        if self.texture is not None:
            self.texture = torch.as_tensor(self.texture, dtype=torch.float32)
            if self.texture.dim() != 3 or self.texture.shape[-1] != 3:
                raise ValueError(f"mesh texture must be [H,W,3], got {tuple(self.texture.shape)}")
        if self.vertex_colors is not None:
            self.vertex_colors = torch.as_tensor(self.vertex_colors, dtype=torch.float32)
            if self.vertex_colors.shape != self.verts.shape:
                raise ValueError(f"mesh vertex_colors must be [V,3], got {tuple(self.vertex_colors.shape)}")

    @property
    def num_verts(self) -> int:
        return int(self.verts.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def textured(self) -> bool:
        return self.uv is not None and self.texture is not None

    def sample_texture(self, uv: Tensor) -> Tensor:
        """Bilinear albedo at uv [...,2] (this module's convention) -> [...,3]. Needs ``texture``."""
        if self.texture is None:
            raise ValueError("mesh has no texture to sample")
        shape = uv.shape[:-1]
        grid = (uv.reshape(1, -1, 1, 2) * 2.0 - 1.0).to(self.texture)
        tex = self.texture.permute(2, 0, 1)[None]  # [1,3,H,W]
        out = F.grid_sample(tex, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[0, :, :, 0].t().reshape(*shape, 3)

    def to(self, device) -> "TexturedMesh":
        def move(t):
            return None if t is None else t.to(device)

        return TexturedMesh(move(self.verts), move(self.faces), move(self.uv), move(self.texture),
                            move(self.vertex_colors), self.roughness, self.metallic)
