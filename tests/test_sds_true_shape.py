"""scripts/sds_true_shape.py: the guidance's gradient reaches the true mesh's three scales through the real prior."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("sds_true_shape", Path("scripts/sds_true_shape.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scales_move_under_the_guidance(script):
    lines = []
    out = script.true_shape_scales("red_cube", steps=4, lr=0.05, log=lines.append)
    assert out["caption"] == "a red cube" and len(out["scales"]) == 3
    assert all(math.isfinite(s) and 0.5 < s < 2.0 for s in out["scales"])
    # the means over steps 2 and 3 differ from 1: each step's SDS gradient reached the scales through the raster
    assert all(abs(s - 1.0) > 1e-4 for s in out["scales"])
    assert "height/width" in lines[0]


def test_unknown_object_and_stage_are_one_line_errors(script):
    with pytest.raises(SystemExit, match="unknown catalogue object 'red_cubes'"):
        script.true_shape_scales("red_cubes", steps=2)
    with pytest.raises(SystemExit, match="has no stage 'texture'"):
        script.true_shape_scales("red_cube", stage="texture", steps=2)
