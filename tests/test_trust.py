"""Trust: what a hostile or careless user can do to dream3d, case by case.

Each case asserts the exit code, the one error line, and what is on disk afterwards: no code from a run
folder or a prior folder runs, signals at every phase end in one line and a truthful, resumable summary,
user text stays literal, non-finite numbers stop the run, and a second process cannot share a run folder.
Signal cases run the real command in a subprocess and deliver real signals (at a phase through the
``DREAM3D_SIGNAL_AT`` fault point, or from outside mid-training).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dream3d import cli

# A two-stage NeRF recipe small enough for a few seconds a stage: 'fine' starts from 'coarse'.
TINY_STAGE = {
    "system": "nerf-sds", "steps": 6, "val_every": 3, "ckpt_every": 3,
    "camera": {"height": 32, "width": 32, "eval_size": 32},
    "renderer": {"ambient_only_steps": 2, "num_samples": 32},
    "representation": {"encoding": {"n_levels": 8, "log2_hashmap_size": 14}},
    "guidance": {"name": "sds", "guidance_scale": 100.0},
}
EXPORT = ["mesh_resolution=32", "texture_size=64", "video_views=2", "video_size=32"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny2.yaml"
    path.write_text(yaml.safe_dump({"stages": {"coarse": TINY_STAGE, "fine": {**TINY_STAGE, "init": "coarse"}}}))
    return path


def fit_args(recipe, prior, out, name, *extra) -> list[str]:
    return ["fit", "prompt=a red cube", f"recipe={recipe}", f"prior={prior}", f"output_dir={out}", f"name={name}",
            "--quiet", *EXPORT, *extra]


def run_cli(capsys, *args) -> tuple[int, list[str]]:
    code = cli.main(list(args))
    return code, capsys.readouterr().err.strip().splitlines()


def run_proc(args, env_extra=None, stdin_text=None, timeout=240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "dream3d.cli", *args], capture_output=True, text=True, env=env,
                          input=stdin_text if stdin_text is not None else "", timeout=timeout)


def one_error_line(stderr: str) -> str:
    """The error line; asserts it is the only one and that no traceback or library warning came with it."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in lines if ln.startswith("dream3d: error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], stderr
    assert all(ln.startswith("dream3d: ") for ln in lines), stderr  # nothing but dream3d's own lines
    return errors[0]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def done_run(recipe, latent_prior_dir, tmp_path_factory) -> Path:
    """A finished two-stage run, copied by the tests that spoil it."""
    out = tmp_path_factory.mktemp("runs")
    assert cli.main(fit_args(recipe, latent_prior_dir, out, "ok")) == 0
    return out / "tiny2" / "ok"


def spoilt_copy(done_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "tiny2" / "copy"
    shutil.copytree(done_run, run)
    return run


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize("override, needle", [
    ("stages.coarse.guidance.guidance_scale=inf", "stages.coarse.guidance.guidance_scale: expected finite numbers"),
    ("stages.coarse.guidance.guidance_scale=nan", "stages.coarse.guidance.guidance_scale: expected finite numbers"),
    ("stages.coarse.guidance.guidance_scale=-1", "stages.coarse.guidance.guidance_scale: expected a number >= 0"),
    ("stages.coarse.optim.lr_encoding=-0.01", "stages.coarse.optim.lr_encoding: expected a learning rate >= 0"),
    ("stages.coarse.optim.betas=[2,2]", "stages.coarse.optim.betas: expected [beta1, beta2] with each in [0, 1)"),
    ("stages.coarse.optim.eps=0", "stages.coarse.optim.eps: expected a number > 0"),
    ("stages.coarse.loss.sds=[0,1,nan,10]", "stages.coarse.loss.sds: expected finite numbers"),
    ("stages.coarse.loss.sds=[0,1,x,10]", "stages.coarse.loss.sds: expected a number or [start_step"),
    ("seed=-1", "seed: expected an integer from 0 to 4294967295"),
    ("seed=4294967296", "seed: expected an integer from 0 to 4294967295"),
    ("seed=1e3", "seed: expected integer"),
    ("threads=-2", "threads: expected 0 (automatic) or a positive integer"),
    ("steps=1", "steps: expected at least 2 (one per stage of recipe 'tiny2'"),
    ("optim.lr=0.1", "per-stage keys go under stages.<stage>: did you mean 'stages.<stage>.optim.lr_"),
    ("stages.coarse.optim.lr=0.1", "did you mean 'lr_encoding'"),
    ("name=..", "name: expected a folder name without '/'"),
    ("name=../../escape", "name: expected a folder name without '/'"),
    ("recipe=../configs/magic3d", "recipe: expected a recipe name from configs/ or a .yaml file, got '../configs"),
    ("recipe=/etc/passwd", "recipe: expected a recipe name from configs/ or a .yaml file, got '/etc/passwd'"),
    ("recipe=/nowhere/r.yaml", "recipe: file '/nowhere/r.yaml' not found"),
    ("prior=asset/shapeworld", "prior: "),
    ("stages.coarse.guidance.t_max=${oc.env:HOME}", "interpolation is not supported"),
])
def test_bad_value_is_one_line_and_writes_nothing(override, needle, recipe, latent_prior_dir, tmp_path, capsys):
    args = fit_args(recipe, latent_prior_dir, tmp_path / "out", "r")
    if override.startswith("recipe="):
        args = [a for a in args if not a.startswith("recipe=")]
    code, err = run_cli(capsys, *args, override)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("dream3d: error: ") and needle in err[0], err
    assert not (tmp_path / "out").exists()


def test_output_folder_that_is_a_file_fails_before_loading(recipe, latent_prior_dir, tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    start = time.perf_counter()
    code, err = run_cli(capsys, *fit_args(recipe, latent_prior_dir, tmp_path / "out", "r"))
    assert code == 2 and err == [f"dream3d: error: output_dir: {tmp_path / 'out'} is a file, expected a folder"]
    assert time.perf_counter() - start < 3.0  # found before the prior loads
    assert (tmp_path / "out").read_text() == "a file"


# ------------------------------------------------------------------------------------ literal user text
@pytest.mark.parametrize("prompt", [
    "a red cube #1", "'quoted' \"words\"", "true", "1e3", "&x", "a ${foo} cube", "${oc.env:HOME}",
    "a red cube: front", "null", "[1, 2]", "  spaced  ",
])
def test_text_keys_stay_literal_on_the_command_line_and_in_the_stored_config(prompt, recipe, latent_prior_dir,
                                                                            tmp_path):
    from dream3d.config import load_config, load_run_config, to_yaml

    cfg = load_config([f"prompt={prompt}", f"recipe={recipe}", f"prior={latent_prior_dir}", f"name=run #2 {prompt}",
                       "negative_prompt=blurry # not a comment"])
    assert cfg.prompt == prompt and cfg.name == f"run #2 {prompt}" and cfg.negative_prompt == "blurry # not a comment"
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    stored = load_run_config(tmp_path / "config.yaml")
    assert stored.prompt == prompt and stored.name == cfg.name and stored.negative_prompt == cfg.negative_prompt
    assert stored.seed == cfg.seed and stored.stages["fine"].init == "coarse"  # typed keys still typed
    assert os.environ.get("HOME", "/root") not in to_yaml(cfg) or "HOME" not in prompt


def test_optional_text_keys_take_null_and_plain_text_keys_keep_it(recipe, latent_prior_dir):
    from dream3d.config import load_config

    cfg = load_config(["prompt=null", f"recipe={recipe}", f"prior={latent_prior_dir}", "stages.fine.init=null"])
    assert cfg.prompt == "null" and cfg.stages["fine"].init is None


def test_file_recipe_runs_under_the_output_folder(recipe, latent_prior_dir, tmp_path):
    from dream3d.config import load_config
    from dream3d.rundir import new_run_dir

    cfg = load_config(["prompt=a cube", f"recipe={recipe}", f"prior={latent_prior_dir}", f"output_dir={tmp_path}"])
    assert cfg.recipe == "tiny2"
    assert new_run_dir(cfg).parent == tmp_path / "tiny2"


# -------------------------------------------------------------------------------------------- bad files
CONFIG_SPOILERS = {
    "random bytes": bytes(range(256)) * 4,
    "bad yaml": b"prompt: [unclosed\n  - x: : :\n",
    "a list": b"- prompt\n- seed\n",
    "empty": b"",
    "unknown key": b"prompt: a cube\nnot_a_key: 1\n",
}


@pytest.mark.parametrize("command", ["export", "render", "eval", "resume"])
@pytest.mark.parametrize("spoiler", list(CONFIG_SPOILERS))
def test_corrupt_config_is_one_line_and_changes_nothing(spoiler, command, done_run, tmp_path, capsys):
    run = spoilt_copy(done_run, tmp_path)
    shutil.rmtree(run / "export")  # render would otherwise just render the exported mesh, config unread
    (run / "config.yaml").write_bytes(CONFIG_SPOILERS[spoiler])
    before = snapshot(run)
    args = ["fit", f"resume={run}", "--quiet"] if command == "resume" else [command, str(run)]
    code, err = run_cli(capsys, *args)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"dream3d: error: {run / 'config.yaml'}: "), err
    assert snapshot(run) == before


def _crafted_pickle(path: Path, marker: Path) -> None:
    """A checkpoint that would run a shell command when unpickled with weights_only=False."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": Payload(), "global_step": 1}, path)


CKPT_SPOILERS = {
    "crafted pickle": None,
    "truncated": lambda data: data[: len(data) // 3],
    "empty": lambda data: b"",
    "foreign": lambda data: None,
}


@pytest.mark.parametrize("command", ["export", "render", "eval", "resume", "init"])
@pytest.mark.parametrize("spoiler", list(CKPT_SPOILERS))
def test_bad_checkpoint_is_refused_with_one_line_and_runs_nothing(spoiler, command, done_run, tmp_path, capsys):
    run = spoilt_copy(done_run, tmp_path)
    shutil.rmtree(run / "export")
    marker = tmp_path / "code-ran"
    # export/render/eval read the last stage; a resumed stage reads its own; a stage initialisation reads the
    # previous stage's checkpoint
    stage = "coarse" if command == "init" else "fine"
    ckpt = run / "ckpts" / stage / "last.ckpt"
    if command == "resume":
        s = summary(run)
        s["stages"]["fine"]["status"], s["status"] = "interrupted", "interrupted"
        (run / "summary.json").write_text(json.dumps(s))
    if command == "init":
        shutil.rmtree(run / "ckpts" / "fine")
        s = summary(run)
        del s["stages"]["fine"]
        s["status"] = "interrupted"
        (run / "summary.json").write_text(json.dumps(s))
    if spoiler == "crafted pickle":
        _crafted_pickle(ckpt, marker)
    elif spoiler == "foreign":
        torch.save([1, 2, 3], ckpt)
    else:
        ckpt.write_bytes(CKPT_SPOILERS[spoiler](ckpt.read_bytes()))
    args = ["fit", f"resume={run}", "--quiet"] if command in ("resume", "init") else [command, str(run)]
    code, err = run_cli(capsys, *args)
    assert not marker.exists()  # nothing in the file ran
    errors = [e for e in err if e.startswith("dream3d: error: ")]
    assert code != 0 and len(errors) == 1 and errors[0] == err[-1], err
    assert errors[0].startswith(f"dream3d: error: {ckpt}: "), err
    if spoiler == "crafted pickle":
        assert "refused" in errors[0]
    assert not (run / "export" / "model.glb").exists()
    if command in ("resume", "init"):
        assert summary(run)["status"] in ("failed", "interrupted")  # never left "running"
        assert summary(run)["status"] != "running"


def test_corrupt_model_index_is_one_line_and_leaves_no_run_folder(latent_prior_dir, recipe, tmp_path, capsys):
    prior = tmp_path / "prior"
    shutil.copytree(latent_prior_dir, prior)
    (prior / "model_index.json").write_text("{ not json")
    code, err = run_cli(capsys, *fit_args(recipe, prior, tmp_path / "out", "r"))
    assert code == 1 and err[-1].startswith(f"dream3d: error: prior: {prior / 'model_index.json'}: not valid JSON")
    assert not (tmp_path / "out" / "tiny2" / "r").exists()


def test_prior_with_custom_code_is_refused_without_asking(latent_prior_dir, recipe, tmp_path):
    """A tokenizer with an auto_map to code in the folder: transformers would ask "run the custom code? [y/N]"
    on stdin and run it on "y". dream3d never runs it and never asks."""
    prior = tmp_path / "prior"
    shutil.copytree(latent_prior_dir, prior)
    marker = tmp_path / "code-ran"
    config = json.loads((prior / "tokenizer" / "tokenizer_config.json").read_text())
    config.pop("tokenizer_class", None)
    config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", "tokenization_evil.EvilTokenizer"]}
    (prior / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(config))
    (prior / "tokenizer" / "tokenization_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import CLIPTokenizer as EvilTokenizer\n")
    done = run_proc(fit_args(recipe, prior, tmp_path / "out", "r"), stdin_text="y\ny\ny\n", timeout=120)
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert "contains custom code" in line and "[y/N]" not in done.stdout + done.stderr
    assert not marker.exists() and not (tmp_path / "out" / "tiny2" / "r").exists()


# -------------------------------------------------------------------------------------- signals, phases
@pytest.mark.parametrize("phase, sig, code", [
    ("startup", "INT", 130), ("startup", "TERM", 143),
    ("prior", "INT", 130), ("prior", "TERM", 143),
    ("init", "TERM", 143), ("export", "INT", 130),
])
def test_signal_at_each_phase_ends_in_one_line_and_a_truthful_summary(phase, sig, code, recipe, latent_prior_dir,
                                                                      tmp_path):
    out = tmp_path / "out"
    run = out / "tiny2" / "r"
    done = run_proc(fit_args(recipe, latent_prior_dir, out, "r"), {"DREAM3D_SIGNAL_AT": f"{phase}:{sig}"})
    assert done.returncode == code, done.stderr
    line = one_error_line(done.stderr)
    if phase in ("startup", "prior"):
        assert "nothing was written" in line and not run.exists()
        return
    assert f"dream3d fit resume={run}" in line
    s = summary(run)
    assert s["status"] == "interrupted" and s["error"] == f"SIG{sig}"
    assert all(st["status"] != "running" for st in s["stages"].values())
    if phase == "init":
        assert s["stages"]["coarse"]["status"] == "done" and "fine" not in s["stages"]
    assert not list(run.rglob(".*.tmp*"))
    again = run_proc(["fit", f"resume={run}", "--quiet"])  # and it resumes to the end
    assert again.returncode == 0, again.stderr
    assert summary(run)["status"] == "done" and (run / "export" / "model.glb").is_file()


def test_sigterm_mid_training_saves_a_checkpoint_and_exits_143(recipe, latent_prior_dir, tmp_path):
    out = tmp_path / "out"
    run = out / "tiny2" / "r"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("OMP_NUM_THREADS")  # threads= decides
    proc = subprocess.Popen([sys.executable, "-m", "dream3d.cli", *fit_args(recipe, latent_prior_dir, out, "r",
                             "stages.coarse.steps=2000", "threads=1")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    csv_path = run / "stages" / "coarse" / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (csv_path.is_file() and len(csv_path.read_text().splitlines()) > 4):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in one_error_line(err) or "SIGTERM at step" in one_error_line(err)
    s = summary(run)
    assert s["status"] == "interrupted" and s["error"] == "SIGTERM" and s["threads"] == 1
    step = s["stages"]["coarse"]["completed_steps"]
    assert 3 <= step < 2000 and s["stages"]["coarse"]["status"] == "interrupted"
    assert torch.load(run / "ckpts" / "coarse" / "last.ckpt", weights_only=True)["global_step"] == step


# ------------------------------------------------------------------------------------- non-finite guard
def test_non_finite_loss_stops_the_stage_and_keeps_the_last_good_checkpoint(recipe, latent_prior_dir, tmp_path,
                                                                            capsys):
    # the SDS weight is 1 up to step 3, then climbs towards 1e38: the weighted loss overflows to inf at step 4,
    # after the step-3 checkpoint
    code, err = run_cli(capsys, *fit_args(recipe, latent_prior_dir, tmp_path, "nan",
                                          "stages.coarse.loss.sds=[3,1,1e38,6]"))
    run = tmp_path / "tiny2" / "nan"
    assert code == 1 and len(err) == 2, err  # the run-folder line and the error
    assert err[1].startswith("dream3d: error: stage 'coarse' step 4: the weighted loss is inf; the last good "
                             f"checkpoint ({run / 'ckpts' / 'coarse' / 'last.ckpt'}, step 3) is kept"), err
    s = summary(run)
    assert s["status"] == "failed" and s["stages"]["coarse"]["status"] == "failed" and "fine" not in s["stages"]
    ckpt = torch.load(run / "ckpts" / "coarse" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 == s["stages"]["coarse"]["completed_steps"]
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (run / "ckpts" / "fine").exists() and not (run / "export").exists()


def test_non_finite_guidance_is_not_zeroed(latent_prior_dir):
    """SDS used to nan_to_num its gradient, silently turning a broken signal into zero; it now surfaces."""
    from dream3d.guidance.sds import distillation_loss

    z = torch.zeros(1, 4, 2, 2, requires_grad=True)
    loss, _ = distillation_loss(z, torch.full((1, 4, 2, 2), float("nan")), None, 0)
    assert torch.isnan(loss)


# ------------------------------------------------------------------------- locks, temps, exit of export
def test_second_process_on_a_run_folder_is_refused_and_a_dead_holder_is_taken_over(done_run, tmp_path, capsys):
    from dream3d.rundir import RunFolder

    run = spoilt_copy(done_run, tmp_path)
    s = summary(run)
    s["stages"]["fine"]["status"], s["status"] = "interrupted", "interrupted"
    (run / "summary.json").write_text(json.dumps(s))
    with RunFolder(run).lock():
        code, err = run_cli(capsys, "fit", f"resume={run}", "--quiet")
    assert code == 2 and err[-1] == f"dream3d: error: {run}: in use by another dream3d process (pid {os.getpid()}); " \
                                    "wait for it to finish or stop it, then resume"
    assert summary(run)["status"] == "interrupted"
    # a crashed holder: its pid is still in the lock file, but its flock died with it
    (run / ".lock").write_text("999999\n")
    stale = run / "ckpts" / "fine" / ".last.ckpt.tmp424242"
    stale.write_bytes(b"x" * 1000)
    code = cli.main(["fit", f"resume={run}", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert not stale.exists() and summary(run)["status"] == "done"
    # the resumed stage's line keeps the stage's total apart from what this run did
    fine = summary(run)["stages"]["fine"]
    assert f"stage fine: 6 steps, {fine['wall_s']} s in all (this run: 0 steps in {fine['run_wall_s']} s" in out


def test_failed_export_at_the_end_of_fit_exits_non_zero(done_run, tmp_path, capsys):
    run = spoilt_copy(done_run, tmp_path)
    shutil.rmtree(run / "export")
    (run / "export").write_text("in the way")  # the export folder cannot be made
    s = summary(run)
    s["status"] = "exporting"  # as a fit stopped during its export leaves it
    (run / "summary.json").write_text(json.dumps(s))
    code, err = run_cli(capsys, "fit", f"resume={run}", "--quiet")
    assert code == 1 and err[-1].startswith("dream3d: error: export failed: run folder: "), err
    s = summary(run)
    assert s["status"] == "failed" and s["error"].startswith("export failed") and "error" in s["export"]
    assert all(st["status"] == "done" for st in s["stages"].values())  # the trained stages are kept


# ---------------------------------------------------------------------------------------- disks and mounts
def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "600k"):
        pytest.skip("needs root and mount to make a small file system")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_full_disk_is_one_line_and_marks_the_run_failed(recipe, latent_prior_dir, small_disk, capsys):
    code, err = run_cli(capsys, *fit_args(recipe, latent_prior_dir, small_disk, "full"))
    assert code == 1 and err[-1].startswith("dream3d: error: ") and "No space left on device" in err[-1], err
    run = small_disk / "tiny2" / "full"
    assert summary(run)["status"] == "failed"
    assert not list(run.rglob(".*.tmp*"))  # no half-written temp file left behind


@pytest.mark.parametrize("command", ["export", "render", "eval"])
def test_read_only_run_folder_fails_before_the_work(command, done_run, tmp_path, capsys):
    disk = tmp_path / "ro"
    if not _mount_tmpfs(disk, "64m"):
        pytest.skip("needs root and mount to make a read-only file system")
    try:
        run = disk / "run"
        shutil.copytree(done_run, run)
        shutil.rmtree(run / "export")
        assert subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode == 0
        start = time.perf_counter()
        code, err = run_cli(capsys, command, str(run))
        assert code == 2 and err == [f"dream3d: error: run folder: cannot write in "
                                     f"{run / 'export' if command != 'eval' else run} (Read-only file system)"], err
        assert time.perf_counter() - start < 5.0  # refused before baking, rendering or classifying
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
