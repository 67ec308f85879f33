#!/usr/bin/env python
"""Quality and speed over recipes x prompts x seeds: fit, export, evaluate against the shape world, tabulate.

    .venv/bin/python scripts/benchmark.py --catalogue [--recipe magic3d] [--seeds 1] [--jobs N] [--name NAME]
    .venv/bin/python scripts/benchmark.py --subset --name try1 [--steps 400]     # 16 prompts, quick comparisons
    .venv/bin/python scripts/benchmark.py --quick                                # ~15 min on 2 cores
    .venv/bin/python scripts/benchmark.py --recipes dreamfusion --prompts prompts.txt --seeds 2 [--steps 1000]

Prompts: ``--catalogue`` (all 58 shape-world captions, each with a true mesh), ``--subset`` (16 of them, see
:data:`SUBSET`), ``--prompts FILE`` (one a line) or ``--quick`` (the old preset: dreamfusion on a red cube and
a snowman, 2 seeds, 300 steps, plus ``--timing``). Recipe: ``--recipe``/``--recipes`` (comma list; default
the project's default recipe). Seeds: 1 unless ``--seeds`` (2 for ``--prompts`` and the single default
prompt, as before), counted from 0 or from ``--first-seed``. ``--set`` takes any ``dream3d fit`` key but those the
benchmark sets for each run (seed, prompt, recipe, name, output_dir, threads, resume: :data:`PER_RUN_KEYS`).

Each (recipe, prompt, seed) is one ``dream3d fit`` in its own process (so its peak memory is its own), then
``dream3d eval`` on its exported mesh, both with ``OMP_NUM_THREADS=MKL_NUM_THREADS=--threads`` (default 1)
in their environment; ``--jobs`` of them run at once (default: one per core; a magic3d fit peaks near
1 GB). Output goes to ``outputs/benchmark/<name>/`` (``--name``; ``--out`` for any folder): run folders
under ``runs/``, ``benchmark.md``, ``benchmark.json`` and ``sheet.png``. Re-running with the same name
skips the runs whose ``eval.json`` is there (fitted with the same ``--steps`` and export settings; a run
whose eval.json predates a figure is evaluated again, not refitted) unless ``--fresh`` (``--quick`` is
always fresh).

**Refitting one stage.** ``--refit fine --from outputs/benchmark/<other>`` measures a lever of a later stage
alone: each run of the other benchmark is copied without that stage and the stages after it (their
checkpoints, stage folders, export and eval.json; ``summary.json`` loses their records), then ``dream3d fit
resume=<copy>`` refits them with the ``--set`` levers from the stored checkpoints of the earlier stages, so both
benchmarks share the same earlier stages byte for byte. Wall times then cover the refitted stages, export and
eval only. The other benchmark's runs are only read.

**Pass.** A run passes (:func:`pass_check`) when all of: R-precision >= 0.9, silhouette IoU >= 0.8, colour
error <= 0.10 and, for objects with a front, Janus 0 with the front found within 45 degrees (``front_ok``).
``volume_iou`` and ``chamfer`` (3D occupancy IoU and surface distance against the true mesh after the same
normalisation, see :mod:`dream3d.eval`) are reported next to it, not part of it: they are what the
classifier cannot be fooled on, so a pass with a low volume IoU is a reason to look at the object.

**Report.** Per-run rows (figures, the pass and the failed criteria), aggregates over all runs, by kind
(each primitive shape, and composites) and by colour (primitives; composites are "mixed"): number of runs,
pass rate, mean R-precision, object and colour accuracy, IoU, volume IoU, chamfer, colour error, Janus,
front accuracy and front found (those three on objects with a front), wall time; the old per-recipe-and-
prompt table (mean ± half the range over seeds, stage wall times, it/s, peak RSS, export time); with
``--timing`` ``scripts/bench.py``'s per-iteration split.

**Contact sheet** (``sheet.png``): the best and the worst five runs, ranked by :func:`rank_key` (passes
first, then volume IoU, then silhouette IoU; runs that failed to fit or evaluate last). Each row: the true
object from the front, then the exported ``model.glb`` from azimuth 0, 90, 180 and 270 at elevation 15 (both
normalised like the evaluation), with the caption and the key figures. Look at it: a "pass" on a visibly
wrong object means the evaluation needs fixing first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUICK = {"recipes": ["dreamfusion"], "prompts": ["a red cube", "a snowman"], "seeds": 2, "steps": 300}
EXPORT = ["mesh_resolution=96", "texture_size=512", "video_views=0"]  # the video is not measured here
OVERRIDES: list[str] = []  # --set key=value for every fit (a quality experiment's one lever)
REFIT: dict = {}  # --refit/--from: {"stage": name, "source": folder}
FIGURES = ["r_precision", "object_accuracy", "colour_accuracy", "iou", "colour_error", "janus", "volume_iou",
           "chamfer"]
EVAL_KEYS = FIGURES + ["front_accuracy", "front_azimuth", "front_ok", "top_caption", "yaw"]
# dream3d fit keys the benchmark sets for each run, which --set must not change (a run fitted with --set seed=1
# would be filed and reported as seed 0): what to use instead
PER_RUN_KEYS = {"seed": "use --first-seed S (with --seeds N: seeds S..S+N-1)",
                "prompt": "use --prompts FILE, --subset or --catalogue", "recipe": "use --recipes",
                "name": "use --name or --out for the benchmark's folder", "output_dir": "use --name or --out",
                "threads": "use --threads", "resume": "use --refit STAGE --from FOLDER"}
RUN_FILE = "benchmark_run.json"  # in each run folder: what the benchmark measured, for resuming

# The pass criterion of one run: figure, comparison, threshold. Objects with a front also need FRONT_PASS.
PASS = [("r_precision", ">=", 0.9), ("iou", ">=", 0.8), ("colour_error", "<=", 0.10)]
FRONT_PASS = [("janus", "==", 0.0), ("front_ok", "==", True)]

# --subset: every primitive kind once, each in a different colour (purple and black are left to --catalogue;
# the composites show orange, black and white too), plus all ten composites: 6 + 10 = 16 prompts.
SUBSET_PRIMITIVES = {"cube": "red", "sphere": "green", "cone": "blue", "cylinder": "yellow", "torus": "orange",
                     "pyramid": "white"}
SUBSET_COMPOSITES = ["pineapple", "snowman", "mug", "house", "table", "mushroom", "tree", "chair", "car", "rocket"]
SUBSET = [f"{c}_{k}" for k, c in SUBSET_PRIMITIVES.items()] + SUBSET_COMPOSITES  # catalogue names

SHEET_ROWS = 5  # best and worst runs on the contact sheet
SHEET_VIEWS = 4  # model.glb frames: azimuth 0, 90, 180, 270
SHEET_SIZE = 128  # pixels a frame
SHEET_SUPERSAMPLE = 4  # frames rendered this many times larger, then averaged down (see _render)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help=f"the quick preset: {QUICK}, plus --timing")
    which.add_argument("--catalogue", action="store_true", help="every shape-world catalogue caption (58)")
    which.add_argument("--subset", action="store_true",
                       help="16 catalogue captions: every primitive kind once and every composite")
    which.add_argument("--prompts", default=None, help="file with one prompt a line (default: a red cube)")
    ap.add_argument("--recipes", "--recipe", default=None,
                    help="comma list of recipes (configs/*.yaml; default: the default recipe)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 1; 2 with --prompts)")
    ap.add_argument("--first-seed", type=int, default=0, metavar="S",
                    help="start the seeds at S: seeds S..S+N-1 (e.g. --first-seed 1 for seed 1 alone)")
    ap.add_argument("--steps", type=int, default=None, help="total step budget of each fit (default: the recipe's)")
    ap.add_argument("--jobs", type=int, default=None, help="runs at once (default: one per core)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (OMP_NUM_THREADS; default 1)")
    ap.add_argument("--name", default=None, help="output folder outputs/benchmark/<name> (default: from the "
                    "prompt set and recipes; outputs/benchmark itself for --prompts and --quick)")
    ap.add_argument("--out", default=None, help="output folder (overrides --name)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a dream3d fit key=value for every run (repeatable), e.g. "
                    "--set stages.coarse.renderer.background=solid: one lever of a quality experiment")
    ap.add_argument("--fresh", action="store_true", help="refit every run, even those with an eval.json")
    ap.add_argument("--refit", default=None, metavar="STAGE",
                    help="with --from: refit STAGE and the stages after it on copies of another benchmark's runs")
    ap.add_argument("--from", dest="source", default=None, metavar="FOLDER",
                    help="the benchmark folder whose runs --refit copies (outputs/benchmark/<name>)")
    ap.add_argument("--engine", choices=("processes", "ray"), default="processes",
                    help="processes: each fit and eval a subprocess, --jobs at once; ray: the fits through dream3d "
                    "batch's Ray engine (--jobs workers here, or --address a cluster; the prior loaded once per worker)")
    ap.add_argument("--address", default="", help="with --engine ray: an existing Ray cluster (e.g. auto)")
    ap.add_argument("--no-sheet", dest="sheet", action="store_false", help="skip sheet.png")
    ap.add_argument("--timing", action="store_true", help="also run scripts/bench.py's per-iteration split")
    return ap.parse_args(argv)


# --------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------


def catalogue_prompts() -> list[str]:
    from dream3d.shapeworld.catalogue import catalogue

    return [o.caption for o in catalogue()]


def subset_prompts() -> list[str]:
    from dream3d.shapeworld.catalogue import get

    return [get(name).caption for name in SUBSET]


def describe(prompt: str) -> dict:
    """Catalogue facts of a prompt: object name, kind (primitive shape or "composite"), colour ("mixed" for a
    composite), has_front; None values outside the catalogue."""
    from dream3d.eval import match_prompt

    _, obj = match_prompt(prompt)
    if obj is None:
        return {"object": None, "kind": "not in catalogue", "colour": None, "has_front": None}
    if obj.category == "primitive":
        colour, kind = obj.name.split("_", 1)
    else:
        colour, kind = "mixed", "composite"
    return {"object": obj.name, "kind": kind, "colour": colour, "has_front": obj.has_front}


# --------------------------------------------------------------------------------------------------------------
# Pass criterion, ranking, aggregates (pure)
# --------------------------------------------------------------------------------------------------------------


def _holds(value, op: str, threshold) -> bool:
    if value is None:
        return False
    if op == ">=":
        return value >= threshold
    if op == "<=":
        return value <= threshold
    return value == threshold


def pass_check(row: dict) -> tuple[Optional[bool], list[str]]:
    """(passed, failed criteria) of one run's figures; passed is None for a prompt outside the catalogue
    (nothing to compare with). A missing figure fails its criterion."""
    if row.get("error"):
        return False, ["error"]
    if row.get("has_front") is None:
        return None, []
    criteria = PASS + (FRONT_PASS if row["has_front"] else [])
    failed = [f"{k} {op} {t}" if k != "front_ok" else "front_ok" for k, op, t in criteria
              if not _holds(row.get(k), op, t)]
    return not failed, failed


def rank_key(row: dict) -> tuple:
    """Sort key, larger is better: ran at all, passed, volume IoU, silhouette IoU. (Not the number of pass
    criteria met: a shapeless blob "meets" Janus 0 and often the front, which says nothing.)"""
    return (not row.get("error"), bool(row.get("pass")), row.get("volume_iou") or 0.0, row.get("iou") or 0.0)


def best_and_worst(rows: list[dict], n: int = SHEET_ROWS) -> tuple[list[dict], list[dict]]:
    """The ``n`` best rows (best first) and the ``n`` worst (worst last), never the same row twice."""
    ranked = sorted(rows, key=rank_key, reverse=True)
    best = ranked[:min(n, len(ranked))]
    worst = ranked[len(best):][-n:]
    return best, worst


def _mean(values) -> Optional[float]:
    values = [float(v) for v in values if v is not None]
    return statistics.fmean(values) if values else None


AGG_COLUMNS = ["runs", "pass rate", "r_precision", "object_accuracy", "colour_accuracy", "iou", "volume_iou",
               "chamfer", "colour_error", "janus", "front_accuracy", "front found", "wall s"]


def aggregate(rows: list[dict]) -> dict:
    """Means over ``rows`` (None figures left out): pass rate over the judged runs, figures, and on the objects
    with a front Janus, front accuracy and the share whose front was found within 45 degrees."""
    judged = [r["pass"] for r in rows if r.get("pass") is not None]
    front = [r for r in rows if r.get("has_front")]
    out = {"runs": len(rows), "passed": sum(judged), "pass rate": sum(judged) / len(judged) if judged else None}
    for k in ("r_precision", "object_accuracy", "colour_accuracy", "iou", "volume_iou", "chamfer", "colour_error"):
        out[k] = _mean(r.get(k) for r in rows)
    out["janus"] = _mean(r.get("janus") for r in front)
    out["front_accuracy"] = _mean(r.get("front_accuracy") for r in front)
    out["front found"] = _mean(bool(r.get("front_ok")) for r in front if not r.get("error")) if front else None
    out["wall s"] = _mean(r.get("total_s") for r in rows)
    return out


def group_by(rows: list[dict], key: Optional[str]) -> dict[tuple, dict]:
    """{(recipe, value of ``key``, or "all" for None): aggregate}, in order of first appearance."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], "all" if key is None else r.get(key)), []).append(r)
    return {k: aggregate(v) for k, v in groups.items()}


def _fmt(value, key: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in ("runs", "passed"):
        return str(value)
    if key == "wall s":
        return f"{value:.0f}"
    if key == "chamfer":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def aggregate_table(groups: dict[tuple, dict], label: str) -> str:
    cols = ["recipe", label] + AGG_COLUMNS
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for (recipe, value), agg in groups.items():
        cells = [recipe, str(value)] + [
            (f"{agg['pass rate']:.2f} ({agg['passed']}/{agg['runs']})" if agg["pass rate"] is not None else "n/a")
            if c == "pass rate" else _fmt(agg[c], c) for c in AGG_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


ROW_COLUMNS = ["recipe", "prompt", "seed", "kind", "colour", "pass", "failed", "r_precision", "object_accuracy",
               "colour_accuracy", "iou", "volume_iou", "chamfer", "colour_error", "janus", "front_azimuth",
               "front_ok", "total_s", "top_caption"]


def rows_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(ROW_COLUMNS) + " |", "|" + "---|" * len(ROW_COLUMNS)]
    for r in rows:
        cells = []
        for c in ROW_COLUMNS:
            v = r.get(c)
            if c == "pass":
                cells.append("n/a" if v is None else ("**pass**" if v else "fail"))
            elif c == "failed":
                cells.append(r["error"][:80].replace("|", "/") if r.get("error") else ", ".join(v or []))
            elif c == "front_azimuth":
                cells.append("n/a" if v is None else f"{v:.0f}")
            elif c == "total_s":
                cells.append("n/a" if v is None else f"{v:.0f}")
            else:
                cells.append(_fmt(v, c))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Legacy table: mean ± spread over seeds per recipe and prompt, with the stage timings
# --------------------------------------------------------------------------------------------------------------


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
    stage_names = list(dict.fromkeys(s for r in rows for s in (r.get("stages") or {})))
    cols = ["recipe", "prompt", "seeds", "fit+export+eval s"] + [f"{s} s" for s in stage_names] + \
        [f"{s} it/s" for s in stage_names] + ["peak RSS MB", "export s", *FIGURES, "top caption (seed 0)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for (recipe, prompt), rs in groups.items():
        cells = [recipe, prompt, str(len(rs)), mean_spread([r.get("total_s") for r in rs])]
        cells += [mean_spread([_stage_s((r.get("stages") or {}).get(s, {})) for r in rs]) for s in stage_names]
        cells += [mean_spread([(r.get("stages") or {}).get(s, {}).get("it_per_s") for r in rs]) for s in stage_names]
        cells += [mean_spread([r.get("peak_rss_mb") for r in rs]), mean_spread([r.get("export_s") for r in rs])]
        cells += [mean_spread([r.get(k) for r in rs]) for k in FIGURES]
        cells.append(str(rs[0].get("top_caption")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------


class RunFailed(RuntimeError):
    pass


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise RunFailed(f"{' '.join(cmd[2:5])} ... failed: {lines[-1] if lines else done.returncode}")
    return done


def job_env(threads: int) -> dict:
    """The environment of a fit or eval subprocess: ``threads`` OpenMP / MKL threads."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _settings(steps) -> dict:
    return {"steps": steps, "export": EXPORT, **({"set": OVERRIDES} if OVERRIDES else {}),
            **({"refit": REFIT["stage"], "from": str(REFIT["source"])} if REFIT else {})}


def copy_without(source: Path, dest: Path, stage: str) -> None:
    """Copy the run folder ``source`` to ``dest`` as if it had been interrupted just before ``stage``: without the
    checkpoints and stage folders of ``stage`` and the stages after it, the export, eval.json and the benchmark's
    own file; summary.json keeps the records of the earlier stages only. Raises RunFailed when ``source`` is not
    a finished run of a recipe with that stage."""
    from dream3d.io import write_json
    from dream3d.rundir import RunFolder

    src = RunFolder(source)
    summary = _read_json(src.summary_path)
    if summary is None or not src.config_path.is_file():
        raise RunFailed(f"--from: {source} is not a run folder with summary.json and config.yaml")
    names = list(summary.get("stages", {}))
    if stage not in names:
        raise RunFailed(f"--refit: run {source} has no stage '{stage}' (its stages: {', '.join(names) or 'none'})")
    later = names[names.index(stage):]
    if dest.exists():
        shutil.rmtree(dest)
    dst = RunFolder(dest)
    skip = {src.export_dir.resolve(), src.eval_path.resolve(), src.eval_silhouettes_path.resolve(),
            (source / RUN_FILE).resolve()}
    skip |= {src.ckpt(n).parent.resolve() for n in later} | {src.stage_dir(n).resolve() for n in later}

    def ignore(folder: str, entries: list[str]) -> set[str]:
        return {e for e in entries if (Path(folder) / e).resolve() in skip}

    shutil.copytree(source, dest, ignore=ignore)
    summary["stages"] = {n: r for n, r in summary["stages"].items() if n not in later}
    summary["status"] = "interrupted"
    for key in ("export", "wall_s", "error"):
        summary.pop(key, None)
    write_json(dst.summary_path, summary)


def run_one(recipe: str, prompt: str, seed: int, steps, out: Path, threads: int = 1, fresh: bool = True) -> dict:
    """Fit + eval in subprocesses (or reuse a finished run, unless ``fresh``); returns the run's row. Failures
    become a row with ``error`` set."""
    from dream3d.rundir import RunFolder, slugify

    name = f"{slugify(prompt)}-s{seed}"
    run_dir = out / "runs" / recipe / name
    row = {"recipe": recipe, "prompt": prompt, "seed": seed, **describe(prompt), "run": _rel(run_dir)}
    env = job_env(threads)
    stored = run_dir / RUN_FILE
    previous = json.loads(stored.read_text()) if stored.is_file() and not fresh else None
    if previous and previous.get("settings") != _settings(steps):
        previous = None
    by_ray = bool(previous and previous.get("engine") == "ray")  # fitted just now by fit_on_ray, not resumed
    start = time.perf_counter()
    try:
        if previous is None:  # a fresh fit: the figures describe this commit
            if REFIT:  # the earlier stages from the other benchmark's run, the refitted ones from here
                copy_without(Path(REFIT["source"]) / "runs" / recipe / name, run_dir, REFIT["stage"])
                which = [f"resume={run_dir}"]
            else:
                if run_dir.exists():
                    shutil.rmtree(run_dir)
                which = [f"prompt={prompt}", f"recipe={recipe}", f"seed={seed}", f"output_dir={out / 'runs'}",
                         f"name={name}"]
            fit = [sys.executable, "-m", "dream3d.cli", "fit", *which, f"threads={threads}", "--quiet", *EXPORT,
                   *OVERRIDES]
            if steps and not REFIT:  # main() refuses --steps with --refit; a refit keeps the stored budget
                fit.append(f"steps={steps}")
            done = _run(fit, env)
            for line in done.stderr.splitlines():  # where fit says it put the run (robust to layout changes)
                if line.startswith("dream3d: run folder "):
                    run_dir = Path(line[len("dream3d: run folder "):].strip())
                    row["run"] = _rel(run_dir)
        fit_s = time.perf_counter() - start
        evaluation = _read_json(RunFolder(run_dir).eval_path)
        if previous is None or evaluation is None or any(k not in evaluation for k in EVAL_KEYS):
            t = time.perf_counter()
            _run([sys.executable, "-m", "dream3d.cli", "eval", str(run_dir)], env)
            eval_s = time.perf_counter() - t
            evaluation = json.loads(RunFolder(run_dir).eval_path.read_text())
        else:
            eval_s = previous.get("eval_s")
        summary = json.loads(RunFolder(run_dir).summary_path.read_text())
    except (RunFailed, OSError, ValueError) as exc:
        row.update(dict.fromkeys(EVAL_KEYS), error=str(exc), total_s=round(time.perf_counter() - start, 1))
        row["pass"], row["failed"] = pass_check(row)
        return row
    if previous is not None:
        fit_s, total_s = previous.get("fit_s"), previous.get("total_s")
        if eval_s is not None and previous.get("eval_s") != eval_s and fit_s is not None:
            total_s = fit_s + eval_s
    else:
        total_s = fit_s + eval_s
    row.update({
        "total_s": None if total_s is None else round(total_s, 1), "fit_s": None if fit_s is None else round(fit_s, 1),
        "eval_s": None if eval_s is None else round(eval_s, 1), "resumed": previous is not None and not by_ray,
        "peak_rss_mb": summary.get("peak_rss_mb"),
        "export_s": summary.get("export", {}).get("mesh_seconds"), "faces": summary.get("export", {}).get("faces"),
        "stages": {k: {"wall_s": v.get("wall_s"), "it_per_s": v.get("it_per_s"), "steps": v.get("completed_steps"),
                       "init_s": v.get("init_s")} for k, v in summary.get("stages", {}).items()},
        "watertight": summary.get("export", {}).get("watertight"),
    })
    row.update({k: evaluation.get(k) for k in EVAL_KEYS})
    row["pass"], row["failed"] = pass_check(row)
    from dream3d.io import write_json

    write_json(run_dir / RUN_FILE, {"settings": _settings(steps), "fit_s": row["fit_s"], "eval_s": row["eval_s"],
                                    "total_s": row["total_s"]})
    return row


def fit_on_ray(tasks: list[tuple], steps, out: Path, jobs: int, threads: int, fresh: bool, address: str = "") -> int:
    """``--engine ray``: fit, export and evaluate every task through :mod:`dream3d.batch` (one Ray task per fit, the
    same run folders and fit settings as the subprocess engine), then record each finished one as reusable
    (RUN_FILE with the worker's fit and eval seconds), so that :func:`run_all` only reads them. Returns how many
    fits ran; a fit that failed is left without RUN_FILE (run_all then tries it as a subprocess and reports it)."""
    from dream3d.batch.engine import EngineSettings, require_ray, run_jobs
    from dream3d.batch.jobs import make_jobs, read_record
    from dream3d.config import parse_overrides
    from dream3d.io import write_json

    todo = []
    for recipe in dict.fromkeys(t[0] for t in tasks):
        prompts = list(dict.fromkeys(t[1] for t in tasks if t[0] == recipe))
        common = {"recipe": recipe, "threads": str(threads), **parse_overrides(EXPORT + OVERRIDES),
                  **({"steps": str(steps)} if steps else {})}
        seeds = sorted({t[2] for t in tasks if t[0] == recipe})  # --first-seed S: S .. S+N-1
        for job in make_jobs([(i + 1, p, {}) for i, p in enumerate(prompts)], common, seeds, out):
            stored = _read_json(job.run_dir / RUN_FILE)
            if stored and stored.get("settings") == _settings(steps) and not fresh:
                continue  # a finished run of these settings: run_all reuses it
            if job.run_dir.exists():
                shutil.rmtree(job.run_dir)  # refit from nothing, as the subprocess engine does
            todo.append(job)
    if not todo:
        return 0
    require_ray()

    def finished(job, row: dict) -> None:
        record = read_record(job.run_dir)
        if row["status"] == "done" and record.get("fit_s") is not None:
            write_json(job.run_dir / RUN_FILE, {"settings": _settings(steps), "fit_s": record["fit_s"],
                                                "eval_s": record.get("eval_s"), "engine": "ray",
                                                "total_s": round(record["fit_s"] + (record.get("eval_s") or 0), 1)})
        print(f"[ray] {job.recipe} / {job.prompt} / seed {job.seed}: {row['status']}"
              + (f" ({row.get('error')})" if row.get("error") else ""), flush=True)

    run_jobs(todo, EngineSettings(workers=jobs, threads=threads, address=address), finished,
             log=lambda line: print(line, flush=True), progress=False)
    return len(todo)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_all(tasks: list[tuple], steps, out: Path, jobs: int, threads: int, fresh: bool) -> list[dict]:
    """Every (recipe, prompt, seed) with ``jobs`` at once; rows in the order of ``tasks``."""
    rows: list[Optional[dict]] = [None] * len(tasks)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_one, *task, steps, out, threads, fresh): i for i, task in enumerate(tasks)}
        for n, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            try:
                r = future.result()
            except Exception as exc:  # a bug here must not lose the other runs
                recipe, prompt, seed = tasks[i]
                r = {"recipe": recipe, "prompt": prompt, "seed": seed, **describe(prompt), "run": "",
                     **dict.fromkeys(EVAL_KEYS), "error": f"{type(exc).__name__}: {exc}"}
                r["pass"], r["failed"] = pass_check(r)
            rows[i] = r
            elapsed = time.perf_counter() - start
            eta = elapsed / n * (len(tasks) - n)
            what = (f"ERROR {r['error']}" if r.get("error") else
                    f"{'pass' if r['pass'] else 'fail'}, R-precision {_fmt(r['r_precision'])}, IoU {_fmt(r['iou'])}, "
                    f"volume IoU {_fmt(r['volume_iou'])}, colour error {_fmt(r['colour_error'])}, "
                    f"top caption {r['top_caption']}")
            print(f"[{n}/{len(tasks)}, {elapsed / 60:.1f} min, ~{eta / 60:.0f} min left] {r['recipe']} / {r['prompt']} / "
                  f"seed {r['seed']}{' (resumed)' if r.get('resumed') else ''}: {r.get('total_s')} s, {what}", flush=True)
    return rows  # type: ignore[return-value]


def timing(out: Path, threads: int) -> tuple[dict, str]:
    """scripts/bench.py (grid on = accelerated, grid off = reference) -> figures and a Markdown table."""
    path = out / "timing.json"
    _run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--iters", "5", "--json", str(path)], job_env(threads))
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


# --------------------------------------------------------------------------------------------------------------
# Contact sheet
# --------------------------------------------------------------------------------------------------------------


def sheet_labels(row: dict) -> list[str]:
    """The text beside a run on the contact sheet: caption, verdict, key figures."""
    verdict = ("ERROR" if row.get("error") else "n/a" if row.get("pass") is None else
               "PASS" if row["pass"] else "FAIL")
    lines = [f"{row['prompt']} (seed {row['seed']})", f"{row['recipe']}: {verdict}",
             f"R-prec {_fmt(row.get('r_precision'))}  IoU {_fmt(row.get('iou'))}",
             f"vol IoU {_fmt(row.get('volume_iou'))}  chamfer {_fmt(row.get('chamfer'), 'chamfer')}",
             f"colour err {_fmt(row.get('colour_error'))}"]
    if row.get("has_front"):
        az = row.get("front_azimuth")
        lines.append(f"janus {_fmt(row.get('janus'))}  front {'n/a' if az is None else f'{az:.0f}'} deg")
    lines.append(f"top: {row.get('top_caption')}")
    if row.get("error"):
        lines.append(row["error"][:40])
    return lines


def write_sheet(sections: list[tuple[str, list[tuple[list[str], list]]]], path: Path, title: str = "",
                label_width: int = 250) -> Path:
    """A PNG contact sheet: ``sections`` of (heading, [(label lines, [frame uint8 [H,W,3] or None, ...])]).

    One row per entry: the label text, then its frames side by side (None: a grey "no mesh" tile). All frames
    share the first frame's size. Written atomically. Returns the path."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from dream3d.io import atomic_path

    frames = [f for _, entries in sections for _, fs in entries for f in fs if f is not None]
    h, w = (frames[0].shape[:2] if frames else (SHEET_SIZE, SHEET_SIZE))
    ncols = max([len(fs) for _, entries in sections for _, fs in entries] or [1])
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    line_h, head_h = 16, 24
    height = (head_h if title else 0) + sum(head_h + len(entries) * (h + 4) for _, entries in sections) + 4
    width = label_width + ncols * (w + 4)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = 0
    if title:
        draw.text((6, 4), title, fill=(0, 0, 0), font=font)
        y += head_h
    for heading, entries in sections:
        draw.rectangle([0, y, width, y + head_h - 2], fill=(225, 225, 235))
        draw.text((6, y + 4), heading, fill=(0, 0, 0), font=font)
        y += head_h
        for labels, fs in entries:
            for i, text in enumerate(labels[: max(1, h // line_h)]):
                colour = ((0, 120, 0) if "PASS" in text else (180, 0, 0) if ("FAIL" in text or "ERROR" in text)
                          else (0, 0, 0)) if i == 1 else (0, 0, 0)
                draw.text((6, y + 2 + i * line_h), text, fill=colour, font=font)
            for j, frame in enumerate(fs):
                x = label_width + j * (w + 4)
                if frame is None:
                    draw.rectangle([x, y, x + w - 1, y + h - 1], fill=(200, 200, 200))
                    draw.text((x + 6, y + h // 2 - 6), "no mesh", fill=(0, 0, 0), font=font)
                else:
                    sheet.paste(Image.fromarray(np.ascontiguousarray(frame[..., :3]).astype(np.uint8)), (x, y))
            y += h + 4
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def _render(mesh, size: int, views: int):
    """``views`` turntable frames (azimuth 0 = the front, then evenly round, elevation 15) of a mesh normalised
    like the evaluation, at one fixed distance so every mesh on the sheet is framed alike; uint8 [views,size,size,3],
    supersampled (``SHEET_SUPERSAMPLE``)."""
    import numpy as np

    from dream3d.eval import normalise
    from dream3d.export.video import fit_distance, turntable_frames
    from dream3d.shapeworld.catalogue import OBJECT_EXTENT

    distance = fit_distance(0.87 * OBJECT_EXTENT, fill=1.0)  # the normalised box's bounding sphere fills the frame
    k = SHEET_SUPERSAMPLE  # a fitted mesh's sub-pixel triangles alias at 128 px into a fringe of hairs along every
    # silhouette that the mesh does not have (seen at 512 px); the mean of k x k pixels is the frame a lens would take
    big = turntable_frames(normalise(mesh), views=views, elevation=15.0, size=size * k, distance=distance)
    small = big.reshape(views, size, k, size, k, 3).astype(np.float32).mean(axis=(2, 4))
    return np.rint(small).astype(np.uint8)


def sheet_entry(row: dict, size: int = SHEET_SIZE) -> tuple[list[str], list]:
    """(labels, frames) of one run: the true object from the front, then SHEET_VIEWS turntable frames of the
    exported mesh, turned like the evaluation turned it (``yaw``), so its views line up with the true object's
    (None where there is no mesh)."""
    from dream3d.eval import turn
    from dream3d.export.mesh import load_mesh
    from dream3d.representations.mesh import TexturedMesh
    from dream3d.rundir import RunFolder
    from dream3d.shapeworld.catalogue import get

    frames: list = []
    if row.get("object"):
        obj = get(row["object"])
        frames.append(_render(TexturedMesh(obj.verts, obj.faces, vertex_colors=obj.colors), size, 1)[0])
    else:
        frames.append(None)
    glb = RunFolder(ROOT / row["run"]).mesh_path  # an absolute run path stays absolute
    try:
        mesh = load_mesh(glb)
        frames += list(_render(turn(mesh, row.get("yaw") or 0.0), size, SHEET_VIEWS))  # _render normalises
    except (OSError, ValueError):
        frames += [None] * SHEET_VIEWS
    return sheet_labels(row), frames


def contact_sheet(rows: list[dict], path: Path, name: str) -> Path:
    best, worst = best_and_worst(rows)
    sections = [(f"best {len(best)} (best first)", [sheet_entry(r) for r in best])]
    if worst:
        sections.append((f"worst {len(worst)} (worst last)", [sheet_entry(r) for r in worst]))
    title = (f"{name}: ranked by pass, then volume IoU. Columns: true object (front), then "
             f"model.glb at azimuth {', '.join(f'{k * 360 / SHEET_VIEWS:g}' for k in range(SHEET_VIEWS))}, elevation 15")
    return write_sheet(sections, path, title)


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------


def report(rows: list[dict], header: str, timing_table: Optional[str] = None,
           sheet: Optional[str] = None) -> tuple[str, dict]:
    """(Markdown, aggregates) of the rows."""
    overall, by_kind, by_colour = group_by(rows, None), group_by(rows, "kind"), group_by(rows, "colour")
    crit = ", ".join(f"{k} {op} {t}" for k, op, t in PASS) + "; with a front also Janus 0 and front within 45 deg"
    parts = [header, "", f"Pass: {crit}. Volume IoU and chamfer (3D, against the true mesh) are reported, "
             "not part of the pass.", "", "## Overall", "", aggregate_table(overall, "prompts"), "",
             "## By kind", "", aggregate_table(by_kind, "kind"), "", "## By colour", "",
             aggregate_table(by_colour, "colour"), "", "## Per run", "", rows_table(rows), "",
             "## Time per recipe and prompt (mean ± half the range over seeds)", "", table(rows)]
    if timing_table:
        parts += ["", timing_table]
    if sheet:
        parts += ["", f"Contact sheet (best and worst {SHEET_ROWS}): `{sheet}`"]
    aggregates = {"overall": {r: a for (r, _), a in overall.items()},
                  "by_kind": {f"{r} / {k}": a for (r, k), a in by_kind.items()},
                  "by_colour": {f"{r} / {c}": a for (r, c), a in by_colour.items()}}
    return "\n".join(parts), aggregates


def make_tasks(recipes: list[str], prompts: list[str], seeds: int, first_seed: int = 0) -> list[tuple[str, str, int]]:
    """Every (recipe, prompt, seed), seeds ``first_seed`` .. ``first_seed + seeds - 1``, in the order they run."""
    return [(recipe, prompt, seed) for recipe in recipes for prompt in prompts
            for seed in range(first_seed, first_seed + seeds)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dream3d.config import RunConfig
    from dream3d.io import write_json, write_text

    default_recipe = RunConfig().recipe
    fresh = args.fresh
    OVERRIDES[:] = args.overrides
    for kv in OVERRIDES:
        key = kv.split("=", 1)[0].strip()
        if key in PER_RUN_KEYS:
            raise SystemExit(f"benchmark: --set {key}=...: the benchmark sets {key} for each run itself; "
                             + PER_RUN_KEYS[key])
    if args.first_seed < 0:
        raise SystemExit(f"benchmark: --first-seed {args.first_seed}: expected a seed >= 0")
    REFIT.clear()
    if bool(args.refit) != bool(args.source):
        raise SystemExit("benchmark: --refit STAGE and --from FOLDER go together")
    if args.refit:
        if not (Path(args.source) / "runs").is_dir():
            raise SystemExit(f"benchmark: --from {args.source}: expected a benchmark folder with runs/ in it")
        if args.steps:
            raise SystemExit("benchmark: --steps cannot change a refit (the earlier stages are already fitted)")
        REFIT.update(stage=args.refit, source=Path(args.source).resolve())
    if args.quick:
        recipes, prompts, seeds, steps, want_timing = (QUICK["recipes"], QUICK["prompts"], QUICK["seeds"],
                                                       QUICK["steps"], True)
        fresh = True  # the preset measures this commit every time
        label = "quick"
    else:
        recipes = [r.strip() for r in (args.recipes or default_recipe).split(",") if r.strip()]
        if args.catalogue:
            prompts, label = catalogue_prompts(), "catalogue"
        elif args.subset:
            prompts, label = subset_prompts(), "subset"
        elif args.prompts:
            prompts, label = [p.strip() for p in Path(args.prompts).read_text().splitlines() if p.strip()], None
        else:
            prompts, label = ["a red cube"], None
        seeds = args.seeds if args.seeds is not None else (1 if label else 2)
        steps, want_timing = args.steps, args.timing
    jobs = args.jobs or os.cpu_count() or 1
    if seeds < 1 or not prompts or not recipes or jobs < 1 or args.threads < 1:
        raise SystemExit("benchmark: expected at least one recipe, one prompt, --seeds >= 1, --jobs >= 1, --threads >= 1")
    if args.out:
        out = Path(args.out)
    elif args.name or (label and label != "quick"):
        name = args.name or f"{label}-{'-'.join(recipes)}" + (f"-{steps}steps" if steps else "")
        out = ROOT / "outputs" / "benchmark" / name
    else:
        out = ROOT / "outputs" / "benchmark"
    out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)  # this process renders the contact sheet
    start = time.perf_counter()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()  # at the start: what the runs were fitted with
    tasks = make_tasks(recipes, prompts, seeds, args.first_seed)
    print(f"benchmark: {len(tasks)} runs ({len(recipes)} recipes x {len(prompts)} prompts x {seeds} seeds), "
          f"{jobs} at once, {args.threads} thread(s) each -> {out}", flush=True)
    if args.engine == "ray":
        if REFIT:
            raise SystemExit("benchmark: --refit runs with --engine processes only")
        fit_on_ray(tasks, steps, out, jobs, args.threads, fresh, args.address)
        fresh = False  # run_all reads what the Ray engine fitted
    rows = run_all(tasks, steps, out, jobs, args.threads, fresh)
    wall = time.perf_counter() - start
    resumed = sum(bool(r.get("resumed")) for r in rows)
    header = (f"Machine: {platform.machine()}, {os.cpu_count()} cores; {jobs} jobs x {args.threads} torch thread(s); "
              f"torch {torch.__version__}; commit {commit or 'unknown'}{' (with local changes)' if dirty else ''}; "
              f"`scripts/benchmark.py {'--quick' if args.quick else ' '.join(sys.argv[1:] if argv is None else argv)}`; "
              f"steps {steps or 'recipe default'}; "
              + (f"stage {REFIT['stage']} and later refitted on copies of {_rel(REFIT['source'])} (walls: those "
                 f"stages, export, eval); " if REFIT else "")
              + f"{len(rows)} runs ({resumed} resumed) in {wall / 60:.1f} min "
              f"(sum of run wall times {sum(r.get('total_s') or 0 for r in rows) / 60:.1f} min).")
    timing_data = timing_table = None
    if want_timing:
        timing_data, timing_table = timing(out, args.threads)
    sheet = None
    if args.sheet and rows:
        sheet_path = contact_sheet(rows, out / "sheet.png", out.name)
        sheet = _rel(sheet_path)
    markdown, aggregates = report(rows, header, timing_table, sheet)
    write_text(out / "benchmark.md", markdown + "\n")
    write_json(out / "benchmark.json", {"header": header, "criteria": {"pass": PASS, "front": FRONT_PASS},
                                        "aggregates": aggregates, "runs": rows, "sheet": sheet, "timing": timing_data})
    print(markdown)
    print(f"wrote {out / 'benchmark.md'}, {out / 'benchmark.json'}{' and ' + sheet if sheet else ''} "
          f"({(time.perf_counter() - start) / 60:.1f} min)")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
