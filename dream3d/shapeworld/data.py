"""Rendered training data of the shape-world prior: captioned views of every catalogue object.

Each image shows one catalogue object from a random camera (the DreamFusion ranges of
:class:`dream3d.cameras.CameraConfig`: elevation -10..90 degrees, uniform on the sphere's height; azimuth all
around; fovy 40..70) under a jittered directional light, on a white background, captioned
``caption_with_view(object caption, view label of the camera)`` ("a snowman, back view").

**Framing.** The object is scaled so that its bounding sphere (radius ``r``) spans a random fraction ``fill``
of the field of view (``fill_range``, default 0.75..1: always fully in frame, never a speck). That is the same
image as the unscaled object seen from ``distance = r / (fill * sin(fovy / 2))``, which is what is rendered;
so the camera distance range does not apply (the image depends on direction, fovy and fill only).

**Shading.** Lambert + ambient, like :func:`dream3d.render.mesh.render_mesh`, but with a per-image ambient
level (``ambient_range``) and light direction (the camera direction plus N(0, ``light_jitter``) noise, as in
:func:`dream3d.cameras.sample_cameras`), applied to an unshaded, silhouette-antialiased render.

Everything random is drawn up front from one seeded generator, so a dataset is a function of
(``n``, ``seed``, :class:`RenderConfig`, catalogue). Objects are balanced: each gets ``n // 58`` or one more
images. :func:`load_or_render` caches datasets as ``.npz`` files (uint8 images + ids) in a caller's folder.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dream3d.cameras import VIEW_LABELS, CameraConfig, Cameras, framing_distance, make_cameras, sample_cameras
from dream3d.io import atomic_path
from dream3d.render.mesh import render_mesh
from dream3d.render.mesh_geometry import edge_topology
from dream3d.shapeworld.catalogue import ShapeObject, caption_with_view, catalogue

FORMAT_VERSION = 1
HELD_OUT_SEED_OFFSET = 1_000_003  # held-out split: seed + this (disjoint random stream from the training split)
_CHUNK = 128  # views of one object rendered per call


@dataclass
class RenderConfig:
    """How training views are drawn. Angles in degrees; ranges are [low, high]."""

    size: int = 64
    elevation_range: list[float] = field(default_factory=lambda: list(CameraConfig().elevation_range))
    azimuth_range: list[float] = field(default_factory=lambda: list(CameraConfig().azimuth_range))
    fovy_range: list[float] = field(default_factory=lambda: list(CameraConfig().fovy_range))
    fill_range: list[float] = field(default_factory=lambda: [0.75, 1.0])  # bounding sphere / field of view
    ambient_range: list[float] = field(default_factory=lambda: [0.2, 0.5])
    light_jitter: float = 0.5  # std of the noise added to the unit camera direction to get the light direction
    front_threshold: float = CameraConfig().front_threshold
    overhead_threshold: float = CameraConfig().overhead_threshold


def caption_table() -> list[str]:
    """Every caption a dataset uses: caption id ``object_id * 4 + view_id`` (views in ``VIEW_LABELS`` order)."""
    return [caption_with_view(o.caption, v) for o in catalogue() for v in VIEW_LABELS]


@dataclass
class ShapeDataset:
    """N rendered views. images uint8 [N,H,W,3]; ids int64 [N]; angles float32 [N] (degrees)."""

    images: np.ndarray
    object_ids: np.ndarray  # index into catalogue()
    view_ids: np.ndarray  # index into cameras.VIEW_LABELS
    caption_ids: np.ndarray  # index into captions (= object_id * 4 + view_id)
    captions: list[str]  # caption_table()
    elevation: np.ndarray
    azimuth: np.ndarray
    fovy: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def caption(self, i: int) -> str:
        return self.captions[int(self.caption_ids[i])]

    def tensor(self, index: Optional[Tensor] = None) -> Tensor:
        """Images [B,3,H,W] float32 in [0,1] (all, or those at ``index`` [B])."""
        x = torch.from_numpy(self.images) if index is None else torch.from_numpy(self.images[index.numpy()])
        return x.permute(0, 3, 1, 2).float().div_(255.0)


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Views:
    """Every random draw of a dataset: [N] angles, fills, ambients, [N,3] light directions."""

    elevation: Tensor
    azimuth: Tensor
    fovy: Tensor
    fill: Tensor
    ambient: Tensor
    light: Tensor
    labels: list[str]


def _draw_views(n: int, cfg: RenderConfig, gen: torch.Generator) -> _Views:
    cam_cfg = CameraConfig(
        elevation_range=list(cfg.elevation_range), azimuth_range=list(cfg.azimuth_range),
        fovy_range=list(cfg.fovy_range), height=cfg.size, width=cfg.size,
    )
    cams = sample_cameras(cam_cfg, gen, n)  # elevation uniform on the sphere's height, as for training NeRFs
    lo, hi = cfg.fill_range
    fill = lo + (hi - lo) * torch.rand(n, generator=gen)
    lo, hi = cfg.ambient_range
    ambient = lo + (hi - lo) * torch.rand(n, generator=gen)
    to_cam = F.normalize(cams.position, dim=-1)
    light = F.normalize(to_cam + cfg.light_jitter * torch.randn(n, 3, generator=gen), dim=-1)
    labels = cams.view_labels(cfg.front_threshold, cfg.overhead_threshold)
    return _Views(cams.elevation, cams.azimuth, cams.fovy, fill, ambient, light, labels)


def render_views(
    obj: ShapeObject, elevation: Tensor, azimuth: Tensor, fovy: Tensor, fill: Tensor, ambient: Tensor,
    light: Tensor, size: int, topology: Optional[Tensor] = None,
) -> Tensor:
    """Shaded renders of one object on white: [B] angles/fills/ambients, light [B,3] (towards) -> rgb [B,H,W,3].

    Values in [0, 1]. Silhouettes are antialiased (the renderer's analytic antialiasing of an unshaded render;
    shading then multiplies the premultiplied albedo).
    """
    radius = float(obj.verts.norm(dim=-1).max())
    cams: Cameras = make_cameras(elevation, azimuth, framing_distance(radius, fovy, fill), fovy, size, size)
    with torch.no_grad():
        out = render_mesh(obj.verts, obj.faces, cams, obj.colors, ambient=1.0, background=0.0, topology=topology)
    albedo, alpha = out["rgb"], out["opacity"]  # albedo premultiplied by coverage (black background)
    lambert = (out["normal"] * light.view(-1, 1, 1, 3)).sum(-1, keepdim=True).clamp_min(0.0)
    a = ambient.view(-1, 1, 1, 1)
    return (albedo * (a + (1.0 - a) * lambert) + (1.0 - alpha)).clamp(0.0, 1.0)


def render_dataset(
    n: int, seed: int, cfg: Optional[RenderConfig] = None, progress: Optional[Callable[[int, int], None]] = None,
) -> ShapeDataset:
    """Render ``n`` random captioned views (deterministic in ``n``, ``seed``, ``cfg``); see the module docstring.

    ``progress(done, n)`` is called after each rendered chunk.
    """
    if n < 1:
        raise ValueError(f"a dataset needs at least one image, got n={n}")
    cfg = cfg or RenderConfig()
    objects = catalogue()
    gen = torch.Generator().manual_seed(int(seed))
    object_ids = torch.arange(n) % len(objects)
    object_ids = object_ids[torch.randperm(n, generator=gen)]
    views = _draw_views(n, cfg, gen)
    view_ids = torch.tensor([VIEW_LABELS.index(label) for label in views.labels], dtype=torch.int64)
    images = np.empty((n, cfg.size, cfg.size, 3), dtype=np.uint8)
    done = 0
    for k, obj in enumerate(objects):
        idx_all = (object_ids == k).nonzero().squeeze(1)
        if idx_all.numel() == 0:
            continue
        topology = edge_topology(obj.faces)
        for idx in idx_all.split(_CHUNK):
            rgb = render_views(
                obj, views.elevation[idx], views.azimuth[idx], views.fovy[idx], views.fill[idx],
                views.ambient[idx], views.light[idx], cfg.size, topology,
            )
            images[idx.numpy()] = (rgb * 255.0).round().to(torch.uint8).numpy()
            done += idx.numel()
            if progress is not None:
                progress(done, n)
    return ShapeDataset(
        images=images, object_ids=object_ids.numpy(), view_ids=view_ids.numpy(),
        caption_ids=(object_ids * len(VIEW_LABELS) + view_ids).numpy(), captions=caption_table(),
        elevation=views.elevation.numpy().astype(np.float32), azimuth=views.azimuth.numpy().astype(np.float32),
        fovy=views.fovy.numpy().astype(np.float32),
    )


# --------------------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------------------


def cache_key(n: int, seed: int, cfg: RenderConfig) -> str:
    """Short hash of everything a dataset depends on (sizes, seed, render settings, the catalogue's meshes)."""
    objects = [(o.name, o.caption, o.num_faces, round(float(o.verts.sum()), 4)) for o in catalogue()]
    blob = json.dumps({"v": FORMAT_VERSION, "n": n, "seed": seed, "cfg": asdict(cfg), "objects": objects})
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def save_dataset(data: ShapeDataset, path: str | Path) -> Path:
    """Write ``data`` to a compressed ``.npz`` atomically (temp file, then rename)."""
    path = Path(path)
    with atomic_path(path, keep_suffix=True) as tmp:  # the temporary name ends in .npz: numpy appends none
        np.savez_compressed(
            tmp, images=data.images, object_ids=data.object_ids, view_ids=data.view_ids,
            caption_ids=data.caption_ids, captions=np.array(data.captions), elevation=data.elevation,
            azimuth=data.azimuth, fovy=data.fovy, version=np.array(FORMAT_VERSION),
        )
    return path


def load_dataset(path: str | Path) -> ShapeDataset:
    """Read a dataset written by :func:`save_dataset`."""
    with np.load(path, allow_pickle=False) as z:
        if int(z["version"]) != FORMAT_VERSION:
            raise ValueError(f"{path}: dataset format {int(z['version'])}, expected {FORMAT_VERSION}")
        return ShapeDataset(
            images=z["images"], object_ids=z["object_ids"].astype(np.int64), view_ids=z["view_ids"].astype(np.int64),
            caption_ids=z["caption_ids"].astype(np.int64), captions=[str(c) for c in z["captions"]],
            elevation=z["elevation"], azimuth=z["azimuth"], fovy=z["fovy"],
        )


def load_or_render(
    cache: str | Path, n: int, seed: int, cfg: Optional[RenderConfig] = None, name: str = "train",
    log: Optional[Callable[[str], None]] = None,
) -> ShapeDataset:
    """The dataset of (``n``, ``seed``, ``cfg``) from ``cache/shapeworld-<name>-<key>.npz``, rendered if absent."""
    cfg = cfg or RenderConfig()
    path = Path(cache) / f"shapeworld-{name}-{cache_key(n, seed, cfg)}.npz"
    if path.is_file():
        if log:
            log(f"data: {name} split from cache {path}")
        return load_dataset(path)
    start = time.perf_counter()
    data = render_dataset(n, seed, cfg)
    seconds = time.perf_counter() - start
    save_dataset(data, path)
    if log:
        log(f"data: rendered {name} split, {n} images at {cfg.size} px in {seconds:.1f} s "
            f"({n / max(seconds, 1e-9):.0f} images/s) -> {path}")
    return data


def load_splits(
    cache: str | Path, n_train: int, n_test: int, seed: int, cfg: Optional[RenderConfig] = None,
    log: Optional[Callable[[str], None]] = None,
) -> tuple[ShapeDataset, ShapeDataset]:
    """Training split (``seed``) and held-out split (``seed + HELD_OUT_SEED_OFFSET``), both cached."""
    train = load_or_render(cache, n_train, seed, cfg, "train", log)
    test = load_or_render(cache, n_test, seed + HELD_OUT_SEED_OFFSET, cfg, "test", log)
    return train, test

