"""``dream3d batch``: many fits (prompts x seeds) on Ray, each fitted, exported and evaluated exactly as
``dream3d fit`` + ``dream3d eval`` would, into its own run folder; the results in one place.

    dream3d batch prompts=prompts.txt [recipe=magic3d] [seeds=1] [workers=auto] [threads=1] [retries=2]
                  [address=<ray address>] [gpus=1] [views=16] [out=outputs/batch/<file stem>] [key=value ...]

Other ``key=value`` pairs are fit settings for every prompt (a prompts line may add its own after a tab).
Rerunning the same command with the same ``out`` skips finished fits (their files untouched) and resumes
interrupted ones. Rooms: :mod:`~dream3d.batch.jobs` (the prompts file, the jobs, what is on disk),
:mod:`~dream3d.batch.worker` (one fit inside a Ray worker), :mod:`~dream3d.batch.engine` (Ray: local runtime or
cluster, retries, Ctrl-C), :mod:`~dream3d.batch.results` (summary.json, summary.csv, gallery.html).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Callable

BATCH_KEYS = {"prompts": "", "seeds": 1, "workers": 0, "threads": 1, "retries": 2, "address": "", "gpus": 1.0,
              "views": 16, "out": ""}


def run_batch(args: list[str], progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Parse the command's ``key=value`` words, run the batch, write its results; returns summary.json's dict.
    ConfigError (one line) on bad input before anything runs; BatchError when Ray is missing or unreachable;
    BatchInterrupted after Ctrl-C (results written first)."""
    from dream3d.batch.engine import EngineSettings, require_ray, run_jobs
    from dream3d.batch.jobs import OWNED, make_jobs, read_prompts, state
    from dream3d.batch.results import make_row, write_results
    from dream3d.config import ConfigError, parse_overrides, typed_values
    from dream3d.rundir import check_writable

    kv = parse_overrides(args)
    common = {k: v for k, v in kv.items() if k not in BATCH_KEYS}
    values = typed_values({k: v for k, v in kv.items() if k in BATCH_KEYS}, BATCH_KEYS, "batch")
    if not values["prompts"]:
        raise ConfigError("prompts: expected prompts=<file> (one prompt a line; optional overrides after a tab)")
    for key, low in (("seeds", 1), ("threads", 1), ("retries", 0), ("workers", 0), ("views", 1)):
        if values[key] < low:
            raise ConfigError(f"{key}: expected an integer >= {low}, got {values[key]}")
    if not 0 < values["gpus"] <= 64:
        raise ConfigError(f"gpus: expected GPUs per fit > 0 (e.g. 1 or 0.5), got {values['gpus']}")
    for owned in OWNED:
        if owned in common:
            raise ConfigError(f"{owned}: set by the batch for each fit (prompts=<file>, seeds=N, out=<folder>)")
    common.setdefault("threads", str(values["threads"]))
    prompts_file = Path(values["prompts"])
    lines = read_prompts(prompts_file)
    out = Path(values["out"] or Path("outputs") / "batch" / prompts_file.stem)
    check_writable(out, "out")
    jobs = make_jobs(lines, common, range(values["seeds"]), out)
    results: dict[int, dict] = {}
    for job in jobs:
        if job.error:
            results[job.index] = {"status": "failed", "error": job.error, "attempts": 0}
    meta = {"prompts_file": str(prompts_file), "out": str(out), "seeds": values["seeds"], "overrides": common,
            "threads": values["threads"], "address": values["address"] or None}

    def write() -> None:
        rows = [make_row(job, results.get(job.index), out) for job in jobs]
        write_results(out, rows, {**meta, "updated": _dt.datetime.now().isoformat(timespec="seconds")})

    runnable = [job for job in jobs if not job.error]
    done_before = [job for job in runnable if state(job) == "done"]
    if done_before:
        from dream3d.batch.worker import _figures

        for job in done_before:
            results[job.index] = {"status": "done", "skipped": True, **_figures(job.run_dir)}
        log(f"dream3d batch: {len(done_before)} fit(s) finished before, kept as they are")
    invalid = [job for job in jobs if job.error]
    for job in invalid:
        log(f"dream3d batch: {prompts_file} line {job.line} ({job.label}): {job.error}")
    todo = [job for job in runnable if job.index not in results]
    write()
    if todo:
        require_ray()
        settings = EngineSettings(workers=values["workers"], threads=values["threads"], retries=values["retries"],
                                  address=values["address"], gpus=values["gpus"], views=values["views"])

        def on_result(job, row: dict) -> None:
            results[job.index] = row
            write()

        try:
            run_jobs(todo, settings, on_result, log=log, progress=progress)
        finally:
            write()
    from dream3d.batch.results import read_results

    return read_results(out)
