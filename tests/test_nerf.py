"""NeRF representation: blob initialisation, normals, gradients (the tests that take ``device`` run on
``DREAM3D_TEST_DEVICE``; tests/conftest.py)."""

from __future__ import annotations

import torch

from dream3d.config import NeRFConfig
from dream3d.representations.nerf import NeRF


def small_cfg(**kw) -> NeRFConfig:
    cfg = NeRFConfig(**kw)
    cfg.encoding.n_levels, cfg.encoding.log2_hashmap_size = 4, 12
    return cfg


def test_blob_initialisation():
    torch.manual_seed(0)
    nerf = NeRF(small_cfg())
    centre = nerf.density(torch.zeros(1, 3))
    far = nerf.density(torch.tensor([[0.9, 0.0, 0.0]]))
    assert centre > 5.0 and far < 0.01


def test_normals_point_outward_and_methods_agree(device):
    torch.manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1).to(device)
    pts = dirs * 0.45
    analytic = NeRF(small_cfg(normals="analytic")).to(device)
    fd = NeRF(small_cfg(normals="finite_difference", finite_difference_eps=1e-3)).to(device)
    fd.load_state_dict(analytic.state_dict())
    n_a = analytic(pts, with_normals=True)["normal"]
    n_f = fd(pts, with_normals=True)["normal"]
    assert ((n_a * dirs).sum(-1) > 0.9).float().mean() > 0.9  # the blob dominates: radial normals
    assert ((n_a * n_f).sum(-1) > 0.99).float().mean() > 0.9


def test_gradients_reach_encoding_and_network_through_normals(device):
    torch.manual_seed(0)
    nerf = NeRF(small_cfg(backend="torch")).to(device)
    out = nerf(torch.rand(256, 3, device=device) - 0.5, with_normals=True)
    (out["normal"][:, 0].sum() + out["albedo"].sum()).backward()  # normals need double backward
    for p in nerf.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert nerf.encoding.parameters().__next__().grad.abs().sum() > 0


def test_eval_normals_without_grad_mode():
    nerf = NeRF(small_cfg())
    with torch.no_grad():
        out = nerf(torch.rand(16, 3) - 0.5, with_normals=True)
    assert not out["density"].requires_grad and out["normal"].shape == (16, 3)


def test_closed_form_density_gradient_matches_autograd():
    """The Jacobian path (no double backward) gives the autograd gradient and the same parameter gradients."""
    torch.manual_seed(0)
    nerf = NeRF(small_cfg())
    with torch.no_grad():  # make the field non-trivial
        for p in nerf.parameters():
            p.normal_(0, 0.5)
    x = (torch.rand(300, 3) - 0.5) * 1.6
    v = torch.randn(300, 3)
    raw, grad = nerf._features_and_gradient(x)
    (raw[:, 1:].sum() + (grad * v).sum()).backward()
    closed = {k: p.grad.clone() for k, p in nerf.named_parameters()}
    nerf.zero_grad()
    xg = x.clone().requires_grad_(True)
    raw_ref = nerf._features(xg)
    (grad_ref,) = torch.autograd.grad(raw_ref[:, 0].sum(), xg, create_graph=True)
    assert torch.allclose(raw, raw_ref, atol=1e-5)
    assert torch.allclose(grad, grad_ref, atol=1e-3, rtol=1e-4)
    (raw_ref[:, 1:].sum() + (grad_ref * v).sum()).backward()
    for k, p in nerf.named_parameters():
        assert torch.allclose(closed[k], p.grad, atol=1e-4, rtol=1e-3), k
