"""Multi-resolution hash-grid encoding (Instant-NGP style) in pure PyTorch, with an optional tiny-cuda-nn backend.

Conventions of the torch backend (:class:`HashGridEncoding`)
------------------------------------------------------------
* Input ``x: [N,3]`` in ``[0,1]^3`` (the caller normalises from the scene box). Values outside are clamped to
  ``[0,1]`` first, so indices are always valid (the gradient w.r.t. ``x`` is zero outside the cube).
* Growth factor ``b = exp((ln max_resolution - ln base_resolution) / (n_levels - 1))`` (``b = 1`` for one level).
* Level ``l`` has resolution ``R_l = floor(base_resolution * b**l)`` cells per axis (a ``1e-6`` slack inside the
  floor absorbs float round-off, so the last level is exactly ``max_resolution``) and ``R_l + 1`` grid vertices
  per axis. ``pos = x * R_l``; ``corner = clamp(floor(pos), 0, R_l - 1)``; ``frac = pos - corner`` in ``[0,1]``,
  so ``x = 1`` lands on the far face of the last cell instead of indexing past the grid.
* Vertex ``v = (vx, vy, vz)`` (integers in ``[0, R_l]``) maps to a table row
    - dense (one-to-one) when ``(R_l + 1)^3 <= T``: ``vx + vy*(R_l+1) + vz*(R_l+1)^2``,
    - otherwise the spatial hash ``(vx*1 XOR vy*2654435761 XOR vz*805459861) mod T`` (the uint32 Instant-NGP
      hash: ``T`` is a power of two, so only the low bits of the products matter and the primes are reduced
      mod T first; the result equals the uint32 hash),
  where ``T = 2**log2_hashmap_size``.
* Storage: one parameter per level, ``tables[l]: [T_l, F]`` with ``T_l = min(T, (R_l+1)^3)``, initialised
  ``U(-init_scale, init_scale)``. Separate per-level tensors keep the backward scatter of each level into a
  small (cache-resident) gradient instead of one large ``[L,T,F]`` buffer.
* The 8 corners are combined with trilinear weights ``prod_d (frac_d if bit_d else 1 - frac_d)``; corner
  ``c = 4*bx + 2*by + bz``. Output ``[N, L*F]``, level-major (level 0's F features first), in the table dtype
  (float32 unless the module was converted with ``.double()``, which the gradient checks use).

Performance notes (2-core CPU, measured while writing this module):
* levels are looped in Python, each with its own small gather/scatter (an all-levels index tensor is slower);
* everything is corner-major (``[8,N]`` indices and weights), so the weighted corner sum is a contiguous
  reduction over the leading axis; broadcasting a ``[8,N,1]`` weight over ``[8,N,F]`` rows was ~6x slower;
* index arithmetic runs in int32 when it cannot overflow (always, for sane configs): as fast to gather with and
  ~1.7x cheaper to compute than int64; the gather is ``index_select`` and the table gradient a 1-D
  ``scatter_add`` on int64 indices (plain advanced indexing's ``index_put`` backward, or an int32 scatter,
  are several times slower);
* for an even F the rows are gathered as complex numbers (``view_as_complex``: one 8-byte element per pair of
  features, 1-D for F = 2), ~1.7x faster than gathering 2-float rows;
* gather + weighted sum is one small ``autograd.Function`` (:class:`_GatherInterp`) whose backward is built from
  differentiable ops, so double backward (``create_graph=True``, used for analytic normals) works.
The gather and the scatter alone cost ~4 ms per level for 65k points, which bounds what pure PyTorch can do.

The tiny-cuda-nn backend (:class:`TcnnHashGridEncoding`) uses the same config with tcnn's own cell convention
(``scale = base * b**l - 1``, ``pos = x*scale + 0.5``), so its parameters are not interchangeable with the torch
backend's; both compute the same kind of function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "HashGridConfig",
    "HashGridEncoding",
    "TcnnHashGridEncoding",
    "make_encoding",
    "tcnn_available",
    "grid_resolutions",
    "PRIMES",
]

# Instant-NGP hash primes for (x, y, z).
PRIMES: tuple[int, int, int] = (1, 2654435761, 805459861)

TCNN_INSTALL = "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"


@dataclass
class HashGridConfig:
    """Hash-grid hyper-parameters (shared by both backends)."""

    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 17  # 2^17 entries per level is the measured sweet spot on CPU
    base_resolution: int = 16
    max_resolution: int = 2048  # per-level growth factor b = exp((ln max - ln base)/(L-1))
    init_scale: float = 1e-4  # table init U(-s, s)


def _as_config(cfg: Any) -> HashGridConfig:
    """Accept a HashGridConfig, an OmegaConf node / any object with the same attributes, or a mapping."""
    if isinstance(cfg, HashGridConfig):
        return cfg
    names = HashGridConfig.__dataclass_fields__.keys()
    if isinstance(cfg, Mapping):
        values = {k: cfg[k] for k in names if k in cfg}
    else:
        values = {k: getattr(cfg, k) for k in names if hasattr(cfg, k)}
    return HashGridConfig(**values)


def per_level_scale(cfg: HashGridConfig) -> float:
    """Growth factor b between consecutive levels."""
    if cfg.n_levels <= 1:
        return 1.0
    return math.exp((math.log(cfg.max_resolution) - math.log(cfg.base_resolution)) / (cfg.n_levels - 1))


def grid_resolutions(cfg: HashGridConfig) -> list[int]:
    """R_l = floor(base * b**l) for each level (cells per axis; R_l + 1 vertices per axis)."""
    b = per_level_scale(cfg)
    return [max(1, int(math.floor(cfg.base_resolution * b**level + 1e-6))) for level in range(cfg.n_levels)]


class HashGridEncoding(nn.Module):
    """Pure-PyTorch multi-resolution hash grid. Input x: [N,3] in [0,1]^3. Output: [N, n_levels*F].

    Attributes: ``n_output_dims``; ``resolutions[l]`` (R_l); ``dense[l]`` (one-to-one level or hashed);
    ``tables[l]: [T_l, F]`` parameters; ``per_level_scale`` (b).
    """

    def __init__(self, cfg: HashGridConfig) -> None:
        super().__init__()
        cfg = _as_config(cfg)
        if cfg.n_levels < 1 or cfg.n_features_per_level < 1:
            raise ValueError("HashGridConfig: n_levels and n_features_per_level must be >= 1")
        if cfg.base_resolution < 1 or cfg.max_resolution < cfg.base_resolution:
            raise ValueError("HashGridConfig: need 1 <= base_resolution <= max_resolution")
        self.cfg = cfg
        self.n_input_dims: int = 3
        self.n_levels: int = cfg.n_levels
        self.n_features_per_level: int = cfg.n_features_per_level
        self.n_output_dims: int = cfg.n_levels * cfg.n_features_per_level
        self.hashmap_size: int = 1 << cfg.log2_hashmap_size
        self.per_level_scale: float = per_level_scale(cfg)
        self.resolutions: list[int] = grid_resolutions(cfg)
        self.dense: list[bool] = [(r + 1) ** 3 <= self.hashmap_size for r in self.resolutions]
        self.table_sizes: list[int] = [
            (r + 1) ** 3 if d else self.hashmap_size for r, d in zip(self.resolutions, self.dense)
        ]
        # Per-axis integer multipliers: dense strides (1, R+1, (R+1)^2), or the hash primes reduced mod T
        # ((v * p) mod 2^k == (v * (p mod 2^k)) mod 2^k), which keeps the products small.
        mask = self.hashmap_size - 1
        self._multipliers: list[tuple[int, int, int]] = [
            (1, r + 1, (r + 1) ** 2) if d else tuple(p & mask for p in PRIMES)  # type: ignore[misc]
            for r, d in zip(self.resolutions, self.dense)
        ]
        # Index arithmetic in int32 when no intermediate can overflow (half the memory traffic of int64, ~1.7x
        # faster); the backward scatter always runs on int64 indices.
        self._index_dtypes: list[torch.dtype] = []
        for r, d, m in zip(self.resolutions, self.dense, self._multipliers):
            largest = (r + 1) ** 3 if d else max(r * max(m), mask)
            self._index_dtypes.append(torch.int32 if largest < 2**31 else torch.int64)
        s = float(cfg.init_scale)
        self.tables = nn.ParameterList(
            [nn.Parameter(torch.empty(t, cfg.n_features_per_level).uniform_(-s, s)) for t in self.table_sizes]
        )

    def extra_repr(self) -> str:
        n_dense = sum(self.dense)
        return (
            f"levels={self.n_levels}, features={self.n_features_per_level}, T=2^{self.cfg.log2_hashmap_size}, "
            f"resolutions={self.resolutions[0]}..{self.resolutions[-1]} (b={self.per_level_scale:.4f}), "
            f"dense_levels={n_dense}"
        )

    @staticmethod
    def _corner_weights(frac: Tensor) -> Tensor:
        """frac: [3,N] -> trilinear weights [8,N], corner c = 4*bx + 2*by + bz."""
        w1 = torch.stack([1.0 - frac, frac], dim=1)  # [3,2,N]
        wxy = w1[0].unsqueeze(1) * w1[1].unsqueeze(0)  # [2,2,N]
        return (wxy.unsqueeze(2) * w1[2].view(1, 1, 2, -1)).reshape(8, -1)  # [8,N]

    def _corner_indices(self, level: int, corner: Tensor) -> Tensor:
        """corner: [3,N] integer lower-corner vertex -> table rows of the 8 cell vertices, [8*N].

        Rows are int32 where that cannot overflow (see ``_index_dtypes``), else int64; corner c = 4*bx + 2*by + bz.
        """
        mx, my, mz = self._multipliers[level]
        c = corner.to(self._index_dtypes[level])
        v = torch.stack([c, c + 1], dim=1)  # [3,2,N]
        vx, vy, vz = v[0], v[1] * my, v[2] * mz  # [2,N] each (mx == 1)
        if self.dense[level]:
            idx = (vx.unsqueeze(1) + vy.unsqueeze(0)).unsqueeze(2) + vz.view(1, 1, 2, -1)  # [2,2,2,N]
        else:
            mask = self.hashmap_size - 1  # (a ^ b ^ c) mod 2^k == (a&m) ^ (b&m) ^ (c&m): mask the small tensors
            vx, vy, vz = vx & mask, vy & mask, vz & mask
            idx = (vx.unsqueeze(1) ^ vy.unsqueeze(0)).unsqueeze(2) ^ vz.view(1, 1, 2, -1)  # [2,2,2,N]
        return idx.reshape(-1)

    def _table_view(self, table: Tensor) -> Tensor:
        """table: [T,F] real -> the view the gather works on: [T] / [T,F/2] complex for even F (one 8-byte
        element per feature pair; CPU only), [T] / [T,F] real otherwise."""
        t, f = table.shape
        complex_ok = table.device.type == "cpu" and table.dtype in (torch.float32, torch.float64)
        if f % 2 == 0 and complex_ok and table.is_contiguous():
            tv = torch.view_as_complex(table.view(t, f // 2, 2))  # [T,F/2] complex
            return tv.view(t) if f == 2 else tv
        return table.view(t) if f == 1 else table

    def forward(self, x: Tensor) -> Tensor:
        """x: [N,3] in [0,1]^3 -> features [N, n_levels * F]."""
        if x.dim() != 2 or x.shape[-1] != 3:
            raise ValueError(f"HashGridEncoding expects x of shape [N,3], got {tuple(x.shape)}")
        dtype = self.tables[0].dtype
        # NaN/inf would turn into out-of-range indices: map them into the cube first.
        xt = x.to(dtype).nan_to_num(0.0, 1.0, 0.0).clamp(0.0, 1.0).t().contiguous()  # [3,N]
        outs = []
        for level, table in enumerate(self.tables):
            r = self.resolutions[level]
            pos = xt * float(r)  # [3,N]
            corner = pos.detach().floor().clamp_(0, r - 1)  # [3,N], cell lower corner
            frac = pos - corner  # [3,N] in [0,1]
            w = self._corner_weights(frac)  # [8,N]
            idx = self._corner_indices(level, corner)  # [8N]
            outs.append(_GatherInterp.apply(self._table_view(table), idx, w))  # [N,F]
        return torch.cat(outs, dim=-1)

    def forward_with_jacobian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N,3] in [0,1]^3 -> features [N, L*F] and their spatial Jacobian d features / d x [3, N, L*F].

        The Jacobian is computed in closed form from the same 8 gathered corner rows: trilinear interpolation
        is done axis by axis (z, then y, then x), carrying the finite differences across each axis, which are
        the partial derivatives. Normals from a density gradient then need no double backward. Gradients
        flow to the tables from both outputs (one scatter per level); ``x`` receives none (positions are ray
        samples, not learned).
        """
        dtype = self.tables[0].dtype
        xt = x.detach().to(dtype).nan_to_num(0.0, 1.0, 0.0).clamp(0.0, 1.0).t().contiguous()  # [3,N]
        feats, jacs = [], []
        for level, table in enumerate(self.tables):
            r = self.resolutions[level]
            pos = xt * float(r)
            corner = pos.floor().clamp_(0, r - 1)
            fx, fy, fz = pos - corner  # [N] each
            value, grads = _TrilinearWithGradient.apply(
                self._table_view(table), self._corner_indices(level, corner), fx, fy, fz, float(r)
            )  # [N(,K)], [3,N(,K)]
            if value.is_complex():
                value, grads = torch.view_as_real(value), torch.view_as_real(grads)
            n = x.shape[0]
            feats.append(value.reshape(n, self.n_features_per_level))  # explicit F: n may be 0
            jacs.append(grads.reshape(3, n, self.n_features_per_level))
        return torch.cat(feats, dim=-1), torch.cat(jacs, dim=-1)


class _TrilinearWithGradient(torch.autograd.Function):
    """Trilinear interpolation of the 8 gathered corner rows and its spatial gradient, axis by axis.

    Forward (z, then y, then x; ``lerp(a, b, f) = a + f (b - a)``, differences are the partial derivatives):
        e = lerp(c[., ., 0], c[., ., 1], fz),  Dz = c[., ., 1] - c[., ., 0]
        g = lerp(e[., 0], e[., 1], fy),         Dy = e[., 1] - e[., 0],   Dzy = lerp(Dz[., 0], Dz[., 1], fy)
        value = lerp(g0, g1, fx);  grad = r * (g1 - g0, lerp(Dy0, Dy1, fx), lerp(Dzy0, Dzy1, fx))
    The backward runs the same cascade in reverse (adjoint of each lerp) and scatters the 8 corner
    gradients into the table once. No gradient for the fractions (positions are not learned).
    table: [T] or [T,K] (real or complex), idx: [8N], fx/fy/fz: [N] real -> value [N(,K)], grad [3,N(,K)].
    """

    @staticmethod
    def forward(ctx, table, idx, fx, fy, fz, r: float):  # type: ignore[override]
        c = table.index_select(0, idx).view(2, 2, 2, -1, *table.shape[1:])  # [bx,by,bz,N(,K)]
        if c.is_complex():  # convert the weights once instead of at every product
            fx, fy, fz = fx.to(c.dtype), fy.to(c.dtype), fz.to(c.dtype)
        if c.dim() == 5:
            fx, fy, fz = fx[:, None], fy[:, None], fz[:, None]
        z0, z1 = c.unbind(2)
        dz = z1 - z0  # [2,2,N]
        e = z0 + fz * dz
        e0, e1 = e.unbind(1)
        dz0, dz1 = dz.unbind(1)
        dy = e1 - e0  # [2,N]
        g0, g1 = (e0 + fy * dy).unbind(0)
        dy0, dy1 = dy.unbind(0)
        dzy0, dzy1 = (dz0 + fy * (dz1 - dz0)).unbind(0)
        dx = g1 - g0
        value = g0 + fx * dx
        grad = torch.stack([dx, dy0 + fx * (dy1 - dy0), dzy0 + fx * (dzy1 - dzy0)]) * r
        ctx.save_for_backward(idx, fx, fy, fz)
        ctx.r, ctx.table_shape, ctx.table_dtype = r, table.shape, table.dtype
        return value, grad

    @staticmethod
    def backward(ctx, g_value, g_grad):  # type: ignore[override]
        idx, fx, fy, fz = ctx.saved_tensors
        dtype = ctx.table_dtype
        g_value = torch.zeros_like(g_grad[0], dtype=dtype) if g_value is None else g_value.to(dtype)
        if g_grad is None:
            g_grad = torch.zeros((3, *g_value.shape), dtype=dtype, device=g_value.device)
        gx, gy, gz = (g_grad.to(dtype) * ctx.r).unbind(0)
        # x: value = lerp(g0, g1, fx), dx = g1 - g0, jy = lerp(Dy0, Dy1, fx), jz = lerp(Dzy0, Dzy1, fx)
        a = g_value * fx
        G_g = torch.stack([g_value - a - gx, a + gx])  # [2,N]
        G_dy = torch.stack([gy - gy * fx, gy * fx])
        G_dzy = torch.stack([gz - gz * fx, gz * fx])
        # y: g = lerp(e0, e1, fy), Dy = e1 - e0, Dzy = lerp(Dz0, Dz1, fy)
        b = G_g * fy
        G_e = torch.stack([G_g - b - G_dy, b + G_dy], dim=1)  # [2,2,N]
        G_dz = torch.stack([G_dzy - G_dzy * fy, G_dzy * fy], dim=1)
        # z: e = lerp(z0, z1, fz), Dz = z1 - z0
        c = G_e * fz
        G_c = torch.stack([G_e - c - G_dz, c + G_dz], dim=2)  # [2,2,2,N(,K)]
        src = G_c.reshape(-1, *ctx.table_shape[1:])
        idx = idx if idx.dtype == torch.int64 else idx.long()
        zeros = src.new_zeros(ctx.table_shape)
        grad_table = zeros.scatter_add(0, idx, src) if src.dim() == 1 else zeros.index_add(0, idx, src)
        return grad_table, None, None, None, None, None


def _will_compute_grad(ctx, i: int) -> bool:
    """Whether input i's gradient is wanted by the running backward pass.

    ``needs_input_grad`` only says the input requires grad; ``autograd.grad(y, x)`` (e.g. normals from the
    density gradient) does not want the table gradient, and skipping its scatter saves ~1/3 of that pass.
    Uses a private autograd query; if it is unavailable, assume the gradient is wanted.
    """
    if not ctx.needs_input_grad[i]:
        return False
    try:
        node = ctx.next_functions[i][0]
        return node is None or bool(torch._C._will_engine_execute_node(node))
    except Exception:  # private API missing/changed, or called outside an engine pass
        return True


def _n_features(table: Tensor) -> int:
    """Real features per row of a gather table view ([T] / [T,K], real or complex)."""
    k = table.shape[1] if table.dim() == 2 else 1
    return 2 * k if table.is_complex() else k


class _GatherInterp(torch.autograd.Function):
    """out[n] = sum_c w[c,n] * table[idx[c*N + n]].

    table: [T] or [T,K] (real or complex), idx: [8N] int32/int64, w: [8,N] real -> out: [N,F] real, where
    F = K (or 1) for a real table and 2K (or 2) for a complex one (``view_as_real`` layout).
    The backward is built from differentiable ops (scatter_add/index_add, mul, real), so it is itself
    differentiable: double backward works. Under create_graph the features and weights are re-derived from
    the (graph-connected) inputs inside the backward so that every second-order term is recorded.
    """

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:  # type: ignore[override]
        n_corners, n = w.shape
        feats = table.index_select(0, idx).view(n_corners, n, *table.shape[1:])  # [8,N(,K)]
        # Same-dtype weights: complex x real would cast w inside every product (forward and backward).
        wc = w.to(table.dtype) if table.is_complex() else w  # [8,N]
        wb = wc if table.dim() == 1 else wc.unsqueeze(-1)
        # w and feats are only needed for grad_w (x requires grad); otherwise don't keep them alive.
        need_w = ctx.needs_input_grad[2]
        ctx.save_for_backward(table, idx, wc, w if need_w else None, feats if need_w else None)
        out = (feats * wb).sum(0)  # [N(,K)]
        if out.is_complex():
            out = torch.view_as_real(out)
        return out.reshape(n, _n_features(table))  # [N,F]

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        table, idx, wc, w, feats = ctx.saved_tensors
        n_corners, n = wc.shape
        # grad: [N,F] real, usually a strided slice of the concatenated output's gradient -> table layout.
        if table.is_complex():
            k = _n_features(table) // 2
            g = grad.view(n, k, 2) if grad.stride(-1) == 1 and grad.stride(0) % 2 == 0 else None
            if g is None or g.storage_offset() % 2:
                g = grad.contiguous().view(n, k, 2)
            grad = torch.view_as_complex(g)  # [N,K] complex
        grad = grad.reshape(n, *table.shape[1:])  # [N(,K)]
        create_graph = torch.is_grad_enabled()
        grad_table = grad_w = None
        if _will_compute_grad(ctx, 0):
            if create_graph and w is not None:  # keep d(grad_table)/dw in the graph
                wc = w.to(table.dtype) if table.is_complex() else w
            wb = wc if table.dim() == 1 else wc.unsqueeze(-1)
            src = (grad.unsqueeze(0) * wb).reshape(n_corners * n, *table.shape[1:])  # [8N(,K)]
            zeros = torch.zeros_like(table)
            idx = idx if idx.dtype == torch.int64 else idx.long()  # int64 scatter: int32 is far slower
            if table.dim() == 1:
                grad_table = zeros.scatter_add(0, idx, src)  # 1-D scatter_add beats index_add on CPU
            else:
                grad_table = zeros.index_add(0, idx, src)
        if _will_compute_grad(ctx, 2):
            if feats is None or create_graph:  # keep d(grad_w)/d(table) in the graph
                feats = table.index_select(0, idx).view(n_corners, n, *table.shape[1:])
            prod = feats * (grad.conj() if grad.is_complex() else grad).unsqueeze(0)  # [8,N(,K)]
            if prod.is_complex():
                prod = prod.real  # Re(conj(g) f) = g_re f_re + g_im f_im
            grad_w = prod if table.dim() == 1 else prod.sum(-1)  # [8,N]
        return grad_table, None, grad_w


def tcnn_available() -> bool:
    """True when ``import tinycudann`` works."""
    try:
        import tinycudann  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA build raising OSError/RuntimeError
        return False
    return True


def _tcnn_config(cfg: HashGridConfig) -> dict[str, Any]:
    return {
        "otype": "HashGrid",
        "n_levels": int(cfg.n_levels),
        "n_features_per_level": int(cfg.n_features_per_level),
        "log2_hashmap_size": int(cfg.log2_hashmap_size),
        "base_resolution": int(cfg.base_resolution),
        "per_level_scale": float(per_level_scale(cfg)),
        "interpolation": "Linear",
    }


class TcnnHashGridEncoding(nn.Module):
    """tiny-cuda-nn HashGrid with the same config/interface. Input x: [N,3] CUDA in [0,1]^3 -> [N, L*F] float32.

    Note: tcnn's cell convention differs from :class:`HashGridEncoding` (see the module docstring), and tcnn
    initialises its own table (``U(-1e-4, 1e-4)``); ``init_scale`` is not forwarded.
    """

    def __init__(self, cfg: HashGridConfig) -> None:
        super().__init__()
        cfg = _as_config(cfg)
        try:
            import tinycudann as tcnn
        except Exception as err:
            raise ValueError(f"hash-grid backend 'tcnn' needs tinycudann; install it with: {TCNN_INSTALL}") from err
        self.cfg = cfg
        self.n_input_dims: int = 3
        self.n_output_dims: int = cfg.n_levels * cfg.n_features_per_level
        config = _tcnn_config(cfg)
        try:
            self.encoding = tcnn.Encoding(3, config, dtype=torch.float32)
        except TypeError:  # older bindings without the dtype argument
            self.encoding = tcnn.Encoding(3, config)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N,3] CUDA in [0,1]^3 -> [N, n_levels*F] float32."""
        if not x.is_cuda:
            raise ValueError("hash-grid backend 'tcnn' needs CUDA inputs; use backend='torch' on CPU")
        return self.encoding(x.float().clamp(0.0, 1.0)).float()


def make_encoding(cfg: HashGridConfig, backend: str = "auto") -> nn.Module:
    """Build the hash-grid encoding.

    backend: "torch" | "tcnn" | "auto" (tcnn if importable and ``torch.cuda.is_available()``, else torch).
    Raises ValueError for an unknown backend, or for "tcnn" when tinycudann cannot be imported or CUDA is absent.
    """
    name = str(backend).lower()
    if name == "auto":
        name = "tcnn" if (torch.cuda.is_available() and tcnn_available()) else "torch"
    if name == "torch":
        return HashGridEncoding(cfg)
    if name == "tcnn":
        if not tcnn_available():
            raise ValueError(
                f"hash-grid backend 'tcnn' is not available (cannot import tinycudann); install it with: "
                f"{TCNN_INSTALL} (or use backend='torch')"
            )
        if not torch.cuda.is_available():
            raise ValueError("hash-grid backend 'tcnn' needs a CUDA device; use backend='torch' on CPU")
        return TcnnHashGridEncoding(cfg)
    raise ValueError(f"unknown hash-grid backend {backend!r}; expected 'torch', 'tcnn' or 'auto'")
