"""scripts/benchmark.py's table: mean and spread over seeds per recipe and prompt, every stage's columns."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_script", Path("scripts/benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
