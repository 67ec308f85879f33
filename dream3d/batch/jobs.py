"""The fits of a batch: the prompts file, one :class:`Job` per (prompt, seed), and what is on disk for each.

A prompts file has one prompt a line; a line may add overrides after a tab (``a mug<TAB>recipe=mvdream
stages.coarse.steps=300``). Blank lines and lines starting with ``#`` are skipped. Each job's settings are the
batch's common overrides, then the line's, then ``prompt``, ``seed``, ``name`` and ``output_dir``, which the
batch owns (a line cannot move its run folder). The run folder of a job is ``<out>/runs/<recipe>/<slug>-s<seed>``
(``-2``, ``-3`` ... when the same prompt appears twice), so the same command finds its runs again.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from dream3d.config import ConfigError, RunConfig, load_config, load_stored, parse_overrides, stored_config_error
from dream3d.rundir import RunFolder, slugify

OWNED = ("prompt", "seed", "name", "output_dir", "resume")  # set by the batch, refused on a prompts line


@dataclass
class Job:
    """One fit of a batch. ``error``: the one-line reason it cannot run (bad settings), found before any fit."""

    index: int
    prompt: str
    seed: int
    overrides: dict[str, str]
    run_dir: Path
    line: int = 0
    recipe: str = ""
    error: Optional[str] = None

    @property
    def label(self) -> str:
        return f"{self.prompt} / seed {self.seed}"


def read_prompts(path: str | Path) -> list[tuple[int, str, dict[str, str]]]:
    """(line number, prompt, overrides) of every prompt line of ``path``; ConfigError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"prompts: {path} not found (expected a text file with one prompt a line)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"prompts: {path} is not UTF-8 text (expected one prompt a line)") from None
    except OSError as exc:
        raise ConfigError(f"prompts: {path}: {exc.strerror or exc}") from None
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        prompt, _, rest = raw.partition("\t")
        prompt = prompt.strip()
        if not prompt:
            raise ConfigError(f"prompts: {path} line {number}: expected a prompt before the tab")
        try:
            overrides = parse_overrides(shlex.split(rest)) if rest.strip() else {}
        except ValueError as exc:  # shlex: an unclosed quote
            raise ConfigError(f"prompts: {path} line {number}: {exc} (expected key=value words after the tab)") from None
        except ConfigError as exc:
            raise ConfigError(f"prompts: {path} line {number}: {exc}") from None
        owned = [k for k in overrides if k in OWNED]
        if owned:
            raise ConfigError(f"prompts: {path} line {number}: {owned[0]} is set by the batch, not per prompt "
                              f"(seeds=N and out= set seeds and run folders)")
        lines.append((number, prompt, overrides))
    if not lines:
        raise ConfigError(f"prompts: {path} has no prompt lines (expected one prompt a line)")
    return lines


def make_jobs(prompts: list[tuple[int, str, dict[str, str]]], common: dict[str, str], seeds: Iterable[int],
              out: Path) -> list[Job]:
    """Every (prompt line, seed in ``seeds``, e.g. ``range(n)``) as a Job, each checked with the fit's own config
    loader (a bad key or value becomes that job's ``error``; the other jobs are unaffected)."""
    jobs: list[Job] = []
    used: set[Path] = set()
    for number, prompt, line_overrides in prompts:
        for seed in seeds:
            overrides = {**common, **line_overrides, "prompt": prompt, "seed": str(seed)}
            job = Job(len(jobs), prompt, seed, overrides, Path(), line=number)
            try:
                cfg = load_config(overrides)
                job.recipe = cfg.recipe
            except ConfigError as exc:
                job.error = str(exc)
                job.recipe = overrides.get("recipe", "") or RunConfig().recipe
            base = f"{slugify(prompt)}-s{seed}"
            run_dir, k = out / "runs" / slugify(job.recipe) / base, 1
            while run_dir in used:
                k += 1
                run_dir = out / "runs" / slugify(job.recipe) / f"{base}-{k}"
            used.add(run_dir)
            job.run_dir = run_dir
            job.overrides = {**overrides, "name": run_dir.name, "output_dir": str(run_dir.parent.parent)}
            jobs.append(job)
    return jobs


def state(job: Job) -> str:
    """What is on disk for ``job``: ``done`` (fitted, exported and evaluated, or fitted and its evaluation
    recorded as impossible), ``fitted`` (only the evaluation is missing), ``partial`` (a run folder to resume),
    ``empty`` (nothing usable: start afresh)."""
    folder = RunFolder(job.run_dir)
    if not folder.config_path.is_file():
        return "empty"
    try:
        summary = folder.read_summary()
    except Exception:
        return "partial"
    if summary.get("status") != "done":
        return "partial"
    if folder.eval_path.is_file() or read_record(job.run_dir).get("eval_error"):
        return "done"
    return "fitted"


def read_record(run_dir: Path) -> dict:
    """The run folder's ``batch.json`` (attempts, worker, status, timings, errors); {} when missing or broken."""
    try:
        record = json.loads(RunFolder(run_dir).batch_record_path.read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def write_record(run_dir: Path, record: dict) -> None:
    from dream3d.io import write_json

    write_json(RunFolder(run_dir).batch_record_path, record)


def load_job_config(job: Job, resume: bool):
    """The RunConfig of ``job``: from its overrides, or for a run folder to resume, its stored config.yaml."""
    if not resume:
        return load_config(job.overrides)
    folder = RunFolder(job.run_dir)
    try:
        return load_config({}, base=load_stored(folder.config_path))
    except ConfigError as exc:
        raise stored_config_error(folder.config_path, exc) from None
