"""Tests for dream3d.render.shading (legacy shadings, SH environment light, PBR split-sum shading) and the
PBR material field (dream3d.fields.material). All CPU, well under a second each."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dream3d.fields import HashGridConfig
from dream3d.fields.material import MaterialConfig, MaterialField
from dream3d.render.shading import (
    COSINE_LOBE,
    SHADINGS,
    EnvironmentLight,
    env_brdf_approx,
    equirect_directions,
    glossy_attenuation,
    pbr_shade,
    project_equirect,
    reflect,
    sh_basis,
    shade,
)

SMALL_GRID = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4,
                            max_resolution=32)


def random_dirs(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, 3, generator=g, dtype=dtype), dim=-1)


def views_in_hemisphere(normal: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Unit view directions with n.v > 0.05 (the camera sees the front side)."""
    v = random_dirs(normal.shape[0], seed, normal.dtype)
    v = torch.where((v * normal).sum(-1, keepdim=True) < 0, -v, v)
    return F.normalize(v + 0.1 * normal, dim=-1)


def legendre(band: int, c: torch.Tensor) -> torch.Tensor:
    return [torch.ones_like(c), c, 0.5 * (3 * c * c - 1)][band]


def truncated_cosine(cos_angle: torch.Tensor) -> torch.Tensor:
    """Order-2 truncation of max(cos, 0) / pi convolved, for a unit-power delta light: sum_l (2l+1)/(4pi) A_l P_l."""
    return sum((2 * b + 1) / (4 * math.pi) * COSINE_LOBE[b] * legendre(b, cos_angle) for b in range(3))


# ------------------------------------------------------------------------------------------------------------
# The existing shadings are unchanged
# ------------------------------------------------------------------------------------------------------------


def test_legacy_shade_unchanged():
    assert SHADINGS == ("albedo", "diffuse", "textureless")
    albedo = torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.5, 0.0]])
    normal = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    light = torch.tensor([[0.0, 0.6, 0.8], [0.0, -1.0, 0.0]])
    assert torch.equal(shade(albedo, None, None, "albedo", 0.3), albedo)
    lam = torch.tensor([[0.8], [0.0]])  # max(0, n.l)
    expected_light = 0.3 + 0.7 * lam
    assert torch.allclose(shade(albedo, normal, light, "diffuse", 0.3), albedo * expected_light)
    assert torch.allclose(shade(albedo, normal, light, "textureless", 0.3), expected_light.expand(-1, 3))
    with pytest.raises(ValueError, match="albedo, diffuse, textureless"):
        shade(albedo, normal, light, "pbr", 0.3)


# ------------------------------------------------------------------------------------------------------------
# Environment light
# ------------------------------------------------------------------------------------------------------------


def test_sh_basis_is_orthonormal():
    dirs, solid_angle = equirect_directions(256, 512, dtype=torch.float64)
    y = sh_basis(dirs).reshape(-1, 9)
    gram = (y * solid_angle.reshape(-1, 1)).t() @ y
    assert torch.allclose(gram, torch.eye(9, dtype=torch.float64), atol=1e-4)


def test_uniform_irradiance_and_radiance_are_one():
    env = EnvironmentLight("uniform")
    n = random_dirs(500)
    assert torch.allclose(env.irradiance(n), torch.ones(500, 3), atol=1e-6)
    for rough in (0.0, 0.3, 1.0):  # the glossy filter keeps the mean (band 0) at every roughness
        assert torch.allclose(env.radiance(n, torch.full((500, 1), rough)), torch.ones(500, 3), atol=1e-6)


@pytest.mark.parametrize("light_dir", [(0.0, 1.0, 0.0), (0.3, -0.5, 0.8), (-1.0, 0.2, -0.1)])
def test_irradiance_of_a_directional_light_is_the_cosine_lobe(light_dir):
    """A delta light of power P from d has sh = P Y(d); its irradiance/pi is P times the order-2 cosine lobe.

    Exact against the truncated lobe sum_l (2l+1)/(4 pi) A_l P_l(n.d) (clamped at 0, as irradiance() is), and
    within its truncation error (0.094 P/pi, at grazing n.d = 0) of the true Lambert term P/pi max(0, n.d).
    """
    d = F.normalize(torch.tensor([light_dir], dtype=torch.float64), dim=-1)
    power = 2.5
    env = EnvironmentLight((power * sh_basis(d)).expand(3, 9).t())
    n = random_dirs(2000, seed=3, dtype=torch.float64)
    cos_angle = (n @ d.t())  # [N,1]
    got = env.irradiance(n.float()).double()
    assert torch.allclose(got, (power * truncated_cosine(cos_angle)).clamp_min(0).expand(-1, 3), atol=1e-5)
    lambert = power / math.pi * cos_angle.clamp_min(0)
    assert (got - lambert).abs().max() <= 0.0938 * power / math.pi + 1e-5


def test_irradiance_of_a_narrow_lobe_light():
    """A narrow vMF-like lobe exp(k(d.a - 1)) projected from its radiance function behaves like the delta."""
    axis = F.normalize(torch.tensor([0.2, 0.9, 0.4]), dim=0)
    kappa = 200.0
    power = 2.0 * math.pi / kappa * (1 - math.exp(-2 * kappa))  # integral of the lobe over the sphere
    env = EnvironmentLight.from_function(lambda d: torch.exp(kappa * (d @ axis - 1.0))[:, None].expand(-1, 3),
                                         height=128, width=256)
    n = random_dirs(1000, seed=4)
    cos_angle = (n @ axis)[:, None]
    # the lobe's own width damps band l by ~exp(-l(l+1)/(2 kappa)) (<= 1.5% here)
    expected = sum((2 * b + 1) / (4 * math.pi) * COSINE_LOBE[b] * math.exp(-b * (b + 1) / (2 * kappa))
                   * legendre(b, cos_angle) for b in range(3)) * power
    assert torch.allclose(env.irradiance(n), expected.clamp_min(0).expand(-1, 3), atol=2e-3 * power)


def test_constant_equirect_is_the_uniform_preset():
    uniform = EnvironmentLight("uniform").sh
    for h, w in ((4, 8), (16, 32), (33, 70)):
        assert torch.allclose(project_equirect(torch.ones(h, w, 3)), uniform, atol=2e-5)
    env = EnvironmentLight.from_equirect(torch.full((16, 32, 3), 2.5))
    assert torch.allclose(env.sh, 2.5 * uniform, atol=5e-5)


def test_equirect_orientation():
    """Row 0 is +Y, the image centre is +Z (front), three quarters across is +X."""
    h, w = 32, 64
    top = torch.zeros(h, w, 3)
    top[: h // 4] = 1.0
    centre = torch.zeros(h, w, 3)
    centre[:, 3 * w // 8: 5 * w // 8] = 1.0
    right = torch.zeros(h, w, 3)
    right[:, 5 * w // 8: 7 * w // 8] = 1.0
    axes = torch.eye(3)  # +X, +Y, +Z
    for image, axis in ((top, 1), (centre, 2), (right, 0)):
        e = EnvironmentLight(image).irradiance(torch.cat([axes, -axes]))[:, 0]
        assert e[axis] > e[axis + 3] + 0.1, (axis, e)
        assert e[axis] == e[:3].max()
    # the preview image round-trips an order-2 environment
    env = EnvironmentLight("studio")
    assert torch.allclose(EnvironmentLight(env.to_equirect(64, 128)).sh, env.sh, atol=0.02)


def test_studio_preset_is_a_plausible_product_light():
    env = EnvironmentLight("studio")
    assert torch.allclose(env.sh[:, 0:1].expand(-1, 3), env.sh)  # neutral white
    normals = F.normalize(torch.tensor([[0, 0.7, 0.7], [0, 0, 1], [0, 1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, -1],
                                        [0, -1, 0]], dtype=torch.float32), dim=-1)
    e = env.irradiance(normals)[:, 0]
    expected = torch.tensor([1.02, 0.865, 0.855, 0.536, 0.536, 0.344, 0.299])
    assert torch.allclose(e, expected, atol=0.01), e
    sky = env.to_equirect(32, 64)
    assert sky.min() > 0.15 and sky.max() < 1.5


def test_glossy_attenuation():
    assert torch.allclose(glossy_attenuation(torch.zeros(1, 1)), torch.ones(1, 3))
    r1 = glossy_attenuation(torch.ones(1, 1))[0]
    assert torch.allclose(r1, torch.tensor([1.0, math.exp(-0.5), math.exp(-1.5)]))
    # monotonic: rougher is blurrier in every band
    f = glossy_attenuation(torch.linspace(0, 1, 11)[:, None])
    assert (f[1:, 1:] < f[:-1, 1:]).all() and (f[:, 0] == 1).all()


def test_trainable_light_is_a_parameter():
    fixed = EnvironmentLight("studio")
    assert list(fixed.parameters()) == [] and "sh" in fixed.state_dict()
    learn = EnvironmentLight("studio", trainable=True)
    assert [p.shape for p in learn.parameters()] == [torch.Size([9, 3])]
    assert torch.allclose(EnvironmentLight.from_preset("studio", scale=2.0).sh, 2 * fixed.sh)
    with pytest.raises(ValueError, match="studio, uniform"):
        EnvironmentLight("sunset")
    with pytest.raises(ValueError, match=r"\[9,3\]"):
        EnvironmentLight(torch.zeros(4, 3))


# ------------------------------------------------------------------------------------------------------------
# PBR shading
# ------------------------------------------------------------------------------------------------------------


def test_env_brdf_approx_known_values():
    a, b = env_brdf_approx(torch.zeros(1, 1), torch.ones(1, 1))
    assert abs((a + b).item() - 1.0) < 2e-3  # smooth mirror, F0 = 1, normal incidence
    for nv in (0.0, 0.3, 1.0):  # roughness 1: independent of n.v
        a, b = env_brdf_approx(torch.ones(1, 1), torch.full((1, 1), nv))
        assert abs(a.item() - 0.4524) < 1e-4 and abs(b.item() + 0.0024) < 1e-4


def test_white_lambertian_under_uniform_light():
    """albedo 1, metallic 0, roughness 1 under radiance 1.

    Energy: the diffuse term is exactly 1 (a white Lambertian surface reflects all it receives). The specular
    term is F0 A + B = 0.04 * 0.4524 - 0.0024 = 0.0157 at roughness 1 (for every n.v): the glTF sum
    diffuse + specular does not take the specular share out of the diffuse term, so the total is 1.0157, a
    1.6% excess. With energy_conserving=True the diffuse term is scaled by (1 - 0.0157) and the total is 1.
    """
    n = random_dirs(400, seed=5)
    v = views_in_hemisphere(n)
    ones = torch.ones(400, 1)
    env = EnvironmentLight("uniform")
    rgb = pbr_shade(torch.ones(400, 3), ones, torch.zeros(400, 1), n, v, env)
    specular = rgb - 1.0  # diffuse is exactly 1
    assert torch.allclose(specular, torch.full_like(rgb, 0.04 * 0.4524 - 0.0024), atol=2e-4)
    assert torch.allclose(rgb, torch.ones_like(rgb), atol=0.02)
    rgb_ec = pbr_shade(torch.ones(400, 3), ones, torch.zeros(400, 1), n, v, env, energy_conserving=True)
    assert torch.allclose(rgb_ec, torch.ones_like(rgb), atol=1e-5)


def coloured_environment() -> EnvironmentLight:
    """Red towards +X, blue towards -X, green constant (order-1 functions: the projection is exact)."""
    dirs, _ = equirect_directions(64, 128)
    x = dirs[..., 0:1]
    image = torch.cat([1.0 + 0.8 * x, torch.ones_like(x), 1.0 - 0.8 * x], dim=-1)
    return EnvironmentLight.from_equirect(image)


def test_smooth_metal_mirrors_the_environment():
    env = coloured_environment()
    v = torch.tensor([[0.0, 0.0, 1.0]])  # camera in front
    n = F.normalize(torch.tensor([[1.0, 0.0, 1.0]]), dim=-1)  # reflects the view ray to +X
    assert torch.allclose(reflect(-v, n), torch.tensor([[1.0, 0.0, 0.0]]), atol=1e-6)
    rgb = pbr_shade(torch.ones(1, 3), torch.full((1, 1), 0.08), torch.ones(1, 1), n, v, env)[0]
    a, b = env_brdf_approx(torch.full((1, 1), 0.08), (n * v).sum(-1, keepdim=True))
    env_at_x = torch.tensor([1.8, 1.0, 0.2])
    assert torch.allclose(rgb, env_at_x * (a + b).item(), rtol=0.01, atol=0.005), rgb
    assert rgb[0] > 5 * rgb[2]
    # a gold-coloured metal tints the reflection: F0 = albedo scales A; the Fresnel bias B stays white
    gold = torch.tensor([[1.0, 0.7, 0.3]])
    tinted = pbr_shade(gold, torch.full((1, 1), 0.08), torch.ones(1, 1), n, v, env)[0]
    assert torch.allclose(tinted, env_at_x * (gold[0] * a.item() + b.item()), rtol=0.01, atol=0.005), tinted
    # a smooth white dielectric reflects only F0 = 0.04 (plus Fresnel) of the same light
    plastic = pbr_shade(torch.ones(1, 3), torch.full((1, 1), 0.08), torch.zeros(1, 1), n, v, env)[0]
    diffuse = env.irradiance(n)[0]
    assert torch.allclose(plastic - diffuse, env_at_x * (0.04 * a.item() + b.item()), rtol=0.01, atol=0.005)


def test_rough_metal_is_blurrier():
    env = coloured_environment()
    n = random_dirs(2000, seed=7)
    v = views_in_hemisphere(n, seed=8)
    white, metal = torch.ones(2000, 3), torch.ones(2000, 1)
    spread = {}
    for rough in (0.08, 0.5, 1.0):
        roughness = torch.full((2000, 1), rough)
        rgb = pbr_shade(white, roughness, metal, n, v, env)
        a, b = env_brdf_approx(roughness, (n * v).sum(-1, keepdim=True))
        red = (rgb[:, 0:1] / (a + b))[:, 0]  # F0 = 1: divide the BRDF scale out, keep the reflected light
        spread[rough] = (red.std() / red.mean()).item()
    assert spread[0.08] > spread[0.5] > spread[1.0]
    assert spread[1.0] < 0.75 * spread[0.08]


def test_pbr_gradients_flow_to_every_input():
    g = torch.Generator().manual_seed(11)
    n_pts = 64
    albedo = torch.rand(n_pts, 3, generator=g).requires_grad_()
    rough = (0.2 + 0.7 * torch.rand(n_pts, 1, generator=g)).requires_grad_()
    metal = torch.rand(n_pts, 1, generator=g).requires_grad_()
    normal = random_dirs(n_pts, seed=12).requires_grad_()
    view = views_in_hemisphere(normal.detach(), seed=13).requires_grad_()
    env = EnvironmentLight("studio", trainable=True)
    rgb = pbr_shade(albedo, rough, metal, normal, view, env)
    assert rgb.shape == (n_pts, 3) and torch.isfinite(rgb).all() and (rgb >= 0).all()
    rgb.square().sum().backward()
    for name, t in (("albedo", albedo), ("roughness", rough), ("metallic", metal), ("normal", normal),
                    ("view", view), ("light", env.sh)):
        assert t.grad is not None and torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name


def test_pbr_gradcheck_double():
    g = torch.Generator().manual_seed(21)
    n = F.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=-1)
    v = views_in_hemisphere(n, seed=22) * 1.3  # un-normalised on purpose
    inputs = (torch.rand(5, 3, generator=g, dtype=torch.float64), 0.2 + 0.6 * torch.rand(5, 1, generator=g,
              dtype=torch.float64), 0.1 + 0.8 * torch.rand(5, 1, generator=g, dtype=torch.float64), n * 0.7, v)
    inputs = tuple(t.clone().requires_grad_() for t in inputs)
    env = EnvironmentLight("studio")
    assert torch.autograd.gradcheck(lambda *a: pbr_shade(*a, env), inputs, eps=1e-6, atol=1e-5)


def test_pbr_is_finite_for_degenerate_inputs():
    """Zero normals / views (background pixels), back-facing normals and out-of-range materials stay finite."""
    normal = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]], requires_grad=True)
    view = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], requires_grad=True)
    albedo = torch.tensor([[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.2, 0.3, 0.4]], requires_grad=True)
    rough = torch.tensor([[0.0], [1.0], [1.5], [-0.2]], requires_grad=True)
    metal = torch.tensor([[0.0], [1.0], [0.5], [2.0]], requires_grad=True)
    rgb = pbr_shade(albedo, rough, metal, normal, view, EnvironmentLight("studio"))
    assert torch.isfinite(rgb).all() and (rgb >= 0).all()
    rgb.sum().backward()
    for t in (normal, view, albedo, rough, metal):
        assert torch.isfinite(t.grad).all()


# ------------------------------------------------------------------------------------------------------------
# Material field
# ------------------------------------------------------------------------------------------------------------


def small_material(**kwargs) -> MaterialField:
    torch.manual_seed(0)
    return MaterialField(MaterialConfig(encoding=SMALL_GRID, backend="torch", hidden=32, **kwargs))


def test_material_field_ranges_and_initial_values():
    field = small_material()
    pts = (torch.rand(4096, 3) * 2 - 1) * 1.2  # includes points outside the box (clamped)
    out = field(pts)
    assert out["albedo"].shape == (4096, 3) and out["roughness"].shape == (4096, 1) and out["metallic"].shape == (4096, 1)
    assert ((out["albedo"] > 0) & (out["albedo"] < 1)).all()
    assert ((out["roughness"] >= 0.08) & (out["roughness"] <= 1.0)).all()
    assert ((out["metallic"] > 0) & (out["metallic"] < 1)).all()
    assert abs(out["albedo"].mean().item() - 0.5) < 0.005
    assert abs(out["roughness"].mean().item() - 0.7) < 0.005
    assert abs(out["metallic"].mean().item() - 0.05) < 0.002
    other = small_material(init_roughness=0.3, init_metallic=0.5, roughness_range=[0.2, 0.9])
    o2 = other(pts)
    assert abs(o2["roughness"].mean().item() - 0.3) < 0.005 and abs(o2["metallic"].mean().item() - 0.5) < 0.005
    assert ((o2["roughness"] >= 0.2) & (o2["roughness"] <= 0.9)).all()


def test_material_config_validation():
    with pytest.raises(ValueError, match="roughness_range"):
        small_material(roughness_range=[0.5, 0.2])
    with pytest.raises(ValueError, match="init_roughness"):
        small_material(init_roughness=0.05)
    with pytest.raises(ValueError, match="init_metallic"):
        small_material(init_metallic=0.0)


def test_material_field_fits_targets():
    field = small_material()
    groups = field.parameter_groups(lr_encoding=0.02, lr_network=0.01)
    assert [g["name"] for g in groups] == ["encoding", "network"]
    assert sum(len(g["params"]) for g in groups) == len(list(field.parameters()))
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(32, 3, generator=g) * 1.6 - 0.8
    target_albedo = torch.rand(32, 3, generator=g)
    target_rough = 0.2 + 0.7 * torch.rand(32, 1, generator=g)
    opt = torch.optim.Adam(groups)
    losses = []
    for _ in range(40):
        out = field(pts)
        loss = F.mse_loss(out["albedo"], target_albedo) + F.mse_loss(out["roughness"], target_rough)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses[::8]


def test_material_field_through_pbr_shading():
    """End to end: the field's outputs shade under the studio light and the image loss reaches the field."""
    field = small_material()
    pts = torch.rand(128, 3) * 1.6 - 0.8
    normal = F.normalize(pts, dim=-1)
    view = views_in_hemisphere(normal, seed=30)
    mat = field(pts)
    rgb = pbr_shade(mat["albedo"], mat["roughness"], mat["metallic"], normal, view, EnvironmentLight("studio"))
    rgb.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in field.parameters())
    assert field.network.layers[-1].weight.grad.abs().sum() > 0
