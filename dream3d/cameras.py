"""Cameras: random training views (DreamFusion ranges), view labels for prompts, turntable orbits.

World frame: Y up, the object's canonical front faces +Z. A camera at azimuth 0 and elevation 0 sits on the
+Z axis looking at the origin (it sees the front); azimuth grows counter-clockwise seen from above (towards
+X). Camera frame: OpenGL (looks down -Z, +Y up, +X right). Angles in degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor


@dataclass
class CameraConfig:
    """Random training cameras (DreamFusion ranges) and the fixed validation/turntable orbit. Degrees."""

    elevation_range: list[float] = field(default_factory=lambda: [-10.0, 90.0])
    azimuth_range: list[float] = field(default_factory=lambda: [-180.0, 180.0])
    distance_range: list[float] = field(default_factory=lambda: [1.5, 2.0])
    # framing: "distance" draws the camera distance from distance_range (DreamFusion); "fill" draws the share
    # of the field of view that a sphere of framing_radius spans from fill_range and sets the distance from it
    # (the shipped prior's training framing: the bounding sphere spans 75-100% of the field of view)
    framing: str = "distance"
    fill_range: list[float] = field(default_factory=lambda: [0.75, 1.0])
    framing_radius: float = 0.6
    fovy_range: list[float] = field(default_factory=lambda: [40.0, 70.0])
    light_distance_range: list[float] = field(default_factory=lambda: [0.8, 1.5])
    height: int = 64
    width: int = 64
    batch_size: int = 1
    front_threshold: float = 45.0  # |azimuth| below: "front"; above 180 - this: "back"
    overhead_threshold: float = 60.0  # elevation above: "overhead"
    eval_elevation: float = 15.0
    eval_distance: float = 1.75
    eval_fovy: float = 55.0
    eval_size: int = 64

VIEW_LABELS = ("front", "side", "back", "overhead")


@dataclass
class Cameras:
    """A batch of B pinhole cameras rendering H x W images."""

    c2w: Tensor  # [B,4,4] camera-to-world
    fovy: Tensor  # [B] degrees
    elevation: Tensor  # [B] degrees
    azimuth: Tensor  # [B] degrees, in [-180, 180)
    distance: Tensor  # [B]
    light_position: Tensor  # [B,3] world position of the point light
    height: int
    width: int

    @property
    def batch_size(self) -> int:
        return self.c2w.shape[0]

    @property
    def position(self) -> Tensor:  # [B,3]
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device | str) -> "Cameras":
        return Cameras(
            self.c2w.to(device), self.fovy.to(device), self.elevation.to(device), self.azimuth.to(device),
            self.distance.to(device), self.light_position.to(device), self.height, self.width,
        )

    @staticmethod
    def cat(batches: list["Cameras"]) -> "Cameras":
        """One batch of all the cameras of ``batches`` (same image size), in order."""
        if len({(c.height, c.width) for c in batches}) != 1:
            raise ValueError("Cameras.cat: every batch must render the same image size")
        if len(batches) == 1:
            return batches[0]
        return Cameras(*(torch.cat([getattr(c, f) for c in batches]) for f in
                         ("c2w", "fovy", "elevation", "azimuth", "distance", "light_position")),
                       batches[0].height, batches[0].width)

    def focal(self) -> Tensor:  # [B] in pixels
        return 0.5 * self.height / torch.tan(torch.deg2rad(self.fovy) / 2)

    def rays(self, offset: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """World-space rays through pixel centres: origins [B,H,W,3], unit directions [B,H,W,3]. ``offset`` [B,2]
        (pixels, x right and y down) moves every ray of an image off its pixel centre by the same amount."""
        B, H, W = self.batch_size, self.height, self.width
        dev = self.c2w.device
        j, i = torch.meshgrid(
            torch.arange(H, device=dev, dtype=torch.float32) + 0.5,
            torch.arange(W, device=dev, dtype=torch.float32) + 0.5,
            indexing="ij",
        )
        i, j = i.expand(B, H, W), j.expand(B, H, W)
        if offset is not None:
            offset = offset.to(dev, torch.float32)
            i, j = i + offset[:, 0, None, None], j + offset[:, 1, None, None]
        f = self.focal().view(B, 1, 1)
        dirs_cam = torch.stack(
            [(i - W / 2) / f, -(j - H / 2) / f, -torch.ones(B, H, W, device=dev)],
            dim=-1,
        )  # [B,H,W,3]
        dirs = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], dirs_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = self.position.view(B, 1, 1, 3).expand(B, H, W, 3)
        return origins, dirs

    def view_labels(self, front_threshold: float = 45.0, overhead_threshold: float = 60.0) -> list[str]:
        """DreamFusion view-dependent prompting: overhead above the elevation threshold, else front/side/back by azimuth."""
        labels = []
        for el, az in zip(self.elevation.tolist(), self.azimuth.tolist()):
            a = abs((az + 180.0) % 360.0 - 180.0)
            if el > overhead_threshold:
                labels.append("overhead")
            elif a < front_threshold:
                labels.append("front")
            elif a > 180.0 - front_threshold:
                labels.append("back")
            else:
                labels.append("side")
        return labels


def look_at_c2w(position: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """Camera-to-world matrices [B,4,4] for cameras at ``position`` [B,3] looking at ``target`` (origin), Y up."""
    B = position.shape[0]
    target = torch.zeros_like(position) if target is None else target
    forward = target - position
    forward = forward / forward.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 1.0, 0.0], device=position.device).expand(B, 3)
    right = torch.cross(forward, up, dim=-1)
    degenerate = right.norm(dim=-1) < 1e-6  # looking straight down/up: pick +X as right
    right[degenerate] = torch.tensor([1.0, 0.0, 0.0], device=position.device)
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.cross(right, forward, dim=-1)
    c2w = torch.eye(4, device=position.device).repeat(B, 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = position
    return c2w


CAMERA_CONDITION_DIM = 16


def camera_condition(c2w: Tensor) -> Tensor:
    """What a camera-conditioned prior is told about a camera: c2w [B,4,4] -> [B,16], the flattened
    camera-to-world matrix (dream3d's world: Y up, front +Z) with its translation scaled to unit length.

    The scale is dropped because a render's object fills the frame by framing, not by distance (the shape
    world's images depend on the camera's direction, fovy and fill only). :class:`dream3d.prior.camera.CameraTokens`
    reads it.
    """
    c2w = c2w.float().clone()
    c2w[:, :3, 3] = c2w[:, :3, 3] / c2w[:, :3, 3].norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return c2w.reshape(-1, CAMERA_CONDITION_DIM)


def spherical_to_position(elevation: Tensor, azimuth: Tensor, distance: Tensor) -> Tensor:
    """[B] degrees, degrees, units -> [B,3] positions (Y up, azimuth 0 on +Z)."""
    el, az = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    return torch.stack(
        [distance * torch.cos(el) * torch.sin(az), distance * torch.sin(el), distance * torch.cos(el) * torch.cos(az)],
        dim=-1,
    )


def make_cameras(
    elevation: Tensor, azimuth: Tensor, distance: Tensor, fovy: Tensor, height: int, width: int,
    light_position: Optional[Tensor] = None,
) -> Cameras:
    position = spherical_to_position(elevation, azimuth, distance)
    light = position.clone() if light_position is None else light_position
    az = (azimuth + 180.0) % 360.0 - 180.0
    return Cameras(look_at_c2w(position), fovy, elevation, az, distance, light, height, width)


def _uniform(lo_hi: list[float], n: int, gen: torch.Generator) -> Tensor:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def framing_distance(radius: float, fovy: Tensor, fill: Tensor) -> Tensor:
    """Camera distance [B] at which a sphere of ``radius`` spans ``fill`` [B] of the field of view ``fovy`` [B]."""
    return radius / (fill * torch.sin(torch.deg2rad(fovy) / 2))


def sample_cameras(cfg, gen: torch.Generator, batch_size: Optional[int] = None) -> Cameras:
    """Random cameras from a :class:`CameraConfig`.

    Elevation is sampled uniformly on the sphere's height between the range's bounds (so overhead views are
    not over-represented), azimuth, distance and fovy uniformly; with ``framing="fill"`` the distance follows
    from a uniform fill instead (:func:`framing_distance`). The point light sits near the camera
    direction (DreamFusion): camera direction plus N(0, 0.5) jitter, normalised, times a distance from
    ``light_distance_range``.
    """
    n = batch_size or cfg.batch_size
    lo, hi = (math.sin(math.radians(v)) for v in cfg.elevation_range)
    elevation = torch.rad2deg(torch.asin((lo + (hi - lo) * torch.rand(n, generator=gen)).clamp(-1, 1)))
    azimuth = _uniform(cfg.azimuth_range, n, gen)
    distance = _uniform(cfg.distance_range, n, gen)
    fovy = _uniform(cfg.fovy_range, n, gen)
    if cfg.framing == "fill":  # a sphere of framing_radius spans `fill` of the field of view
        distance = framing_distance(cfg.framing_radius, fovy, _uniform(cfg.fill_range, n, gen))
    position = spherical_to_position(elevation, azimuth, distance)
    light_dir = position / position.norm(dim=-1, keepdim=True) + 0.5 * torch.randn(n, 3, generator=gen)
    light_dir = light_dir / light_dir.norm(dim=-1, keepdim=True)
    light = light_dir * _uniform(cfg.light_distance_range, n, gen)[:, None] * distance[:, None]
    return make_cameras(elevation, azimuth, distance, fovy, cfg.height, cfg.width, light)


def turntable(
    n_views: int, elevation: float = 15.0, distance: float = 1.75, fovy: float = 55.0, size: int = 64,
    start_azimuth: float = 0.0,
) -> Cameras:
    """``n_views`` cameras evenly spaced in azimuth on one orbit, starting at the front (azimuth 0)."""
    az = start_azimuth + torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    full = torch.full((n_views,), 1.0)
    return make_cameras(full * elevation, az, full * distance, full * fovy, size, size)
