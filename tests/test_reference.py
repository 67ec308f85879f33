"""The reference view (dream3d/reference.py): the medoid, the mask, the files it leaves, and the loss through the
real trainer."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from dream3d.config import ConfigError, load_config
from dream3d.io import save_png, write_json
from dream3d.prior import load_prior
from dream3d.reference import ReferenceConfig, load_or_draw, medoid, object_mask, settings_record
from dream3d.run import fit


def test_medoid_is_the_sample_most_like_the_others():
    base = torch.zeros(6, 8, 8, 3)
    base[:, 2:6, 2:6] = 0.5
    base += torch.tensor([-0.02, 0.0, 0.0, 0.02, 0.01, -0.01])[:, None, None, None]  # five nearly alike ...
    base[1] = 0.0
    base[1, 0:2, 0:4] = 0.9  # ... and one with its object elsewhere, in another colour
    assert medoid(base) == 2
    assert medoid(base[:1]) == 0


def test_mask_leaves_enclosed_white_and_faint_edges_to_the_guidance():
    image = torch.ones(32, 32, 3)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    r = ((yy - 16) ** 2 + (xx - 16) ** 2).sqrt()
    ring = (r > 8) & (r <= 10)
    image[ring] = 0.6  # a grey ring around a background-coloured middle: a white face, or a hole (a mug's handle)
    image[0, 0] = 0.99  # background noise under the threshold
    image[2, 2] = 0.97  # a faint pixel: neither clearly object nor clearly background
    mask, known = object_mask(image, threshold=0.05)
    assert torch.equal(mask.bool(), ring)
    assert not bool(known[r <= 8].any())  # the enclosed middle is not known
    assert bool(known[r > 8].logical_not().sum() == 1) and known[2, 2] == 0  # only the faint pixel besides
    # an open ring (a gap to the border) encloses nothing: its middle is known background
    image[16, 16:] = 1.0
    mask, known = object_mask(image, threshold=0.05)
    assert int(mask.sum()) == int(ring.sum()) - 2 and bool(known[r <= 8].all())


def test_reference_is_drawn_once_written_and_read_back(camera_prior_dir, tmp_path):
    prior = load_prior(str(camera_prior_dir))
    cfg = ReferenceConfig(samples=3, steps=2)
    ref = load_or_draw(tmp_path / "reference", prior, "a red cube", cfg, seed=0, framing_radius=0.6)
    folder = tmp_path / "reference"
    assert {p.name for p in folder.iterdir()} == {"samples.png", "reference.png", "mask.png", "reference.json"}
    record = json.loads((folder / "reference.json").read_text())
    assert record["chosen"] in (0, 1, 2) and record["settings"]["samples"] == 3
    stamp = (folder / "reference.png").stat().st_mtime_ns
    again = load_or_draw(tmp_path / "reference", prior, "a red cube", cfg, seed=0, framing_radius=0.6)
    assert (folder / "reference.png").stat().st_mtime_ns == stamp  # read back, not drawn again
    assert torch.equal(again.image, ref.image) and torch.equal(again.mask, ref.mask)
    assert ref.image.shape == (1, prior.image_size, prior.image_size, 3) and ref.mask.shape[-1] == 1
    image, mask, known = ref.at(8, 8)
    assert image.shape == (1, 8, 8, 3) and mask.shape == known.shape == (1, 8, 8, 1)
    other = load_or_draw(tmp_path / "reference", prior, "a blue cube", cfg, seed=0, framing_radius=0.6)  # another prompt: drawn
    assert json.loads((folder / "reference.json").read_text())["settings"]["prompt"] == "a blue cube"
    assert other.image.shape == ref.image.shape


def _disc(size: int = 64, radius: float = 14.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= radius**2
    image = np.full((size, size, 3), 255, np.uint8)
    image[inside] = (200, 40, 40)
    return image


def _fit_to_the_disc(prior_dir, tmp_path, steps: int, *overrides: str):
    """A short coarse fit through the real trainer whose run folder already holds _disc() as its reference (written
    with the run's own settings record, so it is read back, not drawn). Returns the run folder and metrics.csv's rows."""
    cfg = load_config(["prompt=a red cube", f"prior={prior_dir}", "recipe=dreamfusion", "export=false",
                       f"stages.coarse.steps={steps}", "stages.coarse.camera.height=32", "stages.coarse.camera.width=32",
                       "stages.coarse.camera.eval_size=32", "stages.coarse.val_every=1000", "stages.coarse.ckpt_every=1000",
                       "stages.coarse.renderer.background=solid", *overrides])
    run = tmp_path / "run"
    prior = load_prior(cfg.prior)
    record = settings_record(cfg.reference, cfg.prompt, cfg.seed, prior.path, cfg.stages["coarse"].camera.framing_radius)
    save_png(run / "reference" / "reference.png", _disc())
    write_json(run / "reference" / "reference.json", {"settings": record, "chosen": 0})
    assert fit(cfg, run, show_progress=False)["stages"]["coarse"]["status"] == "done"
    with open(run / "stages" / "coarse" / "metrics.csv") as f:
        return run, list(csv.DictReader(f))


def test_the_mask_term_alone_shapes_the_nerf_to_the_reference(latent_prior_dir, tmp_path):
    """A stage with only loss.reference_mask (no SDS) through the real trainer: the render from the reference camera
    comes to cover the reference's disc, and the reference written beforehand is read back, not drawn."""
    run, rows = _fit_to_the_disc(latent_prior_dir, tmp_path, 60, "stages.coarse.loss.sds=0", "stages.coarse.loss.orient=0",
                                 "stages.coarse.loss.reference_mask=1")
    assert not (run / "reference" / "samples.png").exists()  # nothing was drawn
    first = np.mean([float(r["reference_mask"]) for r in rows[:5]])
    last = np.mean([float(r["reference_mask"]) for r in rows[-5:]])
    # at the start the NeRF is a faint blob; the disc covers 616 of 1024 pixels at 32 px
    assert last < 0.35 * first, (first, last)


def test_reference_config_errors(latent_prior_dir):
    base = ["prompt=a red cube", f"prior={latent_prior_dir}"]
    for key, value, words in (("reference.samples", 0, "reference.samples"), ("reference.fill", 1.5, "reference.fill"),
                              ("reference.threshold", 0, "reference.threshold")):
        with pytest.raises(ConfigError, match=words):
            load_config([*base, f"{key}={value}"])
    cfg = load_config([*base, "reference.samples=4", "stages.coarse.loss.reference_mask=2"])
    assert cfg.reference.samples == 4 and cfg.stages["coarse"].loss.reference_mask == 2


def test_jittered_rays_and_the_reference_read_at_the_same_points():
    """A render's rays moved by whole pixels are the next pixels' rays, and the reference read at the moved points is
    the next pixels' values: the jittered target lines up with the jittered render."""
    from dream3d.reference import Reference, reference_cameras

    cams = reference_cameras(ReferenceConfig(), 0.6, 16, 16)
    o, d = cams.rays()
    o0, d0 = cams.rays(torch.zeros(1, 2))
    assert torch.equal(d, d0) and torch.equal(o, o0)
    _, right = cams.rays(torch.tensor([[1.0, 0.0]]))
    _, down = cams.rays(torch.tensor([[0.0, 1.0]]))
    assert torch.allclose(right[:, :, :-1], d[:, :, 1:], atol=1e-6) and torch.allclose(down[:, :-1], d[:, 1:], atol=1e-6)
    image = torch.rand(1, 16, 16, 3)
    ref = Reference(image, (image[..., :1] > 0.5).float(), torch.ones(1, 16, 16, 1), ReferenceConfig())
    same, mask, known = ref.sampled(16, 16, torch.zeros(1, 2))
    assert torch.allclose(same, image, atol=1e-6) and torch.allclose(mask, ref.mask, atol=1e-6)
    assert torch.allclose(known, ref.known)
    moved, _, _ = ref.sampled(16, 16, torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(moved[:, :, :-1], image[:, :, 1:], atol=1e-6)
    half, _, _ = ref.sampled(16, 16, torch.tensor([[0.0, 0.5]]))  # half-way: the mean of two rows
    assert torch.allclose(half[:, :-1], 0.5 * (image[:, :-1] + image[:, 1:]), atol=1e-6)


def test_a_reference_weight_scheduled_to_zero_renders_no_reference_view(latent_prior_dir, tmp_path):
    """loss.reference_mask=[0,1,0,3]: the reference view is rendered (and its term logged) in steps 0-2 only, so a
    reference used for the start of a stage costs nothing afterwards."""
    _, rows = _fit_to_the_disc(latent_prior_dir, tmp_path, 6, "stages.coarse.loss.reference_mask=[0,1,0,3]")
    assert [r["reference_mask"] != "" for r in rows] == [True] * 3 + [False] * 3
