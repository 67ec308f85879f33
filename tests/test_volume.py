"""Ray marching against closed forms and dense references; occupancy grid and early stop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dream3d.cameras import turntable
from dream3d.config import RendererConfig
from dream3d.render.background import Background
from dream3d.render.volume import OccupancyGrid, VolumeRenderer, distortion, ray_aabb


class Ball(nn.Module):
    """Analytic field: constant density inside a ball, albedo varying with position, exact normals."""

    def __init__(self, radius=0.5, sigma=8.0, centre=(0.0, 0.0, 0.0)):
        super().__init__()
        self.r, self.sigma = radius, sigma
        self.register_buffer("c", torch.tensor(centre))

    def density(self, x):
        return self.sigma * ((x - self.c).norm(dim=-1) < self.r).float()

    def forward(self, x, with_normals=False):
        out = {"density": self.density(x), "albedo": (x.clamp(-1, 1) + 1) / 2}
        if with_normals:
            out["normal"] = torch.nn.functional.normalize(x - self.c, dim=-1)
        return out


def render(field, cfg, cams, shading="albedo", **kw):
    renderer = VolumeRenderer(cfg, radius=1.0)
    bg = Background("solid", (0.0, 0.0, 0.0))
    o, d = cams.rays()
    if renderer.grid is not None:
        renderer.update_grid(field, 0, torch.Generator().manual_seed(0))
    return renderer(field, bg, o, d, cams.light_position, shading, **kw), renderer


def test_ray_aabb():
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 0.0], [0.0, 5.0, 3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    tn, tf, hit = ray_aabb(o, d, 1.0)
    assert torch.allclose(tn[:2], torch.tensor([2.0, 0.0])) and torch.allclose(tf[:2], torch.tensor([4.0, 1.0]))
    assert hit.tolist() == [True, True, False]


def test_opacity_matches_closed_form_on_a_ball():
    """Opacity of a constant-density ball is 1 - exp(-sigma * chord length) along each ray."""
    cams = turntable(1, elevation=20.0, distance=2.0, fovy=40.0, size=24)
    cfg = RendererConfig(num_samples=512, occupancy_grid=False, early_stop=0.0)
    field = Ball(radius=0.5, sigma=3.0)
    out, _ = render(field, cfg, cams)
    o, d = cams.rays()
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - 0.25
    disc = (b * b - c).clamp_min(0)
    chord = 2 * disc.sqrt()
    expected = 1 - torch.exp(-3.0 * chord)
    err = (out["opacity"][..., 0] - expected).abs()
    assert err.mean() < 0.01 and err.max() < 0.2  # max error only on the rim pixels


def test_64_samples_agree_with_dense_reference():
    cams = turntable(2, elevation=30.0, size=24)
    field = Ball(radius=0.45, sigma=20.0, centre=(0.1, 0.0, 0.0))
    dense, _ = render(field, RendererConfig(num_samples=2048, occupancy_grid=False, early_stop=0.0), cams)
    fast, _ = render(field, RendererConfig(num_samples=64), cams)
    assert (fast["rgb"] - dense["rgb"]).abs().mean() < 0.02
    assert (fast["opacity"] - dense["opacity"]).abs().mean() < 0.02
    mask = dense["opacity"][..., 0] > 0.99
    depth_err = (fast["depth"][..., 0] - dense["depth"][..., 0])[mask].abs().mean()
    assert depth_err < 0.03


def test_occupancy_grid_skips_empty_space_without_changing_the_image():
    cams = turntable(2, elevation=30.0, size=32)
    field = Ball(radius=0.3, sigma=30.0)
    plain, _ = render(field, RendererConfig(num_samples=64, occupancy_grid=False, early_stop=0.0), cams, shading="diffuse")
    gridded, renderer = render(field, RendererConfig(num_samples=64, occupancy_grid=True, early_stop=0.0), cams, shading="diffuse")
    early, _ = render(field, RendererConfig(num_samples=64, occupancy_grid=True, early_stop=1e-4), cams, shading="diffuse")
    occupied = renderer.grid.occupied.float().mean()
    assert occupied < 0.05  # a ball of radius 0.3 fills ~1.4% of the box; cells on its rim add some
    assert gridded["samples"] < 0.2 * plain["samples"]
    assert early["samples"] < gridded["samples"]
    for out in (gridded, early):
        assert (out["rgb"] - plain["rgb"]).abs().max() < 0.01
        assert (out["opacity"] - plain["opacity"]).abs().max() < 0.01


def test_grid_update_is_a_decaying_max():
    grid = OccupancyGrid(1.0, 8, sigma_threshold=1.0, decay=0.5)
    field = Ball(radius=0.5, sigma=10.0)
    grid.update(field.density)
    first = grid.occupied.clone()
    assert first.any() and not first.all()
    grid.update(lambda x: torch.zeros(x.shape[0]))  # density vanished: cells stay marked while the max decays
    assert torch.equal(grid.occupied, first)
    for _ in range(4):
        grid.update(lambda x: torch.zeros(x.shape[0]))
    assert not grid.occupied.any()


@pytest.mark.parametrize("shading", ["albedo", "diffuse", "textureless"])
def test_shading_modes_and_outputs(shading):
    cams = turntable(1, elevation=0.0, size=16)
    field = Ball(radius=0.5, sigma=50.0)
    out, _ = render(field, RendererConfig(num_samples=64), cams, shading=shading, with_normals=True)
    assert out["rgb"].shape == (1, 16, 16, 3) and out["normal"].shape == (1, 16, 16, 3)
    centre = out["rgb"][0, 8, 8]
    if shading == "textureless":
        assert torch.allclose(centre, centre[0].expand(3))  # white surface: grey levels only
    # the light sits at the camera: the centre faces it, so diffuse shading is near full brightness
    if shading != "albedo":
        assert centre.max() > 0.5
    normal = torch.nn.functional.normalize(out["normal"][0, 8, 8], dim=0)
    assert normal[2] > 0.95  # front-facing surface at azimuth 0 points to +Z
    assert out["orient"] < 1e-3  # exact outward normals face the camera


def test_gradients_reach_the_field():
    cams = turntable(1, size=12)
    lin = nn.Linear(3, 4)

    class Learned(nn.Module):
        def density(self, x):
            return torch.nn.functional.softplus(lin(x)[:, 0] + 5 * (0.5 - x.norm(dim=-1)))

        def forward(self, x, with_normals=False):
            f = lin(x)
            return {"density": torch.nn.functional.softplus(f[:, 0] + 5 * (0.5 - x.norm(dim=-1))), "albedo": torch.sigmoid(f[:, 1:])}

    out, _ = render(Learned(), RendererConfig(num_samples=32, occupancy_grid=False), cams, stratified=True)
    out["rgb"].mean().backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all() and lin.weight.grad.abs().sum() > 0
    assert math.isfinite(float(out["depth"].detach().mean()))


def test_rays_that_miss_the_box_render_background():
    """No sample survives: the field is called on zero points and the image is the background."""
    from dream3d.config import NeRFConfig
    from dream3d.representations.nerf import NeRF

    cfg = NeRFConfig()
    cfg.encoding.n_levels, cfg.encoding.log2_hashmap_size = 2, 10
    renderer = VolumeRenderer(RendererConfig(num_samples=16), radius=1.0)
    o = torch.tensor([0.0, 0.0, 3.0]).expand(1, 4, 4, 3)
    d = torch.tensor([0.0, 0.0, 1.0]).expand(1, 4, 4, 3)  # looking away from the scene box
    out = renderer(NeRF(cfg), Background("solid", (0.2, 0.4, 0.6)), o, d, torch.zeros(1, 3), "diffuse", with_normals=True)
    assert float(out["samples"]) == 0
    assert torch.allclose(out["rgb"], torch.tensor([0.2, 0.4, 0.6]).expand(1, 4, 4, 3))
    assert torch.equal(out["opacity"], torch.zeros(1, 4, 4, 1))


def test_distortion_equals_the_pairwise_sum():
    """The O(S) running-sum form is Mip-NeRF 360's sum over all sample pairs plus the intervals' own spread."""
    w = torch.rand(5, 16, generator=torch.Generator().manual_seed(0)) / 16
    S = w.shape[1]
    s = (torch.arange(S) + 0.5) / S
    pairwise = (w[:, :, None] * w[:, None, :] * (s[:, None] - s[None, :]).abs()).sum((1, 2))
    assert torch.allclose(distortion(w), pairwise + (w**2).sum(1) / (3 * S), atol=1e-7)


class Fog(nn.Module):
    """Analytic field: a constant, light density filling the whole box."""

    def __init__(self, sigma):
        super().__init__()
        self.sigma = sigma

    def density(self, x):
        return torch.full(x.shape[:-1], self.sigma)

    def forward(self, x, with_normals=False):
        return {"density": self.density(x), "albedo": torch.full_like(x, 0.5)}


def test_distortion_penalises_fog_over_a_body_of_the_same_opacity():
    """A box of fog and a dense ball, both rendering opacity ~0.6 on the central ray: the fog spreads its weight
    along the ray and scores an order of magnitude higher, so the loss removes haze, not bodies."""
    cams = turntable(1, elevation=0.0, distance=3.0, fovy=2.0, size=4)  # rays through the centre only
    cfg = RendererConfig(num_samples=64, occupancy_grid=False, early_stop=0.0)
    fog, _ = render(Fog(sigma=0.46), cfg, cams)
    ball, _ = render(Ball(radius=0.1, sigma=4.6), cfg, cams)
    assert float(fog["opacity"].mean()) == pytest.approx(float(ball["opacity"].mean()), abs=0.05)
    assert float(fog["distortion"]) > 10 * float(ball["distortion"])
