"""End-to-end fits through the CLI with real (tiny) diffusers priors and the real Lightning trainer. The short fit
``test_short_fit_on_the_test_device`` runs on ``DREAM3D_TEST_DEVICE`` (tests/conftest.py)."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dream3d import cli

SMALL = [
    "stages.coarse.steps=20", "stages.coarse.camera.height=32", "stages.coarse.camera.width=32",
    "stages.coarse.camera.eval_size=32", "stages.coarse.val_every=10", "stages.coarse.ckpt_every=10",
    "stages.coarse.renderer.ambient_only_steps=5", "stages.coarse.representation.encoding.n_levels=8",
    "stages.coarse.representation.encoding.log2_hashmap_size=14",
    "mesh_resolution=32", "texture_size=64", "video_views=4", "video_size=32",  # a quick export at the end
]


def fit(prior, out, name, *extra) -> tuple[int, Path]:
    code = cli.main(["fit", "prompt=a red cube", "recipe=dreamfusion", f"prior={prior}", f"output_dir={out}", f"name={name}",
                     "--quiet", *SMALL, *extra])
    return code, Path(out) / "dreamfusion" / name


def metrics(run: Path) -> list[dict]:
    with open(run / "stages" / "coarse" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def nerf_state(run: Path) -> dict:
    return torch.load(run / "ckpts" / "coarse" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def ctrl_c_at(monkeypatch, step: int):
    """Make the training step raise KeyboardInterrupt (what Ctrl-C does) at ``step``; returns an undo."""
    from dream3d.systems.nerf import NeRFSystem

    original = NeRFSystem.training_step

    def interrupted(self, batch, batch_idx):
        if self.global_step == step:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(NeRFSystem, "training_step", interrupted)
    return lambda: monkeypatch.setattr(NeRFSystem, "training_step", original)


@pytest.fixture(scope="module")
def latent_run(latent_prior_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    code, run = fit(latent_prior_dir, out, "straight")
    assert code == 0
    return run


def test_latent_prior_fit_end_to_end(latent_run):
    run = latent_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["stages"]["coarse"]["completed_steps"] == 20
    rows = metrics(run)
    assert [int(r["step"]) for r in rows] == list(range(20))
    for r in rows:
        assert math.isfinite(float(r["loss"])) and math.isfinite(float(r["grad_norm"])) and float(r["grad_norm"]) > 0
    state = nerf_state(run)
    assert any(k.startswith("particles.0.nerf.encoding") for k in state)
    assert not any("unet" in k or "text_encoder" in k or "vae" in k for k in state)  # frozen prior stays out
    grids = sorted((run / "stages" / "coarse" / "val").glob("*.png"))
    assert [g.name for g in grids] == ["step000010.png", "step000020.png"]
    img = np.asarray(Image.open(grids[-1]))
    assert img.shape == (3 * 32, 4 * 32, 3) and img.std() > 0
    cfg_text = (run / "config.yaml").read_text()
    assert "prompt: a red cube" in cfg_text and "steps: 20" in cfg_text


def test_short_fit_on_the_test_device(latent_prior_dir, tmp_path, device):
    """A short fit on the test device with the prior's default dtype (fp16 on CUDA) and attention slicing: it
    finishes with finite losses, and summary.json says where it ran and its peak GPU memory (null on the CPU)."""
    code, run = fit(latent_prior_dir, tmp_path, "device", f"device={device.type}", "export=false",
                    "attention_slicing=true", "stages.coarse.steps=6", "stages.coarse.val_every=3",
                    "stages.coarse.ckpt_every=3")
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["device"].startswith(device.type)
    assert summary["stages"]["coarse"]["completed_steps"] == 6
    assert all(math.isfinite(float(r["loss"])) for r in metrics(run))
    if device.type == "cuda":
        assert summary["peak_gpu_mb"] > 0
    else:
        assert summary["peak_gpu_mb"] is None


def test_fit_changes_the_nerf(latent_run, latent_prior_dir, tmp_path):
    from dream3d.config import load_config
    from dream3d.systems.nerf import NeRFSystem

    cfg = load_config(["prompt=a red cube", "recipe=dreamfusion", f"prior={latent_prior_dir}", *SMALL])
    import pytorch_lightning as pl

    pl.seed_everything(0, verbose=False)
    init = NeRFSystem(cfg, "coarse", cfg.stages["coarse"], prior=None).state_dict()
    trained = nerf_state(latent_run)
    moved = (trained["particles.0.nerf.encoding.tables.0"] if "particles.0.nerf.encoding.tables.0" in trained else
             next(v for k, v in trained.items() if k.startswith("particles.0.nerf.encoding")))
    key = next(k for k in trained if k.startswith("particles.0.nerf.network"))
    assert not torch.equal(init[key], trained[key])
    assert torch.isfinite(moved).all()


def test_interrupt_then_resume_matches_uninterrupted(latent_run, latent_prior_dir, tmp_path, monkeypatch, capsys):
    restore = ctrl_c_at(monkeypatch, 8)
    code, run = fit(latent_prior_dir, tmp_path, "stopped")
    assert code == 130
    assert "resume=" in capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stages"]["coarse"]["completed_steps"] == 8
    assert len(metrics(run)) == 8
    restore()

    assert cli.main(["fit", f"resume={run}", "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["stages"]["coarse"]["completed_steps"] == 20
    assert [int(r["step"]) for r in metrics(run)] == list(range(20))
    resumed, straight = nerf_state(run), nerf_state(latent_run)
    for k in straight:
        assert torch.allclose(resumed[k].float(), straight[k].float(), atol=1e-5), k


def test_pixel_prior_fit_with_resume(pixel_prior_dir, tmp_path, monkeypatch):
    restore = ctrl_c_at(monkeypatch, 12)
    code, run = fit(pixel_prior_dir, tmp_path, "pixel", "stages.coarse.guidance.weighting=uniform")
    assert code == 130
    ckpt = torch.load(run / "ckpts" / "coarse" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 12
    restore()
    assert cli.main(["fit", f"resume={run}", "--quiet"]) == 0
    rows = metrics(run)
    assert [int(r["step"]) for r in rows] == list(range(20))
    assert all(math.isfinite(float(r["loss"])) and math.isfinite(float(r["grad_norm"])) for r in rows)


def test_real_ctrl_c_saves_a_checkpoint(latent_prior_dir, tmp_path):
    """SIGINT to the dream3d process: exit 130, checkpoint and summary say where it stopped."""
    run = tmp_path / "dreamfusion" / "sigint"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dream3d.cli", "fit", "prompt=a red cube", "recipe=dreamfusion", f"prior={latent_prior_dir}",
         f"output_dir={tmp_path}", "name=sigint", "--quiet", *SMALL, "stages.coarse.steps=2000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    deadline = time.time() + 120
    csv_path = run / "stages" / "coarse" / "metrics.csv"
    while time.time() < deadline:
        if csv_path.is_file() and len(csv_path.read_text().splitlines()) > 4:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    step = summary["stages"]["coarse"]["completed_steps"]
    assert 3 <= step < 2000
    ckpt = torch.load(run / "ckpts" / "coarse" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == step


def test_stage_initialised_from_previous_stage(latent_prior_dir, tmp_path):
    """A stage with init=<earlier stage> starts from that stage's result (same run folder)."""
    from omegaconf import OmegaConf

    from dream3d.config import CONFIG_DIR, load_config
    from dream3d.run import fit as run_fit

    recipe = OmegaConf.load(CONFIG_DIR / "dreamfusion.yaml")
    recipe.stages.fine = OmegaConf.merge(recipe.stages.coarse, {"init": "coarse", "steps": 2})
    small = [s.replace("stages.coarse.", f"stages.{st}.") for st in ("coarse", "fine") for s in SMALL]
    frozen = [f"stages.fine.optim.{k}=0.0" for k in ("lr_encoding", "lr_network", "lr_background")]
    cfg = load_config(["prompt=a red cube", "recipe=dreamfusion", f"prior={latent_prior_dir}", *small, "stages.coarse.steps=5",
                       "stages.fine.steps=2", *frozen], base=recipe)
    run = tmp_path / "two-stage"
    summary = run_fit(cfg, run, show_progress=False)
    assert [summary["stages"][s]["status"] for s in ("coarse", "fine")] == ["done", "done"]
    coarse = torch.load(run / "ckpts" / "coarse" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    fine = torch.load(run / "ckpts" / "fine" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("particles.0.nerf.") for k in coarse)
    for k, v in coarse.items():
        if k.startswith("particles.0.nerf."):
            assert torch.equal(v, fine[k]), k  # lr 0 in the fine stage: exactly the coarse result


def test_broken_prior_folder_fails_with_one_line(tmp_path, capsys):
    prior = tmp_path / "broken"
    (prior / "unet").mkdir(parents=True)
    (prior / "model_index.json").write_text("{}")
    code = cli.main(["fit", "prompt=a cube", "recipe=dreamfusion", f"prior={prior}", f"output_dir={tmp_path}", "name=b",
                     "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("dream3d: error: prior: cannot load")
    assert not (tmp_path / "dreamfusion" / "b").exists()  # the prior loads before the run folder is made
