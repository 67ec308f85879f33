#!/usr/bin/env python
"""Download, here, the wheels that dream3d needs on the lent GPU machine (no network there) into ``.whl/``.

    .venv/bin/python scripts/fetch_wheels.py [--dest .whl] [--list]

That machine (``nvidia-h200``: Python 3.12 on x86-64 Linux, torch 2.11 with CUDA 13) already has torch,
transformers, peft, pytorch-lightning, safetensors, numpy, scipy, pillow, pyyaml, imageio, tqdm, rich and the
rest of its image's list; :data:`WHEELS` is what dream3d imports that is missing there, pinned to the versions
this project runs with (each checked against that machine's package list; their own requirements are either in
this list or already there). They are fetched for that machine's interpreter and platform, not this one's, with
``--no-deps`` (one version of each, nothing pulled in behind our back). nerfacc is a pure-Python wheel whose CUDA
extension is compiled there on first use (``scripts/device_check.sh`` does it up front).

dream3d itself is not packed: ``scripts/device_check.sh`` puts the checkout first on ``PYTHONPATH``, so the code
that runs is the code that travelled, never a stale wheel. The folder is ignored by git; hand it to the device
tool with ``carry: [".whl"]``. The working tree that travels must stay under 64 MiB with it, so the script prints
the folder's size and fails if it passes :data:`LIMIT_MIB`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# what dream3d needs and the GPU machine's image lacks (see /work/.library/device/KINDS.md there), pinned
WHEELS = [
    "diffusers==0.42.1",  # the priors (UNet, VAE, schedulers)
    "importlib_metadata==8.7.0",  # diffusers imports it; zipp, its one requirement, is there
    "omegaconf==2.4.0",  # the config schema; needs only PyYAML
    "trimesh==5.2.0",  # meshes and GLB export
    "PyMCubes==0.1.6",  # marching cubes (compiled: cp312 manylinux)
    "xatlas==0.0.11",  # UV atlas (compiled)
    "fast_simplification==0.2.0",  # quadric decimation (compiled)
    "imageio-ffmpeg==0.5.1",  # the ffmpeg binary for the turntable MP4 (26 MiB: 0.8 is 65 MiB)
    "nerfacc==0.5.3",  # the volume renderer's CUDA backend (pure Python; its CUDA extension is built there)
]
# dream3d's requirements (pyproject.toml) that the GPU machine's image already holds, in versions that satisfy them
ON_MACHINE = {"torch", "transformers", "peft", "pytorch-lightning", "scipy", "imageio", "safetensors", "numpy", "tqdm",
              "pillow"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
PYTHON_VERSION = "3.12"
LIMIT_MIB = 50.0


def download(spec: str, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
           "--abi", "none"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd += ["-d", str(dest), spec]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"fetch_wheels: {spec}: pip download failed: {tail}")


def folder_mib(dest: Path) -> float:
    return sum(p.stat().st_size for p in dest.glob("*.whl")) / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=str(ROOT / ".whl"), help="where the wheels go (default: .whl in the checkout)")
    ap.add_argument("--list", action="store_true", help="print the pinned list and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(WHEELS))
        return 0
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {spec.split("==")[0].lower().replace("-", "_") for spec in WHEELS}
    for old in dest.glob("*.whl"):  # one version of each: a second one stops the whole install there
        name = old.name.split("-")[0].lower()
        version = old.name.split("-")[1]
        pinned = {s.split("==")[0].lower().replace("-", "_"): s.split("==")[1] for s in WHEELS}
        if name not in wanted or pinned.get(name) != version:
            old.unlink()
    for spec in WHEELS:
        print(f"fetch_wheels: {spec}", flush=True)
        download(spec, dest)
    size = folder_mib(dest)
    names = sorted(p.name for p in dest.glob("*.whl"))
    print("\n".join(f"  {n}" for n in names))
    print(f"fetch_wheels: {len(names)} wheels, {size:.1f} MiB in {dest}")
    if len(names) != len(WHEELS):
        raise SystemExit(f"fetch_wheels: expected {len(WHEELS)} wheels in {dest}, found {len(names)}")
    if size > LIMIT_MIB:
        raise SystemExit(f"fetch_wheels: {size:.1f} MiB is over the {LIMIT_MIB:.0f} MiB budget of the tree that travels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
