"""Running a recipe: the run folder, the stage loop, resume, and summary.json.

Run folder (stable names)::

    outputs/<recipe>/<prompt-slug>-<YYYYmmdd-HHMMSS>/
        config.yaml                 fully resolved config (``dream3d fit resume=<folder>`` reads it)
        ckpts/<stage>/last.ckpt     Lightning checkpoint (trainable state + optimiser + step), atomic
        stages/<stage>/val/*.png    validation grids
        stages/<stage>/metrics.csv  per-step losses
        export/model.glb            the baked, textured mesh (+ model.obj/.mtl/.png, model.ply on request)
        export/turntable.mp4        turntable of the exported mesh (``dream3d render`` makes more)
        summary.json                timings, losses, settings, status per stage, export figures
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

from dream3d.config import RunConfig, to_yaml
from dream3d.io import write_json, write_text
from dream3d.registry import SYSTEMS, resolve


class RunInterrupted(Exception):
    """Ctrl-C during a stage: the checkpoint was saved; the message says how to resume."""


def slugify(text: str, max_len: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].strip("-") or "run"


def new_run_dir(cfg: RunConfig) -> Path:
    name = cfg.name or f"{slugify(cfg.prompt)}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.output_dir) / cfg.recipe / name
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"name: run folder {path} already exists; pass another name= or resume={path}")
    return path


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def read_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def fit(cfg: RunConfig, run_dir: Path, show_progress: bool = True, resume: bool = False, prior=None) -> dict:
    """Run (or continue) every stage of ``cfg`` in ``run_dir``. Returns the summary dict.

    ``prior``: an already loaded :class:`dream3d.prior.Prior` of ``cfg.prior`` (``dream3d compare`` loads it once
    for both of its runs); loaded here when None. It is only read, never changed."""
    import pytorch_lightning as pl

    from dream3d.prior import load_prior
    from dream3d.systems.base import StageCallback, StepDataset, peak_rss_mb, set_threads

    set_threads()
    device = pick_device(cfg.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", to_yaml(cfg))  # on resume: the stored config with any new overrides
    summary = read_summary(run_dir) if resume else {}
    summary.update(
        prompt=cfg.prompt, recipe=cfg.recipe, seed=cfg.seed, prior=cfg.prior, device=str(device),
        torch=torch.__version__, python=platform.python_version(), status="running",
    )
    summary.setdefault("stages", {})
    write_json(run_dir / "summary.json", summary)

    t0 = time.perf_counter()
    try:
        prior = load_prior(cfg.prior, device, cfg.prior_dtype) if prior is None else prior
    except Exception as exc:
        summary.update(status="failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        write_json(run_dir / "summary.json", summary)
        raise
    summary["prior_load_s"] = round(time.perf_counter() - t0, 2)

    for name, stage in cfg.stages.items():
        record = summary["stages"].get(name, {})
        if record.get("status") == "done":
            continue
        ckpt = run_dir / "ckpts" / name / "last.ckpt"
        pl.seed_everything(cfg.seed, verbose=False)
        system = resolve(SYSTEMS, stage.system, "system")(cfg, name, stage, prior, run_dir)
        if stage.init is not None and not ckpt.is_file():  # a resumed stage restores its own checkpoint instead
            t_init = time.perf_counter()
            init_ckpt = run_dir / "ckpts" / stage.init / "last.ckpt"
            state = torch.load(init_ckpt, map_location="cpu", weights_only=False)["state_dict"]
            system.initialise(state, cfg.stages[stage.init])
            record["init_s"] = round(time.perf_counter() - t_init, 2)  # e.g. NeRF -> DMTet conversion
        callback = StageCallback(ckpt, stage.steps, show_progress)
        trainer = pl.Trainer(
            max_steps=stage.steps, max_epochs=-1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[callback], num_sanity_val_steps=0, limit_val_batches=0, deterministic=False,
        )
        loader = torch.utils.data.DataLoader(StepDataset(stage.steps), batch_size=None, shuffle=False)
        record.update(status="running", steps=stage.steps)
        summary["stages"][name] = record
        write_json(run_dir / "summary.json", summary)
        t_stage = time.perf_counter()
        # Steps draw their randomness from (seed, step), so restarting the step dataset mid-epoch is exact.
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
        try:
            trainer.fit(system, loader, ckpt_path=str(ckpt) if ckpt.is_file() else None)
        except SystemExit:
            if not callback.interrupted:
                raise
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT after Ctrl-C
        elapsed = time.perf_counter() - t_stage
        record.update(
            wall_s=round(record.get("wall_s", 0.0) + elapsed, 2),
            it_per_s=round(callback.iterations_per_second(trainer), 3),
            completed_steps=trainer.global_step,
            final=system.last_metrics,
            checkpoint=str(ckpt.relative_to(run_dir)),
        )
        if callback.interrupted:
            record["status"] = "interrupted"
            summary["status"] = "interrupted"
            summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
            write_json(run_dir / "summary.json", summary)
            raise RunInterrupted(
                f"interrupted at step {trainer.global_step}/{stage.steps} of stage '{name}'; checkpoint saved;"
                f" continue with: dream3d fit resume={run_dir}"
            )
        record["status"] = "done"
        write_json(run_dir / "summary.json", summary)
    summary["status"] = "done"
    summary["wall_s"] = round(sum(s.get("wall_s", 0.0) for s in summary["stages"].values()), 2)
    summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
    write_json(run_dir / "summary.json", summary)
    if cfg.export:
        export_outputs(cfg, run_dir, log=print if show_progress else (lambda _: None))
    return read_summary(run_dir)


def export_outputs(cfg: RunConfig, run_dir: Path, log=print) -> None:
    """The end of fit: ``export/model.glb`` (+ ``export_formats``) and the turntable MP4. A failure here (say,
    nothing above the density threshold) is recorded in summary.json and printed; the trained run stays."""
    from dream3d.export.run import ExportError, export_run, record_export, render_run

    try:
        export_run(run_dir, cfg.export_formats, resolution=cfg.mesh_resolution, texture_size=cfg.texture_size, log=log)
        if cfg.video_views > 0:
            render_run(run_dir, views=cfg.video_views, size=cfg.video_size, formats=("mp4",), log=log)
    except ExportError as exc:
        record_export(run_dir, error=str(exc))
        print(f"dream3d: export failed: {exc}; retry with: dream3d export {run_dir} threshold=<lower>", file=sys.stderr)

