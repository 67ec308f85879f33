"""One fit of a batch, as it runs inside a Ray worker process: fit (or resume), export, evaluate.

Plain Python, no Ray import: :mod:`dream3d.batch.engine` wraps :func:`run_job` as a Ray task. A worker process
keeps the priors it loaded (:data:`_PRIORS`), so a prior is loaded once per worker, not once per fit. Each run
folder gets ``batch.log`` (the fit's progress and messages) and ``batch.json`` (attempts, the worker's process
id, status, timings, the last error), written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from dream3d.batch.jobs import Job, load_job_config, read_record, state, write_record

_PRIORS: dict[tuple, Any] = {}  # (path, device, dtype, text prior) -> Prior, for the life of the worker process


def _prior(cfg):
    from dream3d.prior import load_prior
    from dream3d.run import pick_device

    device = pick_device(cfg.device)
    key = (str(cfg.prior), str(device), cfg.prior_dtype, cfg.text_prior)
    if key not in _PRIORS:
        _PRIORS[key] = load_prior(cfg.prior, device, cfg.prior_dtype, cfg.text_prior)
    return _PRIORS[key]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def run_job(job: Job, threads: int, views: int = 16) -> dict:
    """Fit, export and evaluate ``job`` in this process (``threads`` torch threads); resume a partial run folder,
    keep a finished one. Returns the row: status ``done`` | ``failed`` | ``interrupted`` with its figures or error.
    A KeyboardInterrupt (the batch's Ctrl-C, sent by ``ray.cancel``) saves the fit's checkpoint and returns
    ``interrupted``; a killed process returns nothing (the engine retries it)."""
    import torch

    from dream3d.errors import Dream3DError
    from dream3d.rundir import RunFolder

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    run_dir = job.run_dir
    before = state(job)
    if before == "done":
        return {"status": "done", "skipped": True, **_figures(run_dir)}
    if before == "empty" and run_dir.exists():  # a folder without config.yaml: nothing in it can be resumed
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = read_record(run_dir)
    record.update(attempts=record.get("attempts", 0) + 1, pid=os.getpid(), host=os.uname().nodename,
                  status="running", prompt=job.prompt, seed=job.seed)
    record.pop("error", None)
    write_record(run_dir, record)
    start = time.perf_counter()
    status, error = "done", None
    try:
        with open(RunFolder(run_dir).batch_log_path, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            print(f"dream3d batch: attempt {record['attempts']} in process {os.getpid()}"
                  f"{' (resuming)' if before != 'empty' else ''}", flush=True)
            if before != "fitted":
                from dream3d.run import fit

                cfg = load_job_config(job, resume=before == "partial")
                fit(cfg, run_dir, show_progress=True, resume=before == "partial", prior=_prior(cfg))
            record["fit_s"] = round(record.get("fit_s", 0.0) + time.perf_counter() - start, 1)
            t = time.perf_counter()
            try:
                from dream3d.eval import evaluate_run

                evaluate_run(run_dir, views=views)
                record.pop("eval_error", None)
            except Dream3DError as exc:  # e.g. a prompt outside the shape world: the fit itself is fine
                record["eval_error"] = str(exc)
                print(f"dream3d batch: no evaluation: {exc}", flush=True)
            record["eval_s"] = round(time.perf_counter() - t, 1)
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the batch; rerun the same command to continue"
    except Dream3DError as exc:
        status, error = ("interrupted", str(exc)) if getattr(exc, "exit_code", 1) in (130, 143) else ("failed", str(exc))
    except Exception as exc:  # a bug or a system error: this fit fails, the batch goes on
        status, error = "failed", _first_line(exc)
    if status != "done":
        record["fit_s"] = round(record.get("fit_s", 0.0) + time.perf_counter() - start, 1)
    record["status"] = status
    if error:
        record["error"] = error
    write_record(run_dir, record)
    return {"status": status, "error": error, "skipped": False, **_figures(run_dir)}


def _figures(run_dir: Path) -> dict:
    """The eval figures of a finished run (None where missing) and its wall times, for the batch summary."""
    from dream3d.rundir import RunFolder

    folder = RunFolder(run_dir)
    out: dict[str, Any] = {}
    try:
        evaluation = json.loads(folder.eval_path.read_text())
    except (OSError, ValueError):
        evaluation = {}
    for key in ("r_precision", "object_accuracy", "colour_accuracy", "iou", "volume_iou", "chamfer",
                "colour_error", "janus", "front_ok", "top_caption"):
        out[key] = evaluation.get(key)
    record = read_record(run_dir)
    out.update(attempts=record.get("attempts", 0), fit_s=record.get("fit_s"), eval_s=record.get("eval_s"),
               eval_error=record.get("eval_error"))
    try:
        summary = folder.read_summary()
    except Exception:
        summary = {}
    out["train_s"] = summary.get("wall_s")
    return out
