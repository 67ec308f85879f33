"""``dream3d compare``: SDS against VSD on one prompt, from the same seed and step budget, in one report.

    dream3d compare prompt="a red cube" [seed=0] [budget=600] [particles=2] [out=outputs/compare/<slug>-<time>]
    dream3d compare <run folder A> <run folder B> [out=...]

With a prompt it fits the NeRF stage of the ``dreamfusion`` recipe (SDS at its usual guidance scale, 100)
and of the ``prolificdreamer`` recipe (VSD at 7.5; its later mesh stages are left out, so the two runs
differ in the guidance only) into ``<out>/sds`` and ``<out>/vsd`` (:func:`fit_pair`): same seed, same step budget,
same particle count, one loaded prior for both. Then :func:`dream3d.compare.report.write_report` exports and
evaluates both where needed and puts them side by side in ``<out>/report.html`` and ``<out>/summary.json``.
Running the same command again with ``out=`` continues an interrupted comparison: finished runs are kept, an
interrupted one resumes from its checkpoint.

This is the only module of the package that fits; the report below it only reads run folders.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Callable, Optional

from dream3d.compare.errors import CompareError
from dream3d.config import ConfigError, load_config, load_stored
from dream3d.rundir import RunFolder

RECIPES = {"sds": "dreamfusion", "vsd": "prolificdreamer"}
DEFAULTS = {"prompt": "", "seed": 0, "budget": 600, "particles": 2, "out": "", "prior": "", "views": 16,
            "video_views": 60, "video_size": 256, "texture_size": 512, "mesh_resolution": 128}


def default_out(prompt: str, output_dir: str = "outputs") -> Path:
    from dream3d.rundir import slugify

    return Path(output_dir) / "compare" / f"{slugify(prompt)}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run_label(run_dir: Path) -> str:
    """``"vsd, CFG 7.5"`` from a run's stored config (the last stage's guidance)."""
    cfg = RunFolder(run_dir).read_config()
    stage = list(cfg.stages.values())[-1]
    particles = int(cfg.particles)
    return (f"{stage.guidance.name}, CFG {stage.guidance.guidance_scale:g}"
            + (f", {particles} particles" if particles > 1 else ""))


def _done(run_dir: Path) -> bool:
    folder = RunFolder(run_dir)
    return folder.read_summary().get("status") == "done" and folder.mesh_path.is_file()


def fit_pair(values: dict, out: Path, log: Callable[[str], None] = print, show_progress: bool = True) -> dict[str, Path]:
    """Fit (or finish) the SDS and VSD runs of ``values`` (see :data:`DEFAULTS`) into ``out/sds``, ``out/vsd``."""
    from dream3d.prior import load_prior
    from dream3d.run import fit, pick_device

    common = {"prompt": values["prompt"], "seed": str(values["seed"]), "particles": str(values["particles"]), "video_views": str(values["video_views"]),
              "video_size": str(values["video_size"]), "texture_size": str(values["texture_size"]),
              "mesh_resolution": str(values["mesh_resolution"])}
    if values["prior"]:
        common["prior"] = values["prior"]
    configs = {}
    for kind, recipe in RECIPES.items():  # validate both before any work
        run_dir = out / kind
        stored = RunFolder(run_dir).config_path
        if stored.is_file():
            configs[kind] = (run_dir, load_config({}, base=load_stored(stored)), True)
        else:
            cfg = load_config({**common, "recipe": recipe})
            first = next(iter(cfg.stages))
            cfg.stages = {first: cfg.stages[first]}  # the NeRF stage: the guidance is the only difference
            cfg.stages[first].steps = cfg.steps = values["budget"]
            configs[kind] = (run_dir, cfg, False)
    prior = None
    runs = {}
    for kind, (run_dir, cfg, resume) in configs.items():
        runs[kind] = run_dir
        if _done(run_dir):
            log(f"compare: {kind} run {run_dir} is already done")
            continue
        if prior is None:
            prior = load_prior(cfg.prior, pick_device(cfg.device), cfg.prior_dtype, cfg.text_prior)
        stage = list(cfg.stages.values())[-1]
        log(f"compare: fitting {kind} ({cfg.recipe}, guidance scale {stage.guidance.guidance_scale:g}, "
            f"{cfg.particles} particle(s), {sum(s.steps for s in cfg.stages.values())} steps) into {run_dir}")
        fit(cfg, run_dir, show_progress=show_progress, resume=resume, prior=prior)
    return runs


def compare(values: dict, runs: Optional[list[str]] = None, log: Callable[[str], None] = print,
            show_progress: bool = True) -> dict:
    """The whole comparison; returns the report's summary (written once, to ``<out>/summary.json``), with
    ``out`` and ``compare_wall_s`` (seconds for fits and report together)."""
    from dream3d.compare.report import write_report

    start = time.perf_counter()
    if runs:
        if len(runs) != 2:
            raise CompareError(f"expected two run folders to compare, got {len(runs)}")
        folders = [Path(r) for r in runs]
        for folder in folders:
            if not RunFolder(folder).config_path.is_file():
                raise CompareError(f"{folder}: not a dream3d run folder (no config.yaml)")
        if values["prompt"]:
            raise CompareError("prompt: give either a prompt (to fit two runs) or two run folders, not both")
        prompt = RunFolder(folders[0]).read_config().prompt
        out = Path(values["out"]) if values["out"] else default_out(prompt)
        labelled = {}
        for folder in folders:
            label = run_label(folder)
            labelled[label if label not in labelled else f"{label} ({folder.name})"] = folder
    else:
        if not str(values["prompt"]).strip():
            raise CompareError('prompt: expected a non-empty text (dream3d compare prompt="a red cube"), '
                               "or two run folders")
        if values["budget"] < 1 or values["particles"] < 1:
            raise CompareError(f"budget / particles: expected positive integers, got {values['budget']} / "
                               f"{values['particles']}")
        prompt = values["prompt"]
        out = Path(values["out"]) if values["out"] else default_out(prompt)
        pair = fit_pair(values, out, log, show_progress)
        labelled = {run_label(folder): folder for folder in pair.values()}
    title = f"SDS vs VSD: \u201c{prompt}\u201d" if not runs else f"\u201c{prompt}\u201d: " + " vs ".join(labelled)
    return write_report(out, labelled, title, log=log, views=values["views"], started=start)


def typed(kv: dict[str, str]) -> dict:
    from dream3d.config import typed_values

    try:
        return typed_values(kv, DEFAULTS, "compare")
    except ConfigError as exc:
        raise CompareError(str(exc)) from None
