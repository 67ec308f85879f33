"""The run folder: its paths, its config and summary, its checkpoints, its lock.

    outputs/<recipe>/<prompt-slug>-<YYYYmmdd-HHMMSS>/
        config.yaml                 fully resolved config (``dream3d fit resume=<folder>`` reads it)
        ckpts/<stage>/last.ckpt     Lightning checkpoint (trainable state + optimiser + step), atomic
        stages/<stage>/val/*.png    validation grids
        stages/<stage>/metrics.csv  per-step losses
        export/model.glb            the baked, textured mesh (+ model.obj/.mtl/.png, model.ply on request)
        export/turntable.mp4        turntable of the exported mesh
        summary.json                timings, losses, settings, status per stage, export figures
        export/particle<k>/         model.glb and turntable.mp4 of particle k >= 1 (particles=N)
        eval.json                   ``dream3d eval``'s figures
        batch.json, batch.log       a ``dream3d batch`` fit's record (attempts, worker, status) and its output
        reference/                  the reference view's samples.png, reference.png, mask.png, reference.json
                                    (stages weighting loss.reference_*; dream3d/reference.py)
        .lock                       held (flock) by the one process working in the folder

Every path of a run folder is spelled here and nowhere else.

Everything read from a run folder is treated as untrusted: checkpoints load with ``weights_only=True``
(tensors and plain containers only; a pickle that would run code is refused), the config with YAML's safe
loader, and every problem is a one-line :class:`RunFolderError` naming the file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import pickle
import re
from pathlib import Path
from typing import Iterator, Optional

from dream3d.errors import Dream3DError
from dream3d.io import write_json

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
EXPORT_DIR = "export"
EVAL_FILE = "eval.json"
EVAL_SILHOUETTES_FILE = "eval_silhouettes.png"  # where the silhouettes differ from the truth
MESH_FILE, VIDEO_FILE = "model.glb", "turntable.mp4"
BATCH_RECORD, BATCH_LOG = "batch.json", "batch.log"
REFERENCE_DIR = "reference"
TEMP_NAME = re.compile(r"^\..+\.tmp\d+")  # io.atomic_path's temporary names


class RunFolderError(Dream3DError):
    """A run folder or one of its files is missing, unreadable, untrusted or in use: one line naming it."""


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    # paths ------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    def ckpt(self, stage: str) -> Path:
        return self.path / "ckpts" / stage / "last.ckpt"

    def stage_dir(self, stage: str) -> Path:
        """``stages/<stage>/``: ``val/step<N>.png`` grids and ``metrics.csv``."""
        return self.path / "stages" / stage

    def metrics_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "metrics.csv"

    def validation_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / "val"

    @property
    def export_dir(self) -> Path:
        return self.path / EXPORT_DIR

    @property
    def eval_path(self) -> Path:
        return self.path / EVAL_FILE

    @property
    def eval_silhouettes_path(self) -> Path:
        """``eval_silhouettes.png``: :func:`dream3d.eval.silhouette_difference` of the last ``dream3d eval``."""
        return self.path / EVAL_SILHOUETTES_FILE

    @property
    def reference_dir(self) -> Path:
        """``reference/``: the reference view drawn from the prior (:mod:`dream3d.reference`)."""
        return self.path / REFERENCE_DIR

    @property
    def batch_record_path(self) -> Path:
        """``batch.json``: what ``dream3d batch`` knows of this fit (attempts, worker process, status, timings)."""
        return self.path / BATCH_RECORD

    @property
    def batch_log_path(self) -> Path:
        """``batch.log``: the output of a fit run by ``dream3d batch`` (its progress bar and messages)."""
        return self.path / BATCH_LOG

    @property
    def video_path(self) -> Path:
        """``export/turntable.mp4``: particle 0's turntable."""
        return self.particle_dir(0) / VIDEO_FILE

    @property
    def mesh_path(self) -> Path:
        """``export/model.glb``: particle 0's mesh, the run's result."""
        return self.particle_dir(0) / MESH_FILE

    def particle_dir(self, k: int) -> Path:
        """Where particle ``k``'s files go: ``export/`` for particle 0 (the run's result), else
        ``export/particle<k>/``."""
        return self.export_dir / ("" if k == 0 else f"particle{k}")

    def particle_dirs(self) -> list[Path]:
        """The particles' export folders in order: ``export/`` (particle 0), then ``export/particle<k>/`` by k."""
        numbered = [(int(m.group(1)), p) for p in self.export_dir.glob("particle*")
                    if p.is_dir() and (m := re.fullmatch(r"particle(\d+)", p.name))]
        return [self.export_dir] + [p for _, p in sorted(numbered)]

    def particle_meshes(self) -> list[Path]:
        """The particle meshes that exist: ``export/model.glb``, ``export/particle1/model.glb``, ..."""
        return [p for p in (d / MESH_FILE for d in self.particle_dirs()) if p.is_file()]

    def particle_videos(self) -> list[Path]:
        """The particle turntables that exist: ``export/turntable.mp4``, ``export/particle1/turntable.mp4``, ..."""
        return [p for p in (d / VIDEO_FILE for d in self.particle_dirs()) if p.is_file()]

    def last_trained_stage(self, stages) -> Optional[str]:
        """The last of ``stages`` (names, in order) that has a checkpoint, or None."""
        for name in reversed(list(stages)):
            if self.ckpt(name).is_file():
                return name
        return None

    # reading ----------------------------------------------------------------------------------------
    def require(self) -> "RunFolder":
        """Raise RunFolderError unless this is a folder with a config.yaml."""
        if not self.path.is_dir():
            raise RunFolderError(f"{self.path}: not a folder (expected a dream3d run folder)")
        if not self.config_path.is_file():
            raise RunFolderError(f"{self.config_path}: not found (expected a dream3d run folder from dream3d fit)")
        return self

    def read_config(self):
        """The stored RunConfig (not re-validated: its prior may live elsewhere now)."""
        from dream3d.config import ConfigError, load_run_config

        self.require()
        try:
            return load_run_config(self.config_path)
        except ConfigError as exc:
            message = str(exc)
            raise RunFolderError(message if str(self.config_path) in message else f"{self.config_path}: {message}") \
                from None

    def read_summary(self) -> dict:
        """summary.json, or {} when it is missing or unreadable (it is rewritten whole on the next update)."""
        try:
            data = json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_path, summary)

    def load_checkpoint(self, stage: str) -> dict:
        return load_checkpoint(self.ckpt(stage))

    # writing ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock: a second process gets a one-line RunFolderError. The lock is an flock, so
        the kernel releases it when its holder dies, and the next process takes it over."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise RunFolderError(f"{self.path}: in use by another dream3d process (pid {holder}); wait for it "
                                     "to finish or stop it, then resume") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the flock

    def remove_stale_temps(self) -> list[Path]:
        """Delete the temporary files of writes that a crash interrupted (call with the lock held)."""
        stale = [p for p in self.path.rglob(".*") if p.is_file() and TEMP_NAME.match(p.name)]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale


def slugify(text: str, max_len: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].strip("-") or "run"


def new_run_dir(cfg) -> Path:
    """``<output_dir>/<recipe>/<name>``, checked to lie inside the output folder and to be writable."""
    name = cfg.name or f"{slugify(cfg.prompt)}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out = Path(cfg.output_dir)
    path = out / cfg.recipe / name
    if not path.resolve().is_relative_to(out.resolve()) or path.resolve() == out.resolve():
        raise RunFolderError(f"name: run folder {path} would lie outside output_dir {out}")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"name: {path} is a file, expected a run folder")
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"name: run folder {path} already exists; pass another name= or resume={path}")
    check_writable(out, "output_dir")
    return path


def check_writable(folder: str | Path, key: str) -> None:
    """Raise a one-line RunFolderError unless files can be created in ``folder`` (made if missing): probes
    with a real file, so a read-only mount or a full disk is found before any work."""
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise RunFolderError(f"{key}: {parent} is a file, expected a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        raise RunFolderError(f"{key}: cannot write in {folder} ({exc.strerror or exc})") from None


def load_checkpoint(path: str | Path) -> dict:
    """A dream3d checkpoint's contents, loaded with ``weights_only=True``: tensors, numbers, strings and plain
    containers only. A file that would run code when unpickled, a truncated file and a foreign file each get a
    one-line RunFolderError; nothing in the file is executed."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"{path}: not found (expected a checkpoint from dream3d fit)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RunFolderError(f"{path}: refused: it holds Python objects other than tensors and plain data "
                             "(a dream3d checkpoint never does; loading it could run code)") from None
    except Exception as exc:  # truncated, empty, not a torch file
        raise RunFolderError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise RunFolderError(f"{path}: not a dream3d checkpoint (no state_dict)")
    return ckpt
