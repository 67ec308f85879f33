"""``dream3d compare``: two recipes on one prompt, from the same seed and step budget, in one report.

    dream3d compare prompt="a red cube" [recipes=dreamfusion,prolificdreamer] [seed=0] [budget=600] [particles=2]
                    [out=outputs/compare/<slug>-<time>]
    dream3d compare <run folder A> <run folder B> [out=...]

With a prompt it fits the *first stage* of each of the two ``recipes`` (names from configs/; by default
``dreamfusion``, SDS at its guidance scale 100, against ``prolificdreamer``, VSD at 7.5) with ``budget`` steps
each (:func:`fit_pair`): same seed, same step budget, same particle count. Later stages are left out for every
pair, so the two runs differ in their first stage's method only (guidance, guidance scale, representation,
render size) and not in how many stages or steps they had: for dreamfusion, prolificdreamer, magic3d and mvdream
that is a NeRF, for fantasia3d its DMTet geometry stage (normal maps, no texture). Each recipe takes its own
prior (mvdream's camera prior) unless ``prior=`` names one for both; a prior is loaded once for the runs that
share it. Then :func:`dream3d.compare.report.write_report` exports and evaluates both where needed and puts them
side by side in ``<out>/report.html`` and ``<out>/summary.json``.

The runs go into ``<out>/<recipe>`` and the report's columns are labelled ``"<recipe>: <guidance>, CFG <scale>"``;
the SDS-vs-VSD pair (dreamfusion and prolificdreamer, in either order) keeps the folders ``<out>/sds`` and
``<out>/vsd`` and the labels ``"sds, CFG 100"`` / ``"vsd, CFG 7.5"`` it has always had (:func:`folder_names`).
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

DEFAULT_RECIPES = ("dreamfusion", "prolificdreamer")
SHORT_NAMES = {"dreamfusion": "sds", "prolificdreamer": "vsd"}  # the SDS-vs-VSD pair's folders, by recipe
DEFAULTS = {"prompt": "", "recipes": ",".join(DEFAULT_RECIPES), "seed": 0, "budget": 600, "particles": 2, "out": "",
            "prior": "", "views": 16, "video_views": 60, "video_size": 256, "texture_size": 512, "mesh_resolution": 128}


def default_out(prompt: str, output_dir: str = "outputs") -> Path:
    from dream3d.rundir import slugify

    return Path(output_dir) / "compare" / f"{slugify(prompt)}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def parse_recipes(text: str) -> tuple[str, str]:
    """``"dreamfusion,magic3d"`` -> the two recipe names, each from configs/ and different from the other;
    one-line CompareError otherwise."""
    from dream3d.config import list_recipes

    known = list_recipes()
    names = [name.strip() for name in str(text).split(",")]
    if len(names) != 2 or any(name not in known for name in names):
        raise CompareError(f"recipes: expected two recipe names from {', '.join(known)}, got '{text}'")
    if names[0] == names[1]:
        raise CompareError(f"recipes: expected two different recipe names, got '{text}'")
    return names[0], names[1]


def folder_names(pair: tuple[str, str]) -> dict[str, str]:
    """{recipe: its sub-folder of ``out``}: the recipe name; the SDS-vs-VSD pair (dreamfusion and prolificdreamer,
    either order) keeps the folders ``sds`` and ``vsd``, so its comparisons read as before and an interrupted one
    made before ``recipes=`` existed continues."""
    short = set(pair) == set(SHORT_NAMES)
    return {recipe: SHORT_NAMES[recipe] if short else recipe for recipe in pair}


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
    """Fit (or finish) one run per recipe of ``values["recipes"]`` (see :data:`DEFAULTS`) into
    ``out/<folder_names>`` -> {recipe: run folder}, in the order given.

    Each run is its recipe's first stage alone with ``budget`` steps (the later stages left out, whatever the
    recipe), from the same seed and particle count. A folder that holds a run config already is continued from
    it; one that holds another recipe's run is an error. Both configs are checked before any work."""
    from dream3d.prior import load_prior
    from dream3d.run import fit, pick_device

    pair = parse_recipes(values["recipes"])
    common = {"prompt": values["prompt"], "seed": str(values["seed"]), "particles": str(values["particles"]), "video_views": str(values["video_views"]),
              "video_size": str(values["video_size"]), "texture_size": str(values["texture_size"]),
              "mesh_resolution": str(values["mesh_resolution"])}
    if values["prior"]:
        common["prior"] = values["prior"]
    configs = {}
    for recipe, folder in folder_names(pair).items():  # validate both before any work
        run_dir = out / folder
        stored = RunFolder(run_dir).config_path
        if stored.is_file():
            cfg = load_config({}, base=load_stored(stored))
            if cfg.recipe != recipe:
                raise CompareError(f"{run_dir}: holds a {cfg.recipe} run, expected {recipe} (recipes="
                                   f"{','.join(pair)}); give another out= for this pair")
            configs[recipe] = (run_dir, cfg, True)
        else:
            cfg = load_config({**common, "recipe": recipe})
            first = next(iter(cfg.stages))
            cfg.stages = {first: cfg.stages[first]}  # one stage per recipe: the same budget, no later stages
            cfg.stages[first].steps = cfg.steps = values["budget"]
            configs[recipe] = (run_dir, cfg, False)
    prior, prior_key = None, None
    runs = {}
    for recipe, (run_dir, cfg, resume) in configs.items():
        runs[recipe] = run_dir
        if _done(run_dir):
            log(f"compare: {recipe} run {run_dir} is already done")
            continue
        key = (cfg.prior, pick_device(cfg.device), cfg.prior_dtype, cfg.text_prior)
        if key != prior_key:  # one prior in memory at a time; the pair shares it unless their recipes differ
            prior = None
            prior, prior_key = load_prior(*key), key
        stage_name, stage = next(iter(cfg.stages.items()))
        log(f"compare: fitting {recipe} (stage {stage_name}, {stage.guidance.name} at guidance scale "
            f"{stage.guidance.guidance_scale:g}, {cfg.particles} particle(s), "
            f"{sum(s.steps for s in cfg.stages.values())} steps) into {run_dir}")
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
        if values["recipes"] != DEFAULTS["recipes"]:
            raise CompareError("recipes: give either recipes= with a prompt (to fit two runs) or two run folders, "
                               "not both")
        prompt = RunFolder(folders[0]).read_config().prompt
        out = Path(values["out"]) if values["out"] else default_out(prompt)
        labelled = {}
        for folder in folders:
            label = run_label(folder)
            labelled[label if label not in labelled else f"{label} ({folder.name})"] = folder
        title = f"\u201c{prompt}\u201d: " + " vs ".join(labelled)
    else:
        if not str(values["prompt"]).strip():
            raise CompareError('prompt: expected a non-empty text (dream3d compare prompt="a red cube"), '
                               "or two run folders")
        if values["budget"] < 1 or values["particles"] < 1:
            raise CompareError(f"budget / particles: expected positive integers, got {values['budget']} / "
                               f"{values['particles']}")
        pair = parse_recipes(values["recipes"])
        prompt = values["prompt"]
        out = Path(values["out"]) if values["out"] else default_out(prompt)
        fitted = fit_pair(values, out, log, show_progress)
        short = set(pair) == set(SHORT_NAMES)  # SDS vs VSD: the guidance names the runs, as it always has
        labelled = {run_label(folder) if short else f"{recipe}: {run_label(folder)}": folder
                    for recipe, folder in fitted.items()}
        names = [SHORT_NAMES[recipe].upper() if short else recipe for recipe in pair]
        title = f"{' vs '.join(names)}: \u201c{prompt}\u201d"
    return write_report(out, labelled, title, log=log, views=values["views"], started=start)


def typed(kv: dict[str, str]) -> dict:
    from dream3d.config import typed_values

    try:
        return typed_values(kv, DEFAULTS, "compare")
    except ConfigError as exc:
        raise CompareError(str(exc)) from None
