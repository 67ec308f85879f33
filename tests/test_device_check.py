"""The GPU machine's prepared run, checked here: scripts/device_check.sh stops at once without CUDA, its shell
parses, the Stable Diffusion-sized step runs (tiny, on the CPU), its configs are SD 2.1's, and the wheel list
covers every dependency the GPU machine lacks."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "device_check.sh"
sys.path.insert(0, str(ROOT / "scripts"))


def test_device_check_shell_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script would run for minutes")
def test_device_check_stops_at_once_without_cuda(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    t0 = time.perf_counter()
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 3
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("device_check: no CUDA device is present"), result.stderr
    assert not (tmp_path / "out").exists()  # nothing written, nothing installed
    assert time.perf_counter() - t0 < 60


def test_sd21_configs_have_stable_diffusion_2_1_sizes():
    """Built on the meta device (no memory): the parameter counts of SD 2.x's UNet, VAE and OpenCLIP-H text encoder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from sd_step import sd21_configs
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = sd21_configs()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        text = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    count = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)]
    assert count == [865_910_724, 83_653_863, 340_387_840]
    assert cfg["unet"]["sample_size"] * 8 == 512 and sd21_configs(96)["unet"]["upcast_attention"]


def test_sd_step_runs_tiny_on_cpu(tmp_path):
    """The measuring code of the GPU run, for real on a tiny model: each stage steps, figures are finite."""
    from sd_step import main

    out = tmp_path / "sd.json"
    code = main(["--device", "cpu", "--tiny", "--dtype", "fp32", "--iters", "1", "--warmup", "0",
                 "--stages", "dreamfusion,magic3d-fine,prolificdreamer", "--prior-dir", str(tmp_path),
                 "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    stages = result["stages"]
    assert list(stages) == ["dreamfusion", "magic3d-fine", "prolificdreamer"]
    for row in stages.values():
        assert math.isfinite(row["total_ms"]) and row["total_ms"] > 0 and row["prior_px"] == 64
        assert row["peak_gpu_mib"] is None  # CPU
    assert stages["prolificdreamer"]["guidance"] == "vsd" and stages["dreamfusion"]["guidance_scale"] == 100.0
    assert stages["magic3d-fine"]["render_px"] == 32 and stages["dreamfusion"]["render_px"] == 16


def test_sd_step_refuses_an_unknown_stage():
    from sd_step import stage_settings

    with pytest.raises(ValueError, match="stage: expected dreamfusion, magic3d-fine or prolificdreamer"):
        stage_settings("fantasia", tiny=True)


def test_wheel_list_covers_what_the_gpu_machine_lacks():
    """Every dependency in pyproject.toml is either on the GPU machine already or fetched as a wheel, and the
    wheels are pinned, one version each; .whl/ is ignored by git."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+")

    from fetch_wheels import ON_MACHINE, WHEELS

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {norm(re.split(r"[<>=!~ ;\[]", dep)[0]) for dep in project["dependencies"]}
    needed |= {norm(re.split(r"[<>=!~ ;\[]", dep)[0]) for dep in project["optional-dependencies"]["cuda"]}
    pinned = [norm(spec.split("==")[0]) for spec in WHEELS]
    assert all("==" in spec for spec in WHEELS) and len(set(pinned)) == len(pinned)
    missing = needed - {norm(n) for n in ON_MACHINE} - set(pinned)
    assert not missing, f"neither on the GPU machine nor in scripts/fetch_wheels.py: {sorted(missing)}"
    assert ".whl/" in (ROOT / ".gitignore").read_text().splitlines()
