"""Tests for dream3d.fields: hash-grid encoding (vs a naive reference), gradients, MLP and activations. The tests
that take ``device`` run on ``DREAM3D_TEST_DEVICE`` (tests/conftest.py): on CUDA they are the check of the pure-torch
hash grid without tiny-cuda-nn.

Run ``python tests/test_fields.py`` for a quick fwd+bwd timing of the default hash grid (65536 points).
"""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch

from dream3d.fields import MLP, HashGridConfig, HashGridEncoding, get_activation, make_encoding, trunc_exp
from dream3d.fields.encoding import tcnn_available

# 4 levels, T = 256: resolutions 2, 4, 8, 16 -> vertices 27, 125 (dense) and 729, 4913 (hashed).
SMALL = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=8, base_resolution=2, max_resolution=16)


def naive_hashgrid(x: list, tables: list, cfg: HashGridConfig) -> list:
    """Slow per-point pure-Python reference of the documented math.

    x: [N][3] floats in [0,1], tables[l]: [T_l][F] floats -> [N][L*F] floats.
    """
    T = 2**cfg.log2_hashmap_size
    F = cfg.n_features_per_level
    b = 1.0
    if cfg.n_levels > 1:
        b = math.exp((math.log(cfg.max_resolution) - math.log(cfg.base_resolution)) / (cfg.n_levels - 1))
    out = []
    for p in x:
        row_out = []
        for level in range(cfg.n_levels):
            R = int(math.floor(cfg.base_resolution * b**level + 1e-6))
            dense = (R + 1) ** 3 <= T
            table = tables[level]
            assert len(table) == ((R + 1) ** 3 if dense else T)
            acc = [0.0] * F
            for bits in itertools.product((0, 1), repeat=3):
                weight = 1.0
                v = []
                for d in range(3):
                    pos = float(p[d]) * R
                    c = min(max(int(math.floor(pos)), 0), R - 1)
                    frac = pos - c
                    weight *= frac if bits[d] else 1.0 - frac
                    v.append(c + bits[d])
                if dense:
                    row = v[0] + v[1] * (R + 1) + v[2] * (R + 1) ** 2
                else:
                    h = (v[0] * 1) ^ (v[1] * 2654435761) ^ (v[2] * 805459861)
                    row = (h & 0xFFFFFFFF) % T  # uint32 arithmetic, then mod T
                acc = [a + weight * t for a, t in zip(acc, table[row])]
            row_out += acc
        out.append(row_out)
    return out


def _randomise(enc: HashGridEncoding, seed: int = 0) -> None:
    """Replace the tiny init (1e-4) by O(1) values so comparisons are meaningful."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in enc.tables:
            t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * 2 - 1)


# ------------------------------------------------------------------------------------------ hash grid
def test_levels_dense_and_hashed():
    enc = HashGridEncoding(SMALL)
    assert enc.resolutions == [2, 4, 8, 16]
    assert enc.dense == [True, True, False, False]
    assert [t.shape[0] for t in enc.tables] == [27, 125, 256, 256]
    assert enc.n_output_dims == 8
    d = HashGridEncoding(HashGridConfig())
    assert d.resolutions[0] == 16 and d.resolutions[-1] == 2048
    assert all(t.dtype == torch.float32 for t in d.tables)
    assert float(d.tables[5].detach().abs().max()) <= 1e-4


@pytest.mark.parametrize("n_features", [2, 1, 4, 3])
def test_matches_naive_reference(n_features, device):
    cfg = HashGridConfig(**{**SMALL.__dict__, "n_features_per_level": n_features})
    enc = HashGridEncoding(cfg)
    _randomise(enc)
    enc.to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(50, 3, generator=g)
    x[0] = 0.0
    x[1] = 1.0
    x[2] = torch.tensor([0.0, 1.0, 0.5])
    x[3] = torch.tensor([1.0, 0.25, 0.0])
    with torch.no_grad():
        out = enc(x.to(device)).cpu()
    assert out.shape == (50, 4 * n_features) and out.dtype == torch.float32
    ref = naive_hashgrid(x.double().tolist(), [t.detach().cpu().double().tolist() for t in enc.tables], cfg)
    torch.testing.assert_close(out.double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-5)


def test_boundary_points_and_shapes(device):
    enc = HashGridEncoding(HashGridConfig(n_levels=6, log2_hashmap_size=10, base_resolution=4, max_resolution=512))
    enc.to(device)
    corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=3)))  # [8,3]
    x = torch.cat([corners, torch.rand(9, 3), torch.tensor([[1.5, -0.2, 1.0]])]).to(device)  # out-of-cube too
    out = enc(x)
    assert out.shape == (18, 12) and torch.isfinite(out).all()
    # outside the cube is clamped onto the boundary
    torch.testing.assert_close(out[-1], enc(torch.tensor([[1.0, 0.0, 1.0]], device=device))[0])
    assert enc(torch.zeros(0, 3, device=device)).shape == (0, 12)
    bad = torch.tensor([[float("nan"), 0.5, 0.5], [float("inf"), -float("inf"), 0.2]], device=device)
    assert torch.isfinite(enc(bad)).all()  # no out-of-range index from NaN/inf


def test_int64_index_path_matches_int32():
    """Index arithmetic falls back to int64 for huge grids; both paths must agree bit for bit."""
    enc = HashGridEncoding(SMALL)
    _randomise(enc)
    assert all(d == torch.int32 for d in enc._index_dtypes)
    x = torch.rand(100, 3, requires_grad=True)
    out32 = enc(x)
    (g32,) = torch.autograd.grad(out32.square().sum(), x)
    enc._index_dtypes = [torch.int64] * enc.n_levels
    out64 = enc(x)
    (g64,) = torch.autograd.grad(out64.square().sum(), x)
    assert torch.equal(out32, out64) and torch.equal(g32, g64)
    big = HashGridEncoding(HashGridConfig(n_levels=1, log2_hashmap_size=19, base_resolution=8192, max_resolution=8192))
    assert big._index_dtypes == [torch.int64]  # 8192 * (prime mod 2^19) would overflow int32
    xb = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.3, 0.9, 0.5]])
    ref = naive_hashgrid(xb.double().tolist(), [big.tables[0].detach().double().tolist()], big.cfg)
    torch.testing.assert_close(big(xb).detach().double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-9)


def test_table_grad_skipped_when_only_x_requested():
    enc = HashGridEncoding(SMALL)
    _randomise(enc)
    x = torch.rand(20, 3, requires_grad=True)
    (gx,) = torch.autograd.grad(enc(x).square().sum(), x)
    assert all(t.grad is None for t in enc.tables)
    enc(x).square().sum().backward()
    torch.testing.assert_close(gx, x.grad)


def test_gradients_reach_table_and_x(device):
    enc = HashGridEncoding(SMALL)
    _randomise(enc)
    enc.to(device)
    x = torch.rand(64, 3, device=device, requires_grad=True)
    enc(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for t in enc.tables:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_table_gradient_matches_dense_autograd(device):
    """Table gradient == gradient of the same interpolation written with plain advanced indexing."""
    enc = HashGridEncoding(SMALL)
    _randomise(enc)
    enc.to(device)
    x = torch.rand(40, 3, device=device)
    weights = torch.randn(40, 8, device=device)
    (enc(x) * weights).sum().backward()
    # one-hot trick: out = sum_c w_c * table[idx_c]; d/dtable via a dense reimplementation
    tables = [t.detach().clone().requires_grad_(True) for t in enc.tables]
    outs = []
    xt = x.t()
    for level, t in enumerate(tables):
        r = enc.resolutions[level]
        pos = xt * r
        c = pos.floor().clamp(0, r - 1)
        w = enc._corner_weights(pos - c)
        idx = enc._corner_indices(level, c.long()).view(8, -1)
        outs.append((t[idx] * w.unsqueeze(-1)).sum(0))
    (torch.cat(outs, -1) * weights).sum().backward()
    for a, b in zip(enc.tables, tables):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_gradcheck_x_and_table_float64():
    cfg = HashGridConfig(n_levels=3, n_features_per_level=2, log2_hashmap_size=6, base_resolution=2, max_resolution=8)
    enc = HashGridEncoding(cfg).double()
    _randomise(enc)
    g = torch.Generator().manual_seed(3)
    # keep points away from cell faces so the finite differences stay inside one cell
    x = (torch.rand(6, 3, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    names = [n for n, _ in enc.named_parameters()]

    def f(xx, *params):
        return torch.func.functional_call(enc, dict(zip(names, params)), (xx,))

    params = tuple(p.detach().clone().requires_grad_(True) for p in enc.parameters())
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


def test_x_gradient_finite_difference_float32():
    enc = HashGridEncoding(SMALL)
    _randomise(enc)
    x = torch.tensor([[0.31, 0.47, 0.62], [0.12, 0.83, 0.55]], requires_grad=True)
    proj = torch.randn(enc.n_output_dims)
    (g,) = torch.autograd.grad((enc(x) @ proj).sum(), x)
    eps = 1e-3
    for d in range(3):
        e = torch.zeros(3)
        e[d] = eps
        with torch.no_grad():
            fd = ((enc(x + e) @ proj) - (enc(x - e) @ proj)) / (2 * eps)
        torch.testing.assert_close(g[:, d], fd, rtol=2e-2, atol=2e-3)


def test_double_backward_normals_style(device):
    """grad wrt x with create_graph, then a loss on that gradient -> finite, nonzero table gradients."""
    enc = HashGridEncoding(SMALL)
    _randomise(enc)
    enc.to(device)
    mlp = MLP(enc.n_output_dims, 1, 16, 1, activation="softplus").to(device)  # smooth: second derivatives nonzero
    x = torch.rand(128, 3, device=device, requires_grad=True)
    sigma = get_activation("trunc_exp")(mlp(enc(x))[:, 0])
    (grad_x,) = torch.autograd.grad(sigma.sum(), x, create_graph=True)
    normal = -grad_x / grad_x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    loss = (normal * torch.tensor([0.3, -0.5, 0.8], device=device)).sum() + grad_x.square().sum()
    loss.backward()
    for t in enc.tables:
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert sum(float(t.grad.abs().sum()) for t in enc.tables) > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_double_backward_matches_reference_float64():
    """The table gradient of a loss on d(out)/dx equals that of a plain advanced-indexing implementation."""
    enc = HashGridEncoding(SMALL).double()
    _randomise(enc)
    x0 = torch.rand(30, 3, dtype=torch.float64)
    proj = torch.randn(enc.n_output_dims, dtype=torch.float64)

    def loss_of(out_fn, params):
        x = x0.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad((out_fn(x) @ proj).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), params)

    def reference(x):
        outs = []
        xt = x.t()
        for level, t in enumerate(enc.tables):
            r = enc.resolutions[level]
            pos = xt * r
            c = pos.detach().floor().clamp(0, r - 1)
            w = enc._corner_weights(pos - c)
            idx = enc._corner_indices(level, c.long()).view(8, -1)
            outs.append((t[idx] * w.unsqueeze(-1)).sum(0))
        return torch.cat(outs, -1)

    params = list(enc.tables)
    for a, b in zip(loss_of(enc, params), loss_of(reference, params)):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------- backends
@pytest.mark.skipif(tcnn_available(), reason="tinycudann is installed")
def test_make_encoding_tcnn_missing_raises():
    with pytest.raises(ValueError, match="tcnn.*pip install git\\+https://github.com/NVlabs/tiny-cuda-nn"):
        make_encoding(SMALL, "tcnn")


def test_make_encoding_auto_and_torch():
    if not torch.cuda.is_available():
        assert isinstance(make_encoding(SMALL, "auto"), HashGridEncoding)
    assert isinstance(make_encoding(SMALL, "torch"), HashGridEncoding)
    assert isinstance(make_encoding(SMALL.__dict__, "torch"), HashGridEncoding)  # mapping configs work too
    with pytest.raises(ValueError, match="unknown hash-grid backend"):
        make_encoding(SMALL, "cuda")


# ----------------------------------------------------------------------------------------------- MLP
def test_mlp_shapes():
    assert MLP(32, 4)(torch.randn(10, 32)).shape == (10, 4)
    m = MLP(8, 3, n_hidden=16, n_hidden_layers=3, activation="softplus", output_activation="sigmoid")
    y = m(torch.randn(2, 5, 8))
    assert y.shape == (2, 5, 3) and (y > 0).all() and (y < 1).all()
    assert sum(isinstance(layer, torch.nn.Linear) for layer in m.modules()) == 4
    assert sum(isinstance(layer, torch.nn.Linear) for layer in MLP(8, 3, n_hidden_layers=0).modules()) == 1
    nobias = MLP(8, 3, bias=False)
    assert all(layer.bias is None for layer in nobias.modules() if isinstance(layer, torch.nn.Linear))


def test_activations():
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(get_activation("none")(x), x)
    torch.testing.assert_close(get_activation(None)(x), x)
    torch.testing.assert_close(get_activation("relu")(x), x.clamp_min(0))
    torch.testing.assert_close(get_activation("softplus")(x), torch.nn.functional.softplus(x))
    torch.testing.assert_close(get_activation("shifted_softplus")(x), torch.nn.functional.softplus(x - 1))
    torch.testing.assert_close(get_activation("sigmoid")(x), torch.sigmoid(x))
    torch.testing.assert_close(get_activation("scale_-11_01")(x), (x + 1) / 2)
    torch.testing.assert_close(get_activation("trunc_exp")(x), torch.exp(x))
    with pytest.raises(ValueError, match="unknown activation"):
        get_activation("gelu_fancy")


def test_trunc_exp_forward_and_clamped_gradient():
    x = torch.tensor([-2.0, 0.0, 3.0, 14.0, 20.0, 40.0], dtype=torch.float64, requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x))
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    torch.testing.assert_close(g, torch.exp(x.clamp(max=15.0)))
    assert float(g[-1].detach()) == pytest.approx(math.exp(15.0))
    # double backward: d/dx [exp(min(x,15))] = exp(x) below 15, 0 above
    (gg,) = torch.autograd.grad(g.sum(), x)
    torch.testing.assert_close(gg, torch.where(x < 15, torch.exp(x), torch.zeros_like(x)))
    xs = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(trunc_exp, (xs,))


# ------------------------------------------------------------------------------------------- timing
def _timing(n_points: int = 65536, iters: int = 10) -> None:
    enc = HashGridEncoding(HashGridConfig())
    x0 = torch.rand(n_points, 3)
    print(f"threads={torch.get_num_threads()} N={n_points} {enc.extra_repr()}")
    for label, xgrad in (("fwd+bwd (table grads)", False), ("fwd+bwd (table + x grads)", True)):
        times = []
        for i in range(iters + 2):
            x = x0.clone().requires_grad_(xgrad)
            t0 = time.perf_counter()
            enc(x).square().sum().backward()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        times.sort()
        print(f"{label:28s} median {times[len(times) // 2] * 1e3:7.1f} ms   min {times[0] * 1e3:7.1f} ms")
    with torch.no_grad():
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            enc(x0)
            times.append(time.perf_counter() - t0)
    times.sort()
    print(f"{'forward (no grad)':28s} median {times[len(times) // 2] * 1e3:7.1f} ms   min {times[0] * 1e3:7.1f} ms")


if __name__ == "__main__":
    _timing()


@pytest.mark.parametrize("n_features", [1, 2, 3])
def test_forward_with_jacobian_matches_autograd(n_features, device):
    """Closed-form Jacobian == autograd d(features)/dx, and table gradients agree with the plain path."""
    torch.manual_seed(0)
    cfg = HashGridConfig(n_levels=4, n_features_per_level=n_features, log2_hashmap_size=8, base_resolution=2,
                         max_resolution=32, init_scale=1.0)
    enc = HashGridEncoding(cfg).double().to(device)
    x = torch.rand(64, 3, dtype=torch.float64).to(device) * 0.98 + 0.01
    feats, jac = enc.forward_with_jacobian(x)
    assert torch.allclose(feats, enc(x), atol=1e-10)
    xg = x.clone().requires_grad_(True)
    ref = torch.stack([torch.autograd.grad(enc(xg)[:, j].sum(), xg)[0] for j in range(feats.shape[1])], dim=-1)
    assert torch.allclose(jac, ref.permute(1, 0, 2), atol=1e-8)  # [3,N,D]
    v, vj = torch.randn_like(feats), torch.randn_like(jac)
    ((feats * v).sum() + (jac * vj).sum()).backward()
    closed = [t.grad.clone() for t in enc.tables]
    enc.zero_grad()
    xg = x.clone().requires_grad_(True)
    out = enc(xg)
    grads = torch.stack([torch.autograd.grad(out[:, j].sum(), xg, create_graph=True)[0] for j in range(out.shape[1])], -1)
    ((out * v).sum() + (grads.permute(1, 0, 2) * vj).sum()).backward()
    for a, t in zip(closed, enc.tables):
        assert torch.allclose(a, t.grad, atol=1e-8)
