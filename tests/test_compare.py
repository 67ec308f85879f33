"""`dream3d compare`: SDS and VSD fitted from one seed and budget, the report, continuing, two run folders,
any other pair of recipes (recipes=), bad input. A real (tiny) prior, the real trainer, exports and evaluation;
only the sizes are small."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from dream3d import cli
from dream3d.config import list_recipes

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


@pytest.fixture(scope="module")
def compared_recipes(latent_prior_dir, tmp_path_factory):
    """magic3d against dreamfusion: two recipes outside the SDS-vs-VSD pair, one of them with two stages."""
    out = tmp_path_factory.mktemp("compare") / "recipes"
    code = cli.main(["compare", "prompt=a red cube", "recipes=magic3d,dreamfusion", f"prior={latent_prior_dir}",
                     f"out={out}", "seed=3", "--quiet", *SMALL, "budget=4", "particles=1"])
    assert code == 0
    return out


def test_compare_any_two_recipes(compared_recipes):
    summary = json.loads((compared_recipes / "summary.json").read_text())
    assert summary["title"] == "magic3d vs dreamfusion: \u201ca red cube\u201d"
    assert list(summary["runs"]) == ["magic3d: sds, CFG 20", "dreamfusion: sds, CFG 100"]  # in the order given
    magic3d, dreamfusion = summary["runs"].values()
    assert (magic3d["recipe"], dreamfusion["recipe"]) == ("magic3d", "dreamfusion")
    assert magic3d["stages"] == dreamfusion["stages"] == ["coarse"]  # magic3d's fine stage left out: one stage each
    assert magic3d["steps"] == dreamfusion["steps"] == 4 and magic3d["particles"] == dreamfusion["particles"] == 1
    assert sorted(p.name for p in compared_recipes.iterdir() if p.is_dir()) == ["dreamfusion", "magic3d", "media"]
    assert [run["run_dir"] for run in summary["runs"].values()] == [str(compared_recipes / "magic3d"),
                                                                    str(compared_recipes / "dreamfusion")]
    for recipe in ("magic3d", "dreamfusion"):
        cfg = (compared_recipes / recipe / "config.yaml").read_text()
        assert f"recipe: {recipe}" in cfg and "seed: 3" in cfg and "steps: 4" in cfg and "fine:" not in cfg


def test_any_two_recipes_continue(compared_recipes, latent_prior_dir, capsys):
    assert cli.main(["compare", "prompt=a red cube", "recipes=magic3d,dreamfusion", f"prior={latent_prior_dir}",
                     f"out={compared_recipes}", "seed=3", "--quiet", *SMALL, "budget=4", "particles=1"]) == 0
    out = capsys.readouterr().out
    assert out.count("is already done") == 2 and "compare: fitting" not in out


def test_sds_vsd_pair_in_either_order_keeps_its_folders(compared, latent_prior_dir, tmp_path, capsys):
    out = tmp_path / "red-cube"
    shutil.copytree(compared, out)  # a finished default comparison: sds/ and vsd/
    assert cli.main(["compare", "prompt=a red cube", "recipes=prolificdreamer,dreamfusion", f"prior={latent_prior_dir}",
                     f"out={out}", "seed=3", "--quiet", *SMALL]) == 0
    assert capsys.readouterr().out.count("is already done") == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["title"] == "VSD vs SDS: \u201ca red cube\u201d"
    assert list(summary["runs"]) == ["vsd, CFG 7.5, 2 particles", "sds, CFG 100, 2 particles"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["media", "sds", "vsd"]


def test_folder_of_another_recipe_is_refused(compared, latent_prior_dir, tmp_path, capsys):
    shutil.copytree(compared / "sds", tmp_path / "out" / "magic3d")  # a dreamfusion run where magic3d's should be
    assert cli.main(["compare", "prompt=a red cube", "recipes=magic3d,mvdream", f"prior={latent_prior_dir}",
                     f"out={tmp_path / 'out'}", "--quiet", *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a dreamfusion run, expected magic3d" in err[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["magic3d"]  # nothing fitted


def test_recipes_with_run_folders_is_refused(compared, capsys):
    assert cli.main(["compare", str(compared / "sds"), str(compared / "vsd"), "recipes=magic3d,mvdream"]) == 2
    assert "recipes: give either recipes= with a prompt" in capsys.readouterr().err


RECIPE_NAMES = ", ".join(list_recipes())  # every recipe in configs/, as the message lists them


@pytest.mark.parametrize("args,expected", [
    ([], "prompt"),
    (["prompt=a red cube", "recipes=magic3d"],
     f"recipes: expected two recipe names from {RECIPE_NAMES}, got 'magic3d'"),
    (["prompt=a red cube", "recipes=magic3d,magic4d"],
     f"recipes: expected two recipe names from {RECIPE_NAMES}, got 'magic3d,magic4d'"),
    (["prompt=a red cube", "recipes=a,b,c"], f"recipes: expected two recipe names from {RECIPE_NAMES}, got 'a,b,c'"),
    (["prompt=a red cube", "recipes=magic3d, magic3d"],
     "recipes: expected two different recipe names, got 'magic3d, magic3d'"),
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
