#!/usr/bin/env python
"""Quality and speed over recipes x prompts x seeds: fit, export, evaluate against the shape world, tabulate.

    .venv/bin/python scripts/benchmark.py --quick                         # ~15 min on 2 cores
    .venv/bin/python scripts/benchmark.py --recipes dreamfusion --prompts prompts.txt --seeds 2 [--steps 1000]

Each (recipe, prompt, seed) is one ``dream3d fit`` in its own process (so its peak memory is its own), then
``dream3d eval`` on its exported mesh. The table gives, per recipe and prompt, the mean and the spread (half
the range) over seeds of: wall time per stage, it/s, peak RSS, export time, and the evaluation's figures
(R-precision, object and colour accuracy, silhouette IoU, colour error, and for objects with a front the
Janus score). ``--timing`` (on in ``--quick``) adds ``scripts/bench.py``'s per-iteration split (render,
guidance, backward, optimizer) with the reference path (no occupancy grid) next to the accelerated one and
their ratio. Writes ``<out>/benchmark.md`` and ``<out>/benchmark.json`` (default ``outputs/benchmark``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUICK = {"recipes": ["dreamfusion"], "prompts": ["a red cube", "a snowman"], "seeds": 2, "steps": 300}
EXPORT = ["mesh_resolution=96", "texture_size=512", "video_views=0"]  # the video is not measured here
FIGURES = ["r_precision", "object_accuracy", "colour_accuracy", "iou", "colour_error", "janus"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"the quick preset: {QUICK}, plus --timing")
    ap.add_argument("--recipes", default="dreamfusion", help="comma list of recipes (configs/*.yaml)")
    ap.add_argument("--prompts", default=None, help="file with one prompt a line (default: a red cube)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="total step budget of each fit (default: the recipe's)")
    ap.add_argument("--timing", action="store_true", help="also run scripts/bench.py's per-iteration split")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "benchmark"))
    return ap.parse_args(argv)


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise SystemExit(f"benchmark: {' '.join(cmd[2:5])} ... failed: {lines[-1] if lines else done.returncode}")


def run_one(recipe: str, prompt: str, seed: int, steps, out: Path) -> dict:
    """Fit + eval in subprocesses; returns the summary and eval figures of the run."""
    from dream3d.rundir import slugify

    name = f"{slugify(prompt)}-s{seed}"
    run_dir = out / "runs" / recipe / name
    fit = [sys.executable, "-m", "dream3d.cli", "fit", f"prompt={prompt}", f"recipe={recipe}", f"seed={seed}",
           f"output_dir={out / 'runs'}", f"name={name}", "--quiet", *EXPORT]
    if steps:
        fit.append(f"steps={steps}")
    if run_dir.exists():  # a fresh run every time: the figures must describe this commit
        import shutil

        shutil.rmtree(run_dir)
    start = time.perf_counter()
    _run(fit)
    _run([sys.executable, "-m", "dream3d.cli", "eval", str(run_dir)])
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluation = json.loads((run_dir / "eval.json").read_text())
    row = {"recipe": recipe, "prompt": prompt, "seed": seed, "run": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir),
           "total_s": round(time.perf_counter() - start, 1), "peak_rss_mb": summary.get("peak_rss_mb"),
           "export_s": summary.get("export", {}).get("mesh_seconds"), "faces": summary.get("export", {}).get("faces"),
           "stages": {k: {"wall_s": v.get("wall_s"), "it_per_s": v.get("it_per_s"), "steps": v.get("completed_steps"),
                          "init_s": v.get("init_s")} for k, v in summary["stages"].items()},
           "watertight": summary.get("export", {}).get("watertight"),
           "top_caption": evaluation.get("top_caption")}
    row.update({k: evaluation.get(k) for k in FIGURES})
    return row


def mean_spread(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    m = statistics.fmean(values)
    spread = (max(values) - min(values)) / 2
    fmt = (lambda x: f"{x:.0f}") if abs(m) >= 100 else (lambda x: f"{x:.3g}" if abs(m) >= 1 else f"{x:.2f}")
    return fmt(m) + (f" ± {fmt(spread)}" if len(values) > 1 else "")


def _stage_s(stage: dict):
    """A stage's wall time including its initialisation from the previous stage (NeRF -> DMTet)."""
    if stage.get("wall_s") is None:
        return None
    return stage["wall_s"] + (stage.get("init_s") or 0.0)


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["prompt"]), []).append(r)
    stage_names = list(dict.fromkeys(s for r in rows for s in r["stages"]))
    cols = ["recipe", "prompt", "seeds", "fit+export+eval s"] + [f"{s} s" for s in stage_names] + \
        [f"{s} it/s" for s in stage_names] + ["peak RSS MB", "export s", *FIGURES, "top caption (seed 0)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for (recipe, prompt), rs in groups.items():
        cells = [recipe, prompt, str(len(rs)), mean_spread([r["total_s"] for r in rs])]
        cells += [mean_spread([_stage_s(r["stages"].get(s, {})) for r in rs]) for s in stage_names]
        cells += [mean_spread([r["stages"].get(s, {}).get("it_per_s") for r in rs]) for s in stage_names]
        cells += [mean_spread([r["peak_rss_mb"] for r in rs]), mean_spread([r["export_s"] for r in rs])]
        cells += [mean_spread([r[k] for r in rs]) for k in FIGURES]
        cells.append(str(rs[0]["top_caption"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing(out: Path) -> tuple[dict, str]:
    """scripts/bench.py (grid on = accelerated, grid off = reference) -> figures and a Markdown table."""
    path = out / "timing.json"
    _run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--iters", "5", "--json", str(path)])
    data = json.loads(path.read_text())
    res = data["results"]
    lines = [f"Per-iteration milliseconds (median of 5), prior {data['prior']}; reference = no occupancy grid.", "",
             "| stage kind | measurement | render | guidance | backward | optimizer | total | reference total | "
             "speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    for m in ("render64", "sds32", "vsd32", "vsd32 x2"):
        on, off = res.get(f"{m} grid on"), res.get(f"{m} grid off")
        if on is None:
            continue
        cells = [f"{on[c]:.1f}" if c in on else "" for c in ("render", "guidance", "backward", "optimizer", "total")]
        ref = [f"{off['total']:.1f}", f"{off['total'] / on['total']:.2f}x"] if off else ["", ""]
        lines.append(f"| NeRF (volume) | {m} | " + " | ".join(cells + ref) + " |")
    return data, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dream3d.io import write_json, write_text

    if args.quick:
        recipes, prompts, seeds, steps, want_timing = (QUICK["recipes"], QUICK["prompts"], QUICK["seeds"],
                                                       QUICK["steps"], True)
    else:
        recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
        if args.prompts:
            prompts = [p.strip() for p in Path(args.prompts).read_text().splitlines() if p.strip()]
        else:
            prompts = ["a red cube"]
        seeds, steps, want_timing = args.seeds, args.steps, args.timing
    if seeds < 1 or not prompts or not recipes:
        raise SystemExit("benchmark: expected at least one recipe, one prompt and --seeds >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for recipe in recipes:
        for prompt in prompts:
            for seed in range(seeds):
                rows.append(run_one(recipe, prompt, seed, steps, out))
                r = rows[-1]
                print(f"{recipe} / {prompt} / seed {seed}: {r['total_s']} s, R-precision {r['r_precision']}, "
                      f"IoU {r['iou']}, top caption {r['top_caption']}", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    import torch

    header = (f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
              f"commit {commit or 'unknown'}; {'--quick' if args.quick else ' '.join(sys.argv[1:])}; "
              f"steps {steps or 'recipe default'}; {len(rows)} runs in {(time.perf_counter() - start) / 60:.1f} min.")
    report = [header, "", table(rows)]
    timing_data = None
    if want_timing:
        timing_data, timing_table = timing(out)
        report += ["", timing_table]
    markdown = "\n".join(report)
    write_text(out / "benchmark.md", markdown + "\n")
    write_json(out / "benchmark.json", {"header": header, "runs": rows, "timing": timing_data})
    print(markdown)
    print(f"wrote {out / 'benchmark.md'} and {out / 'benchmark.json'} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
