"""Shading of surface samples.

Two families live here:

* :func:`shade` -- the cheap shadings of the geometry stages: ``albedo``, ``diffuse`` (ambient + Lambert from
  a point light) and ``textureless``; ``SHADINGS`` lists their names.
* :func:`pbr_shade` + :class:`EnvironmentLight` -- the physically based shading of Fantasia3D's appearance
  stage: a glTF-style metallic-roughness material lit by a distant environment, split into a diffuse
  (irradiance) and a specular (pre-filtered radiance x split-sum BRDF) term. Pure PyTorch, a handful of
  element-wise ops per sample: cheap on a CPU, differentiable in the material, the normal and the light.

Environment conventions
-----------------------
World frame, **Y up**, the object's front faces **+Z** (towards the default camera). The environment is the
radiance ``L(d)`` arriving from direction ``d`` (unit, pointing *away* from the object, towards the light
source), stored as real spherical harmonics up to order 2: ``sh [9,3]`` (9 coefficients x RGB),
``L(d) ~ sum_k sh[k] * Y_k(d)``. The basis (:func:`sh_basis`) is the usual orthonormal real basis written in
the world's Cartesian coordinates, ``k = l^2 + l + m``:

    Y_0 = 0.282095                                          (l = 0)
    Y_1 = 0.488603 y,  Y_2 = 0.488603 z,  Y_3 = 0.488603 x   (l = 1)
    Y_4 = 1.092548 xy, Y_5 = 1.092548 yz, Y_6 = 0.315392 (3z^2 - 1),
    Y_7 = 1.092548 xz, Y_8 = 0.546274 (x^2 - y^2)           (l = 2)

Which axis the ``m = 0`` functions single out does not matter: each band spans a rotation-invariant space and
every filter below is zonal (a function of the band only), so it commutes with rotations.

Equirectangular images ``[H,W,3]`` (:func:`equirect_directions`): row 0 is the top (+Y); the polar angle from +Y
is ``theta = pi (i + 0.5) / H``; the azimuth is ``phi = 2 pi (j + 0.5) / W - pi``, and the direction is
``(sin theta sin phi, cos theta, sin theta cos phi)``: the image centre looks at +Z (the front), three
quarters across at +X, the left and right edges at -Z (behind the object).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SHADINGS",
    "shade",
    "SH_BANDS",
    "COSINE_LOBE",
    "sh_basis",
    "equirect_directions",
    "project_equirect",
    "project_function",
    "studio_radiance",
    "glossy_attenuation",
    "EnvironmentLight",
    "ENVIRONMENT_PRESETS",
    "reflect",
    "env_brdf_approx",
    "pbr_shade",
]

SHADINGS = ("albedo", "diffuse", "textureless")


def shade(albedo: Tensor, normal: Optional[Tensor], light_dir: Optional[Tensor], shading: str, ambient: float) -> Tensor:
    """Per-sample colour [M,3]: albedo, diffuse (albedo x (ambient + (1-ambient) max(0, n.l))) or textureless (white)."""
    if shading == "albedo":
        return albedo
    lambert = (normal * light_dir).sum(-1, keepdim=True).clamp_min(0.0)
    light = ambient + (1.0 - ambient) * lambert
    if shading == "diffuse":
        return albedo * light
    if shading == "textureless":
        return light.expand(-1, 3)
    raise ValueError(f"shading: expected one of {', '.join(SHADINGS)}, got '{shading}'")


def point_light_shader(lights: Tensor, shading: str, ambient: float) -> Callable[..., Tensor]:
    """A :data:`dream3d.render.mesh.ShadeFn`: :func:`shade` (``diffuse`` or ``textureless``) under each camera's point
    light, ``lights`` [B,3] world positions (a NeRF's renders are lit so, per sample)."""

    def lambert(albedo: Tensor, points: Tensor, normal: Tensor, view: Tensor, index: Tensor) -> Tensor:
        return shade(albedo, normal, F.normalize(lights[index] - points, dim=-1, eps=1e-12), shading, ambient)

    return lambert


# ------------------------------------------------------------------------------------------------------------
# Spherical harmonics
# ------------------------------------------------------------------------------------------------------------

SH_BANDS: tuple[int, ...] = (0, 1, 1, 1, 2, 2, 2, 2, 2)  # band l of each of the 9 coefficients

# Clamped-cosine convolution per band (Ramamoorthi & Hanrahan 2001: A_0 = pi, A_1 = 2 pi / 3, A_2 = pi / 4),
# divided by pi so that the result is the outgoing radiance of a white Lambertian surface (albedo 1, BRDF
# 1 / pi): under uniform radiance 1 it is exactly 1.
COSINE_LOBE: tuple[float, float, float] = (1.0, 2.0 / 3.0, 0.25)

_C0 = 0.5 / math.sqrt(math.pi)  # 0.282095
_C1 = math.sqrt(3.0 / (4.0 * math.pi))  # 0.488603
_C2 = 0.5 * math.sqrt(15.0 / math.pi)  # 1.092548
_C20 = 0.25 * math.sqrt(5.0 / math.pi)  # 0.315392
_C22 = 0.25 * math.sqrt(15.0 / math.pi)  # 0.546274


def sh_basis(dirs: Tensor) -> Tensor:
    """Real orthonormal SH basis up to order 2 at unit directions ``dirs [...,3]`` -> ``[...,9]`` (module docstring)."""
    x, y, z = dirs.unbind(-1)
    return torch.stack(
        [
            torch.full_like(x, _C0),
            _C1 * y, _C1 * z, _C1 * x,
            _C2 * x * y, _C2 * y * z, _C20 * (3.0 * z * z - 1.0), _C2 * x * z, _C22 * (x * x - y * y),
        ],
        dim=-1,
    )


def _band_weights(per_band: Tensor) -> Tensor:
    """``per_band [...,3]`` (one factor per band l = 0, 1, 2) -> one factor per coefficient ``[...,9]``."""
    return per_band[..., [0, 1, 1, 1, 2, 2, 2, 2, 2]]


def equirect_directions(height: int, width: int, dtype: torch.dtype = torch.float32,
                        device: Optional[torch.device] = None) -> tuple[Tensor, Tensor]:
    """Pixel-centre directions ``[H,W,3]`` of an equirectangular image and each pixel's solid angle ``[H,W]``.

    The solid angle is exact for the lat-long cell, ``(cos theta_top - cos theta_bottom) * 2 pi / W`` (they sum
    to 4 pi); the directions follow the convention of the module docstring.
    """
    i = torch.arange(height + 1, dtype=torch.float64, device=device)
    theta_edges = math.pi * i / height  # [H+1]
    theta = 0.5 * (theta_edges[1:] + theta_edges[:-1])  # [H]
    phi = 2.0 * math.pi * (torch.arange(width, dtype=torch.float64, device=device) + 0.5) / width - math.pi  # [W]
    st, ct = torch.sin(theta)[:, None], torch.cos(theta)[:, None]
    dirs = torch.stack(
        [st * torch.sin(phi)[None], ct.expand(height, width), st * torch.cos(phi)[None]], dim=-1
    )  # [H,W,3]
    band = torch.cos(theta_edges[:-1]) - torch.cos(theta_edges[1:])  # [H]
    solid_angle = (band * (2.0 * math.pi / width))[:, None].expand(height, width)
    return dirs.to(dtype), solid_angle.to(dtype).contiguous()


def _cell_integrals(height: int, width: int, device: Optional[torch.device] = None) -> Tensor:
    """Exact integrals of the 9 basis functions over every lat-long cell of an equirect grid: ``[H,W,9]`` float64.

    With ``x = sin t sin p``, ``y = cos t``, ``z = sin t cos p`` and ``dOmega = sin t dt dp``, every basis
    function is a sum of products ``g(t) h(p)``, so each cell integral is a sum of outer products of closed-form
    1-D integrals over the cell's polar range ``[t0, t1]`` (rows) and azimuth range ``[p0, p1]`` (columns).
    """
    f64 = torch.float64
    t = math.pi * torch.arange(height + 1, dtype=f64, device=device) / height  # polar edges [H+1]
    p = 2.0 * math.pi * torch.arange(width + 1, dtype=f64, device=device) / width - math.pi  # azimuth edges [W+1]
    u, st = torch.cos(t), torch.sin(t)

    def over_t(antiderivative: Tensor) -> Tensor:
        return antiderivative[1:] - antiderivative[:-1]  # [H]

    t_one = -over_t(u)  # int sin t dt
    t_cos = -over_t(u * u) / 2.0  # int cos t sin t dt
    t_sin = over_t(t / 2.0 - torch.sin(2.0 * t) / 4.0)  # int sin^2 t dt       (x or z: one factor sin t)
    t_sin_cos = over_t(st**3 / 3.0)  # int sin^2 t cos t dt                     (xy, yz)
    t_sin2 = -over_t(u - u**3 / 3.0)  # int sin^3 t dt                          (x^2, z^2, xz)
    t_cos2 = -over_t(u**3 / 3.0)  # int cos^2 t sin t dt                        (y^2)

    def over_p(antiderivative: Tensor) -> Tensor:
        return antiderivative[1:] - antiderivative[:-1]  # [W]

    p_one = over_p(p)
    p_sin = -over_p(torch.cos(p))
    p_cos = over_p(torch.sin(p))
    p_sin2 = over_p(p / 2.0 - torch.sin(2.0 * p) / 4.0)
    p_cos2 = over_p(p / 2.0 + torch.sin(2.0 * p) / 4.0)
    p_sin_cos = over_p(torch.sin(p) ** 2 / 2.0)

    def outer(a: Tensor, b: Tensor) -> Tensor:
        return a[:, None] * b[None, :]  # [H,W]

    return torch.stack(
        [
            _C0 * outer(t_one, p_one),
            _C1 * outer(t_cos, p_one),  # y
            _C1 * outer(t_sin, p_cos),  # z
            _C1 * outer(t_sin, p_sin),  # x
            _C2 * outer(t_sin_cos, p_sin),  # xy
            _C2 * outer(t_sin_cos, p_cos),  # yz
            _C20 * (3.0 * outer(t_sin2, p_cos2) - outer(t_one, p_one)),  # 3 z^2 - 1
            _C2 * outer(t_sin2, p_sin_cos),  # xz
            _C22 * (outer(t_sin2, p_sin2) - outer(t_cos2, p_one)),  # x^2 - y^2
        ],
        dim=-1,
    )


def project_equirect(image: Tensor) -> Tensor:
    """SH coefficients ``[9,3]`` of an equirectangular radiance image ``[H,W,3]`` (linear, not sRGB).

    ``sh_k = int L(d) Y_k(d) dOmega`` with the image taken as constant over each pixel's lat-long cell; the
    integral of ``Y_k`` over each cell is exact (:func:`_cell_integrals`), so a constant image projects to the
    uniform environment to float precision at any resolution. Differentiable in ``image``.
    """
    if image.dim() != 3 or image.shape[-1] != 3:
        raise ValueError(f"project_equirect: expected an image [H,W,3], got {tuple(image.shape)}")
    height, width = image.shape[:2]
    dtype = image.dtype if image.is_floating_point() else torch.float32
    weights = _cell_integrals(height, width, device=image.device).reshape(-1, 9).to(dtype)  # [HW,9]
    return weights.t() @ image.reshape(-1, 3).to(dtype)  # [9,3]


def project_function(fn: Callable[[Tensor], Tensor], height: int = 64, width: int = 128) -> Tensor:
    """SH coefficients ``[9,3]`` of a radiance function ``fn(dirs [N,3]) -> [N,3]`` sampled on an equirect grid."""
    dirs, _ = equirect_directions(height, width)
    return project_equirect(fn(dirs.reshape(-1, 3)).reshape(height, width, 3))


def studio_radiance(dirs: Tensor) -> Tensor:
    """Radiance ``[N,3]`` of the ``"studio"`` preset at unit directions ``dirs [N,3]`` (neutral white).

    ``L(d) = 0.34 + 0.85 max(0, d.k) + 0.25 max(0, d_z) - 0.17 max(0, -d_y)`` with the key direction
    ``k = normalize(0, 1, 0.8)``: a soft ambient, a broad key light from above and in front, a fill from the
    front (the camera side) and a darker floor. Chosen so that, after the order-2 projection, a white
    Lambertian surface returns about 1.02 facing up-front, 0.86 facing front or up, 0.54 sideways, 0.34 facing
    back and 0.30 facing down (checked in ``tests/test_shading.py``): shading that reads the shape without
    burning out albedos, like a product shot. The projected radiance ranges over [0.17, 1.41].
    """
    key = F.normalize(torch.tensor([0.0, 1.0, 0.8], dtype=dirs.dtype, device=dirs.device), dim=0)
    value = (
        0.34
        + 0.85 * (dirs @ key).clamp_min(0.0)
        + 0.25 * dirs[:, 2].clamp_min(0.0)
        - 0.17 * (-dirs[:, 1]).clamp_min(0.0)
    )
    return value[:, None].expand(-1, 3)


def _uniform_sh(radiance: float = 1.0) -> Tensor:
    """SH coefficients [9,3] of a constant radiance: only ``sh_0 = L * 4 pi * Y_0 = L * 2 sqrt(pi)``."""
    sh = torch.zeros(9, 3)
    sh[0] = radiance * 2.0 * math.sqrt(math.pi)
    return sh


ENVIRONMENT_PRESETS: dict[str, Callable[[], Tensor]] = {
    "studio": lambda: project_function(studio_radiance),
    "uniform": _uniform_sh,
}


def glossy_attenuation(roughness: Tensor) -> Tensor:
    """Per-band attenuation ``[...,3]`` (bands l = 0, 1, 2) of the pre-filtered specular lobe at ``roughness [...,1]``.

    ``f_l = exp(-l (l + 1) t)`` with ``t = alpha / 4`` and ``alpha = roughness^2`` (the glTF / Disney remap).

    Why this form: ``exp(-l(l+1) t)`` are the SH coefficients of the heat kernel on the sphere, a Gaussian-like
    lobe that widens with ``t`` and becomes a delta (a mirror: ``f_l = 1``) at ``t = 0``. The lobe it stands in
    for is the one the split-sum approximation pre-filters the environment with: GGX reflection lobe with
    ``n = v = r``, i.e. ``K(theta) ~ D_GGX(theta / 2; alpha) cos(theta)`` over the hemisphere around the
    reflection direction. Its normalised Legendre coefficients ``c_l(alpha)`` were computed numerically and
    ``t = k alpha`` was fitted by least squares to ``c_1`` and ``c_2`` over roughness in [0.05, 1]: k = 0.256,
    rounded to 1/4. With k = 1/4 the largest error in a band coefficient is 0.06 (band 1 at roughness 1, where
    the GGX lobe is exactly the cosine lobe, ``c = (1, 2/3, 1/4)``, and this gives (1, 0.61, 0.22)); at
    roughness 0.5 it gives (0.88, 0.69) for (0.87, 0.66). (A small-angle Beckmann argument would give
    ``t = alpha^2``, but GGX's long tails make the lobe much wider than its core suggests.) ``f_0 = 1``: the
    filter preserves the mean, so a uniform environment stays uniform at every roughness.
    """
    t = 0.25 * roughness.clamp(0.0, 1.0) ** 2  # [...,1]
    ls = torch.tensor([0.0, 2.0, 6.0], dtype=roughness.dtype, device=roughness.device)  # l (l + 1)
    return torch.exp(-ls * t)


class EnvironmentLight(nn.Module):
    """Distant environment light as order-2 real spherical harmonics: ``sh [9,3]`` (coefficients x RGB).

    ``source`` is a preset name (``"studio"``: :func:`studio_radiance`; ``"uniform"``: radiance 1 everywhere),
    an equirectangular linear radiance image ``[H,W,3]`` (projected with :func:`project_equirect`; module
    docstring for its orientation) or SH coefficients ``[9,3]``. :meth:`from_function` projects a radiance
    function. ``trainable=True`` makes ``sh`` a parameter (optimise it with the material to let the light
    explain part of the shading); otherwise it is a buffer (saved, moved with ``.to``, never optimised).
    ``scale`` multiplies the coefficients (exposure).
    """

    def __init__(self, source: Union[str, Tensor] = "studio", trainable: bool = False, scale: float = 1.0) -> None:
        super().__init__()
        if isinstance(source, str):
            key = source.lower()
            if key not in ENVIRONMENT_PRESETS:
                raise ValueError(f"unknown environment preset {source!r}; expected one of "
                                 f"{', '.join(ENVIRONMENT_PRESETS)}, an equirect image [H,W,3] or SH coefficients [9,3]")
            sh = ENVIRONMENT_PRESETS[key]()
        else:
            source = torch.as_tensor(source)
            if source.dim() == 3 and source.shape[-1] == 3:
                sh = project_equirect(source.float())
            elif tuple(source.shape) == (9, 3):
                sh = source
            else:
                raise ValueError("EnvironmentLight: expected a preset name, an equirect image [H,W,3] or SH "
                                 f"coefficients [9,3], got a tensor of shape {tuple(source.shape)}")
        sh = sh.detach().clone().float() * float(scale)
        self.trainable = bool(trainable)
        if self.trainable:
            self.sh = nn.Parameter(sh)
        else:
            self.register_buffer("sh", sh)

    @classmethod
    def from_preset(cls, name: str, trainable: bool = False, scale: float = 1.0) -> "EnvironmentLight":
        """A named environment (``"studio"`` or ``"uniform"``); same as ``EnvironmentLight(name)``."""
        return cls(name, trainable=trainable, scale=scale)

    @classmethod
    def from_equirect(cls, image: Tensor, trainable: bool = False, scale: float = 1.0) -> "EnvironmentLight":
        """Project an equirectangular linear radiance image ``[H,W,3]`` (module docstring) onto the SH basis."""
        image = torch.as_tensor(image)
        if image.dim() != 3 or image.shape[-1] != 3:
            raise ValueError(f"EnvironmentLight.from_equirect: expected an image [H,W,3], got {tuple(image.shape)}")
        return cls(image, trainable=trainable, scale=scale)

    @classmethod
    def from_function(cls, fn: Callable[[Tensor], Tensor], trainable: bool = False, scale: float = 1.0,
                      height: int = 64, width: int = 128) -> "EnvironmentLight":
        """Project a radiance function ``fn(dirs [N,3]) -> [N,3]`` onto the SH basis (sampled on an equirect grid)."""
        return cls(project_function(fn, height, width).detach(), trainable=trainable, scale=scale)

    def extra_repr(self) -> str:
        return f"order=2, trainable={self.trainable}"

    def _evaluate(self, dirs: Tensor, band_factor: Tensor) -> Tensor:
        """``sum_k band_factor[..,l(k)] sh[k] Y_k(dirs)`` for ``dirs [N,3]``, ``band_factor [N,3] or [3]`` -> [N,3]."""
        sh = self.sh.to(dirs.dtype)
        if sh.device != dirs.device:
            sh = sh.to(dirs.device)
        basis = sh_basis(dirs) * _band_weights(band_factor)  # [N,9]
        return basis @ sh

    def irradiance(self, normal: Tensor) -> Tensor:
        """Cosine-weighted irradiance over pi at unit normals ``[N,3]`` -> ``[N,3]``, clamped at 0.

        ``E(n) / pi = sum_k A_l(k) sh[k] Y_k(n)`` with ``A = (1, 2/3, 1/4)`` (:data:`COSINE_LOBE`): the outgoing
        radiance of a white Lambertian surface, exactly 1 under the uniform preset. The clamped cosine is so smooth
        that order 2 captures nearly all of it (Ramamoorthi & Hanrahan): the worst case, a point light seen
        at grazing incidence, is off by 0.094 / pi per unit power; smooth environments by far less.
        """
        lobe = torch.tensor(COSINE_LOBE, dtype=normal.dtype, device=normal.device)
        return self._evaluate(normal, lobe).clamp_min(0.0)

    def radiance(self, direction: Tensor, roughness: Union[Tensor, float]) -> Tensor:
        """Environment radiance pre-filtered by a glossy lobe, at unit ``direction [N,3]`` -> ``[N,3]``, clamped at 0.

        ``roughness`` ``[N,1]`` (or a float) widens the lobe: band l is scaled by :func:`glossy_attenuation`,
        ``exp(-l (l+1) roughness^2 / 4)``. Roughness 0 returns the order-2 environment itself (a mirror).
        """
        rough = torch.as_tensor(roughness, dtype=direction.dtype, device=direction.device)
        rough = rough.reshape(-1, 1) if rough.dim() < 2 else rough  # float -> [1,1]; [N] -> [N,1]
        return self._evaluate(direction, glossy_attenuation(rough)).clamp_min(0.0)

    def to_equirect(self, height: int = 32, width: int = 64, roughness: Optional[float] = None) -> Tensor:
        """The (optionally pre-filtered) environment as an equirect image ``[H,W,3]``, for previews and checks."""
        dirs, _ = equirect_directions(height, width, dtype=self.sh.dtype, device=self.sh.device)
        flat = dirs.reshape(-1, 3)
        if roughness is None:
            out = (sh_basis(flat) @ self.sh).clamp_min(0.0)
        else:
            out = self.radiance(flat, float(roughness))
        return out.reshape(height, width, 3)


# ------------------------------------------------------------------------------------------------------------
# Metallic-roughness shading
# ------------------------------------------------------------------------------------------------------------


def reflect(incident: Tensor, normal: Tensor) -> Tensor:
    """Mirror ``incident [N,3]`` about unit ``normal [N,3]``: ``i - 2 (n.i) n`` (GLSL ``reflect``)."""
    return incident - 2.0 * (normal * incident).sum(-1, keepdim=True) * normal


def env_brdf_approx(roughness: Tensor, n_dot_v: Tensor) -> tuple[Tensor, Tensor]:
    """Analytic fit ``(A, B)`` (each ``[N,1]``) of the split-sum environment BRDF: specular = F0 A + B.

    The split-sum approximation factors the specular integral into the pre-filtered environment times the
    directional albedo of the GGX/Smith/Schlick BRDF, which is linear in F0: ``int f cos = F0 A + B`` where
    ``A = int (1 - Fc) f/F cos``, ``B = int Fc f/F cos`` and ``Fc = (1 - v.h)^5``. ``A, B`` depend on roughness
    and ``n.v`` only; usually they are a 2-D lookup texture. This is Karis' closed-form fit for mobile
    ("Physically Based Shading on Mobile", 2014), written from its published formula:

        r    = roughness * (-1, -0.0275, -0.572, 0.022) + (1, 0.0425, 1.04, -0.04)
        a004 = min(r_0^2, 2^(-9.28 n.v)) r_0 + r_1
        A    = -1.04 a004 + r_2,      B = 1.04 a004 + r_3

    At roughness 0 and normal incidence ``A + B = 1.0`` (a perfect mirror of F0 = 1 reflects everything); at
    roughness 1, ``(A, B) = (0.452, -0.0024)`` for every ``n.v``. ``n_dot_v`` is clamped to [0, 1].
    """
    nv = n_dot_v.clamp(0.0, 1.0)
    r0 = 1.0 - roughness
    r1 = 0.0425 - 0.0275 * roughness
    r2 = 1.04 - 0.572 * roughness
    r3 = -0.04 + 0.022 * roughness
    a004 = torch.minimum(r0 * r0, torch.exp2(-9.28 * nv)) * r0 + r1
    return -1.04 * a004 + r2, 1.04 * a004 + r3


def pbr_shade(
    albedo: Tensor,
    roughness: Tensor,
    metallic: Tensor,
    normal: Tensor,
    view_dir: Tensor,
    env: EnvironmentLight,
    energy_conserving: bool = False,
) -> Tensor:
    """Outgoing radiance ``rgb [N,3]`` of a glTF metallic-roughness material lit by ``env`` (split sum).

    Inputs (one row per surface sample, world frame): ``albedo [N,3]`` (base colour, linear, in [0,1]),
    ``roughness [N,1]`` (perceptual roughness in [0,1]; ``alpha = roughness^2``), ``metallic [N,1]`` (0 for a
    dielectric, 1 for a metal), ``normal [N,3]`` (surface normal, facing the camera), ``view_dir [N,3]``
    (from the surface *towards* the camera). Normal and view are normalised here (a zero vector stays zero,
    so results stay finite); roughness and metallic are clamped to [0,1].

        n = normalize(normal),  v = normalize(view_dir),  r = reflect(-v, n) = 2 (n.v) n - v
        F0       = mix(0.04, albedo, metallic) = 0.04 (1 - metallic) + albedo metallic   (normal-incidence reflectance)
        (A, B)   = env_brdf_approx(roughness, max(n.v, 0))          (split-sum BRDF scale and bias)
        S        = max(F0 A + B, 0)                                 (directional specular albedo, per channel)
        diffuse  = (1 - metallic) albedo E(n)                       (E = env.irradiance: cosine-convolved / pi)
        specular = L_pre(r, roughness) S                           (L_pre = env.radiance: lobe-filtered env)
        rgb      = diffuse + specular

    Metals have no diffuse term and tint their reflections by their albedo; dielectrics reflect ~4% untinted at
    normal incidence, more at grazing angles (Fresnel, inside ``B``). As in glTF's reference shader and
    Fantasia3D, the diffuse term is not reduced by the energy the specular term takes, so a white dielectric
    under uniform light returns ``1 + S`` (1.016 at roughness 1); ``energy_conserving=True`` scales the
    diffuse term by ``(1 - S)``, which makes that exactly 1.

    Differentiable w.r.t. every tensor input and, when ``env`` is trainable, its coefficients.
    """
    n = F.normalize(normal, dim=-1, eps=1e-6)
    v = F.normalize(view_dir, dim=-1, eps=1e-6)
    rough = roughness.clamp(0.0, 1.0)
    metal = metallic.clamp(0.0, 1.0)
    n_dot_v = (n * v).sum(-1, keepdim=True)
    f0 = 0.04 * (1.0 - metal) + albedo * metal  # [N,3]
    scale, bias = env_brdf_approx(rough, n_dot_v)  # [N,1] each
    spec_albedo = (f0 * scale + bias).clamp_min(0.0)  # [N,3]
    diffuse = (1.0 - metal) * albedo * env.irradiance(n)
    if energy_conserving:
        diffuse = diffuse * (1.0 - spec_albedo)
    specular = env.radiance(reflect(-v, n), rough) * spec_albedo
    return diffuse + specular
