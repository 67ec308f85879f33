"""`dream3d compare`: SDS and VSD fitted from one seed and budget, the report, continuing, two run folders,
bad input. A real (tiny) prior, the real trainer, exports and evaluation; only the sizes are small."""

from __future__ import annotations

import json
import re

import pytest
import torch

from dream3d import cli

SMALL = ["budget=6", "particles=2", "mesh_resolution=32", "texture_size=64", "video_views=4", "video_size=32",
         "views=4"]


@pytest.fixture(scope="module")
def compared(latent_prior_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "red-cube"
    code = cli.main(["compare", "prompt=a red cube", f"prior={latent_prior_dir}", f"out={out}", "seed=3", "--quiet",
                     *SMALL])
    assert code == 0
    return out


def test_compare_fits_both_from_one_seed_and_budget(compared):
    summary = json.loads((compared / "summary.json").read_text())
    runs = summary["runs"]
    assert list(runs) == ["sds, CFG 100, 2 particles", "vsd, CFG 7.5, 2 particles"]
    sds, vsd = runs.values()
    assert (sds["guidance"], sds["guidance_scale"], vsd["guidance"], vsd["guidance_scale"]) == ("sds", 100, "vsd", 7.5)
    assert sds["steps"] == vsd["steps"] == 6 and sds["particles"] == vsd["particles"] == 2
    for fig in (sds, vsd):
        assert fig["wall_s"] > 0 and fig["it_per_s"] > 0 and fig["peak_rss_mb"] > 0
        assert fig["saturation"] is not None and 0 <= fig["saturation"] <= 1
        assert fig["true_saturation"] > 0.8  # a red cube
        assert fig["diversity"] is not None and fig["diversity"] > 0  # two particles, two different results
        assert fig["r_precision"] is None or 0 <= fig["r_precision"] <= 1
    for kind in ("sds", "vsd"):
        cfg = (compared / kind / "config.yaml").read_text()
        assert "seed: 3" in cfg and "particles: 2" in cfg
    assert summary["compare_wall_s"] > 0


def test_report_links_only_files_it_holds(compared):
    page = (compared / "report.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sum(link.endswith(".mp4") for link in links) == 4  # 2 runs x 2 particles
    assert any("loss-coarse-vsd" in link for link in links) and any("loss-coarse-lora" in link for link in links)
    for link in (link for link in links if not link.startswith("data:")):  # the empty inline favicon
        assert not link.startswith(("/", "http")) and (compared / link).is_file(), link


def test_same_command_continues_and_keeps_finished_runs(compared, latent_prior_dir, capsys):
    ckpt = compared / "vsd" / "ckpts" / "coarse" / "last.ckpt"
    before = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"], ckpt.stat().st_mtime_ns
    assert cli.main(["compare", "prompt=a red cube", f"prior={latent_prior_dir}", f"out={compared}", "seed=3",
                     "--quiet", *SMALL]) == 0
    assert "already done" in capsys.readouterr().out
    assert (torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"], ckpt.stat().st_mtime_ns) == before


def test_compare_two_run_folders(compared, tmp_path):
    out = tmp_path / "pair"
    assert cli.main(["compare", str(compared / "vsd"), str(compared / "sds"), f"out={out}", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["runs"]) == ["vsd, CFG 7.5, 2 particles", "sds, CFG 100, 2 particles"]
    assert (out / "report.html").is_file()


@pytest.mark.parametrize("args,expected", [
    ([], "prompt"),
    (["prompt=a red cube", "budget=0"], "budget"),
    (["prompt=a red cube", "budgt=5"], "did you mean 'budget'"),
    (["only-one-folder"], "two run folders"),
])
def test_bad_input_is_one_line(args, expected, tmp_path, capsys):
    assert cli.main(["compare", f"out={tmp_path / 'x'}", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert not (tmp_path / "x").exists()


def test_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "not a dream3d run folder" in capsys.readouterr().err
