"""scripts/benchmark.py's table: mean and spread over seeds per recipe and prompt, every stage's columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_module import load_script


@pytest.fixture(scope="module")
def benchmark():
    return load_script("benchmark.py")


def _row(prompt, seed, wall, iou, janus=None):
    return {"recipe": "dreamfusion", "prompt": prompt, "seed": seed, "peak_rss_mb": 1000.0 + seed, "export_s": 20.0,
            "total_s": wall + 40.0, "stages": {"coarse": {"wall_s": wall, "it_per_s": 300 / wall, "init_s": None}},
            "top_caption": prompt,
            "r_precision": 1.0, "object_accuracy": 1.0, "colour_accuracy": 0.5, "iou": iou, "colour_error": 0.1,
            "janus": janus}


def test_mean_and_spread(benchmark):
    assert benchmark.mean_spread([0.5, 0.7]) == "0.60 ± 0.10"
    assert benchmark.mean_spread([120.0, 140.0]) == "130 ± 10"
    assert benchmark.mean_spread([None, 2.0]) == "2"
    assert benchmark.mean_spread([None]) == "n/a"


def test_table_groups_seeds_per_recipe_and_prompt(benchmark):
    rows = [_row("a red cube", 0, 100.0, 0.8), _row("a red cube", 1, 120.0, 0.6),
            _row("a snowman", 0, 150.0, 0.5, janus=0.25)]
    lines = benchmark.table(rows).splitlines()
    assert len(lines) == 4 and "coarse s" in lines[0] and "janus" in lines[0]
    cube, snowman = lines[2].split(" | "), lines[3].split(" | ")
    assert cube[1] == "a red cube" and cube[2] == "2" and cube[3] == "150 ± 10" and cube[4] == "110 ± 10"
    assert "0.70 ± 0.10" in lines[2] and "n/a" in lines[2]  # IoU over two seeds; no Janus for a cube
    assert snowman[2] == "1" and "0.25" in lines[3]


# ----------------------------------------------------------------------------------------- catalogue benchmark


def _fig(prompt, kind, colour, has_front, recipe="magic3d", seed=0, **figures):
    base = {"r_precision": 1.0, "object_accuracy": 1.0, "colour_accuracy": 1.0, "iou": 0.9, "colour_error": 0.05,
            "janus": 0.0 if has_front else None, "front_ok": True if has_front else None,
            "front_accuracy": 1.0 if has_front else None, "volume_iou": 0.8, "chamfer": 0.02, "total_s": 100.0}
    base.update(figures)
    row = {"recipe": recipe, "prompt": prompt, "seed": seed, "kind": kind, "colour": colour, "has_front": has_front,
           "object": None, "run": "nowhere", "top_caption": prompt, **base}
    return row


def _judged(benchmark, row):
    row["pass"], row["failed"] = benchmark.pass_check(row)
    return row


def test_pass_criterion(benchmark):
    assert benchmark.pass_check(_fig("a red cube", "cube", "red", False)) == (True, [])
    edge = _fig("a red cube", "cube", "red", False, r_precision=0.9, iou=0.8, colour_error=0.10)
    assert benchmark.pass_check(edge)[0]  # the thresholds themselves pass
    for change, needle in [({"r_precision": 0.875}, "r_precision"), ({"iou": 0.79}, "iou"),
                           ({"colour_error": 0.11}, "colour_error"), ({"iou": None}, "iou")]:
        ok, failed = benchmark.pass_check(_fig("a red cube", "cube", "red", False, **change))
        assert not ok and len(failed) == 1 and needle in failed[0], (change, failed)
    # a front: Janus must be 0 and the front found within 45 degrees; objects without one ignore both
    assert benchmark.pass_check(_fig("a car", "composite", "mixed", True))[0]
    assert benchmark.pass_check(_fig("a car", "composite", "mixed", True, janus=0.11)) == (False, ["janus == 0.0"])
    assert benchmark.pass_check(_fig("a car", "composite", "mixed", True, front_ok=False)) == (False, ["front_ok"])
    assert benchmark.pass_check(_fig("a tree", "composite", "mixed", False, janus=None, front_ok=None))[0]
    # volume IoU is reported, not judged; outside the catalogue there is nothing to judge; errors fail
    assert benchmark.pass_check(_fig("a red cube", "cube", "red", False, volume_iou=0.1))[0]
    assert benchmark.pass_check(_fig("a dragon", "not in catalogue", None, None)) == (None, [])
    assert benchmark.pass_check({"error": "fit failed", "has_front": False}) == (False, ["error"])


def test_aggregates_by_kind_and_colour(benchmark):
    rows = [_judged(benchmark, r) for r in [
        _fig("a red cube", "cube", "red", False, iou=0.9, volume_iou=0.9),
        _fig("a blue cube", "cube", "blue", False, iou=0.5, volume_iou=0.5),  # fails
        _fig("a red sphere", "sphere", "red", False, colour_error=0.3, total_s=300.0),  # fails
        _fig("a car", "composite", "mixed", True, janus=0.25, front_ok=False, front_accuracy=0.5),  # fails
        _fig("a snowman", "composite", "mixed", True),
    ]]
    overall = benchmark.group_by(rows, None)
    assert list(overall) == [("magic3d", "all")]
    a = overall[("magic3d", "all")]
    assert a["runs"] == 5 and a["passed"] == 2 and a["pass rate"] == pytest.approx(0.4)
    assert a["janus"] == pytest.approx(0.125) and a["front found"] == pytest.approx(0.5)  # objects with a front only
    assert a["front_accuracy"] == pytest.approx(0.75) and a["wall s"] == pytest.approx(140.0)
    kinds = benchmark.group_by(rows, "kind")
    assert list(kinds) == [("magic3d", "cube"), ("magic3d", "sphere"), ("magic3d", "composite")]
    cube = kinds[("magic3d", "cube")]
    assert cube["runs"] == 2 and cube["pass rate"] == 0.5 and cube["iou"] == pytest.approx(0.7)
    assert cube["volume_iou"] == pytest.approx(0.7) and cube["janus"] is None and cube["front found"] is None
    colours = benchmark.group_by(rows, "colour")
    assert colours[("magic3d", "red")]["runs"] == 2 and colours[("magic3d", "red")]["pass rate"] == 0.5
    assert colours[("magic3d", "mixed")]["runs"] == 2
    markdown, aggregates = benchmark.report(rows, "header")
    assert "## By kind" in markdown and "## By colour" in markdown and "0.40 (2/5)" in markdown
    assert aggregates["by_kind"]["magic3d / cube"]["runs"] == 2
    lines = benchmark.rows_table(rows).splitlines()
    assert len(lines) == 2 + len(rows) and "**pass**" in lines[2] and "janus == 0.0, front_ok" in lines[5]


def test_ranking_best_and_worst(benchmark):
    rows = [_judged(benchmark, _fig(f"p{k}", "cube", "red", False, volume_iou=k / 20)) for k in range(12)]
    rows[3]["iou"] = 0.1
    rows[3]["pass"], rows[3]["failed"] = benchmark.pass_check(rows[3])
    rows.append({**_fig("broken", "cube", "red", False), "error": "fit failed", "pass": False, "failed": ["error"]})
    best, worst = benchmark.best_and_worst(rows)
    assert [r["prompt"] for r in best] == ["p11", "p10", "p9", "p8", "p7"]  # passes first, then volume IoU
    assert [r["prompt"] for r in worst] == ["p2", "p1", "p0", "p3", "broken"]  # failures and errors last
    few = benchmark.best_and_worst(rows[:6])
    assert len(few[0]) == 5 and len(few[1]) == 1  # never the same row twice


def test_subset_covers_every_primitive_kind_and_composite(benchmark):
    from dream3d.shapeworld.catalogue import catalogue, get
    from dream3d.shapeworld.primitives import PRIMITIVES

    prompts = benchmark.subset_prompts()
    assert len(prompts) == 16 == len(set(prompts))
    described = [benchmark.describe(p) for p in prompts]
    assert {d["kind"] for d in described} == set(PRIMITIVES) | {"composite"}
    composites = {o.name for o in catalogue() if o.category != "primitive"}
    assert {d["object"] for d in described if d["kind"] == "composite"} == composites
    assert all(get(p).caption == p for p in prompts)
    assert len(benchmark.catalogue_prompts()) == 58
    assert benchmark.describe("a purple torus") == {"object": "purple_torus", "kind": "torus", "colour": "purple",
                                                    "has_front": False}
    assert benchmark.describe("a dragon")["object"] is None


def test_contact_sheet_writer(benchmark, tmp_path):
    import numpy as np
    from PIL import Image

    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    row = _judged(benchmark, _fig("a red cube", "cube", "red", False))
    labels = benchmark.sheet_labels(row)
    assert labels[0] == "a red cube (seed 0)" and "PASS" in labels[1] and any("vol IoU 0.80" in t for t in labels)
    path = benchmark.write_sheet([("best", [(labels, [red, red, None])]), ("worst", [(["x", "FAIL"], [red])])],
                                 tmp_path / "sheet.png", title="test", label_width=100)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] == 100 + 3 * (16 + 4)
    assert (image == [255, 0, 0]).all(-1).sum() == 3 * 16 * 16  # three red frames pasted whole
    assert not list(tmp_path.glob(".*tmp*"))


def test_contact_sheet_shows_the_mesh_as_eval_turned_it(benchmark, tmp_path, monkeypatch):
    """The sheet draws the run's mesh turned by its eval yaw, so its views line up with the true object's."""
    import torch

    import dream3d.export.mesh as export_mesh
    from dream3d.eval import turn
    from dream3d.representations.mesh import TexturedMesh
    from dream3d.shapeworld import get

    cube = get("red_cube")
    mesh = TexturedMesh(cube.verts, cube.faces, vertex_colors=cube.colors)
    drawn = []
    monkeypatch.setattr(export_mesh, "load_mesh", lambda path: mesh)
    monkeypatch.setattr(benchmark, "_render", lambda m, size, views: drawn.append(m.verts) or [None] * views)
    row = _judged(benchmark, _fig("a red cube", "cube", "red", False)) | {"run": str(tmp_path), "yaw": 30.0}
    labels, frames = benchmark.sheet_entry(row, size=16)
    assert len(frames) == 1 + benchmark.SHEET_VIEWS
    assert torch.allclose(drawn[-1], turn(mesh, 30.0).verts) and not torch.allclose(drawn[-1], mesh.verts)
    benchmark.sheet_entry(row | {"yaw": None}, size=16)  # objects with a front: as it stands
    assert torch.equal(drawn[-1], mesh.verts)


def test_contact_sheet_frames_are_supersampled_not_aliased(benchmark, monkeypatch):
    """A fitted mesh has many sub-pixel facets with noisy normals: sampled once a pixel they alias into a speckled,
    furry skin the mesh does not show at full size. The sheet's frames are the mean of SHEET_SUPERSAMPLE^2 samples a
    pixel: the block mean of the large render, and far smoother inside the object than a direct small render."""
    import numpy as np
    import torch

    from dream3d.representations.mesh import TexturedMesh
    from dream3d.shapeworld.primitives import sphere

    ball = sphere(0.45, rings=60, segments=120)
    verts = torch.as_tensor(np.asarray(ball.verts), dtype=torch.float32)
    verts = verts * (1 + 0.03 * torch.rand(verts.shape[0], 1, generator=torch.Generator().manual_seed(0)))
    mesh = TexturedMesh(verts, torch.as_tensor(np.asarray(ball.faces)).long(),
                        vertex_colors=torch.tensor([[0.1, 0.2, 0.8]]).expand(verts.shape[0], 3).contiguous())
    size, k = 32, benchmark.SHEET_SUPERSAMPLE
    frame = benchmark._render(mesh, size, 1)
    assert frame.shape == (1, size, size, 3) and frame.dtype == np.uint8
    monkeypatch.setattr(benchmark, "SHEET_SUPERSAMPLE", 1)  # the sheet's framing, one sample a pixel
    big = benchmark._render(mesh, size * k, 1)
    block = big.reshape(1, size, k, size, k, 3).astype(np.float32).mean(axis=(2, 4))
    assert np.abs(frame - block).max() <= 0.5
    direct = benchmark._render(mesh, size, 1)

    def speckle(f):  # mean |difference| of horizontal neighbours where both are well inside the object
        inside = (255 - f[0].astype(int)).max(-1) > 100
        both = inside[:, 1:] & inside[:, :-1]
        return np.abs(np.diff(f[0].astype(float), axis=1)).sum(-1)[both].mean()

    assert speckle(frame) < 0.6 * speckle(direct)


def test_parse_args_and_job_environment(benchmark):
    a = benchmark.parse_args(["--subset", "--recipe", "dreamfusion", "--jobs", "3", "--name", "x"])
    assert a.subset and a.recipes == "dreamfusion" and a.jobs == 3 and a.name == "x" and a.seeds is None
    assert benchmark.parse_args(["--catalogue", "--seeds", "2"]).seeds == 2
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--catalogue", "--subset"])
    env = benchmark.job_env(1)
    assert env["OMP_NUM_THREADS"] == "1" and env["MKL_NUM_THREADS"] == "1"


def test_resume_reuses_a_finished_run(benchmark, tmp_path, monkeypatch):
    """A run folder with eval.json and the benchmark's own record (same settings) is not fitted again."""
    run = tmp_path / "runs" / "magic3d" / "a-red-cube-s0"
    run.mkdir(parents=True)
    figures = {k: 0.5 for k in benchmark.FIGURES} | {"janus": None, "front_ok": None, "front_accuracy": None,
                                                     "front_azimuth": None, "top_caption": "a red cube", "yaw": 0.0}
    (run / "eval.json").write_text(json.dumps(figures))
    (run / "summary.json").write_text(json.dumps({"stages": {"coarse": {"wall_s": 10.0}}, "peak_rss_mb": 900}))
    (run / benchmark.RUN_FILE).write_text(json.dumps({"settings": benchmark._settings(None), "fit_s": 90.0,
                                                      "eval_s": 10.0, "total_s": 100.0}))

    def no_subprocess(*args, **kwargs):
        raise AssertionError("resumed run started a subprocess")

    monkeypatch.setattr(benchmark, "_run", no_subprocess)
    row = benchmark.run_one("magic3d", "a red cube", 0, None, tmp_path, fresh=False)
    assert row["resumed"] and row["total_s"] == 100.0 and row["iou"] == 0.5 and row["kind"] == "cube"
    assert row["pass"] is False and "r_precision >= 0.9" in row["failed"]
    with pytest.raises(AssertionError):  # other settings (or --fresh): fitted again
        benchmark.run_one("magic3d", "a red cube", 0, 100, tmp_path, fresh=False)

    calls = []

    def eval_only(cmd, env):  # an eval.json from before the yaw alignment: evaluated again, not refitted
        calls.append(cmd[3])
        (run / "eval.json").write_text(json.dumps(figures | {"iou": 0.7, "yaw": 35.0}))

    figures.pop("yaw")
    run.mkdir(parents=True, exist_ok=True)  # the refit above cleared the folder
    (run / "eval.json").write_text(json.dumps(figures))
    (run / "summary.json").write_text(json.dumps({"stages": {"coarse": {"wall_s": 10.0}}, "peak_rss_mb": 900}))
    (run / benchmark.RUN_FILE).write_text(json.dumps({"settings": benchmark._settings(None), "fit_s": 90.0,
                                                      "eval_s": 10.0, "total_s": 100.0}))
    monkeypatch.setattr(benchmark, "_run", eval_only)
    row = benchmark.run_one("magic3d", "a red cube", 0, None, tmp_path, fresh=False)
    assert calls == ["eval"] and row["resumed"] and row["iou"] == 0.7 and row["yaw"] == 35.0


def test_run_all_runs_jobs_at_once_and_keeps_the_order(benchmark, monkeypatch, capsys):
    import threading
    import time

    running, peak, lock = [0], [0], threading.Lock()

    def fake_run_one(recipe, prompt, seed, steps, out, threads, fresh):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05 if prompt != "a red cube" else 0.15)
        with lock:
            running[0] -= 1
        if prompt == "a mug":
            raise KeyError("bug")  # a crash becomes an error row, the other runs go on
        return _judged(benchmark, _fig(prompt, "cube", "red", False, seed=seed, recipe=recipe))

    monkeypatch.setattr(benchmark, "run_one", fake_run_one)
    tasks = [("magic3d", p, 0) for p in ("a red cube", "a blue cube", "a mug", "a car")]
    rows = benchmark.run_all(tasks, None, Path("."), jobs=2, threads=1, fresh=False)
    assert peak[0] == 2 and [r["prompt"] for r in rows] == ["a red cube", "a blue cube", "a mug", "a car"]
    assert rows[2]["error"].startswith("KeyError") and rows[2]["pass"] is False and rows[0]["pass"]
    assert "[4/4" in capsys.readouterr().out


def test_set_overrides_reach_the_settings_so_a_changed_lever_refits(benchmark):
    before = benchmark._settings(None)
    args = benchmark.parse_args(["--subset", "--set", "stages.coarse.renderer.background=solid"])
    assert args.overrides == ["stages.coarse.renderer.background=solid"]
    benchmark.OVERRIDES[:] = args.overrides
    try:
        assert benchmark._settings(None) == {**before, "set": ["stages.coarse.renderer.background=solid"]}
    finally:
        benchmark.OVERRIDES[:] = []
    assert benchmark._settings(None) == before


def _finished_run(folder: Path) -> None:
    """A run folder laid out as a finished two-stage fit leaves it (file contents are stand-ins)."""
    from dream3d.rundir import RunFolder

    run = RunFolder(folder)
    for stage in ("coarse", "fine"):
        run.ckpt(stage).parent.mkdir(parents=True, exist_ok=True)
        run.ckpt(stage).write_bytes(stage.encode())
        run.validation_dir(stage).mkdir(parents=True, exist_ok=True)
        (run.validation_dir(stage) / "step000100.png").write_bytes(b"png")
    run.export_dir.mkdir(parents=True)
    run.mesh_path.write_bytes(b"glb")
    run.eval_path.write_text("{}")
    run.config_path.write_text("prompt: a red cube\n")
    (folder / "benchmark_run.json").write_text("{}")
    run.write_summary({"status": "done", "wall_s": 30.0, "export": {"faces": 10},
                       "stages": {"coarse": {"status": "done", "wall_s": 20.0}, "fine": {"status": "done", "wall_s": 10.0}}})


def test_refit_copies_a_run_without_the_refitted_stage(benchmark, tmp_path):
    """--refit fine --from <other>: the copy keeps the coarse stage byte for byte and loses the fine stage, the
    export and the figures, so `dream3d fit resume=` refits exactly the fine stage; the source is untouched."""
    from dream3d.rundir import RunFolder

    source, dest = tmp_path / "a" / "run", tmp_path / "b" / "run"
    _finished_run(source)
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    benchmark.copy_without(source, dest, "fine")
    src, dst = RunFolder(source), RunFolder(dest)
    assert dst.ckpt("coarse").read_bytes() == b"coarse" and (dst.validation_dir("coarse") / "step000100.png").is_file()
    assert not dst.ckpt("fine").parent.exists() and not dst.stage_dir("fine").exists()
    assert not dst.export_dir.exists() and not dst.eval_path.exists() and not (dest / "benchmark_run.json").exists()
    summary = dst.read_summary()
    assert list(summary["stages"]) == ["coarse"] and summary["status"] == "interrupted" and "export" not in summary
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before and src.read_summary()["status"] == "done"
    benchmark.copy_without(source, dest, "coarse")  # a second copy replaces the first
    assert not dst.ckpt("coarse").exists() and dst.read_summary()["stages"] == {}
    with pytest.raises(benchmark.RunFailed, match="no stage 'refine'"):
        benchmark.copy_without(source, dest, "refine")
    with pytest.raises(benchmark.RunFailed, match="not a run folder"):
        benchmark.copy_without(tmp_path / "nothing", dest, "fine")


def test_refit_needs_its_source(benchmark, tmp_path):
    with pytest.raises(SystemExit, match="go together"):
        benchmark.main(["--prompts", str(tmp_path / "p.txt"), "--refit", "fine", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="expected a benchmark folder"):
        benchmark.main(["--refit", "fine", "--from", str(tmp_path), "--out", str(tmp_path / "o")])


def test_seeds_start_at_first_seed(benchmark):
    assert benchmark.make_tasks(["mvdream"], ["a red cube", "a mug"], 2, 3) == [
        ("mvdream", "a red cube", 3), ("mvdream", "a red cube", 4), ("mvdream", "a mug", 3), ("mvdream", "a mug", 4)]
    assert benchmark.make_tasks(["mvdream"], ["a red cube"], 1) == [("mvdream", "a red cube", 0)]


@pytest.mark.parametrize("key, hint", [("seed", "--first-seed"), ("prompt", "--prompts"), ("output_dir", "--out")])
def test_set_refuses_the_keys_each_run_gets_from_the_benchmark(benchmark, tmp_path, key, hint):
    # a run fitted with --set seed=1 used to be filed and reported as seed 0
    with pytest.raises(SystemExit, match=f"--set {key}=.*{hint}"):
        benchmark.main(["--subset", "--set", f"{key}=1", "--out", str(tmp_path)])
    assert not (tmp_path / "runs").exists()


def test_first_seed_must_not_be_negative(benchmark, tmp_path):
    with pytest.raises(SystemExit, match="--first-seed -1"):
        benchmark.main(["--subset", "--first-seed", "-1", "--out", str(tmp_path)])
