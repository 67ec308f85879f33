#!/usr/bin/env python
"""Per-iteration timings of the DreamFusion stage (NeRF + SDS), with the occupancy grid on and off.

    .venv/bin/python scripts/bench.py [--prior PATH] [--iters 10] [--json out.json] [--device cuda]

The NeRF is first fitted (supervised, a few seconds) to a converged object, a solid coloured cube of
side 0.8 inside the unit scene box, so the figures describe a mid-run state rather than the initial blob.
Two measurements, each with the grid on and off in the same run:

* ``render64``: 64x64 render, 64 samples per ray, diffuse shading with normals, forward and backward of
  the render (loss = mean rgb + orientation penalty), no guidance.
* ``sds32``: the whole training step at a 32x32 render (the recipe's step with guidance), split into
  grid update (amortised), render, guidance, backward and optimizer.
* ``vsd32`` and ``vsd32 x2`` (grid on only): the same step with VSD (ProlificDreamer), one particle and two
  particles (each a copy of the fitted cube), where guidance also trains the LoRA model.
* ``latent-nerf latent`` and ``latent-nerf rgb`` (grid on): the two stages of the latent-nerf recipe at its
  settings, each on its own fitted cube: the latent NeRF's step (a render at the prior's latent size, 16 px for
  the shipped prior, straight into SDS: no encoder) against its RGB refinement's (32 px, SDS in image space); the
  ratio of their totals is printed.

``--device cuda`` runs it on the GPU (the prior at its default dtype there, fp16) and adds, for each CUDA
accelerator that can run (nerfacc for the volume renderer, tiny-cuda-nn for the hash grid), the same render64
and sds32 rows with it on (``... nerfacc``, ``... tcnn``); the plain rows are the pure-torch backends, so the
on/off ratio comes from one run. Each accelerator row fits its own cube (tcnn's table is laid out differently).

Prints a table of median milliseconds and peak RSS (and peak GPU memory on CUDA). Prior: ``assets/priors/shapeworld`` when shipped,
else a random diffusers prior built on the spot (``--tiny pixel``: a 32 px pixel-space UNet of about
1.7M parameters, the size the shape-world prior issue measured; ``--tiny latent``: a 64 px latent prior
with an f=4 VAE, whose encoder the SDS gradient must also pass through). The table says which it used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dream3d.config import DEFAULT_PRIOR, load_config  # noqa: E402
from dream3d.prior import load_prior  # noqa: E402
from dream3d.systems.base import peak_rss_mb, set_threads  # noqa: E402
from dream3d.systems.nerf import NeRFSystem  # noqa: E402


def sync() -> None:
    """Wait for the GPU (timings on CUDA measure the work, not its launch)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def fit_to_cube(system: NeRFSystem, steps: int = 300) -> None:
    """Supervise density (50 inside a cube of half-size 0.4, 0 outside) and albedo (red; a latent NeRF: the first
    channels of the same numbers) directly."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(system.nerf.parameters(), lr=0.01)
    dev = system.device
    colour = torch.tensor([0.8, 0.1, 0.1, 0.0], device=dev)[: system.nerf.channels]
    for _ in range(steps):
        x = (torch.rand(8192, 3, generator=gen) * 2 - 1).to(dev)
        inside = (x.abs() < 0.4).all(dim=-1).float()
        out = system.nerf(x)
        loss = ((out["density"] - 50.0 * inside) ** 2).mean() * 1e-3
        loss = loss + ((out["albedo"] - colour) ** 2 * inside[:, None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # converge the grid's moving maximum
        for i in range(8):
            system.renderer.grid.update(system.nerf.density, gen) if system.renderer.grid is not None else None


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_render64(system: NeRFSystem, iters: int) -> dict[str, float]:
    from dream3d.cameras import sample_cameras

    cfg = system.stage_cfg.camera
    cfg.height = cfg.width = 64
    times: dict[str, list[float]] = {"render": [], "backward": []}
    samples = []
    for i in range(iters + 3):
        gen = torch.Generator().manual_seed(100 + i)
        cams = sample_cameras(cfg, gen)
        sync()
        t0 = time.perf_counter()
        out = system.render(cams, "diffuse", stratified=True, generator=gen, with_normals=True)
        sync()
        t1 = time.perf_counter()
        (out["rgb"].mean() + out["orient"]).backward()
        sync()
        t2 = time.perf_counter()
        system.zero_grad(set_to_none=True)
        if i >= 3:
            times["render"].append((t1 - t0) * 1000)
            times["backward"].append((t2 - t1) * 1000)
            samples.append(float(out["samples"]))
    res = {k: median(v) for k, v in times.items()}
    res["total"] = res["render"] + res["backward"]
    res["samples"] = median(samples)
    return res


def bench_sds32(system: NeRFSystem, iters: int, size: int = 32) -> dict[str, float]:
    cfg = system.stage_cfg.camera
    cfg.height = cfg.width = size
    opt = system.configure_optimizers()
    rows = []
    for i in range(iters + 3):
        system.manual_step = 1000 + i  # past the albedo-only warm-up: mixed shading, normals for orientation
        system.timings = {}
        sync()
        t0 = time.perf_counter()
        loss = system.training_step(None, i)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        if i >= 3:
            rows.append({**system.timings, "backward": (t2 - t1) * 1000, "optimizer": (t3 - t2) * 1000,
                         "total": (t3 - t0) * 1000})
    system.timings = None
    keys = ["grid", "render", "guidance", "backward", "optimizer", "total"]
    return {k: median([r.get(k, 0.0) for r in rows]) for k in keys}


def accelerators(device: torch.device) -> list[tuple[str, list[str]]]:
    """(row label, config overrides) of each CUDA accelerator that can run here, alone and together."""
    if device.type != "cuda":
        return []
    from dream3d.fields.encoding import tcnn_available
    from dream3d.render import volume_nerfacc

    nerfacc = ["stages.coarse.renderer.backend=nerfacc"] if volume_nerfacc.available() else None
    tcnn = ["stages.coarse.representation.backend=tcnn"] if tcnn_available() else None
    rows = [("nerfacc", nerfacc), ("tcnn", tcnn), ("nerfacc+tcnn", (nerfacc + tcnn) if nerfacc and tcnn else None)]
    for label, overrides in rows:
        if overrides is None:
            print(f"bench: {label}: not available here, no row")
    return [(label, overrides) for label, overrides in rows if overrides is not None]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--prior", default=None, help="diffusers prior folder (default: shipped shape-world, else a tiny random one)")
    ap.add_argument("--tiny", choices=["pixel", "latent"], default="latent", help="random prior kind when none is shipped")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where to run (cuda: also the rows with each CUDA accelerator on)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda: no CUDA device is available here", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    set_threads()
    prior_path = args.prior
    if prior_path is None:
        prior_path = str(ROOT / DEFAULT_PRIOR) if (ROOT / DEFAULT_PRIOR).is_dir() else None
    tmp = None
    if prior_path is None:
        sys.path.insert(0, str(ROOT / "tests"))  # the tiny random priors are a test fixture
        from tiny_prior import build_tiny_prior

        tmp = tempfile.TemporaryDirectory()
        if args.tiny == "pixel":
            prior_path = str(build_tiny_prior(Path(tmp.name) / "tiny", latent=False, resolution=32, width=48))
        else:
            prior_path = str(build_tiny_prior(Path(tmp.name) / "tiny", latent=True, resolution=64, width=32))
        prior_label = f"random {args.tiny} prior ({'32 px' if args.tiny == 'pixel' else '64 px, f=4 VAE'})"
    else:
        prior_label = prior_path
    prior = load_prior(prior_path, device)
    torch_backends = ["stages.coarse.renderer.backend=torch", "stages.coarse.representation.backend=torch"]
    n_params = sum(p.numel() for p in prior.unet.parameters())
    results: dict[str, dict] = {}
    trained = None
    for grid in (True, False):
        cfg = load_config(["prompt=a red cube", "recipe=dreamfusion", f"prior={prior_path}", f"device={args.device}",
                           f"stages.coarse.renderer.occupancy_grid={grid}", *torch_backends])
        torch.manual_seed(0)
        system = NeRFSystem(cfg, "coarse", cfg.stages["coarse"], prior).to(device)
        if trained is None:
            fit_to_cube(system)
            trained = {k: v.clone() for k, v in system.nerf.state_dict().items()}
            grid_state = {k: v.clone() for k, v in system.renderer.state_dict().items()}
        else:
            system.nerf.load_state_dict(trained)
        if grid:
            system.renderer.load_state_dict(grid_state)
            system.renderer.cfg.grid_update_every = 16
        label = "grid on" if grid else "grid off"
        results[f"render64 {label}"] = bench_render64(system, args.iters)
        results[f"sds32 {label}"] = bench_sds32(system, args.iters)
        for n in (1, 2) if grid else ():
            vcfg = load_config(["prompt=a red cube", "recipe=dreamfusion", f"prior={prior_path}", "guidance=vsd",
                                f"particles={n}", f"device={args.device}", *torch_backends])
            vsd = NeRFSystem(vcfg, "coarse", vcfg.stages["coarse"], prior).to(device)
            for particle in vsd.particles:
                particle.nerf.load_state_dict(trained)
                particle.renderer.load_state_dict(grid_state)
                particle.renderer.cfg.grid_update_every = 16
            results["vsd32 grid on" if n == 1 else "vsd32 x2 grid on"] = bench_sds32(vsd, args.iters)
    for label, overrides in accelerators(device):  # each CUDA accelerator on, the grid on
        cfg = load_config(["prompt=a red cube", "recipe=dreamfusion", f"prior={prior_path}", f"device={args.device}",
                           *torch_backends, *overrides])
        torch.manual_seed(0)
        system = NeRFSystem(cfg, "coarse", cfg.stages["coarse"], prior).to(device)
        fit_to_cube(system)
        system.renderer.cfg.grid_update_every = 16
        results[f"render64 grid on {label}"] = bench_render64(system, args.iters)
        results[f"sds32 grid on {label}"] = bench_sds32(system, args.iters)
    for stage in ("latent", "refine"):  # the latent-nerf recipe's two stages, its settings, grid on
        from dream3d.systems.nerf import LatentNeRFSystem

        backends = [f"stages.{stage}.renderer.backend=torch", f"stages.{stage}.representation.backend=torch"]
        cfg = load_config(["prompt=a red cube", "recipe=latent-nerf", f"prior={prior_path}", f"device={args.device}",
                           *backends])
        torch.manual_seed(0)
        system = (LatentNeRFSystem if stage == "latent" else NeRFSystem)(cfg, stage, cfg.stages[stage], prior).to(device)
        fit_to_cube(system)
        system.renderer.cfg.grid_update_every = 16
        size = prior.image_size // prior.vae_scale_factor if stage == "latent" else cfg.stages[stage].camera.height
        results[f"latent-nerf {stage} ({size} px) grid on"] = bench_sds32(system, args.iters, size)
    occupied = float(grid_state["grid.occupied"].float().mean())
    print(f"prior: {prior_label}, UNet {n_params / 1e6:.2f}M parameters; threads {torch.get_num_threads()};"
          f" occupied cells {occupied:.1%}")
    cols = ["grid", "render", "guidance", "backward", "optimizer", "total", "samples"]
    print("| measurement | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.1f}" if c in row else "" for c in cols) + " |")
    latent, rgb = (row["total"] for name, row in results.items() if name.startswith("latent-nerf"))
    print(f"latent-nerf: the latent step takes {latent / rgb:.2f}x the RGB refinement's ({latent:.1f} / {rgb:.1f} ms)")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")
    peak_gpu = round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None
    if peak_gpu is not None:
        print(f"peak GPU memory: {peak_gpu:.0f} MiB")
    print("targets: render64 grid on total <= 250 ms; sds32 grid on total <= 120 ms (2-core CPU)")
    if args.json:
        Path(args.json).write_text(json.dumps({"prior": prior_label, "device": args.device, "results": results,
                                               "peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": peak_gpu}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
