"""Mesh export: density field -> marching cubes -> xatlas UVs -> baked albedo texture -> GLB / OBJ / PLY.

The pipeline of :func:`bake_mesh`::

    extract_mesh(density_fn)  ->  unwrap_uv  ->  bake_texture(color_fn)  ->  TexturedMesh
                                                                           ->  export_mesh: GLB, OBJ+MTL+PNG, PLY

Conventions are those of :mod:`dream3d.representations.mesh`: world-space vertices (Y up, front +Z), faces
counter-clockwise seen from outside (outward normals by the right-hand rule, as glTF expects), ``uv`` with
``v = 0`` at image row 0. trimesh keeps UVs with the origin at the image's *bottom*-left (OBJ style) and flips
them itself for glTF, so the writers hand it ``1 - v`` and :func:`load_mesh` flips them back. Every writer is
atomic (temporary file, then rename): a failed write leaves no file, or the earlier file, at the destination.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dream3d.io import atomic_path, save_png, write_text
from dream3d.representations.mesh import TexturedMesh

FORMATS = ("glb", "obj", "ply")
RENDER_SAMPLES = 64  # RendererConfig.num_samples default: samples per ray across the scene box
EMPTY_ALPHA = 0.01  # RendererConfig.grid_threshold default: a step with less alpha than this is empty space

DensityFn = Callable[[Tensor], Tensor]  # points [N,3] -> density [N]
ColorFn = Callable[[Tensor], Tensor]  # points [N,3] -> colour [N,3] in [0,1]


# --------------------------------------------------------------------------------------------------------------
# Geometry: density grid -> marching cubes -> cleanup
# --------------------------------------------------------------------------------------------------------------


def auto_threshold(max_density: float, radius: float) -> float:
    """The iso-level :func:`extract_mesh` uses when none is given.

    With ``step = 2 radius / RENDER_SAMPLES`` (one sample step of the default volume renderer), the rule is
    ``max(ln(1 / (1 - EMPTY_ALPHA)) / step, min(ln 2 / step, max_density / 2))``: the density at which one
    renderer step reaches alpha 0.5 (22.2 for radius 1, close to threestudio's 25), lowered to half the
    peak density for weak fields such as a barely trained Magic3D blob (peak ~ ``blob_density`` = 10, where
    half the peak lands near the radius at which the rendered transmittance drops to 0.5), but never below
    the occupancy grid's "empty space" density (alpha 0.01 per step; 0.32 for radius 1).
    """
    step = 2.0 * radius / RENDER_SAMPLES
    floor = -math.log(1.0 - EMPTY_ALPHA) / step
    return max(floor, min(math.log(2.0) / step, 0.5 * max_density))


def _renders_opaque(line_density: Tensor, spacing: float, alpha: float) -> Tensor:
    """Which lines render at least ``alpha`` opaque: their summed density times the grid spacing (the optical depth)
    exceeds ln(1 / (1 - alpha))."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return line_density * spacing > -math.log(1.0 - alpha)


def matched_threshold(grid: Tensor, radius: float, candidates: int = 96, alpha: float = 0.5) -> float:
    """The iso-level whose surface shows the silhouettes the field renders.

    ``grid`` [R,R,R] holds the density at the points of a regular grid over [-radius, radius]^3. Seen along
    each axis, the field renders a pixel with opacity at least ``alpha`` (default one half) where its optical
    depth (the density summed along the line, times the grid spacing) exceeds ln(1 / (1 - alpha)); a surface at
    level ``c`` covers a pixel where some density on the line exceeds ``c``. Of ``candidates`` levels spaced
    evenly in log between the occupancy grid's empty-space density and the peak, the one whose three covered
    masks best match the three rendered masks (summed intersection over summed union) wins; among levels that
    match equally well (a hard field matches at many), the one nearest :func:`auto_threshold`'s. When no pixel
    renders at least ``alpha`` opaque it falls back to :func:`auto_threshold`. Soft fields, such as a coarse
    Magic3D NeRF whose dark parts are dense and whose light parts are not (a snowman's hat against its white
    body), render opaque well outside their half-peak level set.
    """
    grid = torch.nan_to_num(grid.float(), nan=0.0).clamp_min(0.0)
    res = grid.shape[0]
    peak = float(grid.max())
    floor = auto_threshold(0.0, radius)
    spacing = 2.0 * radius / max(res - 1, 1)
    targets = [_renders_opaque(grid.sum(axis), spacing, alpha) for axis in range(3)]
    if peak <= floor or not any(bool(t.any()) for t in targets):
        return auto_threshold(peak, radius)
    maxima = [grid.amax(axis) for axis in range(3)]
    levels = torch.logspace(math.log10(floor), math.log10(peak), candidates + 1)[:-1]  # below the peak: not empty
    scores = []
    for level in levels.tolist():
        inter = union = 0
        for covered, target in zip(maxima, targets):
            mask = covered > level
            inter += int((mask & target).sum())
            union += int((mask | target).sum())
        scores.append(inter / max(union, 1))
    scores = torch.tensor(scores)
    tied = levels[scores >= scores.max() - 1e-3]
    usual = auto_threshold(peak, radius)
    return float(tied[(tied.log() - math.log(usual)).abs().argmin()])


def faint_parts(grid: Tensor, low: float, high: float, gap: int = 2, min_share: float = 0.01) -> Tensor:
    """The parts of a field that only the lower of two levels has: [R,R,R] bool.

    ``grid`` [R,R,R] density; ``low`` < ``high`` two iso-levels (e.g. :func:`matched_threshold` at 30% and
    50% opacity). The low level's solid is the high level's plus a halo around it (the soft edge of every
    part) and, in a soft field, whole parts that never reach the high level (a snowman's white body under
    its dark hat). This keeps the second kind: the low solid's cells farther than ``gap`` cells from the high
    solid, in connected pieces of at least ``min_share`` of the low solid's cells (the halo and small
    fragments are dropped), grown back by ``gap + 1`` cells inside the low solid so that each piece meets the
    high solid again where it touched it.
    """
    from scipy import ndimage

    lo = (grid > low).cpu().numpy()
    hi = (grid > high).cpu().numpy()
    near = ndimage.binary_dilation(hi, iterations=gap) if hi.any() else hi
    labels, count = ndimage.label(lo & ~near)
    if count == 0:
        return torch.zeros(grid.shape, dtype=torch.bool)
    sizes = np.bincount(labels.reshape(-1))[1:]
    keep = np.flatnonzero(sizes >= min_share * max(int(lo.sum()), 1)) + 1
    parts = np.isin(labels, keep)
    if parts.any():
        parts = ndimage.binary_dilation(parts, iterations=gap + 1) & lo
    return torch.from_numpy(parts)


HULL_ELEVATIONS = (-10.0, 0.0, 10.0, 20.0, 35.0, 50.0, 65.0, 80.0)  # the fit's cameras: -10 to 90 degrees
HULL_AZIMUTHS = 24


def _view_axes(elevation: float, azimuth: float) -> Tensor:
    """[3,3] rows: the image's right and up and the direction towards an orthographic camera (Y up, front +Z)."""
    el, az = math.radians(elevation), math.radians(azimuth)
    to_cam = torch.tensor([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    up = torch.tensor([0.0, 1.0, 0.0]) if abs(math.sin(el)) < 0.999 else torch.tensor([0.0, 0.0, -1.0])
    right = torch.linalg.cross(up, to_cam)
    right = right / right.norm()
    return torch.stack([right, torch.linalg.cross(to_cam, right), to_cam])


@torch.no_grad()
def visual_hull(grid: Tensor, radius: float, alpha: float = 0.5, elevations: Iterable[float] = HULL_ELEVATIONS,
                azimuths: int = HULL_AZIMUTHS) -> Tensor:
    """The field's visual hull: the grid points that every silhouette the field renders at least ``alpha`` opaque
    covers, [R,R,R] bool.

    ``grid`` [R,R,R] holds the density at a regular grid of points over [-radius, radius]^3 (indexed x, y, z;
    :func:`density_grid`). The field is seen orthographically from ``azimuths`` directions around at each of
    ``elevations`` and from straight above; in each view a pixel is in the silhouette where the optical depth
    along its line exceeds ln(1 / (1 - alpha)), as in :func:`matched_threshold`. A point is in the hull when it
    projects into every silhouette. Unlike a level set, the hull is solid wherever the field looks opaque from
    every side: the inside of a shell (a white body on a white background often comes out as one) and a face
    too faint for any level (a cube's top) are filled; a hole seen through from some side (a torus's, a
    handle's, between legs) stays open. Thin parts that render fainter than ``alpha`` from some side are not in
    it (unite it with a level set to keep them). About 1.5 s for 65^3 points and 193 views on one CPU core.
    """
    grid = torch.nan_to_num(grid.float().cpu(), nan=0.0).clamp_min(0.0)
    res = grid.shape[0]
    lin = torch.linspace(-radius, radius, res)
    points = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)
    volume = grid.permute(2, 1, 0)[None, None]  # grid_sample's [D, H, W] = (z, y, x)
    spacing = 2.0 * radius / max(res - 1, 1)
    views = [(float(e), 360.0 * k / azimuths) for e in elevations for k in range(azimuths)] + [(90.0, 0.0)]
    inside = torch.ones(points.shape[0], dtype=torch.bool)
    for elevation, azimuth in views:
        axes = _view_axes(elevation, azimuth)
        # the density on a grid aligned with the view (image x, image y, towards the camera), summed along the rays
        world = (points @ axes) / radius
        aligned = F.grid_sample(volume, world.view(1, res, res, res, 3), align_corners=True)[0, 0]
        mask = _renders_opaque(aligned.sum(2), spacing, alpha).float()  # [x, y] of the image
        image = (points @ axes.t())[:, :2] / radius
        covered = F.grid_sample(mask.t()[None, None], image.view(1, 1, -1, 2), align_corners=True)[0, 0, 0]
        inside &= covered > 0.5
    return inside.view(res, res, res)


@torch.no_grad()
def density_grid(density_fn: DensityFn, radius: float, resolution: int, chunk: int = 65536) -> Tensor:
    """density_fn on the resolution^3 grid of points spanning [-radius, radius]^3 -> [R,R,R] float (x, y, z)."""
    lin = torch.linspace(-radius, radius, resolution)
    points = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)
    values = [density_fn(points[i:i + chunk]).detach().float().reshape(-1).cpu() for i in range(0, len(points), chunk)]
    return torch.nan_to_num(torch.cat(values), nan=0.0).view(resolution, resolution, resolution)


def signed_volume(verts: Tensor, faces: Tensor) -> float:
    """Volume enclosed by a closed mesh, positive when its faces wind counter-clockwise seen from outside."""
    v = verts.double()[faces.long()]
    return float(torch.einsum("fi,fi->f", v[:, 0], torch.cross(v[:, 1], v[:, 2], dim=-1)).sum() / 6.0)


def _marching_cubes(grid: Tensor, threshold: float, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of grid [R,R,R] at ``threshold`` -> world verts [V,3], faces [F,3] (outward, CCW)."""
    import mcubes

    res = grid.shape[0]
    pad = min(0.0, float(grid.min()), threshold - 1.0)  # below the iso-level: surfaces close at the box
    padded = F.pad(grid[None, None], (1, 1, 1, 1, 1, 1), value=pad)[0, 0]
    verts, faces = mcubes.marching_cubes(padded.double().numpy(), float(threshold))
    verts = (verts - 1.0) * (2.0 * radius / (res - 1)) - radius  # may poke < 1 voxel out of the box
    faces = faces.astype(np.int64)
    if len(faces) and signed_volume(torch.from_numpy(verts), torch.from_numpy(faces)) < 0:
        faces = faces[:, ::-1].copy()  # dense inside must mean outward normals, whatever the library's winding
    return verts, faces


PART_SHARE = 0.05  # a piece beside the largest is a part of the object from this share of the largest's area ...
PART_GAP = 0.05  # ... when it comes within this share of the largest's bounding-box diagonal of a kept piece


def main_parts(parts: list):
    """The object among the connected pieces of a surface (trimesh meshes) -> one trimesh mesh: the largest
    piece by area, plus each piece of at least ``PART_SHARE`` of its area that comes within ``PART_GAP`` of its
    bounding-box diagonal of a piece kept so far. Floaters (far) and flakes (small) go; a part that a
    fine stage has pulled a hair's breadth away from the rest (a mushroom's stem under its cap, a snowman's
    body under its head, a pineapple's crown) stays: keeping only the largest piece dropped them."""
    import trimesh
    from scipy.spatial import cKDTree

    parts = sorted(parts, key=lambda m: -float(m.area))
    main = parts[0]
    gap = PART_GAP * float(np.linalg.norm(main.extents))
    kept, trees = [main], [cKDTree(main.vertices)]
    for part in parts[1:]:
        if part.area < PART_SHARE * main.area:
            break
        if min(float(tree.query(part.vertices, k=1)[0].min()) for tree in trees) <= gap:
            kept.append(part)
            trees.append(cKDTree(part.vertices))
    return trimesh.util.concatenate(kept) if len(kept) > 1 else main


def _cleanup(verts: np.ndarray, faces: np.ndarray, keep_largest: bool, max_faces: Optional[int]):
    """Weld coincident vertices, drop degenerate faces, keep the object's pieces (:func:`main_parts`: the
    largest and the sizeable ones next to it), decimate to ``max_faces`` -> trimesh.Trimesh."""
    import trimesh

    mesh = trimesh.Trimesh(verts, faces, process=False)
    mesh.merge_vertices()  # grid values equal to the iso-level give duplicate vertices and zero-area faces
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    if keep_largest and len(mesh.faces):
        parts = mesh.split(only_watertight=False)
        if len(parts) > 1:
            mesh = main_parts(parts)
    if max_faces is not None and len(mesh.faces) > max_faces:
        mesh = _decimate(mesh, int(max_faces))
    return mesh


def _decimate(mesh, max_faces: int):
    """Quadric decimation (fast_simplification) until the mesh has at most ``max_faces`` faces."""
    if max_faces < 4:
        raise ValueError(f"max_faces must be at least 4, got {max_faces}")
    target = max_faces
    for _ in range(4):  # the simplifier may stop a little above its target: aim lower until it fits
        out = mesh.simplify_quadric_decimation(face_count=target)
        if len(out.faces) <= max_faces:
            return out
        target = max(4, int(target * max_faces / len(out.faces)) - 1)
    raise ValueError(f"could not decimate the mesh to max_faces={max_faces} (got {len(out.faces)})")


def extract_mesh(
    density_fn: DensityFn, radius: float, resolution: int = 128, threshold: Optional[float] = None,
    chunk: int = 65536, keep_largest: bool = True, max_faces: Optional[int] = None,
) -> tuple[Tensor, Tensor]:
    """Marching-cubes surface of a density field -> (verts [V,3] float32 world, faces [F,3] int64).

    ``density_fn(points [N,3]) -> [N]`` is evaluated without gradients, ``chunk`` points at a time, on a
    ``resolution``^3 grid over [-radius, radius]^3 (the box is padded with empty space, so surfaces touching
    it are closed, with vertices at most one voxel outside it). ``threshold`` is the iso-level; when None,
    :func:`auto_threshold` picks it from the peak density. Faces wind counter-clockwise seen from outside.
    ``keep_largest`` keeps the object's pieces (:func:`main_parts`: floaters and flakes go); ``max_faces``
    decimates with quadric error metrics.

    Raises ValueError ("empty density field: ...") when no density exceeds the threshold.
    """
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    grid = density_grid(density_fn, float(radius), int(resolution), int(chunk))
    peak = float(grid.max())
    if threshold is None:
        threshold = auto_threshold(peak, float(radius))
    if not peak > threshold:
        raise ValueError(f"empty density field: no density above the threshold {threshold:.4g} "
                         f"(max density found {peak:.4g}); train longer or pass a lower threshold")
    verts, faces = _marching_cubes(grid, float(threshold), float(radius))
    mesh = _cleanup(verts, faces, keep_largest, max_faces)
    return torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32), torch.as_tensor(
        np.asarray(mesh.faces), dtype=torch.long)


# --------------------------------------------------------------------------------------------------------------
# UVs and texture baking
# --------------------------------------------------------------------------------------------------------------


def unwrap_uv(verts: Tensor, faces: Tensor, size: int = 1024, padding: int = 2) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """xatlas UV atlas for a texture of ``size`` x ``size`` texels with ``padding`` texels between charts.

    verts [V,3], faces [F,3] -> (verts [V',3], faces [F',3], uv [V',2], vmapping [V'] int64): xatlas splits
    vertices along seams; ``vmapping`` gives each new vertex's index in ``verts``. ``uv`` follows
    :class:`TexturedMesh` (``v = 0`` at texture row 0).
    """
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(verts.detach().cpu().numpy().astype(np.float32), faces.cpu().numpy().astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    if atlas.atlas_count != 1:
        raise ValueError(f"xatlas packed the mesh into {atlas.atlas_count} atlases, expected 1")
    vmapping, indices, uv = atlas[0]
    vmapping = torch.as_tensor(vmapping.astype(np.int64))
    return (verts.detach().cpu()[vmapping].float(), torch.as_tensor(indices.astype(np.int64)),
            torch.as_tensor(uv, dtype=torch.float32), vmapping)


def uv_clip(uv: Tensor) -> Tensor:
    """uv [V,2] -> clip-space positions [1,V,4] that rasterize texture row ``v * H`` (x = 2u - 1, y = 1 - 2v)."""
    u, v = uv[:, 0], uv[:, 1]
    return torch.stack([u * 2 - 1, 1 - v * 2, torch.zeros_like(u), torch.ones_like(u)], dim=-1)[None]


def dilate_texture(texture: Tensor, mask: Tensor, iterations: int = 16) -> Tensor:
    """Grow texture [H,W,3] out of its filled texels mask [H,W] (mean of filled 8-neighbours per step);
    texels still empty after ``iterations`` get the mean filled colour. Returns a new [H,W,3]."""
    tex, filled = texture.clone(), mask.clone()
    if not bool(filled.any()):
        return tex
    mean = tex[filled].mean(0)
    kernel = torch.ones(1, 1, 3, 3, dtype=tex.dtype)
    for _ in range(iterations):
        if bool(filled.all()):
            break
        m = filled.to(tex.dtype)[None, None]
        count = F.conv2d(m, kernel, padding=1)[0, 0]
        total = F.conv2d((tex.permute(2, 0, 1) * m[0])[:, None], kernel, padding=1)[:, 0].permute(1, 2, 0)
        grow = ~filled & (count > 0)
        tex[grow] = total[grow] / count[grow][:, None]
        filled = filled | grow
    tex[~filled] = mean
    return tex


@torch.no_grad()
def bake_texture(
    verts: Tensor, faces: Tensor, uv: Tensor, color_fn: ColorFn, size: int = 1024, dilate: int = 16,
    chunk: int = 65536,
) -> Tensor:
    """Bake ``color_fn(points [N,3]) -> [N,3]`` over the surface into a texture [size,size,3] in [0,1].

    The mesh (verts [V,3], faces [F,3], uv [V,2]) is rasterized in UV space; each covered texel queries the
    colour at its interpolated world position (``chunk`` points at a time, no gradients). Empty texels are
    filled by :func:`dilate_texture` (``dilate`` steps, then the mean colour), so mip-mapping shows no dark seams.
    """
    from dream3d.render.raster import interpolate, rasterize

    faces = faces.long()
    rast = rasterize(uv_clip(uv.float()), faces, size, size)
    mask = rast.mask[0]
    points = interpolate(verts.float(), rast, faces)[0][mask]
    colors = [color_fn(points[i:i + chunk]).detach().float().cpu() for i in range(0, len(points), chunk)]
    texture = torch.zeros(size, size, 3)
    if colors:
        texture[mask] = torch.cat(colors).reshape(-1, 3).clamp(0.0, 1.0)
    return dilate_texture(texture, mask, dilate)


def bake_mesh(
    density_fn: DensityFn, color_fn: ColorFn, radius: float, resolution: int = 128,
    threshold: Optional[float] = None, texture_size: int = 1024, max_faces: Optional[int] = None,
) -> TexturedMesh:
    """Extract, unwrap and texture a field: see :func:`extract_mesh`, :func:`unwrap_uv`, :func:`bake_texture`.

    For a NeRF: ``bake_mesh(nerf.density, lambda x: nerf(x)["albedo"], nerf.radius)``.
    """
    verts, faces = extract_mesh(density_fn, radius, resolution, threshold, max_faces=max_faces)
    verts, faces, uv, _ = unwrap_uv(verts, faces, size=texture_size)
    texture = bake_texture(verts, faces, uv, color_fn, size=texture_size)
    return TexturedMesh(verts, faces, uv=uv, texture=texture)


def bake_surface(
    verts: Tensor, faces: Tensor, color_fn: ColorFn, texture_size: int = 1024, max_faces: Optional[int] = None,
    roughness: Optional[float] = None, metallic: Optional[float] = None, keep_largest: bool = True,
) -> tuple[TexturedMesh, bool]:
    """Texture an explicit surface (a DMTet's marching-tets mesh): weld and clean it, keep the object's pieces
    (:func:`main_parts`; all of them when ``keep_largest`` is false: a user's mesh of several parts), decimate to
    ``max_faces``, unwrap and bake ``color_fn``. Returns the mesh and whether the cleaned surface is watertight (checked before the UV seams split
    its vertices)."""
    if faces.shape[0] == 0:
        raise ValueError("empty surface: the mesh stage has no faces (no sign change in its sdf)")
    mesh = _cleanup(verts.detach().cpu().numpy(), faces.cpu().numpy(), keep_largest, max_faces)
    watertight = bool(mesh.is_watertight)
    v = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long)
    v, f, uv, _ = unwrap_uv(v, f, size=texture_size)
    texture = bake_texture(v, f, uv, color_fn, size=texture_size)
    return TexturedMesh(v, f, uv=uv, texture=texture, roughness=roughness, metallic=metallic), watertight


# --------------------------------------------------------------------------------------------------------------
# Writers and loader
# --------------------------------------------------------------------------------------------------------------


def _to_uint8(values: Tensor, what: str) -> np.ndarray:
    """Colours in [0,1] (any shape) -> uint8 array; ValueError for non-finite values."""
    values = torch.as_tensor(values).detach().float().cpu()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"mesh {what} has non-finite values")
    return (values.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


def _checked_texture(mesh: TexturedMesh) -> Tensor:
    """The mesh's texture [H,W,3]; ValueError when it is missing, of another shape or not finite."""
    tex = mesh.texture
    if tex is None or tex.dim() != 3 or tex.shape[-1] != 3 or tex.shape[0] < 1 or tex.shape[1] < 1:
        raise ValueError(f"mesh texture must be [H,W,3], got {None if tex is None else tuple(tex.shape)}")
    if not bool(torch.isfinite(tex).all()):
        raise ValueError("mesh texture has non-finite values")
    return tex


def _texture_image(mesh: TexturedMesh):
    """The mesh's texture as an RGB PIL image (row 0 = top)."""
    from PIL import Image

    return Image.fromarray(_to_uint8(_checked_texture(mesh), "texture"), mode="RGB")


def _trimesh_uv(uv: Tensor) -> np.ndarray:
    """TexturedMesh uv (v = 0 at image top) <-> trimesh / OBJ uv (v = 0 at image bottom); its own inverse."""
    out = torch.as_tensor(uv).detach().cpu().double().numpy().copy()
    out[:, 1] = 1.0 - out[:, 1]
    return out


def _vertex_rgba(mesh: TexturedMesh) -> Optional[np.ndarray]:
    """uint8 [V,4] vertex colours: sampled from the texture when there is one, else ``vertex_colors``."""
    if mesh.textured:
        _checked_texture(mesh)
        colors = mesh.sample_texture(mesh.uv)
    elif mesh.vertex_colors is not None:
        colors = mesh.vertex_colors
    else:
        return None
    rgb = _to_uint8(colors, "vertex colours")
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)


def _to_trimesh(mesh: TexturedMesh, colors_only: bool = False):
    """TexturedMesh -> trimesh.Trimesh with a PBR textured material, or vertex colours (PLY, untextured)."""
    import trimesh
    from trimesh.visual import ColorVisuals, TextureVisuals
    from trimesh.visual.material import PBRMaterial

    tm = trimesh.Trimesh(mesh.verts.detach().cpu().numpy(), mesh.faces.cpu().numpy(), process=False)
    if mesh.textured and not colors_only:
        material = PBRMaterial(
            name="material", baseColorTexture=_texture_image(mesh), baseColorFactor=[255, 255, 255, 255],
            metallicFactor=float(0.0 if mesh.metallic is None else mesh.metallic),
            roughnessFactor=float(1.0 if mesh.roughness is None else mesh.roughness),
        )
        tm.visual = TextureVisuals(uv=_trimesh_uv(mesh.uv), material=material)
    else:
        rgba = _vertex_rgba(mesh)
        if rgba is not None:
            tm.visual = ColorVisuals(tm, vertex_colors=rgba)
    return tm


def _glb_matte_default_material(data: bytes, roughness: float, metallic: float) -> bytes:
    """Give every primitive without a material a dielectric one. glTF's default material is fully metallic, so
    a vertex-coloured mesh (trimesh writes COLOR_0 and no material) would look dark in viewers."""
    import json
    import struct

    magic, version, _ = struct.unpack_from("<4sII", data, 0)
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    if magic != b"glTF" or json_type != b"JSON":
        return data
    doc = json.loads(data[20:20 + json_len])
    primitives = [p for m in doc.get("meshes", []) for p in m.get("primitives", []) if "material" not in p]
    if not primitives:
        return data
    doc.setdefault("materials", []).append({"name": "vertex_colours", "pbrMetallicRoughness": {
        "baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": metallic, "roughnessFactor": roughness}})
    for p in primitives:
        p["material"] = len(doc["materials"]) - 1
    chunk = json.dumps(doc, separators=(",", ":")).encode()
    chunk += b" " * (-len(chunk) % 4)
    rest = data[20 + json_len:]
    body = struct.pack("<I4s", len(chunk), b"JSON") + chunk + rest
    return struct.pack("<4sII", b"glTF", version, 12 + len(body)) + body


def write_glb(mesh: TexturedMesh, path: str | Path) -> Path:
    """Binary glTF 2.0: PBR metallic-roughness material with the texture embedded as PNG, or COLOR_0 vertex
    colours with a matte material (metallic 0, roughness 1 unless the mesh says otherwise)."""
    data = _to_trimesh(mesh).export(file_type="glb")
    if not mesh.textured:
        data = _glb_matte_default_material(data, float(1.0 if mesh.roughness is None else mesh.roughness),
                                           float(0.0 if mesh.metallic is None else mesh.metallic))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_ply(mesh: TexturedMesh, path: str | Path) -> Path:
    """Binary PLY with per-vertex colours (sampled from the texture at the vertex uvs when textured)."""
    data = _to_trimesh(mesh, colors_only=True).export(file_type="ply")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _obj_text(mesh: TexturedMesh, mtl_name: Optional[str]) -> str:
    """OBJ body: ``v`` (with RGB when untextured with vertex colours), ``vt`` (flipped V), ``f v/vt``."""
    verts = mesh.verts.detach().cpu().double().numpy()
    faces = mesh.faces.cpu().numpy() + 1
    lines = ["# dream3d"]
    if mtl_name is not None:
        lines += [f"mtllib {mtl_name}", "usemtl material"]
        lines += [f"v {x:.7g} {y:.7g} {z:.7g}" for x, y, z in verts]
        lines += [f"vt {u:.7g} {v:.7g}" for u, v in _trimesh_uv(mesh.uv)]
        lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in faces]
    else:
        rgba = _vertex_rgba(mesh)
        if rgba is None:
            lines += [f"v {x:.7g} {y:.7g} {z:.7g}" for x, y, z in verts]
        else:
            rgb = rgba[:, :3] / 255.0
            lines += [f"v {x:.7g} {y:.7g} {z:.7g} {r:.4g} {g:.4g} {b:.4g}" for (x, y, z), (r, g, b) in zip(verts, rgb)]
        lines += [f"f {a} {b} {c}" for a, b, c in faces]
    return "\n".join(lines) + "\n"


def write_obj(mesh: TexturedMesh, path: str | Path) -> Path:
    """Wavefront OBJ; a textured mesh also gets ``<stem>.mtl`` (``map_Kd <stem>.png``) and ``<stem>.png``.

    The OBJ is written last, so it only ever appears beside its material and texture.
    """
    path = Path(path)
    if not mesh.textured:
        write_text(path, _obj_text(mesh, None))
        return path
    image = np.asarray(_texture_image(mesh))
    mtl_name, png_name = f"{path.stem}.mtl", f"{path.stem}.png"
    rough = 1.0 if mesh.roughness is None else mesh.roughness
    metal = 0.0 if mesh.metallic is None else mesh.metallic
    mtl = (f"newmtl material\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nillum 1\nPr {rough:.4g}\nPm {metal:.4g}\n"
           f"map_Kd {png_name}\n")
    obj = _obj_text(mesh, mtl_name)
    save_png(path.with_name(png_name), image)
    write_text(path.with_name(mtl_name), mtl)
    write_text(path, obj)
    return path


def _load_trimesh(path: Path):
    """One trimesh.Trimesh from a GLB/OBJ/PLY file, vertex order and count as written."""
    import trimesh

    kwargs = {"maintain_order": True, "group_material": False} if path.suffix.lower() == ".obj" else {}
    loaded = trimesh.load(str(path), process=False, **kwargs)
    if isinstance(loaded, trimesh.Scene):
        geoms = list(loaded.dump()) if len(loaded.geometry) != 1 else list(loaded.geometry.values())
        if not geoms:
            raise ValueError(f"{path}: the file holds no mesh")
        loaded = geoms[0] if len(geoms) == 1 else trimesh.util.concatenate(geoms)
    return loaded


def _material_texture(material) -> tuple[Optional[Tensor], Optional[float], Optional[float]]:
    """trimesh material -> (texture [H,W,3] float in [0,1] or None, roughness, metallic)."""
    image = getattr(material, "baseColorTexture", None)
    if image is None:
        image = getattr(material, "image", None)
    texture = None
    if image is not None:
        texture = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    rough, metal = getattr(material, "roughnessFactor", None), getattr(material, "metallicFactor", None)
    mtl = getattr(material, "kwargs", None) or {}  # OBJ: unknown MTL keys such as Pr / Pm, as lists of strings
    rough = mtl["pr"][0] if rough is None and mtl.get("pr") else rough
    metal = mtl["pm"][0] if metal is None and mtl.get("pm") else metal
    return texture, (None if rough is None else float(rough)), (None if metal is None else float(metal))


def load_mesh(path: str | Path) -> TexturedMesh:
    """Read a GLB, OBJ (+MTL/PNG) or PLY file back into a :class:`TexturedMesh` (V flipped back)."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"cannot load {path}: unknown mesh format '.{suffix}' (known: {', '.join(FORMATS)})")
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    tm = _load_trimesh(path)
    verts, faces = np.asarray(tm.vertices), np.asarray(tm.faces)
    visual = tm.visual
    uv = texture = colors = rough = metal = None
    if getattr(visual, "kind", None) == "texture" and getattr(visual, "uv", None) is not None:
        uv = torch.as_tensor(_trimesh_uv(torch.as_tensor(np.asarray(visual.uv))), dtype=torch.float32)
        texture, rough, metal = _material_texture(visual.material)
    elif getattr(visual, "kind", None) == "vertex":
        colors = torch.as_tensor(np.asarray(visual.vertex_colors)[:, :3], dtype=torch.float32) / 255.0
    elif "color" in (getattr(visual, "vertex_attributes", None) or {}):  # COLOR_0 beside a material (GLB)
        rgba = np.asarray(visual.vertex_attributes["color"], dtype=np.float64)
        colors = torch.as_tensor(rgba[:, :3] / (255.0 if rgba.max() > 1.0 else 1.0), dtype=torch.float32)
        _, rough, metal = _material_texture(visual.material)
    return TexturedMesh(verts, faces, uv=uv, texture=texture, vertex_colors=colors, roughness=rough, metallic=metal)


WRITERS = {"glb": write_glb, "obj": write_obj, "ply": write_ply}


def export_mesh(mesh: TexturedMesh, folder: str | Path, stem: str = "model",
                formats: Iterable[str] = ("glb",)) -> dict[str, Path]:
    """Write ``<folder>/<stem>.<format>`` for each format (glb, obj, ply) -> {format: path}.

    All formats are checked before anything is written.
    """
    formats = [str(f).lower().lstrip(".") for f in formats]
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise ValueError(f"unknown mesh format '{unknown[0]}' (known: {', '.join(FORMATS)})")
    folder = Path(folder)
    return {fmt: WRITERS[fmt](mesh, folder / f"{stem}.{fmt}") for fmt in dict.fromkeys(formats)}
