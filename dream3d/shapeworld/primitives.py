"""Triangle-mesh builders for the shape world's primitives, and the few transforms that compose them.

Every builder returns a :class:`Mesh` (``verts`` float32 [V,3], ``faces`` int64 [F,3]) centred at the origin,
Y up, with outward winding (counter-clockwise seen from outside, so ``cross(v1 - v0, v2 - v0)`` points out)
and no duplicated vertices: closed shapes are watertight. Surfaces of revolution share one builder
(:func:`lathe`): sphere, cone, cylinder, frustum, dome and the square pyramid are all lathes.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor


class Mesh(NamedTuple):
    """An indexed triangle mesh: verts float32 [V,3], faces int64 [F,3]."""

    verts: Tensor
    faces: Tensor


def lathe(profile: Sequence[tuple[float, float]], segments: int = 32, phase: float = 0.0) -> Mesh:
    """Surface of revolution about +Y from a ``profile`` of (radius, y) points listed top to bottom.

    A point with radius 0 becomes a single pole vertex (so a profile that starts and ends on the axis is
    closed); every other point becomes a ring of ``segments`` vertices at azimuths ``phase + 2 pi s / segments``
    (radians, measured from +Z towards +X).
    """
    angles = phase + torch.arange(segments, dtype=torch.float64) * (2 * math.pi / segments)
    verts: list[Tensor] = []
    levels: list[Tensor] = []  # vertex indices of each profile point: [1] for a pole, [segments] for a ring
    count = 0
    for radius, y in profile:
        if radius == 0.0:
            verts.append(torch.tensor([[0.0, y, 0.0]], dtype=torch.float64))
            levels.append(torch.tensor([count]))
            count += 1
        else:
            ring = torch.stack([radius * torch.sin(angles), torch.full_like(angles, y), radius * torch.cos(angles)], -1)
            verts.append(ring)
            levels.append(torch.arange(count, count + segments))
            count += segments
    faces = [_band(upper, lower) for upper, lower in zip(levels[:-1], levels[1:])]
    return Mesh(torch.cat(verts).float(), torch.cat(faces).long())


def _band(upper: Tensor, lower: Tensor) -> Tensor:
    """Triangles [*,3] joining two consecutive lathe levels (pole or ring), wound outwards."""
    if upper.numel() == 1 and lower.numel() == 1:
        raise ValueError("two consecutive poles in a lathe profile")
    if upper.numel() == 1:
        nxt = lower.roll(-1)
        return torch.stack([upper.expand_as(lower), lower, nxt], dim=-1)
    if lower.numel() == 1:
        nxt = upper.roll(-1)
        return torch.stack([lower.expand_as(upper), nxt, upper], dim=-1)
    up_next, low_next = upper.roll(-1), lower.roll(-1)
    first = torch.stack([upper, lower, low_next], dim=-1)
    second = torch.stack([upper, low_next, up_next], dim=-1)
    return torch.cat([first, second])


def sphere(radius: float = 0.5, rings: int = 16, segments: int = 32) -> Mesh:
    """UV sphere with poles on the Y axis: ``rings`` latitude bands, ``segments`` around."""
    profile = [(0.0, radius)]
    for k in range(1, rings):
        theta = math.pi * k / rings
        profile.append((radius * math.sin(theta), radius * math.cos(theta)))
    profile.append((0.0, -radius))
    return lathe(profile, segments)


def dome(radius: float = 0.5, rings: int = 8, segments: int = 32) -> Mesh:
    """Closed upper hemisphere: the curved cap over a flat disc at y = 0 (apex at y = radius)."""
    profile = [(0.0, radius)]
    for k in range(1, rings + 1):
        theta = 0.5 * math.pi * k / rings
        profile.append((radius * math.sin(theta), radius * math.cos(theta)))
    profile.append((0.0, 0.0))
    return lathe(profile, segments)


def frustum(radius_bottom: float, radius_top: float, height: float, segments: int = 32, phase: float = 0.0) -> Mesh:
    """Closed truncated cone along Y from y = -height/2 to +height/2 (a cone when ``radius_top`` is 0)."""
    h = 0.5 * height
    top = [(0.0, h)] if radius_top == 0.0 else [(0.0, h), (radius_top, h)]
    bottom = [(0.0, -h)] if radius_bottom == 0.0 else [(radius_bottom, -h), (0.0, -h)]
    return lathe(top + bottom, segments, phase)


def cylinder(radius: float = 0.4, height: float = 0.9, segments: int = 32) -> Mesh:
    """Closed cylinder along Y, centred at the origin."""
    return frustum(radius, radius, height, segments)


def cone(radius: float = 0.45, height: float = 0.9, segments: int = 32) -> Mesh:
    """Closed cone along Y: base disc at y = -height/2, apex at +height/2."""
    return frustum(radius, 0.0, height, segments)


def pyramid(base: float = 0.85, height: float = 0.8) -> Mesh:
    """Square pyramid: axis-aligned base of side ``base`` at y = -height/2, apex at +height/2."""
    return frustum(base / math.sqrt(2.0), 0.0, height, segments=4, phase=math.pi / 4)


def torus(major_radius: float = 0.33, minor_radius: float = 0.14, major_segments: int = 40,
          minor_segments: int = 16) -> Mesh:
    """Torus lying in the XZ plane (hole along Y), centred at the origin."""
    u = torch.arange(major_segments, dtype=torch.float64) * (2 * math.pi / major_segments)
    v = torch.arange(minor_segments, dtype=torch.float64) * (2 * math.pi / minor_segments)
    uu, vv = torch.meshgrid(u, v, indexing="ij")  # [U,S]
    radial = major_radius + minor_radius * torch.cos(vv)
    verts = torch.stack([radial * torch.sin(uu), minor_radius * torch.sin(vv), radial * torch.cos(uu)], -1)
    idx = torch.arange(major_segments * minor_segments).view(major_segments, minor_segments)
    a = idx
    b = idx.roll(-1, dims=0)  # next around the ring
    c = b.roll(-1, dims=1)  # next around the ring and the tube
    d = idx.roll(-1, dims=1)  # next around the tube
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    return Mesh(verts.reshape(-1, 3).float(), faces.long())


# corner k of a box has x, y, z signs from bits 2, 1, 0 of k; quads wound counter-clockwise from outside
_BOX_QUADS = ((5, 4, 6, 7), (0, 1, 3, 2), (3, 7, 6, 2), (0, 4, 5, 1), (1, 5, 7, 3), (4, 0, 2, 6))


def box(size_x: float = 0.8, size_y: float = 0.8, size_z: float = 0.8) -> Mesh:
    """Axis-aligned closed box of the given extents centred at the origin (8 vertices, 12 triangles)."""
    bits = torch.tensor([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)], dtype=torch.float32)
    verts = (bits - 0.5) * torch.tensor([size_x, size_y, size_z])
    quads = torch.tensor(_BOX_QUADS)
    faces = torch.cat([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    return Mesh(verts, faces.long())


def cube(size: float = 0.8) -> Mesh:
    """Axis-aligned cube of side ``size`` centred at the origin."""
    return box(size, size, size)


# --------------------------------------------------------------------------------------------------------------
# Transforms (all return new meshes; rotations keep the winding, mirror-free)
# --------------------------------------------------------------------------------------------------------------


def translate(mesh: Mesh, offset: Sequence[float]) -> Mesh:
    """Move a mesh by ``offset`` (x, y, z)."""
    return Mesh(mesh.verts + torch.tensor(offset, dtype=torch.float32), mesh.faces)


def scale(mesh: Mesh, factors: float | Sequence[float]) -> Mesh:
    """Scale about the origin, uniformly or per axis (positive factors only, so winding is kept)."""
    f = torch.as_tensor(factors, dtype=torch.float32).expand(3)
    if (f <= 0).any():
        raise ValueError(f"scale factors must be positive, got {factors}")
    return Mesh(mesh.verts * f, mesh.faces)


def rotation_matrix(axis: str, degrees: float) -> Tensor:
    """Right-handed rotation [3,3] about the ``x``, ``y`` or ``z`` axis (float32)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    mats = {
        "x": [[1, 0, 0], [0, c, -s], [0, s, c]],
        "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]],
    }
    return torch.tensor(mats[axis], dtype=torch.float32)


def rotate(mesh: Mesh, axis: str, degrees: float) -> Mesh:
    """Rotate about a coordinate axis through the origin (right-handed: +90 about x takes +Y to +Z)."""
    return Mesh(mesh.verts @ rotation_matrix(axis, degrees).T, mesh.faces)


def merge(meshes: Sequence[Mesh]) -> Mesh:
    """Concatenate meshes into one (no welding; each part stays closed if it was)."""
    verts, faces, offset = [], [], 0
    for m in meshes:
        verts.append(m.verts)
        faces.append(m.faces + offset)
        offset += m.verts.shape[0]
    return Mesh(torch.cat(verts), torch.cat(faces))


PRIMITIVES = {
    "cube": cube,
    "sphere": sphere,
    "cone": cone,
    "cylinder": cylinder,
    "torus": torus,
    "pyramid": pyramid,
}
