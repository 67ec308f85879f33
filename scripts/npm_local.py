"""Project-local npm packages for the GLB check scripts, installed into ``.cache/npm`` (ignored by git).

Used by ``check_glb_validator.py`` and ``check_glb_browser.py``; not part of dream3d itself. Versions are
pinned so every machine checks against the same validator and the same three.js.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = ROOT / ".cache" / "npm"
NODE_MODULES = PREFIX / "node_modules"
PINNED = {"gltf-validator": "2.0.0-dev.3.10", "three": "0.160.1", "playwright-core": "1.65.1"}


def installed(package: str) -> bool:
    return (NODE_MODULES / package / "package.json").is_file()


def ensure(packages: list[str], install: bool = True) -> Path:
    """Make sure ``packages`` are under ``.cache/npm/node_modules`` (npm install when allowed) -> node_modules.

    Exits with a one-line message when ``node``/``npm`` are missing or the install fails.
    """
    if shutil.which("node") is None:
        sys.exit("node is not installed (apt-get install -y nodejs npm)")
    missing = [p for p in packages if not installed(p)]
    if missing and not install:
        sys.exit(f"npm packages {', '.join(missing)} are not in {PREFIX} (run without --no-install)")
    if missing:
        npm = shutil.which("npm")
        if npm is None:
            sys.exit("npm is not installed (apt-get install -y npm)")
        specs = [f"{p}@{PINNED[p]}" if p in PINNED else p for p in missing]
        print(f"installing {' '.join(specs)} into {PREFIX}", file=sys.stderr)
        PREFIX.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund", "--loglevel=error",
                               *specs], stdout=sys.stderr)
        if done.returncode != 0:
            sys.exit(f"npm install {' '.join(specs)} into {PREFIX} failed (exit {done.returncode})")
    return NODE_MODULES
