"""Ray as the batch's engine: one Ray task per fit, on a local runtime or an existing cluster.

- **Where**: without ``address`` a local Ray runtime is started for the batch (``num_cpus`` = workers x threads,
  the GPUs torch sees) and stopped after it; with ``address`` (``auto``, ``ray://host:10001``, ``host:6379``) the
  fits go to that cluster, whose machines must have dream3d and the priors at the same paths.
- **How many at once**: a fit asks Ray for ``threads`` CPUs and, on GPU machines, ``gpus`` GPUs (default 1: one
  fit per GPU; a fraction such as 0.5 puts two fits on a GPU when a small prior leaves room). Ray's numbers are
  bookkeeping only; each fit sets torch's threads itself (:func:`dream3d.batch.worker.run_job`).
- **Prior once per worker**: Ray keeps a worker process for the next task (``max_calls=0``), and the worker keeps
  the priors it loaded.
- **Nothing lost**: a worker that dies (killed, out of memory) has its fit retried by Ray up to ``retries``
  times; the retry resumes from the fit's checkpoints. A fit that fails on its own (bad settings found late, a
  non-finite loss) is not retried: its error is reported and the other fits go on. Ctrl-C (or SIGTERM) cancels
  the fits: each running one saves its checkpoint and stops, and rerunning the same command continues.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from dream3d.batch.jobs import Job
from dream3d.errors import Dream3DError

INSTALL_HINT = "pip install 'dream3d[batch]' (or: pip install 'ray>=2.9'; from a checkout: .venv/bin/pip install -e '.[batch]')"


class BatchError(Dream3DError):
    """A batch that cannot start (no Ray, a cluster that cannot be reached): one line, exit code 1."""

    exit_code = 1


class BatchInterrupted(Dream3DError):
    """Ctrl-C or SIGTERM: the running fits saved their checkpoints; the same command continues."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class EngineSettings:
    workers: int = 0  # fits at once on the local runtime; 0: cores // threads (or the GPU count)
    threads: int = 1  # torch threads of each fit
    retries: int = 2  # new attempts after a worker died
    address: str = ""  # an existing Ray cluster; empty: a local runtime for this batch
    gpus: float = 1.0  # GPUs per fit where the runtime has GPUs
    views: int = 16  # eval views


def require_ray():
    try:
        import ray
    except ImportError:
        raise BatchError(f"dream3d batch needs Ray, which is not installed; install it with: {INSTALL_HINT}") from None
    return ray


def local_workers(settings: EngineSettings, gpus: int) -> int:
    """How many fits run at once on this machine: ``workers`` if set, else one per GPU (by ``gpus`` per fit), else
    the cores divided by the threads of each fit (at least 1)."""
    if settings.workers > 0:
        return settings.workers
    if gpus > 0:
        return max(1, int(gpus / max(settings.gpus, 1e-6)))
    return max(1, (os.cpu_count() or 1) // max(settings.threads, 1))


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def start(settings: EngineSettings) -> tuple[object, bool, str]:
    """Connect to Ray (a running runtime in this process is reused). Returns (ray, started here, description)."""
    ray = require_ray()
    if ray.is_initialized():
        res = ray.cluster_resources()
        return ray, False, f"the Ray runtime already running here ({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs)"
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a laptop's batch
    if settings.address:
        try:
            ray.init(address=settings.address, log_to_driver=False, logging_level="ERROR")
        except Exception as exc:  # ConnectionError, a bad address
            text = str(exc).strip().splitlines()
            raise BatchError(f"address={settings.address}: cannot connect to a Ray cluster "
                             f"({text[0] if text else type(exc).__name__}); start one with: ray start --head") from None
        res = ray.cluster_resources()
        return ray, True, f"Ray cluster {settings.address} ({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs)"
    gpus = _cuda_count()
    workers = local_workers(settings, gpus)
    cpus = workers * max(settings.threads, 1)
    ray.init(num_cpus=cpus, num_gpus=gpus, **quiet)
    return ray, True, (f"local Ray runtime: {workers} worker{'s' if workers != 1 else ''} x {settings.threads} "
                       f"thread{'s' if settings.threads != 1 else ''}" + (f", {gpus} GPUs" if gpus else ""))


def run_jobs(jobs: list[Job], settings: EngineSettings, on_result: Callable[[Job, dict], None],
             log: Callable[[str], None] = print, progress: bool = True) -> None:
    """Run every job on Ray; ``on_result(job, row)`` after each one ends (done, failed, interrupted). Raises
    BatchInterrupted after Ctrl-C / SIGTERM once the running fits have stopped."""
    from tqdm.auto import tqdm

    from dream3d.batch.worker import run_job

    ray, started, where = start(settings)
    log(f"dream3d batch: {len(jobs)} fit{'s' if len(jobs) != 1 else ''} on {where}")
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(max_calls=0)(run_job).options(  # max_calls=0: the worker (and its prior) stays
            num_cpus=max(settings.threads, 1), num_gpus=settings.gpus if gpus > 0 else 0, max_retries=settings.retries,
            retry_exceptions=False)
        refs = {task.remote(job, settings.threads, settings.views): job for job in jobs}
        counts = {"done": 0, "failed": 0}
        bar = tqdm(total=len(jobs), disable=not progress, unit="fit", dynamic_ncols=True)
        pending = set(refs)

        def finish(ref, row: dict) -> None:
            job = refs[ref]
            counts["done" if row["status"] == "done" else "failed"] += 1
            on_result(job, row)
            bar.update(1)
            bar.set_postfix_str(f"done {counts['done']}, running {min(len(pending), _slots(ray, settings))}, "
                                f"failed {counts['failed']}")
            if row["status"] != "done" and not progress:
                log(f"dream3d batch: {job.label}: {row['status']}: {row.get('error')}")

        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    pending.discard(ref)
                    finish(ref, _result(ray, ref, settings.retries))
        except KeyboardInterrupt as exc:
            bar.close()
            log(f"dream3d batch: stopping {len(pending)} fit(s); each running one saves its checkpoint ...")
            for ref in pending:
                ray.cancel(ref, force=False)
            deadline = time.monotonic() + 300
            while pending and time.monotonic() < deadline:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
                for ref in ready:
                    pending.discard(ref)
                    row = _result(ray, ref, settings.retries)
                    if row["status"] == "failed" and row.get("cancelled"):
                        row.update(status="interrupted", error="not started; rerun the same command")
                    finish(ref, row)
            for ref in pending:  # still running after the deadline: stopped hard, resumable from the last checkpoint
                ray.cancel(ref, force=True)
                finish(ref, {"status": "interrupted", "error": "stopped; resumes from its last checkpoint"})
            from dream3d.errors import signal_exit_code

            raise BatchInterrupted("batch interrupted; rerun the same command to continue (finished fits are kept)",
                                   signal_exit_code(exc)) from None
        bar.close()
    finally:
        if started:
            ray.shutdown()


def _slots(ray, settings: EngineSettings) -> int:
    res = ray.cluster_resources()
    if res.get("GPU", 0) > 0:
        return max(1, int(res["GPU"] / max(settings.gpus, 1e-6)))
    return max(1, int(res.get("CPU", 1) // max(settings.threads, 1)))


def _result(ray, ref, retries: int) -> dict:
    """The row of a finished task; a lost worker (after its retries) or a cancelled task as a failed row."""
    from ray import exceptions as rex

    try:
        return ray.get(ref)
    except rex.TaskCancelledError:
        return {"status": "failed", "error": "cancelled", "cancelled": True}
    except (rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError) as exc:
        return {"status": "failed", "error": f"its worker process was lost {retries + 1} time(s) "
                                             f"({type(exc).__name__}); rerun the command to resume it"}
    except rex.RayTaskError as exc:  # run_job catches everything a fit raises; this is a bug in the batch
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        text = str(cause).strip().splitlines()
        return {"status": "failed", "error": f"{type(cause).__name__}: {text[0] if text else ''}"}
    except rex.RayError as exc:
        return {"status": "failed", "error": f"Ray: {type(exc).__name__}"}
