"""The training loop every stage of the shape-world prior shares (VAE, text encoder + UNet, classifier).

:class:`StageRunner` runs a stage's optimisation steps: the learning rate of each step (:func:`lr_at`: warm-up,
then cosine), an optional :class:`EMA` of the weights, a loss CSV (:class:`LossLog`), checkpoints written
atomically (:func:`save_checkpoint`, through :func:`dream3d.io.atomic_path`) and resume from them. The stages
themselves live in :mod:`dream3d.shapeworld.pipeline` and :mod:`dream3d.shapeworld.classifier`.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from dream3d.io import atomic_path
from dream3d.shapeworld.config import TrainConfig

Log = Callable[[str], None]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def autocast(enabled: bool):
    """bf16 autocast on the CPU when ``enabled`` (``TrainConfig.bf16``), else a no-op context."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def lr_at(step: int, steps: int, base: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor * base`` at ``steps``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def save_checkpoint(state: Any, path: Path) -> None:
    """``torch.save`` ``state`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class LossLog:
    """Rows of (step, named values) appended to a CSV; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, columns: list[str], resume_step: Optional[int]):
        self.path, self.columns = path, ["step", *columns]
        path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[list[str]] = []
        if resume_step is not None and path.is_file():
            with path.open() as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header == self.columns:
                    rows = [r for r in reader if r and int(r[0]) <= resume_step]
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([self.columns, *rows])

    def append(self, step: int, values: dict[str, float]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([step, *(f"{values[c]:.6g}" for c in self.columns[1:])])


class EMA:
    """Exponential moving average of parameters, decay warmed up as min(decay, (1 + n) / (10 + n))."""

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        self.decay = decay
        self.shadow = {k: {n: p.detach().clone() for n, p in m.named_parameters()} for k, m in modules.items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module]) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, module in modules.items():
            for name, p in module.named_parameters():
                self.shadow[key][name].lerp_(p.detach(), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, modules: dict[str, nn.Module]) -> None:
        for key, module in modules.items():
            for name, p in module.named_parameters():
                p.copy_(self.shadow[key][name])

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.shadow, self.updates, self.decay = state["shadow"], state["updates"], state["decay"]


class StageRunner:
    """The step loop every stage shares: resume, learning rate, logging, checkpoints, timing.

    ``step_fn(step) -> dict of losses`` does one optimisation step (the runner sets the learning rate first:
    the schedule's value times a parameter group's ``lr_scale``, 1 when absent).
    The checkpoint holds the modules, optimizer, EMA, step, the stage generator's and torch's RNG states and
    ``signature`` (the stage's config: resuming with another one is an error).
    """

    def __init__(
        self, name: str, cfg: TrainConfig, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
        gen: torch.Generator, steps: int, lr: float, warmup: int, signature: dict, resume: bool, log: Log,
        ema: Optional[EMA] = None,
    ):
        self.name, self.cfg, self.modules, self.optimizer, self.gen = name, cfg, modules, optimizer, gen
        self.steps, self.lr, self.warmup, self.signature, self.log, self.ema = steps, lr, warmup, signature, log, ema
        self.path = cfg.train_dir / f"{name}.pt"
        self.start = self._load() if resume and self.path.is_file() else 0

    def _load(self) -> int:
        state = torch.load(self.path, map_location="cpu", weights_only=True)  # tensors and plain data only
        if state["signature"] != self.signature:
            raise ValueError(f"{self.path}: checkpoint was made with another {self.name} config; "
                             "run without resume to start over")
        for key, module in self.modules.items():
            module.load_state_dict(state["modules"][key])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        self.log(f"{self.name}: resumed at step {state['step']}/{self.steps} from {self.path}")
        return int(state["step"])

    def save(self, step: int) -> None:
        save_checkpoint({
            "step": step, "signature": self.signature,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
            "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
        }, self.path)

    def run(self, step_fn: Callable[[int], dict[str, float]], columns: list[str]) -> int:
        """Run the remaining steps. Returns the number of steps run in this call."""
        csv_log = LossLog(self.cfg.train_dir / f"{self.name}.csv", [*columns, "lr", "seconds"],
                          self.start if self.start else None)
        if self.start >= self.steps:
            self.log(f"{self.name}: already trained ({self.start} steps)")
            return 0
        for m in self.modules.values():
            m.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {c: 0.0 for c in columns}
        count = 0
        for step in range(self.start, self.steps):
            lr = lr_at(step, self.steps, self.lr, self.warmup)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            losses = step_fn(step)
            if self.ema is not None:
                self.ema.update(self.modules)
            elapsed = time.perf_counter() - t0
            csv_log.append(step + 1, {**losses, "lr": lr, "seconds": elapsed})
            for c in columns:
                sums[c] += losses[c]
            count += 1
            done = step + 1
            if done % self.cfg.checkpoint_every == 0 or done == self.steps:
                self.save(done)
            if done % self.cfg.log_every == 0 or done == self.steps:
                per_step = elapsed / (done - self.start)
                mean = "  ".join(f"{c} {sums[c] / count:.4f}" for c in columns)
                self.log(f"{self.name}: step {done}/{self.steps}  {mean}  lr {lr:.2e}  "
                         f"{per_step:.2f} s/step  eta {per_step * (self.steps - done) / 60:.1f} min")
                sums, count = {c: 0.0 for c in columns}, 0
        return self.steps - self.start
