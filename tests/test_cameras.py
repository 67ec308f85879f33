"""Camera sampling ranges, view labels, rays and turntable orbits."""

from __future__ import annotations

import torch

from dream3d.cameras import make_cameras, sample_cameras, turntable
from dream3d.config import CameraConfig


def test_sampler_respects_ranges():
    cfg = CameraConfig(batch_size=4096)
    cams = sample_cameras(cfg, torch.Generator().manual_seed(0))
    for values, (lo, hi) in [
        (cams.elevation, cfg.elevation_range),
        (cams.distance, cfg.distance_range),
        (cams.fovy, cfg.fovy_range),
    ]:
        assert values.min() >= lo - 1e-4 and values.max() <= hi + 1e-4
        assert values.max() - values.min() > 0.8 * (hi - lo)  # the range is actually covered
    assert cams.azimuth.min() >= -180 and cams.azimuth.max() < 180
    assert torch.allclose(cams.position.norm(dim=-1), cams.distance, atol=1e-4)
    # elevation uniform on the sphere: about as many samples below 0 deg as sin-area predicts
    below = (cams.elevation < 0).float().mean()
    expected = (0 - torch.sin(torch.deg2rad(torch.tensor(-10.0)))) / (1 - torch.sin(torch.deg2rad(torch.tensor(-10.0))))
    assert abs(below - expected) < 0.03


def test_sampler_is_seeded():
    cfg = CameraConfig(batch_size=3)
    a = sample_cameras(cfg, torch.Generator().manual_seed(5))
    b = sample_cameras(cfg, torch.Generator().manual_seed(5))
    assert torch.equal(a.c2w, b.c2w) and torch.equal(a.light_position, b.light_position)


def test_view_labels():
    el = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 75.0])
    az = torch.tensor([0.0, 30.0, 90.0, -90.0, 180.0, 180.0])
    cams = make_cameras(el, az, torch.full((6,), 2.0), torch.full((6,), 50.0), 8, 8)
    assert cams.view_labels() == ["front", "front", "side", "side", "back", "overhead"]


def test_rays_look_at_origin_and_front_is_plus_z():
    cams = turntable(4, elevation=0.0, distance=2.0, size=9)
    o, d = cams.rays()
    assert o.shape == d.shape == (4, 9, 9, 3)
    assert torch.allclose(d.norm(dim=-1), torch.ones(4, 9, 9), atol=1e-5)
    centre = d[:, 4, 4]
    assert torch.allclose(centre, -cams.position / 2.0, atol=1e-5)
    assert torch.allclose(cams.position[0], torch.tensor([0.0, 0.0, 2.0]), atol=1e-5)  # azimuth 0 on +Z
    assert torch.allclose(cams.position[1], torch.tensor([2.0, 0.0, 0.0]), atol=1e-5)  # azimuth 90 on +X
    # image up is world up; image right at the front view is +X
    assert d[0, 0, 4, 1] > centre[0, 1] and d[0, 4, 8, 0] > centre[0, 0]


def test_overhead_camera_is_well_defined():
    cams = make_cameras(torch.tensor([90.0]), torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([50.0]), 4, 4)
    assert torch.isfinite(cams.c2w).all()
    assert torch.allclose(cams.c2w[0, :3, :3] @ cams.c2w[0, :3, :3].T, torch.eye(3), atol=1e-5)


def test_turntable_orbit():
    cams = turntable(8, elevation=15.0, distance=1.75)
    assert torch.allclose(cams.azimuth, torch.tensor([0, 45, 90, 135, -180, -135, -90, -45.0]))
    assert torch.allclose(cams.elevation, torch.full((8,), 15.0))


def test_fill_framing_matches_the_shape_world_data():
    """framing=fill: a sphere of framing_radius spans a uniform share of the field of view from fill_range (the
    shipped prior's training framing); distance_range is not used."""
    cfg = CameraConfig(framing="fill", fill_range=[0.75, 1.0], framing_radius=0.6, distance_range=[50.0, 60.0])
    cams = sample_cameras(cfg, torch.Generator().manual_seed(0), batch_size=256)
    fill = 0.6 / (cams.distance * torch.sin(torch.deg2rad(cams.fovy) / 2))
    assert fill.min() >= 0.75 - 1e-5 and fill.max() <= 1.0 + 1e-5 and fill.max() - fill.min() > 0.2
    assert torch.allclose(cams.position.norm(dim=-1), cams.distance, atol=1e-4)
    plain = sample_cameras(CameraConfig(distance_range=[50.0, 60.0]), torch.Generator().manual_seed(0), batch_size=8)
    assert plain.distance.min() >= 50.0 and plain.distance.max() <= 60.0
