"""The nerfacc backend of the volume renderer (CUDA; optional, never imported on CPU runs).

:class:`dream3d.render.volume.VolumeRenderer` hands the marching and compositing here when
``renderer.backend=nerfacc``, or ``auto`` on CUDA when nerfacc (>= 0.5, ``pip install 'dream3d[cuda]'``) imports
and its CUDA extension loads. The semantics are the torch renderer's, only the work is packed:

* **the same occupancy grid**: the renderer's own :class:`~dream3d.render.volume.OccupancyGrid` (its update rule,
  threshold and dilation) is handed to ``nerfacc.traverse_grids`` as its binary grid over the scene box, so the
  cells skipped are the cells the torch renderer skips;
* **the same step**: samples sit on a lattice of step ``2 radius / num_samples`` (the step the grid's threshold is
  defined for) from the ray's entry into the box, at the interval midpoints; ``stratified`` shifts each ray's
  lattice by one uniform draw (from the renderer's generator, so a resumed run draws the same), where the torch
  renderer jitters each of its ``num_samples`` samples over the ray's own span. A ray through the box's centre
  along an axis gets the same samples from both; a diagonal ray gets up to sqrt(3) times more here;
* **the same early stop**: samples behind which the transmittance fell below ``early_stop`` are dropped before
  the field is evaluated with gradients (``nerfacc.render_visibility_from_density``, a gradient-free first pass);
* **the same quadrature** (Max 1995): ``nerfacc.render_weight_from_density`` gives w_i = T_i (1 - exp(-sigma_i
  delta_i)), T_i = exp(-sum_{j<i} sigma_j delta_j), and ``nerfacc.accumulate_along_rays`` sums w_i x_i per ray;
* **the same distortion** loss, on packed samples: positions s_i along the ray's span in the box normalised to
  [0, 1], intervals ds_i; 2 sum_i w_i (s_i W_i - U_i) + 1/3 sum_i w_i^2 ds_i with per-ray exclusive sums W, U
  (``nerfacc.exclusive_sum``). With even spacing it is :func:`dream3d.render.volume.distortion`.

``tests/test_volume.py`` compares the two renders on a CUDA machine with nerfacc, and on the CPU runs this module
with nerfacc's two CUDA kernels (grid traversal, packed exclusive sum) replaced by torch references. This module
never imports the renderer (the renderer imports it, inside a function).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from torch import Tensor

INSTALL = "pip install 'nerfacc>=0.5' (or pip install 'dream3d[cuda]'; its CUDA extension builds on first use, "\
          "which needs nvcc)"


@functools.lru_cache(maxsize=None)
def why_unavailable() -> Optional[str]:
    """None when nerfacc can run here (a CUDA device, nerfacc >= 0.5 imports, its CUDA extension loads), else
    what is missing, as a phrase. Loading the extension compiles it the first time (minutes; nerfacc caches it)."""
    if not torch.cuda.is_available():
        return "needs a CUDA device (none is available)"
    try:
        import nerfacc
    except Exception as exc:  # not installed, or a broken install
        return f"nerfacc does not import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {INSTALL}"
    version = tuple(int(p) for p in nerfacc.__version__.split(".")[:2] if p.isdigit())
    if version < (0, 5):
        return f"needs nerfacc >= 0.5, found {nerfacc.__version__}; {INSTALL}"
    try:
        from nerfacc.cuda._backend import _C
    except Exception as exc:
        return f"nerfacc's CUDA extension does not build or load ({type(exc).__name__}); {INSTALL}"
    if _C is None:
        return "nerfacc's CUDA extension is not built and no CUDA toolkit (nvcc) is there to build it"
    return None


def available() -> bool:
    """Whether nerfacc can render here (see :func:`why_unavailable`)."""
    return why_unavailable() is None


def packed_info(ray_id: Tensor, n_rays: int) -> Tensor:
    """[n_rays, 2] int64 (first sample, sample count) per ray of samples sorted by ray (``nerfacc.pack_info``,
    which runs on CUDA only, in plain torch)."""
    counts = torch.bincount(ray_id, minlength=n_rays).to(torch.int64)
    return torch.stack([torch.cumsum(counts, 0) - counts, counts], dim=-1)


def _traverse(occupied: Tensor, radius: float, o: Tensor, d: Tensor, near: Tensor, far: Tensor,
              step: float) -> tuple[Tensor, Tensor, Tensor]:
    """``nerfacc.traverse_grids`` over one grid on [-radius, radius]^3: samples (ray id [M] int64, t_start [M],
    t_end [M]) on the lattice near + k step whose midpoints lie in occupied cells, sorted by ray and t."""
    import nerfacc

    aabb = torch.tensor([[-radius] * 3 + [radius] * 3], dtype=torch.float32, device=o.device)
    intervals, samples, _ = nerfacc.traverse_grids(o.float().contiguous(), d.float().contiguous(),
                                                   occupied[None].contiguous(), aabb, near_planes=near.contiguous(),
                                                   far_planes=far.contiguous(), step_size=step, cone_angle=0.0)
    return (samples.ray_indices.long(), intervals.vals[intervals.is_left], intervals.vals[intervals.is_right])


def march(occupied: Tensor, radius: float, o: Tensor, d: Tensor, t_near: Tensor, t_far: Tensor, step: float,
          shift: Optional[Tensor], density_fn: Callable[[Tensor], Tensor], early_stop: float
          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The samples to evaluate with gradients: grid traversal, then early stop.

    occupied [G,G,G] bool (the renderer's grid, x along the first axis); o, d [R,3]; t_near, t_far [R] (the box);
    ``shift`` [R] in [0, 1) moves each ray's lattice (stratified sampling; None: midpoints at (k + 1/2) step from
    t_near); ``density_fn`` points [N,3] -> sigma [N] (called without gradients). Returns ray id [M], t_start [M],
    t_end [M] and packed info [R,2]."""
    import nerfacc

    R = o.shape[0]
    lattice = t_near if shift is None else t_near + (shift - 0.5) * step
    ray_id, t0, t1 = _traverse(occupied, radius, o, d, lattice, t_far, step)
    info = packed_info(ray_id, R)
    if early_stop > 0 and ray_id.numel():
        with torch.no_grad():
            mid = (t0 + t1) * 0.5
            sigma = density_fn(o[ray_id] + d[ray_id] * mid[:, None])
            keep = nerfacc.render_visibility_from_density(t0, t1, sigma, packed_info=info, early_stop_eps=early_stop,
                                                          alpha_thre=0.0)
        ray_id, t0, t1 = ray_id[keep], t0[keep], t1[keep]
        info = packed_info(ray_id, R)
    return ray_id, t0, t1, info


def weights(t0: Tensor, t1: Tensor, sigma: Tensor, info: Tensor) -> Tensor:
    """w_i = T_i (1 - exp(-sigma_i delta_i)) of packed samples [M] (differentiable in sigma)."""
    import nerfacc

    w, _, _ = nerfacc.render_weight_from_density(t0, t1, sigma, packed_info=info)
    return w


def accumulate(w: Tensor, values: Optional[Tensor], ray_id: Tensor, n_rays: int) -> Tensor:
    """sum_i w_i x_i per ray -> [n_rays, C] (x = 1 when ``values`` is None: the opacity)."""
    import nerfacc

    return nerfacc.accumulate_along_rays(w, values, ray_indices=ray_id, n_rays=n_rays)


def distortion(w: Tensor, s: Tensor, ds: Tensor, info: Tensor) -> Tensor:
    """Mip-NeRF 360's distortion of packed samples: weights w [M], normalised positions s [M], interval widths
    ds [M] (both in units of the ray's span) -> [R]. Per-ray exclusive sums by ``nerfacc.exclusive_sum``."""
    import nerfacc

    R = info.shape[0]
    before_w = nerfacc.exclusive_sum(w, info)
    before_ws = nerfacc.exclusive_sum(w * s, info)
    ray_id = torch.repeat_interleave(torch.arange(R, device=w.device), info[:, 1], output_size=w.shape[0])
    per_sample = 2.0 * w * (s * before_w - before_ws) + w * w * ds / 3.0
    return torch.zeros(R, device=w.device, dtype=w.dtype).index_add(0, ray_id, per_sample)
