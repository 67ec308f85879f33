"""Mesh stages: a DMTet started from a NeRF keeps its silhouette, and the Magic3D, Fantasia3D and ProlificDreamer
recipes run end to end (tiny sizes) through the real trainer, ending with a watertight textured mesh."""

from __future__ import annotations

import json

import pytest
import torch

from dream3d.cameras import turntable
from dream3d.config import ConfigError, NeRFConfig, load_config
from dream3d.export.mesh import load_mesh
from dream3d.render.mesh import render_mesh
from dream3d.representations.dmtet import DMTet, DMTetConfig, render_dmtet
from dream3d.representations.nerf import NeRF
from dream3d.run import fit

HALF = 0.4  # the known object: a cube of half-size 0.4


def tiny(stages: list[str], **per_stage) -> list[str]:
    out = ["video_views=4", "video_size=32", "texture_size=64", "mesh_resolution=32"]
    for s in stages:
        out += [f"stages.{s}.camera.height=32", f"stages.{s}.camera.width=32", f"stages.{s}.camera.eval_size=32",
                f"stages.{s}.val_every=2", f"stages.{s}.ckpt_every=2"]
    for key, value in per_stage.items():
        out.append(f"stages.{key.replace('__', '.')}={value}")
    return out


def test_dmtet_from_a_nerf_of_a_known_object_keeps_its_silhouette():
    """A NeRF fitted to a cube -> DMTet.init_from_density -> silhouettes against the true cube on 8 views."""
    torch.manual_seed(0)
    nerf = NeRF(NeRFConfig())
    opt = torch.optim.Adam(nerf.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(250):
        x = torch.rand(8192, 3, generator=gen) * 2 - 1
        inside = (x.abs() < HALF).all(dim=-1).float()
        loss = ((nerf(x)["density"] - 50.0 * inside) ** 2).mean() * 1e-3
        opt.zero_grad()
        loss.backward()
        opt.step()
    dmtet = DMTet(DMTetConfig(resolution=32))
    with torch.no_grad():
        dmtet.init_from_density(nerf.density, fit_steps=100)
    import trimesh

    cube = trimesh.creation.box(extents=[2 * HALF] * 3)
    cams = turntable(8, elevation=25.0, distance=2.2, fovy=50.0, size=64)
    with torch.no_grad():
        ours = render_dmtet(dmtet, cams)["opacity"][..., 0] > 0.5
        truth = render_mesh(torch.tensor(cube.vertices, dtype=torch.float32), torch.tensor(cube.faces), cams,
                            torch.ones(len(cube.vertices), 3))["opacity"][..., 0] > 0.5
    iou = ((ours & truth).flatten(1).sum(1) / (ours | truth).flatten(1).sum(1)).tolist()
    assert min(iou) >= 0.9, iou


@pytest.fixture(scope="module")
def magic3d_run(latent_prior_dir, tmp_path_factory):
    cfg = load_config(["prompt=a red cube", f"prior={latent_prior_dir}", "recipe=magic3d", "stages.coarse.steps=6",
                       "stages.fine.steps=4", *tiny(["coarse", "fine"], fine__dmtet__resolution=16,
                                                    fine__mesh__init_fit_steps=10, fine__mesh__texture_fit_steps=10)])
    run = tmp_path_factory.mktemp("magic3d") / "run"
    return run, fit(cfg, run, show_progress=False)


def test_magic3d_refines_a_mesh_started_from_the_nerf(magic3d_run):
    run, summary = magic3d_run
    assert [summary["stages"][s]["status"] for s in ("coarse", "fine")] == ["done", "done"]
    assert summary["stages"]["fine"]["init_s"] > 0
    state = torch.load(run / "ckpts" / "fine" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert {"particles.0.dmtet.sdf", "particles.0.dmtet.deformation"} <= state.keys()
    assert not any("grid_verts" in k or k.endswith(".tets") for k in state)  # the grid is rebuilt, not stored
    rows = (run / "stages" / "fine" / "metrics.csv").read_text().splitlines()
    assert "normal_consistency" in rows[0] and len(rows) == 5
    assert summary["export"]["stage"] == "fine" and summary["export"]["watertight"] is True
    mesh = load_mesh(run / "export" / "model.glb")
    assert mesh.num_faces > 0 and mesh.textured


def test_fantasia3d_geometry_then_pbr_appearance(latent_prior_dir, tmp_path):
    cfg = load_config(["prompt=a red cube", f"prior={latent_prior_dir}", "recipe=fantasia3d",
                       "stages.geometry.steps=4", "stages.appearance.steps=3",
                       *tiny(["geometry", "appearance"], geometry__dmtet__resolution=16,
                             appearance__dmtet__resolution=16, geometry__mesh__latent_mask_steps=2)])
    summary = fit(cfg, tmp_path / "run", show_progress=False)
    assert summary["status"] == "done" and summary["export"]["watertight"] is True
    geo = torch.load(tmp_path / "run" / "ckpts" / "geometry" / "last.ckpt", map_location="cpu", weights_only=True)
    app = torch.load(tmp_path / "run" / "ckpts" / "appearance" / "last.ckpt", map_location="cpu", weights_only=True)
    g, a = geo["state_dict"], app["state_dict"]
    assert torch.equal(g["particles.0.dmtet.sdf"], a["particles.0.dmtet.sdf"])  # the geometry stays fixed
    assert any(k.startswith("particles.0.material.") for k in a) and "particles.0.light.sh" in a
    mesh = load_mesh(tmp_path / "run" / "export" / "model.glb")
    assert mesh.textured and mesh.roughness is not None and 0 < mesh.roughness <= 1


def test_prolificdreamer_three_stages_with_two_particles(latent_prior_dir, tmp_path):
    cfg = load_config(["prompt=a red cube", f"prior={latent_prior_dir}", "recipe=prolificdreamer", "particles=2",
                       "stages.coarse.steps=4", "stages.geometry.steps=2", "stages.texture.steps=2",
                       *tiny(["coarse", "geometry", "texture"], geometry__dmtet__resolution=16,
                             texture__dmtet__resolution=16, geometry__mesh__init_fit_steps=5)])
    summary = fit(cfg, tmp_path / "run", show_progress=False)
    assert [summary["stages"][s]["status"] for s in ("coarse", "geometry", "texture")] == ["done"] * 3
    assert summary["export"]["particle_watertight"] == [True, True]
    state = torch.load(tmp_path / "run" / "ckpts" / "texture" / "last.ckpt", map_location="cpu",
                       weights_only=True)["state_dict"]
    assert any(k.startswith("guidance.adapters.") for k in state)  # VSD's LoRA in the texture stage
    assert (tmp_path / "run" / "export" / "particle1" / "model.glb").is_file()
    metrics = (tmp_path / "run" / "stages" / "texture" / "metrics.csv").read_text().splitlines()[0]
    assert "vsd" in metrics and "lora" in metrics


def test_mesh_stage_config_errors(latent_prior_dir, tmp_path):
    base = ["prompt=a red cube", f"prior={latent_prior_dir}", "recipe=fantasia3d"]
    with pytest.raises(ConfigError, match="mesh.material"):
        load_config([*base, "stages.appearance.mesh.material=gold"])
    with pytest.raises(ConfigError, match="mesh.init"):
        load_config([*base, f"stages.geometry.mesh.init={tmp_path / 'missing.obj'}"])
    with pytest.raises(ConfigError, match="mesh-texture"):
        load_config([*base, "stages.appearance.init=null"])
    with pytest.raises(ConfigError, match="dmtet.resolution"):
        load_config([*base, "stages.appearance.dmtet.resolution=32"])


def test_fit_summary_records_the_watertight_mesh(magic3d_run):
    run, _ = magic3d_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["export"]["particle_watertight"] == [True]


def test_volume_turntable_of_a_mesh_recipe_renders_its_nerf_stage(magic3d_run):
    from dream3d.export.run import render_run

    run, _ = magic3d_run
    paths = render_run(run, views=2, size=16, mode="volume", formats=("gif",), log=lambda _: None)
    assert paths["gif"].stat().st_size > 0
