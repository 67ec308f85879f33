"""Wall time of N fits as one ``dream3d batch`` (Ray, W workers x 1 thread) against the same fits run one after
another with ``dream3d fit`` + ``dream3d eval`` (1 thread each, so the results must match exactly, and with every
core, the fastest a lone fit gets). Prints a Markdown table and whether the batch's figures equal the sequential
ones. Run it on an otherwise idle machine (docs/benchmarks.md).

    .venv/bin/python scripts/batch_speedup.py [--prompts "a red cube" "a mug" ...] [--steps 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("r_precision", "iou", "volume_iou", "colour_error")


def run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"batch_speedup: {' '.join(cmd[3:5])} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return time.perf_counter() - t


def figures(run_dir: Path) -> dict:
    ev = json.loads((run_dir / "eval.json").read_text())
    final = json.loads((run_dir / "summary.json").read_text())["stages"]
    return {**{k: ev.get(k) for k in FIGURES}, "final": {k: v.get("final") for k, v in final.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", nargs="+", default=["a red cube", "a blue cone", "a mug", "a yellow torus"])
    ap.add_argument("--recipe", default="magic3d")
    ap.add_argument("--steps", type=int, default=200, help="total steps of each fit (short fits)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="dream3d-speedup-"))
    out.mkdir(parents=True, exist_ok=True)
    common = [f"recipe={args.recipe}", f"steps={args.steps}"]
    cli = [sys.executable, "-m", "dream3d.cli"]
    prompts = out / "prompts.txt"
    prompts.write_text("".join(p + "\n" for p in args.prompts))
    try:
        batch_s = run([*cli, "batch", f"prompts={prompts}", f"out={out / 'batch'}", f"workers={args.workers}", "threads=1",
                       "--quiet", *common], 1)
        batch = json.loads((out / "batch" / "summary.json").read_text())["rows"]
        rows = {}
        for threads in (1, os.cpu_count() or 1):
            total = 0.0
            for i, prompt in enumerate(args.prompts):
                name = f"p{i}"
                folder = out / f"seq{threads}"
                total += run([*cli, "fit", f"prompt={prompt}", "seed=0", f"output_dir={folder}", f"name={name}",
                              f"threads={threads}", "--quiet", *common], threads)
                total += run([*cli, "eval", str(folder / args.recipe / name)], threads)
            rows[threads] = total
        same = all(figures(out / "batch" / r["run"]) == figures(out / "seq1" / args.recipe / f"p{i}")
                   for i, r in enumerate(batch))
        n = len(args.prompts)
        print(f"| {n} fits ({args.recipe}, steps={args.steps}) | wall s | batch speed-up |")
        print("|---|---:|---:|")
        print(f"| dream3d batch, {args.workers} workers x 1 thread | {batch_s:.0f} | 1.00 |")
        for threads, total in rows.items():
            print(f"| one after another, {threads} thread{'s' if threads > 1 else ''} each | {total:.0f} | "
                  f"{total / batch_s:.2f} |")
        print(f"batch figures equal to the sequential 1-thread fits: {'yes' if same else 'NO'}")
        return 0 if same else 1
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
