"""The mesh renderer: a triangle mesh, its albedo and a shading model -> rgb, opacity, normal, albedo, depth.

One implementation, :func:`render_mesh`, serves every mesh dream3d draws; its options select what differs:

* **Albedo**: per-vertex colours [V,3], per-face colours [F,3], a texture (``uv`` + ``texture``, bilinear
  :func:`texture_lookup`) or a field ``points [N,3] -> albedo [N,3]`` (or a dict of material channels with an
  ``"albedo"`` entry) evaluated once per covered pixel at the interpolated surface point.
* **Shading** (``shade``): ``"lambert"`` (albedo x (ambient + (1 - ambient) max(0, n.l)) under a directional
  light, :func:`dream3d.render.shading.shade`'s diffuse model), ``None`` (the albedo itself) or a
  :data:`ShadeFn` callback on the covered pixels (point lights, PBR).
* **Normals**: flat face normals or smooth (area-weighted vertex normals, interpolated); ``two_sided`` flips
  them to face the camera (previews of meshes of any winding), else they stay outward.
* **Antialiasing**: rgb and opacity always go through :func:`dream3d.render.raster.antialias` (unless
  ``antialiased=False``); ``antialias_normals`` adds the normal map, whose silhouettes then pass gradients too.

Callers: the mesh stages (:mod:`dream3d.systems.mesh`, :func:`dream3d.representations.dmtet.render_dmtet`:
an albedo field, ``shade`` a callback or None, ``two_sided=False, antialias_normals=True``), and with the
defaults (Lambert, two-sided, normals not antialiased) the shape world's training images, the turntables
(:mod:`dream3d.export.video`), the evaluation renders (:func:`dream3d.eval.render_eval`) and the tests;
:func:`render_textured` renders a :class:`~dream3d.representations.mesh.TexturedMesh`.

Geometry helpers (normals, edge topology) are :mod:`dream3d.render.mesh_geometry`; the rasterizer is
:mod:`dream3d.render.raster`.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from dream3d.render.mesh_geometry import face_normals, vertex_normals
from dream3d.render.raster import antialias, face_attribute, interpolate, mvp_from_cameras, rasterize, transform
from dream3d.render.shading import shade as shade_samples

__all__ = ["ShadeFn", "render_mesh", "render_textured", "texture_lookup"]

ShadeFn = Callable[..., Tensor]  # (material, points [N,3], normal [N,3], view [N,3], batch_index [N]) -> rgb [N,3]
AlbedoFn = Callable[[Tensor], Union[Tensor, dict]]  # world points [N,3] -> albedo [N,3] or {"albedo": ..., ...}


def texture_lookup(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup of ``texture`` [H,W,C] at ``uv`` [...,2] -> [...,C] (differentiable in both).

    The convention of :class:`dream3d.representations.mesh.TexturedMesh`: ``u`` runs along image columns,
    ``v = 0`` is image row 0 (the top row); texel centres at ``(i + 0.5) / W``; clamped at the border.
    """
    shape = uv.shape[:-1]
    grid = (uv.reshape(1, -1, 1, 2) * 2.0 - 1.0).to(texture.dtype)
    out = F.grid_sample(texture.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                        align_corners=False)  # [1,C,N,1]
    return out[0, :, :, 0].t().reshape(*shape, texture.shape[-1])


def render_mesh(
    verts: Tensor, faces: Tensor, cams, albedo: Optional[Union[Tensor, AlbedoFn]] = None, *,
    uv: Optional[Tensor] = None, texture: Optional[Tensor] = None, face_colors: Optional[bool] = None,
    shade: Union[str, ShadeFn, None] = "lambert", light: Optional[Tensor] = None, ambient: float = 0.35,
    smooth_normals: bool = False, two_sided: bool = True, background: Union[float, Tensor] = 1.0,
    antialiased: bool = True, antialias_normals: bool = False, topology: Optional[Tensor] = None,
    backend: str = "auto",
) -> dict[str, Tensor]:
    """Render a mesh (verts [V,3], faces [F,3]) from ``cams`` (:class:`dream3d.cameras.Cameras`) -> images.

    ``albedo``: colours [V,3] per vertex or [F,3] per face (``face_colors`` forces the choice; by default
    per-face when it has F rows and V != F), or a field (world points [N,3] -> albedo [N,3], or a dict of
    material channels with an ``"albedo"`` entry) evaluated once per covered pixel at the interpolated
    surface point. With ``uv`` [V,2] and ``texture`` [Ht,Wt,3] (both or neither) the albedo is instead the
    bilinear :func:`texture_lookup` at the interpolated uv, and ``albedo`` is ignored (it may be None).

    ``shade``: ``"lambert"`` is Lambert + ``ambient`` under a directional light, ``light`` the direction
    *towards* it ([3] or [B,3], world; by default from the camera, tilted upwards); ``None`` leaves the albedo
    unshaded; a :data:`ShadeFn` gets the material (the field's output, or the albedo), the surface points
    [N,3], the normals [N,3], the unit directions towards the camera [N,3] and the pixels' camera indices [N]
    (``light`` and ``ambient`` are for ``"lambert"`` only).
    Normals are flat unless ``smooth_normals``; ``two_sided`` flips them to face the camera (else outward, for
    closed outward-wound meshes).

    Returns ``rgb`` [B,H,W,3] (the colour over ``background``), ``opacity`` [B,H,W,1], ``normal`` [B,H,W,3]
    (world, unit, 0 in the background), ``albedo`` [B,H,W,3] (unshaded, 0 in the background) and ``depth``
    [B,H,W,1] (view depth, 0 in the background). With ``antialiased`` rgb and opacity (and, with
    ``antialias_normals``, normal) go through :func:`~dream3d.render.raster.antialias`, which is where
    silhouettes pass gradients to the vertices; ``topology`` (:func:`~dream3d.render.mesh_geometry.edge_topology`
    of ``faces``) can be passed to save recomputing it for every render of the same mesh. ``backend``: the
    rasterizer (auto | torch | nvdiffrast, see :func:`~dream3d.render.raster.use_nvdiffrast`).
    """
    if (uv is None) != (texture is None):
        raise ValueError("render_mesh: uv and texture must be given together (got only "
                         f"{'uv' if texture is None else 'texture'})")
    if texture is None and albedo is None:
        raise ValueError("render_mesh: give colors (per vertex or per face) or an albedo field, or uv and texture")
    if isinstance(shade, str) and shade != "lambert":
        raise ValueError(f"render_mesh: shade must be 'lambert', None or a function, got '{shade}'")
    B, H, W = cams.batch_size, cams.height, cams.width
    faces = faces.long()
    clip = transform(verts, mvp_from_cameras(cams).to(verts))
    rast = rasterize(clip, faces, H, W, backend=backend)
    mask = rast.mask[..., None]
    pos = interpolate(verts, rast, faces)  # [B,H,W,3]
    if smooth_normals:
        normal = F.normalize(interpolate(vertex_normals(verts, faces), rast, faces), dim=-1, eps=1e-12)
    else:
        normal = face_attribute(face_normals(verts, faces), rast)
    if two_sided:
        view = pos - cams.position.to(verts).view(-1, 1, 1, 3)
        normal = torch.where((normal * view).sum(-1, keepdim=True) > 0, -normal, normal)

    idx = rast.mask.reshape(-1).nonzero().squeeze(1)  # the covered pixels: everything below is evaluated there
    points = pos.reshape(-1, 3).index_select(0, idx)
    if texture is not None:
        # looked up at every pixel, background too: grid_sample's backward sums the texture's gradient in an
        # order that depends on the points it is given, so this keeps those sums (bits) what they have been
        material = _at(texture_lookup(texture.to(verts), interpolate(uv.to(verts), rast, faces)), idx)
    elif callable(albedo):
        material = albedo(points)
    else:
        per_face = face_colors if face_colors is not None else (albedo.shape[0] == faces.shape[0] != verts.shape[0])
        material = _at(face_attribute(albedo, rast) if per_face else interpolate(albedo, rast, faces), idx)
    base = (material["albedo"] if isinstance(material, dict) else material).to(verts)
    colour = base
    if shade is not None:
        shade_fn = _directional_lambert(cams, light, ambient) if isinstance(shade, str) else shade
        batch_index = torch.div(idx, H * W, rounding_mode="floor")
        view = F.normalize(cams.position.to(verts)[batch_index] - points, dim=-1, eps=1e-12)
        colour = shade_fn(material, points, _at(normal, idx), view, batch_index).to(verts)

    C = colour.shape[-1]  # 3, or a latent field's channel count (Latent-Paint: then ``background`` has C values)
    albedo_image = verts.new_zeros(B * H * W, base.shape[-1]).index_put((idx,), base).view(B, H, W, -1)
    shaded = verts.new_zeros(B * H * W, C).index_put((idx,), colour).view(B, H, W, C)
    bg = torch.as_tensor(background, dtype=verts.dtype, device=verts.device).expand(B, H, W, C)
    layers = [torch.where(mask, shaded, bg), *([normal] if antialias_normals else []), mask.to(verts.dtype)]
    image = torch.cat(layers, dim=-1)
    if antialiased and faces.shape[0]:
        image = antialias(image, rast, clip, faces, topology=topology)
    return {"rgb": image[..., :C], "opacity": image[..., -1:],
            "normal": image[..., C:C + 3] if antialias_normals else normal * mask, "albedo": albedo_image,
            "depth": rast.depth[..., None]}


def render_textured(
    mesh, cams, default_color: Union[float, Tensor] = 0.7, **kwargs
) -> dict[str, Tensor]:
    """:func:`render_mesh` of a :class:`~dream3d.representations.mesh.TexturedMesh`.

    The albedo comes from the mesh's texture when it has one (uv + texture), else its vertex colours, else
    ``default_color`` (grey; a float or an RGB triple). Other keyword arguments go to :func:`render_mesh`.
    """
    verts, faces = mesh.verts, mesh.faces
    if mesh.textured:
        return render_mesh(verts, faces, cams, uv=mesh.uv, texture=mesh.texture, **kwargs)
    if mesh.vertex_colors is not None:
        return render_mesh(verts, faces, cams, mesh.vertex_colors.to(verts), **{**kwargs, "face_colors": False})
    grey = torch.as_tensor(default_color, dtype=verts.dtype, device=verts.device).reshape(-1)
    return render_mesh(verts, faces, cams, grey.expand(3).expand(verts.shape[0], 3), **{**kwargs, "face_colors": False})


def _at(image: Tensor, idx: Tensor) -> Tensor:
    """Values [N,C] of an image [B,H,W,C] at flat pixel indices ``idx`` [N]."""
    return image.reshape(-1, image.shape[-1]).index_select(0, idx)


def _directional_lambert(cams, light: Optional[Tensor], ambient: float) -> ShadeFn:
    """The ``"lambert"`` :data:`ShadeFn`: diffuse + ambient under one directional light per camera."""
    to_light = _light_directions(cams, light)

    def lambert(material, points: Tensor, normal: Tensor, view: Tensor, index: Tensor) -> Tensor:
        albedo = material["albedo"] if isinstance(material, dict) else material
        return shade_samples(albedo, normal, to_light.to(normal)[index], "diffuse", ambient)

    return lambert


def _light_directions(cams, light: Optional[Tensor]) -> Tensor:
    """Unit directions towards the light [B,3]: given ([3] or [B,3]), else from the camera and above."""
    B = cams.batch_size
    if light is None:
        to_cam = F.normalize(cams.position, dim=-1)
        up = torch.tensor([0.0, 1.0, 0.0], dtype=to_cam.dtype, device=to_cam.device)
        return F.normalize(to_cam + 0.6 * up, dim=-1)
    light = torch.as_tensor(light, dtype=cams.c2w.dtype, device=cams.c2w.device)
    return F.normalize(light.reshape(-1, 3).expand(B, 3), dim=-1)
