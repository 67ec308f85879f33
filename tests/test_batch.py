"""``dream3d batch`` through a real local Ray runtime with the tiny priors: fits, a failing prompt, a killed
worker, a rerun that skips, Ctrl-C, and the results (summary.json, summary.csv, gallery.html)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from script_module import load_script

from dream3d import cli
from dream3d.batch import run_batch
from dream3d.batch.jobs import make_jobs, read_prompts
from dream3d.config import ConfigError

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'dream3d[batch]')")

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "recipe=dreamfusion", "stages.coarse.steps=6", "stages.coarse.camera.height=32", "stages.coarse.camera.width=32",
    "stages.coarse.camera.eval_size=32", "stages.coarse.val_every=100", "stages.coarse.ckpt_every=2",
    "stages.coarse.renderer.ambient_only_steps=2", "stages.coarse.representation.encoding.n_levels=8",
    "stages.coarse.representation.encoding.log2_hashmap_size=14",
    "mesh_resolution=32", "texture_size=64", "video_views=4", "video_size=32",
]


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime for the in-process tests (2 CPUs: two fits at once), stopped at the end."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_prompts_files_are_read_with_one_line_errors(tmp_path):
    good = tmp_path / "p.txt"
    good.write_text("# a comment\na red cube\n\na mug\trecipe=mvdream stages.coarse.steps=3\n")
    assert read_prompts(good) == [(2, "a red cube", {}), (4, "a mug", {"recipe": "mvdream", "stages.coarse.steps": "3"})]
    for text, expected in (("a mug\tseed=3\n", "line 1: seed is set by the batch"),
                           ("a mug\trecipe\n", "line 1: argument 'recipe': expected key=value"),
                           ("a mug\tprompt='x\n", "line 1: No closing quotation"),
                           ("\n# nothing\n", "has no prompt lines")):
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=expected):
            read_prompts(bad)
    with pytest.raises(ConfigError, match="missing.txt not found"):
        read_prompts(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="seeds: expected an integer >= 1"):
        run_batch([f"prompts={good}", "seeds=0"])
    with pytest.raises(ConfigError, match="name: set by the batch"):
        run_batch([f"prompts={good}", "name=x"])


def test_jobs_are_made_for_the_seeds_asked_for_only(tmp_path):
    # the benchmark's --first-seed 3 --seeds 2 asks for seeds 3 and 4: no job (and no config check) for 0-2
    jobs = make_jobs([(1, "a red cube", {}), (2, "a mug", {})], {"recipe": "mvdream"}, [3, 4], tmp_path)
    assert [(j.prompt, j.seed, j.run_dir.name) for j in jobs] == [
        ("a red cube", 3, "a-red-cube-s3"), ("a red cube", 4, "a-red-cube-s4"), ("a mug", 3, "a-mug-s3"),
        ("a mug", 4, "a-mug-s4")]
    assert [j.index for j in jobs] == [0, 1, 2, 3] and all(j.overrides["seed"] == str(j.seed) for j in jobs)


def test_a_fit_whose_evaluation_was_impossible_counts_as_done(tmp_path):
    from dream3d.batch.jobs import Job, state, write_record

    run = tmp_path / "run"
    job = Job(0, "a dragon", 0, {}, run)
    assert state(job) == "empty"
    run.mkdir()
    (run / "config.yaml").write_text("prompt: a dragon\n")
    (run / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    assert state(job) == "partial"
    (run / "summary.json").write_text(json.dumps({"status": "done"}))
    assert state(job) == "fitted"  # only the evaluation is missing: a rerun evaluates it
    write_record(run, {"status": "done", "eval_error": "a dragon is not in the shape world"})
    assert state(job) == "done"  # recorded as impossible: a rerun leaves it


def test_without_ray_the_command_says_how_to_install_it(tmp_path, latent_prior_dir, monkeypatch, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    code = cli.main(["batch", f"prompts={prompts}", f"prior={latent_prior_dir}", f"out={tmp_path / 'b'}", *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and "needs Ray" in err and "pip install 'dream3d[batch]'" in err


@pytest.fixture(scope="module")
def finished_batch(ray_runtime, latent_prior_dir, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("batch")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\tstages.coarse.guidance.guidance_scale=50\n"
                       "a mug\tstages.coarse.steps=many\na red cube\n")
    out = tmp_path / "batch"
    args = [f"prompts={prompts}", f"prior={latent_prior_dir}", f"out={out}", "views=4", *SMALL]
    lines: list[str] = []
    summary = run_batch(args, progress=False, log=lines.append)
    return out, args, summary, lines


def test_a_batch_fits_every_prompt_reports_a_bad_one_and_skips_finished_fits_when_rerun(finished_batch):
    out, args, summary, lines = finished_batch
    rows = summary["rows"]
    assert [(r["prompt"], r["status"]) for r in rows] == [("a red cube", "done"), ("a blue sphere", "done"),
                                                          ("a mug", "failed"), ("a red cube", "done")]
    assert summary["counts"] == {"done": 3, "failed": 1, "interrupted": 0, "pending": 0}
    bad = rows[2]
    assert "stages.coarse.steps" in bad["error"] and bad["attempts"] == 0
    assert any("line 3" in line and "stages.coarse.steps" in line for line in lines)
    assert rows[0]["run"] != rows[3]["run"] and rows[3]["run"].endswith("a-red-cube-s0-2")  # the same prompt twice
    for r in (rows[0], rows[1], rows[3]):
        run = out / r["run"]
        assert r["attempts"] == 1 and r["error"] is None and r["wall_s"] > 0
        assert (run / "export" / "model.glb").is_file() and (run / "export" / "turntable.mp4").is_file()
        assert json.loads((run / "eval.json").read_text())["r_precision"] == r["r_precision"] is not None
        assert "dream3d batch: attempt 1" in (run / "batch.log").read_text()
    twice = [json.loads((out / r["run"] / "summary.json").read_text()) for r in (rows[0], rows[3])]
    assert twice[0]["stages"]["coarse"]["final"] == twice[1]["stages"]["coarse"]["final"]  # the same fit, any worker
    assert rows[0]["iou"] == rows[3]["iou"]
    stored = yaml.safe_load((out / rows[1]["run"] / "config.yaml").read_text())
    assert stored["stages"]["coarse"]["guidance"]["guidance_scale"] == 50.0  # the line's own override reached its fit
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["status"] for t in table] == ["done", "done", "failed", "done"] and table[2]["error"]
    page = (out / "gallery.html").read_text()
    assert page.count("<video") == 3 and "http" not in page  # offline: nothing from the network

    before = _files(out / "runs")
    again = run_batch(args, progress=False, log=lines.append)
    assert again["counts"]["done"] == 3 and all(r["skipped"] for r in again["rows"] if r["status"] == "done")
    assert _files(out / "runs") == before  # finished fits untouched: same bytes, same modification times
    assert any("3 fit(s) finished before" in line for line in lines)


def test_the_gallery_plays_and_sorts_in_chromium(finished_batch, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import npm_local

    if not Path("/usr/bin/chromium").exists() or not npm_local.installed("playwright-core"):
        pytest.skip("needs chromium (apt-get install -y chromium) and playwright-core (run "
                    "scripts/check_gallery_browser.py once)")
    out = finished_batch[0]
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_gallery_browser.py"), str(out / "gallery.html"),
                           "--out", str(tmp_path / "shot.png"), "--no-install"], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3/3 videos decoded"), done.stdout


def test_a_fit_whose_worker_is_killed_is_retried_and_resumes(ray_runtime, latent_prior_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    out = tmp_path / "batch"
    run = out / "runs" / "dreamfusion" / "a-red-cube-s0"
    args = [f"prompts={prompts}", f"prior={latent_prior_dir}", f"out={out}", "views=4", *SMALL,
            "stages.coarse.steps=60"]
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run_batch(args, progress=False, log=lambda _: None)))
    thread.start()
    deadline = time.monotonic() + 240
    while not (run / "ckpts" / "coarse" / "last.ckpt").is_file():  # a checkpoint: the fit is under way
        assert time.monotonic() < deadline and thread.is_alive(), "the fit never wrote a checkpoint"
        time.sleep(0.2)
    pid = json.loads((run / "batch.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)  # the worker process dies mid-fit
    thread.join(timeout=300)
    assert not thread.is_alive()
    row = result["rows"][0]
    assert row["status"] == "done" and row["attempts"] == 2, row
    record = json.loads((run / "batch.json").read_text())
    assert record["pid"] != pid and record["status"] == "done"
    log = (run / "batch.log").read_text()
    assert "attempt 2" in log and "(resuming)" in log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["stages"]["coarse"]["completed_steps"] == 60


def test_ctrl_c_stops_the_batch_and_the_same_command_finishes_it(latent_prior_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    out = tmp_path / "batch"
    run = out / "runs" / "dreamfusion" / "a-red-cube-s0"
    cmd = [sys.executable, "-m", "dream3d.cli", "batch", f"prompts={prompts}", f"prior={latent_prior_dir}",
           f"out={out}", "views=4", "workers=1", "--quiet", *SMALL, "stages.coarse.steps=400"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run / "ckpts" / "coarse" / "last.ckpt").is_file():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "rerun the same command to continue" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    stopped_at = summary["stages"]["coarse"]["completed_steps"]
    assert 0 < stopped_at < 400
    assert json.loads((out / "summary.json").read_text())["counts"]["interrupted"] == 1
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["stages"]["coarse"]["completed_steps"] == 400
    assert "(resuming)" in (run / "batch.log").read_text()


def test_the_benchmark_fits_through_the_batch_engine(ray_runtime, latent_prior_dir, tmp_path, monkeypatch):
    benchmark = load_script("benchmark.py")

    def no_subprocess(*args, **kwargs):
        raise AssertionError("the Ray engine started a subprocess fit or eval")

    monkeypatch.setattr(benchmark, "_run", no_subprocess)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    out = tmp_path / "bench"
    sets = [x for item in [f"prior={latent_prior_dir}", *SMALL[1:]] for x in ("--set", item)]
    code = benchmark.main(["--prompts", str(prompts), "--seeds", "1", "--recipes", "dreamfusion", "--engine", "ray",
                           "--jobs", "2", "--out", str(out), "--no-sheet", *sets])
    assert code == 0
    rows = json.loads((out / "benchmark.json").read_text())["runs"]
    assert [r["prompt"] for r in rows] == ["a red cube", "a blue sphere"]
    for r in rows:
        assert r["iou"] is not None and r["fit_s"] > 0 and not r["resumed"] and not r.get("error")
        run = out / "runs" / "dreamfusion" / f"{r['prompt'].replace(' ', '-')}-s0"
        assert json.loads((run / "batch.json").read_text())["status"] == "done"
        assert yaml.safe_load((run / "config.yaml").read_text())["mesh_resolution"] == 32  # the --set reached the fit
