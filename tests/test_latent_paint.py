"""Latent-Paint (configs/latent-paint.yaml; systems/mesh.py LatentPaintSystem and MeshPaintSystem): a user's mesh
textured through the prior's latent space, then in RGB, through the real trainer on real (tiny) diffusers priors."""

from __future__ import annotations

import json

import pytest
import torch

from dream3d import cli
from dream3d.config import ConfigError, load_config


def small(**per_stage) -> list[str]:
    out = ["video_views=4", "video_size=32", "texture_size=64"]
    for s, px in (("latent", 8), ("paint", 32)):
        out += [f"stages.{s}.camera.height={px}", f"stages.{s}.camera.width={px}", f"stages.{s}.camera.eval_size=16",
                f"stages.{s}.val_every=3", f"stages.{s}.ckpt_every=3", f"stages.{s}.representation.encoding.n_levels=8"]
    return out + [f"stages.{k.replace('__', '.')}={v}" for k, v in per_stage.items()]


@pytest.fixture(scope="module")
def mug_file(tmp_path_factory):
    """A user's mesh of two parts (a cylinder and a handle-like torus), off centre and not at the fit's scale."""
    import trimesh

    body = trimesh.creation.cylinder(radius=1.0, height=2.0)
    handle = trimesh.creation.torus(major_radius=0.6, minor_radius=0.15)
    handle.apply_transform(trimesh.transformations.rotation_matrix(1.5708, [1, 0, 0]))
    handle.apply_translation([1.1, 0.0, 0.0])
    mesh = trimesh.util.concatenate([body, handle])
    mesh.apply_translation([3.0, -2.0, 1.0])
    path = tmp_path_factory.mktemp("mesh") / "mug.obj"
    mesh.export(path)
    return path


def test_latent_paint_resumes_and_exports_the_given_mesh_textured(latent_prior_dir, mug_file, tmp_path, monkeypatch):
    """Interrupted in the RGB stage and resumed: done, the latent stage rendered the prior's 4 latent channels, the
    export is the user's mesh (every part, centred and scaled to the framing radius), watertight and textured."""
    from dream3d.systems.mesh import LatentPaintSystem, MeshPaintSystem

    shapes = []
    original_scored = LatentPaintSystem.scored_image

    def recording(self, out, step):
        image, latents = original_scored(self, out, step)
        shapes.append(tuple(latents.shape))
        return image, latents

    original = MeshPaintSystem.training_step

    def interrupted(self, batch, batch_idx):
        if self.stage_name == "paint" and self.global_step == 2:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LatentPaintSystem, "scored_image", recording)
    monkeypatch.setattr(MeshPaintSystem, "training_step", interrupted)
    args = ["fit", "prompt=a red mug", "recipe=latent-paint", f"prior={latent_prior_dir}", f"mesh={mug_file}",
            f"output_dir={tmp_path}", "name=lp", "--quiet", "stages.latent.steps=6", "stages.paint.steps=5", *small()]
    assert cli.main(args) == 130
    monkeypatch.setattr(MeshPaintSystem, "training_step", original)
    run = tmp_path / "latent-paint" / "lp"
    assert cli.main(["fit", f"resume={run}", "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["export"]["watertight"] is True
    assert [summary["stages"][s]["completed_steps"] for s in ("latent", "paint")] == [6, 5]
    assert shapes and set(shapes) == {(1, 4, 8, 8)}  # latents at the latent size went to the guidance

    import trimesh

    given = trimesh.load(mug_file, force="mesh")
    exported = trimesh.load(run / "export" / "model.glb", force="mesh")
    assert exported.visual.kind == "texture"
    assert len(exported.faces) == len(given.faces)  # every part kept, nothing re-meshed
    centre = (exported.bounds[0] + exported.bounds[1]) / 2
    assert abs(centre).max() < 1e-4
    assert abs(float((exported.vertices - centre).__pow__(2).sum(1).max() ** 0.5) - 0.6) < 1e-3  # framing radius
    state = torch.load(run / "ckpts" / "paint" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert state["particles.0.field.network.layers.2.weight"].shape[0] == 3
    latent = torch.load(run / "ckpts" / "latent" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert latent["particles.0.field.network.layers.2.weight"].shape[0] == 4
    assert torch.equal(state["particles.0.verts"], latent["particles.0.verts"])  # the geometry never moved


def test_paint_settings_are_checked(mug_file, tmp_path):
    with pytest.raises(ConfigError, match="mesh: recipe 'latent-paint' textures a given mesh; expected mesh="):
        load_config(["prompt=a mug", "recipe=latent-paint"])
    with pytest.raises(ConfigError, match="mesh: recipe 'dreamfusion' paints no given mesh"):
        load_config(["prompt=a mug", "recipe=dreamfusion", f"mesh={mug_file}"])
    with pytest.raises(ConfigError, match="mesh: .*missing.glb: expected a mesh file"):
        load_config(["prompt=a mug", "recipe=latent-paint", f"mesh={tmp_path / 'missing.glb'}"])
    cfg = load_config(["prompt=a mug", "recipe=latent-paint", f"mesh={mug_file}"])
    assert cfg.stages["latent"].mesh.init == cfg.stages["paint"].mesh.init == str(mug_file.resolve())
