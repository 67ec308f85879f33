"""The comparison report of ``dream3d compare``: figures of real (tiny) runs, loss plots, the HTML page and its
media, bad input, and (where Chromium and node are installed) the page in a real browser."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_fit import fit

from dream3d.compare.errors import ReportError
from dream3d.compare.figures import diversity, foreground_saturation, render_particles, run_figures
from dream3d.compare.plots import loss_plot
from dream3d.compare.report import PLOT_KEYS, write_report
from dream3d.export.mesh import load_mesh, write_glb
from dream3d.export.video import render_turntable
from dream3d.representations.mesh import TexturedMesh
from dream3d.rundir import RunFolder
from dream3d.shapeworld.primitives import cube

ROOT = Path(__file__).resolve().parents[1]
VSD_LABEL = "VSD <2 particles> & co"  # needs escaping in the page


def quiet(_: str) -> None:
    pass


def add_particle(run: Path, mesh: TexturedMesh, k: int = 1) -> None:
    """A second particle in the layout of particles=N runs: export/particle<k>/model.glb + turntable.mp4."""
    folder = run / "export" / f"particle{k}"
    write_glb(mesh, folder / "model.glb")
    render_turntable(mesh, folder / "turntable", views=4, size=32, formats=("mp4",))


def turned(mesh: TexturedMesh, degrees: float, scale: float) -> TexturedMesh:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rot = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return dataclasses.replace(mesh, verts=(mesh.verts @ rot.T) * scale)


def solid_cube(rgb: tuple[float, float, float]) -> TexturedMesh:
    m = cube(0.8)
    return TexturedMesh(m.verts, m.faces, vertex_colors=torch.tensor(rgb).expand_as(m.verts).clone())


@pytest.fixture(scope="module")
def runs(latent_prior_dir, tmp_path_factory) -> dict[str, Path]:
    """One real fit (the SDS run), and two copies with a second particle: a turned, shrunk copy of the mesh
    ("two") and an identical copy ("same")."""
    out = tmp_path_factory.mktemp("runs")
    code, sds = fit(latent_prior_dir, out, "sds")
    assert code == 0
    mesh = load_mesh(sds / "export" / "model.glb")
    two, same = out / "two", out / "same"
    shutil.copytree(sds, two)
    add_particle(two, turned(mesh, 90.0, 0.7))
    shutil.copytree(sds, same)
    add_particle(same, mesh)
    return {"sds": sds, "two": two, "same": same}


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("compare") / "cmp"
    summary = write_report(out, {"SDS": runs["sds"], VSD_LABEL: runs["two"]}, "SDS vs VSD <test>", log=quiet)
    return out, summary


# ----------------------------------------------------------------------------------------- figures


def test_particle_layout_is_numeric(tmp_path):
    export = tmp_path / "export"
    for rel in ("model.glb", "turntable.mp4", "particle10/model.glb", "particle2/model.glb",
                "particle2/turntable.mp4", "particles/model.glb"):
        (export / rel).parent.mkdir(parents=True, exist_ok=True)
        (export / rel).write_bytes(b"x")
    folder = RunFolder(tmp_path)
    assert folder.particle_meshes() == [export / "model.glb", export / "particle2" / "model.glb",
                                        export / "particle10" / "model.glb"]
    assert folder.particle_videos() == [export / "turntable.mp4", export / "particle2" / "turntable.mp4"]


def test_saturation_of_red_and_grey_objects():
    red, grey = render_particles([solid_cube((1.0, 0.0, 0.0)), solid_cube((0.5, 0.5, 0.5))], views=8, size=48)
    assert foreground_saturation(red[..., :3], red[..., 3:]) == pytest.approx(1.0, abs=0.03)  # shading-independent
    assert foreground_saturation(grey[..., :3], grey[..., 3:]) == pytest.approx(0.0, abs=0.01)
    # only the foreground counts: a red pixel behind alpha 0 is ignored; no foreground at all gives None
    rgb = torch.tensor([[[[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]]])
    assert foreground_saturation(rgb, torch.tensor([[[[1.0], [0.0]]]])) == pytest.approx(0.5)
    assert foreground_saturation(rgb, torch.zeros(1, 1, 2, 1)) is None


def test_diversity_of_particles(runs):
    same, two = run_figures(runs["same"], log=quiet), run_figures(runs["two"], log=quiet)
    assert same["particles"] == two["particles"] == 2
    assert same["diversity"] == 0.0
    assert two["diversity"] > 0.01
    renders = render_particles([solid_cube((1.0, 0.0, 0.0))], views=2, size=16)
    assert diversity(renders) is None


def test_run_figures_of_a_fit(runs):
    run = runs["sds"]
    fig = run_figures(run, log=quiet)
    assert (fig["prompt"], fig["recipe"], fig["guidance"], fig["guidance_scale"]) == ("a red cube", "dreamfusion",
                                                                                     "sds", 100.0)
    assert fig["steps"] == 20 and fig["particles"] == 1 and fig["stages"] == ["coarse"]
    assert fig["wall_s"] > 0 and fig["it_per_s"] > 0 and fig["peak_rss_mb"] > 0
    assert 0.0 <= fig["saturation"] <= 1.0
    assert fig["true_saturation"] > 0.8  # the catalogue's red (0.86, 0.12, 0.12)
    assert fig["diversity"] is None and "one particle" in fig["unavailable"]["diversity"]
    for key in ("r_precision", "object_accuracy", "colour_accuracy", "iou", "colour_error"):
        assert (fig[key] is not None and 0.0 <= fig[key] <= 1.0) or fig["unavailable"][key], key
    # eval.json is reused while it is newer than the mesh, and computed again once the mesh changes
    eval_json, glb = run / "eval.json", run / "export" / "model.glb"
    first = eval_json.stat().st_mtime_ns
    run_figures(run, log=quiet)
    assert eval_json.stat().st_mtime_ns == first
    os.utime(glb, ns=(first + 10**9, first + 10**9))
    run_figures(run, log=quiet)
    assert eval_json.stat().st_mtime_ns > first


# ----------------------------------------------------------------------------------------- loss plots


def write_metrics(path: Path, columns: dict[str, np.ndarray]) -> Path:
    n = len(next(iter(columns.values())))
    lines = [",".join(["step", "time", *columns])]
    lines += [",".join([str(i), f"{0.1 * i:.3f}", *(f"{v[i]:.6g}" for v in columns.values())]) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_loss_plot_draws_each_run_that_has_the_column(tmp_path):
    rng = np.random.default_rng(0)
    steps = np.arange(200)
    a = write_metrics(tmp_path / "a.csv", {"loss": np.exp(-steps / 50) + 0.1 * rng.random(200),
                                           "sds": rng.random(200)})
    b = write_metrics(tmp_path / "b.csv", {"loss": 0.5 + 0.1 * rng.random(200), "vsd": rng.random(200),
                                           "lora": rng.random(200)})
    out = tmp_path / "loss.png"
    assert loss_plot({"SDS": a, "VSD": b}, "loss", out) == ["SDS", "VSD"]
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert image.shape == (360, 720, 3)
    assert (np.abs(image - 255).max(-1) > 40).mean() > 0.02  # axes, labels and curves on white
    for colour in ((31, 119, 180), (214, 39, 40)):  # both runs' colours are on the chart
        assert (np.abs(image - np.array(colour)).max(-1) < 30).sum() > 100, colour
    assert loss_plot({"SDS": a, "VSD": b}, "vsd", tmp_path / "vsd.png") == ["VSD"]
    assert loss_plot({"SDS": a, "VSD": b}, "nothing", tmp_path / "none.png") == []
    assert not (tmp_path / "none.png").exists()
    with pytest.raises(ReportError, match="missing.csv"):
        loss_plot({"A": tmp_path / "missing.csv"}, "loss", tmp_path / "x.png")


# ----------------------------------------------------------------------------------------- the report folder


class _Links(HTMLParser):
    """Every src/href of a page, and the attributes of its <video> tags."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.videos: list[dict] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [value for name, value in attrs if name in ("src", "href") and value]
        if tag == "video":
            self.videos.append(dict(attrs))


def test_summary_json_has_both_runs(report, runs):
    out, summary = report
    data = json.loads((out / "summary.json").read_text())
    assert data == summary and data["title"] == "SDS vs VSD <test>" and data["created"]
    assert list(data["runs"]) == ["SDS", VSD_LABEL]
    sds, vsd = data["runs"]["SDS"], data["runs"][VSD_LABEL]
    assert Path(sds["run_dir"]) == runs["sds"] and Path(vsd["run_dir"]) == runs["two"]
    assert (sds["particles"], vsd["particles"]) == (1, 2)
    for fig in (sds, vsd):
        assert {"wall_s", "it_per_s", "peak_rss_mb", "saturation", "true_saturation", "r_precision", "iou",
                "diversity"} <= set(fig)
    assert vsd["diversity"] > 0 and sds["diversity"] is None
    assert {p["key"] for p in data["plots"]} == {"loss", "sds"} <= set(PLOT_KEYS)  # the fits log loss and sds
    assert set(data["definitions"]) >= {"saturation", "diversity"}
    assert not list(out.rglob(".*tmp*"))  # atomic writes leave no temporaries


def test_report_html_references_only_files_it_holds(report, runs):
    out, summary = report
    page = (out / "report.html").read_text()
    parser = _Links()
    parser.feed(page)
    files = [link for link in parser.links if not link.startswith("data:")]
    assert files, "the page links no media"
    for link in files:
        assert not urllib.parse.urlparse(link).scheme and not link.startswith("/"), link  # relative, offline
        target = (out / urllib.parse.unquote(link)).resolve()
        assert target.is_file() and target.is_relative_to(out.resolve()), link
    assert "script" not in parser.tags
    assert len(parser.videos) == 3  # SDS: 1 particle, VSD: 2
    assert all({"controls", "autoplay", "loop", "muted", "playsinline"} <= set(v) for v in parser.videos)
    assert sum(link.endswith(".png") for link in files) == 2 + len(summary["plots"])  # val grids + plots
    assert "&lt;2 particles&gt; &amp; co" in page and "<2 particles>" not in page  # escaped
    copy = out / summary["runs"][VSD_LABEL]["media"]["videos"][1]["file"]
    assert copy.read_bytes() == (runs["two"] / "export" / "particle1" / "turntable.mp4").read_bytes()
    assert not copy.is_symlink()


# ----------------------------------------------------------------------------------------- bad input


def one_line_error(call, *needles: str) -> None:
    with pytest.raises(ReportError) as info:
        call()
    message = str(info.value)
    assert len(message.splitlines()) == 1 and all(n in message for n in needles), message


def test_bad_input_names_the_file(runs, tmp_path):
    out = tmp_path / "cmp"
    missing = tmp_path / "nowhere"
    one_line_error(lambda: write_report(out, {"a": missing}, "t", log=quiet), str(missing), "not a folder")
    one_line_error(lambda: run_figures(tmp_path, log=quiet), str(tmp_path / "config.yaml"))
    untrained = tmp_path / "untrained"  # a run folder with a config but no checkpoint and no mesh
    untrained.mkdir()
    shutil.copy(runs["sds"] / "config.yaml", untrained / "config.yaml")
    one_line_error(lambda: write_report(out, {"a": runs["sds"], "b": untrained}, "t", log=quiet),
                   str(untrained / "export" / "model.glb"), "cannot be exported")
    one_line_error(lambda: write_report(out, {}, "t", log=quiet), "no runs")
    assert not out.exists()  # nothing written before the input is known to be good


# ----------------------------------------------------------------------------------------- in a browser


def _browser_missing() -> str:
    sys.path.insert(0, str(ROOT / "scripts"))
    import npm_local

    if not Path("/usr/bin/chromium").exists():
        return "chromium is not installed (apt-get install -y chromium)"
    if shutil.which("node") is None:
        return "node is not installed"
    if not npm_local.installed("playwright-core"):
        return f"playwright-core is not in {npm_local.PREFIX} (run scripts/check_report_browser.py once)"
    return ""


def test_report_plays_in_chromium(report, tmp_path):
    why = _browser_missing()
    if why:
        pytest.skip(why)
    out, summary = report
    shot = tmp_path / "shot.png"

    def check(folder: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "check_report_browser.py"),
                               str(folder / "report.html"), "--out", str(shot), "--no-install", "--timeout", "60"],
                              capture_output=True, text=True, timeout=180)

    done = check(out)
    assert done.returncode == 0, done.stderr
    assert "3/3 videos decoded" in done.stdout and "4/4 images loaded" in done.stdout, done.stdout
    assert Image.open(shot).size[1] > 800  # the full page, not the viewport
    # and it notices a video that is not one, and a missing image
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    video = summary["runs"]["SDS"]["media"]["videos"][0]["file"]
    (broken / video).write_text("not a video")
    (broken / summary["plots"][0]["file"]).unlink()
    done = check(broken)
    err = done.stderr.strip()
    assert done.returncode == 1 and len(err.splitlines()) == 1, err
    assert f"video {video} (no playable source" in err and f"image {summary['plots'][0]['file']} (HTTP 404)" in err
