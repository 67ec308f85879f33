"""Turntable videos: render a mesh (or any renderer) around one orbit and write browser-friendly MP4 / GIF.

Frames are ``uint8 [N,H,W,3]`` arrays. Rendering goes in chunks of cameras so memory stays bounded whatever
the number of views. MP4 is H.264 (libx264, yuv420p, even sizes, ``+faststart`` so browsers start playing
before the download ends) through imageio-ffmpeg's bundled ffmpeg; GIF goes through Pillow. Both writes are
atomic (a temporary file with the same extension beside the target, renamed over it); a failure leaves no
partial file.

Camera defaults: ``fovy`` 40 degrees and, unless ``distance`` is given, the distance at which the mesh's
bounding sphere about the origin (radius ~1 for dream3d objects) fills 90% of the frame's height.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from dream3d.cameras import Cameras, turntable
from dream3d.io import atomic_path
from dream3d.render.mesh import render_textured
from dream3d.render.mesh_geometry import edge_topology

MODES = ("rgb", "normal", "depth", "all")
FORMATS = ("mp4", "gif")
DEFAULT_FOVY = 40.0
_FILL = 0.9  # fraction of the frame height the bounding sphere spans at the fitted distance
_CHUNK_PIXELS = 1 << 20  # pixels rendered at once (cameras per chunk = this / (size * size))

# viridis at 0, 1/4, 1/2, 3/4, 1: depth colours (near = yellow, far = purple)
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32) / 255


def fit_distance(radius: float, fovy: float = DEFAULT_FOVY, fill: float = _FILL) -> float:
    """Camera distance at which a sphere of ``radius`` about the target spans ``fill`` of the frame height."""
    return float(radius) / math.sin(math.radians(fill * fovy / 2))


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown turntable mode {mode!r}; choose one of {', '.join(MODES)}")


def _check_formats(formats: Sequence[str]) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown turntable format(s) {unknown or list(formats)}; choose from {', '.join(FORMATS)}")


def _chunks(n: int, size: int, chunk: Optional[int]) -> Iterable[slice]:
    step = chunk if chunk else max(1, _CHUNK_PIXELS // (size * size))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def slice_cameras(cams: Cameras, index: slice) -> Cameras:
    """Cameras ``index`` (a slice) of a batch."""
    return Cameras(cams.c2w[index], cams.fovy[index], cams.elevation[index], cams.azimuth[index],
                   cams.distance[index], cams.light_position[index], cams.height, cams.width)


def to_uint8(images: Tensor) -> np.ndarray:
    """Float images in [0,1] [...,3] -> uint8 numpy (rounded, clamped)."""
    return (images.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def colorize_depth(depth: Tensor, near: float, far: float) -> Tensor:
    """View depth [...,1] -> viridis colours [...,3]: ``near`` (and closer) yellow, ``far`` (and beyond) purple."""
    t = ((far - depth[..., 0]) / max(far - near, 1e-6)).clamp(0, 1)  # 1 at near, 0 at far
    pos = t * (len(_VIRIDIS) - 1)
    lo = pos.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (pos - lo)[..., None]
    lut = torch.as_tensor(_VIRIDIS, device=depth.device)
    return lut[lo] * (1 - frac) + lut[lo + 1] * frac


def _composite(color: Tensor, hit: Tensor, alpha: Tensor, background: float) -> Tensor:
    """Colour [B,H,W,3] where ``hit`` [B,H,W,1], blended by the antialiased ``alpha``; background elsewhere."""
    return torch.where(hit, color * alpha + background * (1 - alpha), torch.full_like(color, background))


def turntable_cameras(views: int, elevation: float, size: int, distance: float, fovy: float = DEFAULT_FOVY) -> Cameras:
    """``views`` cameras on one orbit from the front (azimuth 0), square ``size`` images."""
    if views < 1 or size < 2:
        raise ValueError(f"turntable needs views >= 1 and size >= 2, got views={views} size={size}")
    return turntable(views, elevation=elevation, distance=distance, fovy=fovy, size=size)


def turntable_frames(
    mesh, views: int = 120, elevation: float = 15.0, size: int = 512, mode: str = "rgb",
    distance: Optional[float] = None, fovy: float = DEFAULT_FOVY, background: float = 1.0,
    chunk: Optional[int] = None,
) -> np.ndarray:
    """Render a :class:`~dream3d.representations.mesh.TexturedMesh` around one orbit -> uint8 [N,H,W,3].

    ``mode``: ``rgb`` (texture / vertex colours / grey, Lambert shaded), ``normal`` (world normals as
    ``(n + 1) / 2``), ``depth`` (view depth, viridis, near yellow, scaled over the bounding sphere's depth
    range so colours are steady across frames) or ``all`` (the three side by side: width ``3 * size``).
    Background white by default. ``chunk`` cameras are rendered at once (default: about a megapixel).
    """
    _check_mode(mode)
    radius = float(mesh.verts.norm(dim=-1).max()) if mesh.num_verts else 1.0
    radius = max(radius, 1e-3)
    if distance is None:
        distance = fit_distance(radius, fovy)
    cams = turntable_cameras(views, elevation, size, distance, fovy)
    near, far = max(distance - radius, 0.0), distance + radius
    topology = edge_topology(mesh.faces) if mesh.num_faces else None
    frames = np.empty((views, size, size * (3 if mode == "all" else 1), 3), np.uint8)
    with torch.no_grad():
        for index in _chunks(views, size, chunk):
            out = render_textured(mesh, slice_cameras(cams, index), background=background, topology=topology)
            alpha = out["opacity"]
            panels = []
            if mode in ("rgb", "all"):
                panels.append(out["rgb"])
            if mode in ("normal", "all"):
                panels.append(_composite((out["normal"] + 1) / 2, out["normal"].norm(dim=-1, keepdim=True) > 0,
                                         alpha, background))
            if mode in ("depth", "all"):
                panels.append(_composite(colorize_depth(out["depth"], near, far), out["depth"] > 0, alpha, background))
            frames[index] = to_uint8(torch.cat(panels, dim=2))
    return frames


def volume_frames(
    render_fn: Callable[[Cameras], Union[Tensor, dict]], cams: Cameras, chunk: Optional[int] = None,
) -> np.ndarray:
    """Frames of any renderer: ``render_fn(cams)`` -> rgb [B,H,W,3] in [0,1] (or a dict with ``rgb``).

    For NeRF volume renders and the like; ``cams`` (e.g. :func:`turntable_cameras`) are passed ``chunk`` at a
    time (default: about a megapixel) under ``torch.no_grad``. Returns uint8 [N,H,W,3].
    """
    n = cams.batch_size
    out: list[np.ndarray] = []
    with torch.no_grad():
        for index in _chunks(n, max(cams.height, cams.width), chunk):
            rgb = render_fn(slice_cameras(cams, index))
            if isinstance(rgb, dict):
                rgb = rgb["rgb"]
            expect = (index.stop - index.start, cams.height, cams.width, 3)
            if tuple(rgb.shape) != expect:
                raise ValueError(f"volume_frames: render_fn returned rgb of shape {tuple(rgb.shape)}, expected {expect}")
            out.append(to_uint8(rgb))
    return np.concatenate(out)


def _frame_list(frames) -> list[np.ndarray]:
    """Validate frames (array [N,H,W,3] or a sequence of [H,W,3]) as uint8 RGB of one size."""
    if isinstance(frames, Tensor):
        frames = frames.cpu().numpy()
    items = [np.asarray(f) for f in frames]
    if not items:
        raise ValueError("no frames to write")
    shape = items[0].shape
    for f in items:
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[-1] != 3 or f.shape != shape:
            raise ValueError(f"frames must be uint8 [H,W,3] of one size, got {f.dtype} {f.shape} (first {shape})")
    return items


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: pad odd sizes by one edge row/column."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(frames, path: Union[str, Path], fps: float = 30, crf: int = 18) -> Path:
    """Write frames (uint8 [N,H,W,3]) to an H.264 MP4 that browsers play (yuv420p, even size, faststart).

    Odd sizes are padded by one pixel. ``crf``: x264 quality (0 lossless .. 51 worst; 18 looks lossless).
    Atomic: the file appears complete or not at all.
    """
    import imageio_ffmpeg

    path = Path(path)
    items = _frame_list(frames)
    first = _pad_even(items[0])
    h, w = first.shape[:2]
    with atomic_path(path, keep_suffix=True) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p", quality=None,
            macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-crf", str(int(crf)), "-preset", "medium", "-movflags", "+faststart"],
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in items:
                writer.send(np.ascontiguousarray(_pad_even(frame)))
        finally:
            writer.close()  # waits for ffmpeg; the temp file is removed by atomic_path on error
    return path


def write_gif(frames, path: Union[str, Path], fps: float = 15, max_size: Optional[int] = None) -> Path:
    """Write frames (uint8 [N,H,W,3]) to a looping GIF; ``max_size`` downscales so the longer side fits. Atomic."""
    from PIL import Image

    path = Path(path)
    items = _frame_list(frames)
    h, w = items[0].shape[:2]
    scale = min(1.0, max_size / max(h, w)) if max_size else 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    images = []
    for frame in items:
        im = Image.fromarray(frame)
        if size != (w, h):
            im = im.resize(size, Image.LANCZOS)
        images.append(im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    duration = max(20, int(round(1000.0 / fps)))  # ms; browsers slow down anything faster than 20 ms
    with atomic_path(path, keep_suffix=True) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0,
                       disposal=1)
    return path


def render_turntable(
    mesh, out_stem: Union[str, Path], views: int = 120, fps: float = 30, elevation: float = 15.0,
    size: int = 512, mode: str = "rgb", formats: Sequence[str] = FORMATS, gif_max_size: Optional[int] = 256,
    **kwargs,
) -> dict[str, Path]:
    """Render a turntable of ``mesh`` and write ``<out_stem>.mp4`` / ``<out_stem>.gif`` -> {format: path}.

    Other keyword arguments (``distance``, ``fovy``, ``background``, ``chunk``) go to :func:`turntable_frames`.
    The GIF is downscaled so its longer side is at most ``gif_max_size`` (None: full size).
    """
    _check_mode(mode)
    _check_formats(formats)
    frames = turntable_frames(mesh, views=views, elevation=elevation, size=size, mode=mode, **kwargs)
    return write_turntable(frames, out_stem, fps, formats, gif_max_size)


def write_turntable(frames, out_stem: Union[str, Path], fps: float = 30, formats: Sequence[str] = FORMATS,
                    gif_max_size: Optional[int] = 256) -> dict[str, Path]:
    """Write frames as ``<out_stem>.mp4`` / ``<out_stem>.gif`` -> {format: path}; the GIF downscaled so its
    longer side is at most ``gif_max_size`` (None: full size)."""
    _check_formats(formats)
    stem = Path(out_stem)
    paths: dict[str, Path] = {}
    for fmt in dict.fromkeys(formats):
        target = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "mp4":
            paths[fmt] = write_video(frames, target, fps=fps)
        else:
            paths[fmt] = write_gif(frames, target, fps=fps, max_size=gif_max_size)
    return paths
