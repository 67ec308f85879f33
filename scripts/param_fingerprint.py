#!/usr/bin/env python
"""Fingerprint the trained parameters of a short fixed-seed fit of every recipe, to prove a refactor changed
no behaviour: run it before and after, then compare.

    .venv/bin/python scripts/param_fingerprint.py --out before.json            # on the old commit
    .venv/bin/python scripts/param_fingerprint.py --out after.json --compare before.json

Each recipe fits "a red cube" with seed 0, one torch thread and a budget of three steps per stage, without
export; every stage's final checkpoint is hashed tensor by tensor (sha256 of the bytes). Same machine, same
torch: the fingerprints must be identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fingerprint(recipe: str, work: Path) -> dict[str, dict[str, str]]:
    import torch

    from dream3d.config import load_config, read_yaml, recipe_path
    from dream3d.run import fit

    stages = list(read_yaml(recipe_path(recipe), "a recipe")["stages"])
    extra = []
    if any(st.get("system") in ("latent-paint", "mesh-paint") for st in read_yaml(recipe_path(recipe), "a recipe")
           ["stages"].values()):  # a recipe that paints a given mesh: the shape world's cube
        from dream3d.cli import export_shape_glb
        from dream3d.shapeworld import get

        export_shape_glb(get("red_cube"), work / "paint.glb")
        extra = [f"mesh={work / 'paint.glb'}"]
    cfg = load_config(["prompt=a red cube", f"recipe={recipe}", "seed=0", "threads=1", "export=false",
                       f"steps={3 * len(stages)}", f"output_dir={work}", f"name={recipe}", *extra])
    run = work / recipe
    fit(cfg, run, show_progress=False)
    out = {}
    for stage in cfg.stages:
        state = torch.load(run / "ckpts" / stage / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        out[stage] = {k: hashlib.sha256(v.detach().contiguous().numpy().tobytes()).hexdigest()[:16]
                      for k, v in sorted(state.items())}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", default=None, help="an earlier --out file to compare with")
    ap.add_argument("--recipes", default=None, help="comma list (default: every recipe in configs/)")
    args = ap.parse_args()
    from dream3d.config import list_recipes

    recipes = args.recipes.split(",") if args.recipes else list_recipes()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in recipes:
            start = time.perf_counter()
            result[recipe] = fingerprint(recipe, Path(tmp))
            print(f"{recipe}: {sum(len(s) for s in result[recipe].values())} tensors in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        same = True
        for recipe in recipes:
            diff = [f"{s}/{k}" for s in set(before[recipe]) | set(result[recipe])
                    for k in set(before[recipe].get(s, {})) | set(result[recipe].get(s, {}))
                    if before[recipe].get(s, {}).get(k) != result[recipe].get(s, {}).get(k)]
            same &= not diff
            print(f"{recipe}: " + ("identical" if not diff else f"{len(diff)} tensors differ, e.g. {diff[:3]}"))
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
