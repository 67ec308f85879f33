r"""A reference view drawn from the prior itself: one sharp picture of the prompt that the 3D stages match.

Score distillation hands a 3D stage a gradient per render, never a picture: thin parts (a table's legs, a mug's
handle, a rocket's fins) and straight bottoms fade into what every random view agrees on. A single sample of the
same prior has them (docs/quality.md, round 14). DreamCraft3D (Sun et al. 2023) and Magic123 (Qian et al. 2023)
fit a 3D object to one reference image plus score distillation for the other views; here the reference is drawn
from the run's own prior, so the fit stays text-to-3D:

1. ``reference.samples`` images of the prompt are drawn at the reference camera (elevation, azimuth and fovy of
   ``reference``; the distance frames the stage's ``camera.framing_radius`` to ``reference.fill`` of the view, the
   shipped prior's framing): a camera-conditioned prior is told the camera, a text prior gets the view words.
2. The **medoid** is kept: the sample with the smallest summed squared distance to the others. Samples that drew
   another colour or the wrong side are outliers and are not chosen while most agree; no classifier is involved
   (the evaluation's classifier never sees the fit).
3. Its **mask**: the object where a pixel differs from the white background by more than ``reference.threshold``
   in some channel, the background where it differs by less than 0.4 of that and is connected to the image border
   through such pixels; the rest is not known and left to the guidance (a pale object's faint edge; background-
   coloured pixels enclosed by the object, which may be a white face or a hole such as a mug's handle).

Each step a stage that weights ``loss.reference_mask`` or ``loss.reference_rgb`` renders every particle from the
reference camera (at its training size; the reference is area-resized to it) and adds

    L_mask = ½ Σ_p k_p (α_p - m_p)²,     L_rgb = ½ Σ_p (c_p - r_p)²,

summed over the pixels p of the render (α the opacity, m the mask, k where it is known, c the colour over the
background, r the reference), so one unit of weight gives a pixel a gradient of the size of its error, comparable to SDS's.

The drawn samples, the chosen one and its mask are written to ``<run>/reference/`` (``samples.png``,
``reference.png``, ``mask.png``, ``reference.json``); a stage that finds them there with the same settings, prompt,
seed and prior reads them back instead of drawing again (resumed runs, later stages, refits).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dream3d.cameras import Cameras, framing_distance, make_cameras
from dream3d.paths import portable_path


@dataclass
class ReferenceConfig:
    """How the run's reference view is drawn (used by stages that weight ``loss.reference_mask`` / ``reference_rgb``)."""

    samples: int = 8  # drawn at the reference camera; the medoid is kept
    steps: int = 20  # DPM-Solver++ steps a sample
    guidance_scale: float = 7.5
    elevation: float = 15.0  # the reference camera, degrees
    azimuth: float = 0.0  # 0: the front (+Z)
    fovy: float = 55.0
    fill: float = 0.875  # the share of the field of view that a sphere of the stage's camera.framing_radius spans
    threshold: float = 0.05  # a pixel is the object where a channel differs from the background by more than this


@dataclass
class Reference:
    """The chosen sample ``image`` [1,S,S,3] in [0,1], its ``mask`` [1,S,S,1] in {0,1}, where the mask is ``known``
    [1,S,S,1] (:func:`object_mask`), and the camera settings."""

    image: Tensor
    mask: Tensor
    known: Tensor
    cfg: ReferenceConfig

    def _planes(self) -> Tensor:
        """image, mask and known as one [1,5,S,S] tensor, to resample together."""
        return torch.cat([self.image, self.mask, self.known], dim=-1).permute(0, 3, 1, 2)

    @staticmethod
    def _split(planes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[1,5,H,W] -> (image [1,H,W,3], mask, known [1,H,W,1])."""
        planes = planes.permute(0, 2, 3, 1)
        return planes[..., :3], planes[..., 3:4], planes[..., 4:]

    def at(self, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
        """(image [1,H,W,3], mask, known [1,H,W,1]) area-resized to a render's size (mask and known become
        fractional)."""
        planes = self._planes()
        if planes.shape[-2:] != (height, width):
            planes = F.interpolate(planes, (height, width), mode="area")
        return self._split(planes)

    def sampled(self, height: int, width: int, offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(image, mask, known) read bilinearly at the pixel centres of an H x W render moved by ``offset`` [1,2] pixels
        (x, y), as :meth:`dream3d.cameras.Cameras.rays` moves its rays: the target of a jittered render."""
        ys = (torch.arange(height, dtype=torch.float32) + 0.5 + float(offset[0, 1])) / height * 2 - 1
        xs = (torch.arange(width, dtype=torch.float32) + 0.5 + float(offset[0, 0])) / width * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]  # [1,H,W,(x, y)]
        return self._split(F.grid_sample(self._planes(), grid, mode="bilinear", padding_mode="border",
                                         align_corners=False))

    def cameras(self, framing_radius: float, height: int, width: int) -> Cameras:
        """The reference camera at a render's size; the light at the camera."""
        return reference_cameras(self.cfg, framing_radius, height, width)


def reference_cameras(cfg: ReferenceConfig, framing_radius: float, height: int, width: int) -> Cameras:
    one = torch.ones(1)
    distance = framing_distance(framing_radius, one * cfg.fovy, one * cfg.fill)
    return make_cameras(one * cfg.elevation, one * cfg.azimuth, distance, one * cfg.fovy, height, width)


def medoid(images: Tensor) -> int:
    """The index of the image [N,H,W,C] with the smallest summed squared distance to all the others."""
    flat = images.reshape(images.shape[0], -1).double()
    return int(torch.cdist(flat, flat).pow(2).sum(1).argmin())


def object_mask(image: Tensor, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                threshold: float = 0.05) -> tuple[Tensor, Tensor]:
    """image [H,W,3] -> (mask, known) [H,W] floats in {0, 1}. The object (mask 1) is where a channel differs from
    ``background`` by more than ``threshold``; the background (mask 0) is what differs by at most ``threshold`` /
    :data:`CLEAR_SHARE` and is connected to the image border through such pixels (4-neighbours). Everything else is
    not known (``known`` 0) and left to the guidance: a pale object's faint edge, and background-coloured pixels
    enclosed by the object, which may be its white face or a hole (a mug's handle, a torus)."""
    bg = torch.tensor(background, dtype=image.dtype)
    diff = (image - bg).abs().amax(-1)
    solid = diff > threshold
    clear = diff <= threshold / CLEAR_SHARE
    outside = torch.zeros_like(clear)
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = clear[0, :], clear[-1, :], clear[:, 0], clear[:, -1]
    while True:  # flood fill from the border through clear pixels
        grown = outside.clone()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= clear
        if torch.equal(grown, outside):
            break
        outside = grown
    return solid.float(), (solid | outside).float()


CLEAR_SHARE = 2.5  # background: within threshold / 2.5 of its colour (0.02 at the default 0.05; samples' borders: 0 to 0.04)


def settings_record(cfg: ReferenceConfig, prompt: str, seed: int, prior_path: str, framing_radius: float) -> dict:
    return {"prompt": prompt, "seed": int(seed), "prior": portable_path(str(prior_path)),
            "framing_radius": float(framing_radius), **asdict(cfg)}


def draw(prior, prompt: str, cfg: ReferenceConfig, seed: int, framing_radius: float,
         view_words: bool = True) -> tuple[Tensor, int]:
    """``cfg.samples`` images [N,S,S,3] of ``prompt`` at the reference camera, and the medoid's index. A camera prior
    is told the camera (``camera_cfg``); a text prior gets the camera's view words when ``view_words``."""
    from dream3d.prior.prompts import view_prompt
    from dream3d.prior.sample import sample

    cams = reference_cameras(cfg, framing_radius, prior.image_size, prior.image_size)
    if prior.takes_camera:
        images = sample(prior, prompt, n=cfg.samples, steps=cfg.steps, guidance=cfg.guidance_scale, seed=seed,
                        c2w=cams.c2w)
    else:
        label = cams.view_labels()[0] if view_words else None
        images = sample(prior, view_prompt(prompt, label), n=cfg.samples, steps=cfg.steps,
                        guidance=cfg.guidance_scale, seed=seed)
    return images.clamp(0, 1), medoid(images)


def _read_png(path: Path) -> Tensor:
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)


def load_or_draw(folder: Optional[Path], prior, prompt: str, cfg: ReferenceConfig, seed: int,
                 framing_radius: float, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 view_words: bool = True) -> Reference:
    """The run's reference: read from ``folder`` (the run folder's ``reference/``) when it was drawn there with the
    same settings, else drawn (:func:`draw`) and written there (atomically; nothing is written without a folder)."""
    from dream3d.io import save_png, write_json
    from dream3d.prior.sample import save_grid

    record = settings_record(cfg, prompt, seed, prior.path, framing_radius)
    folder = None if folder is None else Path(folder)
    if folder is not None and (folder / "reference.json").is_file() and (folder / "reference.png").is_file():
        try:
            stored = json.loads((folder / "reference.json").read_text())
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict) and stored.get("settings") == record:
            return _reference(_read_png(folder / "reference.png"), background, cfg)
    images, chosen = draw(prior, prompt, cfg, seed, framing_radius, view_words)
    image = images[chosen]
    if folder is None:
        return _reference(image, background, cfg)
    save_grid(images, folder / "samples.png")
    save_png(folder / "reference.png", (image.numpy() * 255).round().astype(np.uint8))
    # what is kept is the PNG (8 bits): use it, so a later stage that reads it back sees the same picture
    ref = _reference(_read_png(folder / "reference.png"), background, cfg)
    mask, known = ref.mask[0, ..., 0], ref.known[0, ..., 0]
    save_png(folder / "mask.png", ((mask + known) * 127.5).round().numpy().astype(np.uint8))  # 0, 128, 255
    write_json(folder / "reference.json", {"settings": record, "chosen": chosen,
                                           "mask_share": round(float(mask.mean()), 4),
                                           "unknown_share": round(float(1 - known.mean()), 4)})
    return ref


def _reference(image: Tensor, background: tuple[float, float, float], cfg: ReferenceConfig) -> Reference:
    mask, known = object_mask(image, background, cfg.threshold)
    return Reference(image[None], mask[None, ..., None], known[None, ..., None], cfg)


def reference_terms(out: dict[str, Tensor], ref: Reference, want_mask: bool, want_rgb: bool) -> dict[str, Tensor]:
    """L_mask and L_rgb (module docstring) of one reference render ``out`` (rgb [1,H,W,3] over the background,
    opacity [1,H,W,1]; ``pixel_offset`` [1,2] when its rays were moved off the pixel centres: the reference is then
    read at the same points, else area-resized)."""
    H, W = out["opacity"].shape[1:3]
    offset = out.get("pixel_offset")
    image, mask, known = ref.at(H, W) if offset is None else ref.sampled(H, W, offset)
    image, mask, known = (x.to(out["opacity"]) for x in (image, mask, known))
    terms = {}
    if want_mask:
        terms["reference_mask"] = 0.5 * (known * (out["opacity"] - mask).pow(2)).sum()
    if want_rgb:
        terms["reference_rgb"] = 0.5 * (out["rgb"] - image).pow(2).sum()
    return terms
