"""Ray marching against closed forms and dense references; occupancy grid and early stop; the nerfacc backend
against the torch one. The tests that take ``device`` run on ``DREAM3D_TEST_DEVICE`` (tests/conftest.py)."""

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


def render(field, cfg, cams, shading="albedo", device="cpu", **kw):
    device = torch.device(device)
    renderer = VolumeRenderer(cfg, radius=1.0).to(device)
    bg = Background("solid", (0.0, 0.0, 0.0)).to(device)
    field = field.to(device) if isinstance(field, nn.Module) else field
    cams = cams.to(device)
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


def test_opacity_matches_closed_form_on_a_ball(device):
    """Opacity of a constant-density ball is 1 - exp(-sigma * chord length) along each ray."""
    cams = turntable(1, elevation=20.0, distance=2.0, fovy=40.0, size=24).to(device)
    cfg = RendererConfig(num_samples=512, occupancy_grid=False, early_stop=0.0)
    field = Ball(radius=0.5, sigma=3.0)
    out, _ = render(field, cfg, cams, device=device)
    o, d = cams.rays()
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - 0.25
    disc = (b * b - c).clamp_min(0)
    chord = 2 * disc.sqrt()
    expected = 1 - torch.exp(-3.0 * chord)
    err = (out["opacity"][..., 0] - expected).abs()
    assert err.mean() < 0.01 and err.max() < 0.2  # max error only on the rim pixels


def test_64_samples_agree_with_dense_reference(device):
    cams = turntable(2, elevation=30.0, size=24)
    field = Ball(radius=0.45, sigma=20.0, centre=(0.1, 0.0, 0.0))
    dense, _ = render(field, RendererConfig(num_samples=2048, occupancy_grid=False, early_stop=0.0), cams, device=device)
    fast, _ = render(field, RendererConfig(num_samples=64), cams, device=device)
    assert (fast["rgb"] - dense["rgb"]).abs().mean() < 0.02
    assert (fast["opacity"] - dense["opacity"]).abs().mean() < 0.02
    mask = dense["opacity"][..., 0] > 0.99
    depth_err = (fast["depth"][..., 0] - dense["depth"][..., 0])[mask].abs().mean()
    assert depth_err < 0.03


def test_occupancy_grid_skips_empty_space_without_changing_the_image(device):
    cams = turntable(2, elevation=30.0, size=32)
    field = Ball(radius=0.3, sigma=30.0)
    kw = dict(shading="diffuse", device=device)
    plain, _ = render(field, RendererConfig(num_samples=64, occupancy_grid=False, early_stop=0.0), cams, **kw)
    gridded, renderer = render(field, RendererConfig(num_samples=64, occupancy_grid=True, early_stop=0.0), cams, **kw)
    early, _ = render(field, RendererConfig(num_samples=64, occupancy_grid=True, early_stop=1e-4), cams, **kw)
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
def test_shading_modes_and_outputs(shading, device):
    cams = turntable(1, elevation=0.0, size=16)
    field = Ball(radius=0.5, sigma=50.0)
    out, _ = render(field, RendererConfig(num_samples=64), cams, shading=shading, device=device, with_normals=True)
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


def test_gradients_reach_the_field(device):
    cams = turntable(1, size=12)
    lin = nn.Linear(3, 4).to(device)

    class Learned(nn.Module):
        def density(self, x):
            return torch.nn.functional.softplus(lin(x)[:, 0] + 5 * (0.5 - x.norm(dim=-1)))

        def forward(self, x, with_normals=False):
            f = lin(x)
            return {"density": torch.nn.functional.softplus(f[:, 0] + 5 * (0.5 - x.norm(dim=-1))), "albedo": torch.sigmoid(f[:, 1:])}

    out, _ = render(Learned(), RendererConfig(num_samples=32, occupancy_grid=False), cams, device=device, stratified=True)
    out["rgb"].mean().backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all() and lin.weight.grad.abs().sum() > 0
    assert math.isfinite(float(out["depth"].detach().mean()))


def test_rays_that_miss_the_box_render_background(device):
    """No sample survives: the field is called on zero points and the image is the background."""
    from dream3d.config import NeRFConfig
    from dream3d.representations.nerf import NeRF

    cfg = NeRFConfig()
    cfg.encoding.n_levels, cfg.encoding.log2_hashmap_size = 2, 10
    renderer = VolumeRenderer(RendererConfig(num_samples=16), radius=1.0).to(device)
    o = torch.tensor([0.0, 0.0, 3.0], device=device).expand(1, 4, 4, 3)
    d = torch.tensor([0.0, 0.0, 1.0], device=device).expand(1, 4, 4, 3)  # looking away from the scene box
    bg = Background("solid", (0.2, 0.4, 0.6)).to(device)
    out = renderer(NeRF(cfg).to(device), bg, o, d, torch.zeros(1, 3, device=device), "diffuse", with_normals=True)
    assert float(out["samples"]) == 0
    assert torch.allclose(out["rgb"].cpu(), torch.tensor([0.2, 0.4, 0.6]).expand(1, 4, 4, 3))
    assert torch.equal(out["opacity"].cpu(), torch.zeros(1, 4, 4, 1))


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


# the nerfacc backend ------------------------------------------------------------------------------------------------

def test_backend_choice_on_cpu():
    from dream3d.render.volume import use_nerfacc

    assert use_nerfacc("auto", torch.device("cpu")) is False
    assert use_nerfacc("torch", torch.device("cpu")) is False
    with pytest.raises(ValueError, match="nerfacc: needs CUDA"):
        use_nerfacc("nerfacc", torch.device("cpu"))
    with pytest.raises(ValueError, match="expected one of auto, torch, nerfacc"):
        use_nerfacc("nvdiffrast", torch.device("cpu"))
    renderer = VolumeRenderer(RendererConfig(backend="nerfacc"), radius=1.0)  # a CPU render asked of nerfacc
    cams = turntable(1, size=4)
    o, d = cams.rays()
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        renderer(Ball(), Background("solid"), o, d, cams.light_position)


def torch_traverse(occupied, radius, o, d, near, far, step):
    """What nerfacc's CUDA grid traversal returns, by brute force: midpoints near + (k + 1/2) step inside the box
    (and [near, far]) whose cell is occupied, as (ray id, t_start, t_end) sorted by ray and t."""
    tn, tf, hit = ray_aabb(o, d, radius)
    lo = torch.maximum(tn, near)
    hi = torch.minimum(tf, far)
    K = int(((hi - near).clamp_min(0).max() / step).ceil()) + 2
    t_mid = near[:, None] + (torch.arange(K, device=o.device) + 0.5) * step
    grid = OccupancyGrid(radius, occupied.shape[0], 1.0).to(o.device)
    grid.occupied.copy_(occupied)
    inside = grid.query(o[:, None] + d[:, None] * t_mid[..., None])
    keep = inside & hit[:, None] & (t_mid >= lo[:, None]) & (t_mid < hi[:, None])
    ray_id, _ = keep.nonzero(as_tuple=True)
    return ray_id, t_mid[keep] - 0.5 * step, t_mid[keep] + 0.5 * step


def torch_exclusive_sum(chunk_starts, chunk_cnts, inputs, normalize, backward):
    """nerfacc's packed exclusive sum kernel (``backward``: the sum of the later samples of the same ray)."""
    assert not normalize
    x = inputs.double()
    start = torch.repeat_interleave(chunk_starts, chunk_cnts)
    end = start + torch.repeat_interleave(chunk_cnts, chunk_cnts) - 1
    csum = torch.cumsum(x, 0)
    before_chunk = csum[start] - x[start]
    out = csum[end] - csum if backward else csum - x - before_chunk
    return out.to(inputs.dtype)


@pytest.fixture
def nerfacc_on_cpu(monkeypatch):
    """nerfacc's Python code for real, its two CUDA kernels that the backend reaches replaced by torch references."""
    nerfacc = pytest.importorskip("nerfacc", reason="nerfacc is not installed (pip install 'dream3d[dev]')")
    from dream3d.render import volume_nerfacc

    monkeypatch.setattr(volume_nerfacc, "_traverse", torch_traverse)
    monkeypatch.setattr(nerfacc.cuda, "exclusive_sum", torch_exclusive_sum)
    return volume_nerfacc


def test_torch_exclusive_sum_reference_matches_a_loop():
    starts, counts = torch.tensor([0, 3, 3]), torch.tensor([3, 0, 4])
    x = torch.arange(1.0, 8.0)
    assert torch_exclusive_sum(starts, counts, x, False, False).tolist() == [0, 1, 3, 0, 4, 9, 15]
    assert torch_exclusive_sum(starts, counts, x, False, True).tolist() == [5, 3, 0, 18, 13, 7, 0]


def test_packed_distortion_equals_the_dense_one(nerfacc_on_cpu):
    """Evenly spaced packed samples give :func:`distortion` of the same weights, gradients included."""
    w = (torch.rand(4, 16, generator=torch.Generator().manual_seed(1)) / 16).requires_grad_(True)
    S = w.shape[1]
    s = ((torch.arange(S) + 0.5) / S).expand(4, S).reshape(-1)
    info = nerfacc_on_cpu.packed_info(torch.arange(4).repeat_interleave(S), 4)
    packed = nerfacc_on_cpu.distortion(w.reshape(-1), s, torch.full_like(s, 1.0 / S), info)
    dense = distortion(w)
    assert torch.allclose(packed, dense, atol=1e-7)
    g_packed, = torch.autograd.grad(packed.sum(), w)
    g_dense, = torch.autograd.grad(dense.sum(), w)
    assert torch.allclose(g_packed, g_dense, atol=1e-6)


def render_both(field, cfg, cams, shading="albedo", device="cpu", acc=None, **kw):
    """The same field, grid and cameras through the torch forward and the nerfacc one."""
    torch_out, renderer = render(field, cfg, cams, shading, device=device, **kw)
    o, d = cams.to(device).rays()
    bg = Background("solid", (0.0, 0.0, 0.0)).to(device)
    field = field.to(device) if isinstance(field, nn.Module) else field
    B, H, W, _ = o.shape
    if acc is None:  # the dispatch itself (CUDA)
        renderer.cfg.backend = "nerfacc"
        acc_out = renderer(field, bg, o, d, cams.to(device).light_position, shading, **kw)
    else:  # the nerfacc forward called directly (its kernels replaced on the CPU)
        acc_out = renderer._forward_nerfacc(field, bg, o.reshape(-1, 3), d.reshape(-1, 3), (B, H, W),
                                            cams.light_position, shading, kw.get("stratified", False),
                                            kw.get("generator"), None, kw.get("with_normals", shading != "albedo"))
    return torch_out, acc_out


def check_close(torch_out, acc_out):
    assert acc_out["rgb"].shape == torch_out["rgb"].shape
    assert (acc_out["rgb"] - torch_out["rgb"]).abs().mean() < 0.005
    assert (acc_out["opacity"] - torch_out["opacity"]).abs().mean() < 0.004
    assert (acc_out["opacity"] - torch_out["opacity"]).abs().max() < 0.15  # rim pixels: samples differ there
    hit = torch_out["opacity"][..., 0] > 0.99
    assert hit.any() and (acc_out["depth"] - torch_out["depth"])[..., 0][hit].abs().mean() < 0.02
    assert (acc_out["normal"] - torch_out["normal"]).abs().mean() < 0.01
    assert float(acc_out["distortion"]) == pytest.approx(float(torch_out["distortion"]), rel=0.1, abs=1e-4)


@pytest.mark.parametrize("grid", [True, False])
def test_nerfacc_forward_matches_torch_on_cpu(nerfacc_on_cpu, grid):
    """The backend's packing, early stop and compositing through nerfacc's own Python API, against the torch
    renderer on a ball: the same image and opacity; the grid skips as many samples as it does for torch."""
    cams = turntable(2, elevation=30.0, size=24)
    field = Ball(radius=0.45, sigma=20.0, centre=(0.1, 0.0, 0.0))
    cfg = RendererConfig(num_samples=64, occupancy_grid=grid)
    torch_out, acc_out = render_both(field, cfg, cams, "diffuse", acc=nerfacc_on_cpu, with_normals=True)
    check_close(torch_out, acc_out)
    ratio = float(acc_out["samples"]) / float(torch_out["samples"])
    assert 0.8 < ratio < 1.5  # a fixed step: diagonal rays take a few more samples than torch's S per ray


def test_nerfacc_forward_gradients_on_cpu(nerfacc_on_cpu):
    """Gradients reach the field through nerfacc's weights (its exclusive sum's backward) as through torch's."""
    cams = turntable(1, size=12)
    lin = nn.Linear(3, 4)

    class Learned(nn.Module):
        def density(self, x):
            return torch.nn.functional.softplus(lin(x)[:, 0] + 5 * (0.5 - x.norm(dim=-1)))

        def forward(self, x, with_normals=False):
            f = lin(x)
            return {"density": self.density(x), "albedo": torch.sigmoid(f[:, 1:])}

    cfg = RendererConfig(num_samples=64, occupancy_grid=False, early_stop=0.0)
    torch_out, acc_out = render_both(Learned(), cfg, cams, acc=nerfacc_on_cpu)
    grads = []
    for out in (torch_out, acc_out):
        lin.zero_grad()
        (out["rgb"].mean() + out["distortion"]).backward()
        grads.append(lin.weight.grad.clone())
    assert torch.isfinite(grads[1]).all() and grads[1].abs().sum() > 0
    assert torch.nn.functional.cosine_similarity(grads[0].flatten(), grads[1].flatten(), dim=0) > 0.95


def _nerfacc_why() -> str:
    if not torch.cuda.is_available():
        return "no CUDA device"
    from dream3d.render import volume_nerfacc

    return volume_nerfacc.why_unavailable() or ""


@pytest.mark.device
@pytest.mark.skipif(bool(_nerfacc_why()), reason=f"nerfacc backend cannot run here: {_nerfacc_why()}")
@pytest.mark.parametrize("shading", ["albedo", "diffuse"])
def test_nerfacc_matches_torch_on_cuda(shading):
    """The real thing: nerfacc's CUDA traversal and scans against the torch renderer on one field and grid."""
    cams = turntable(4, elevation=30.0, size=48)
    field = Ball(radius=0.3, sigma=20.0, centre=(0.4, -0.2, 0.1))  # off-centre: a transposed grid would cut it
    cfg = RendererConfig(num_samples=64)
    torch_out, acc_out = render_both(field, cfg, cams, shading, device="cuda", with_normals=True)
    check_close(torch_out, acc_out)
    assert 0.8 < float(acc_out["samples"]) / float(torch_out["samples"]) < 1.5
