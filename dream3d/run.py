"""Running a recipe: the stage loop, resume, and summary.json (the run folder itself: :mod:`dream3d.rundir`).

A run never ends with its summary at "running": Ctrl-C and SIGTERM save a checkpoint and mark it
"interrupted" (resumable), any other stop marks it "failed" with the reason. A non-finite loss or parameter
stops the stage at once (:class:`NonFiniteError`) with the last good checkpoint kept, and the next stage never
starts from it.
"""

from __future__ import annotations

import platform
import signal
import time
import warnings
from pathlib import Path

import torch

from dream3d.config import RunConfig, to_yaml
from dream3d.errors import Dream3DError, Terminated, fault_point, signal_exit_code
from dream3d.io import write_text
from dream3d.registry import SYSTEMS, resolve
from dream3d.rundir import RunFolder, RunFolderError


class RunInterrupted(Dream3DError):
    """Ctrl-C or SIGTERM during a stage: the checkpoint was saved; the message says how to resume."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class RunFailed(Dream3DError):
    """The run stopped on a failure (a non-finite loss, a failed export): summary.json says "failed"."""

    exit_code = 1


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def peak_gpu_mb(device: torch.device):
    """The peak of GPU memory allocated by this process's tensors on ``device`` (torch.cuda.max_memory_allocated),
    in MiB; None on the CPU."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def slice_attention(prior) -> None:
    """``attention_slicing=true``: the UNet's attention in slices (diffusers ``set_attention_slice("auto")``) and the
    VAE one sample at a time (``enable_slicing``), where the models offer them. Less peak memory, same results."""
    for unet in (prior.unet, prior.text_unet):
        if unet is not None and hasattr(unet, "set_attention_slice"):
            unet.set_attention_slice("auto")
    if prior.vae is not None and hasattr(prior.vae, "enable_slicing"):
        prior.vae.enable_slicing()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def fit(cfg: RunConfig, run_dir: Path, show_progress: bool = True, resume: bool = False, prior=None) -> dict:
    """Run (or continue) every stage of ``cfg`` in ``run_dir``. Returns the summary dict.

    ``prior``: an already loaded :class:`dream3d.prior.Prior` of ``cfg.prior`` (``dream3d compare`` loads it once
    for both of its runs); loaded here when None, before the run folder is touched, so a prior that fails to
    load leaves nothing behind. It is only read, never changed."""
    from dream3d.prior import load_prior
    from dream3d.systems.base import peak_rss_mb, set_threads

    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    if device.type == "cuda":  # summary.json's peak_gpu_mb: this process's peak from here on, the prior included
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    if prior is None:
        fault_point("prior")
        prior = load_prior(cfg.prior, device, cfg.prior_dtype, cfg.text_prior)
        if cfg.attention_slicing:  # only a prior loaded here: one handed in is only read
            slice_attention(prior)
    prior_s = round(time.perf_counter() - t0, 2)
    folder = RunFolder(run_dir)
    with folder.lock():
        folder.remove_stale_temps()
        write_text(folder.config_path, to_yaml(cfg))  # on resume: the stored config with any new overrides
        summary = folder.read_summary() if resume else {}
        summary.update(
            prompt=cfg.prompt, recipe=cfg.recipe, seed=cfg.seed, prior=cfg.prior, device=str(device),
            torch=torch.__version__, python=platform.python_version(), threads=torch.get_num_threads(),
            status="running", prior_load_s=prior_s,
        )
        summary.pop("error", None)
        summary.setdefault("stages", {})
        folder.write_summary(summary)
        try:
            _run_stages(cfg, folder, summary, prior, device, show_progress)
            summary["status"] = "exporting" if cfg.export else "done"
            summary["wall_s"] = round(sum(s.get("wall_s", 0.0) for s in summary["stages"].values()), 2)
            summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
            summary["peak_gpu_mb"] = peak_gpu_mb(device)
            folder.write_summary(summary)
            if cfg.export:
                export_outputs(cfg, folder.path, log=print if show_progress else (lambda _: None))
                summary = folder.read_summary()
                summary["status"] = "done"
                folder.write_summary(summary)
        except BaseException as exc:
            summary = {**folder.read_summary(), **{k: v for k, v in summary.items() if k not in ("export",)}}
            for record in summary["stages"].values():
                if record.get("status") == "running":
                    record["status"] = "interrupted" if isinstance(exc, (KeyboardInterrupt, RunInterrupted)) \
                        else "failed"
            if isinstance(exc, (KeyboardInterrupt, RunInterrupted)):
                summary["status"] = "interrupted"
                term = isinstance(exc, Terminated) or getattr(exc, "exit_code", 0) == 143
                summary["error"] = "SIGTERM" if term else "SIGINT"
            else:
                summary["status"] = "failed"
                summary["error"] = _first_line(exc)
            summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
            summary["peak_gpu_mb"] = peak_gpu_mb(device)
            folder.write_summary(summary)
            raise
    return folder.read_summary()


def _run_stages(cfg: RunConfig, folder: RunFolder, summary: dict, prior, device: torch.device,
                show_progress: bool) -> None:
    import pytorch_lightning as pl

    from dream3d.logs import quiet_libraries
    from dream3d.systems.base import NonFiniteError, StageCallback, StepDataset

    quiet_libraries()  # again: importing Lightning set its logger back to INFO

    for name, stage in cfg.stages.items():
        record = summary["stages"].get(name, {})
        if record.get("status") == "done":
            continue
        ckpt = folder.ckpt(name)
        pl.seed_everything(cfg.seed, verbose=False)
        system = resolve(SYSTEMS, stage.system, "system")(cfg, name, stage, prior, folder.path)
        if stage.init is not None and not ckpt.is_file():  # a resumed stage restores its own checkpoint instead
            fault_point("init")
            t_init = time.perf_counter()
            if summary["stages"].get(stage.init, {}).get("status") != "done":
                raise RunFailed(f"stage '{name}': its init stage '{stage.init}' has not finished")
            state = folder.load_checkpoint(stage.init)["state_dict"]
            system.initialise(state, cfg.stages[stage.init])
            record["init_s"] = round(time.perf_counter() - t_init, 2)  # e.g. NeRF -> DMTet conversion
        if ckpt.is_file():  # resume: check the file with the safe loader first (one line if it is bad)
            callback_start = folder.load_checkpoint(name).get("global_step", 0)
        else:
            callback_start = 0
        callback = StageCallback(ckpt, stage.steps, show_progress, saved_step=callback_start)
        trainer = pl.Trainer(
            max_steps=stage.steps, max_epochs=-1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[callback], num_sanity_val_steps=0, limit_val_batches=0, deterministic=False,
        )
        loader = torch.utils.data.DataLoader(StepDataset(stage.steps), batch_size=None, shuffle=False)
        record.update(status="running", steps=stage.steps)
        record.pop("error", None)
        summary["stages"][name] = record
        folder.write_summary(summary)
        t_stage = time.perf_counter()
        # Steps draw their randomness from (seed, step), so restarting the step dataset mid-epoch is exact.
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
        failure = None
        try:
            trainer.fit(system, loader, ckpt_path=str(ckpt) if ckpt.is_file() else None, weights_only=True)
        except SystemExit:
            if not callback.interrupted:
                raise
        except NonFiniteError as exc:
            failure = exc
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT after Ctrl-C
        elapsed = time.perf_counter() - t_stage
        record.update(
            wall_s=round(record.get("wall_s", 0.0) + elapsed, 2),
            run_wall_s=round(elapsed, 2),
            run_steps=trainer.global_step - callback.start_step,
            it_per_s=round(callback.iterations_per_second(trainer), 3),
            completed_steps=callback.saved_step if failure is not None else trainer.global_step,
            final=system.last_metrics or record.get("final", {}),  # a resume with no step left keeps the old
            checkpoint=str(ckpt.relative_to(folder.path)),
        )
        if failure is not None:
            record.update(status="failed", error=str(failure))
            folder.write_summary(summary)
            kept = f"the last good checkpoint ({ckpt}, step {callback.saved_step}) is kept" if ckpt.is_file() else \
                "no checkpoint had been written yet"
            raise RunFailed(f"{failure}; {kept}; no later stage ran") from None
        if callback.interrupted:
            record["status"] = "interrupted"
            folder.write_summary(summary)
            how = "SIGTERM" if isinstance(callback.exception, Terminated) else "interrupted"
            raise RunInterrupted(
                f"{how} at step {trainer.global_step}/{stage.steps} of stage '{name}'; checkpoint saved;"
                f" continue with: dream3d fit resume={folder.path}", signal_exit_code(callback.exception)
            )
        record["status"] = "done"
        folder.write_summary(summary)


def export_outputs(cfg: RunConfig, run_dir: Path, log=print) -> None:
    """The end of fit: ``export/model.glb`` (+ ``export_formats``) and the turntable MP4. A failure here (say,
    nothing above the density threshold) is recorded in summary.json and raised as RunFailed; the trained
    stages stay."""
    from dream3d.export.run import ExportError, export_run, record_export, render_run

    fault_point("export")
    try:
        export_run(run_dir, cfg.export_formats, resolution=cfg.mesh_resolution, texture_size=cfg.texture_size, log=log)
        if cfg.video_views > 0:
            render_run(run_dir, views=cfg.video_views, size=cfg.video_size, formats=("mp4",), log=log)
    except (ExportError, RunFolderError) as exc:
        record_export(run_dir, error=str(exc))
        raise RunFailed(f"export failed: {exc}; the trained stages are kept; retry with: dream3d export {run_dir} "
                        "threshold=<lower>") from None
