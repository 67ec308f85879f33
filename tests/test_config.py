"""Config and CLI input errors: one clear line, non-zero exit, nothing written."""

from __future__ import annotations

import pytest

from dream3d import cli
from dream3d.config import ConfigError, list_recipes, load_config


def base(prior) -> list[str]:
    return ["prompt=a red cube", "recipe=dreamfusion", f"prior={prior}"]


def test_recipe_and_overrides_merge(latent_prior_dir):
    cfg = load_config(base(latent_prior_dir) + ["stages.coarse.steps=7", "seed=3", "stages.coarse.loss.orient=[0,1,2,10]"])
    assert cfg.recipe == "dreamfusion" and cfg.seed == 3
    assert cfg.stages["coarse"].steps == 7
    assert cfg.stages["coarse"].loss.orient == [0, 1, 2, 10]
    assert cfg.stages["coarse"].guidance.guidance_scale == 100.0  # from the recipe
    assert "dreamfusion" in list_recipes()


def test_shorthands(latent_prior_dir):
    cfg = load_config(base(latent_prior_dir) + ["steps=30", "guidance=sds"])
    assert cfg.stages["coarse"].steps == 30


@pytest.mark.parametrize(
    "override, needle",
    [
        ("prompt=", "prompt: expected a non-empty text"),
        ("prompt=   ", "prompt: expected a non-empty text"),
        ("stages.coarse.stepz=5", "unknown key 'stages.coarse.stepz'"),
        ("promt=a cube", "unknown key 'promt'"),
        ("stages.fine.steps=5", "unknown key 'stages.fine.steps'"),
        ("recipe=dreamfusoin", "recipe: unknown recipe 'dreamfusoin'"),
        ("prior=/nonexistent/prior", "prior: folder '/nonexistent/prior' not found"),
        ("steps=-1", "steps: expected a positive integer"),
        ("stages.coarse.steps=-1", "stages.coarse.steps: expected a positive integer"),
        ("stages.coarse.steps=many", "stages.coarse.steps: expected integer"),
        ("stages.coarse.guidance.t_max=[1,2]", "stages.coarse.guidance.t_max: expected a number or [start_step"),
        ("stages.coarse.guidance.name=magic", "stages.coarse.guidance.name: expected one of sds"),
        ("device=tpu", "device: expected one of auto, cpu, cuda"),
        ("export_formats=glb,stl", "export_formats: expected a comma list of glb, obj, ply"),
        ("video_size=8", "video_views / video_size: expected"),
        ("export=perhaps", "export: expected bool"),
        ("stages.coarse.renderer.backend=nvdiffrast", "stages.coarse.renderer.backend: expected one of auto, torch, "
                                                      "nerfacc, got 'nvdiffrast'"),
        pytest.param("stages.coarse.renderer.backend=nerfacc", "stages.coarse.renderer.backend: nerfacc needs a CUDA",
                     marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")),
        pytest.param("device=cuda", "device: cuda was asked for but no CUDA device",
                     marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")),
    ],
)
def test_bad_values_raise_one_line(latent_prior_dir, override, needle):
    with pytest.raises(ConfigError) as info:
        load_config(base(latent_prior_dir) + [override])
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_volume_backend_choices(latent_prior_dir):
    """torch and auto load anywhere; nerfacc is refused on a CPU run (device=cpu) even where CUDA exists."""
    for backend in ("auto", "torch"):
        cfg = load_config(base(latent_prior_dir) + [f"stages.coarse.renderer.backend={backend}"])
        assert cfg.stages["coarse"].renderer.backend == backend
    with pytest.raises(ConfigError, match=r"^stages.coarse.renderer.backend: nerfacc needs a CUDA device \(device=cpu"):
        load_config(base(latent_prior_dir) + ["stages.coarse.renderer.backend=nerfacc", "device=cpu"])
    with pytest.raises(ConfigError, match="stages.fine.renderer.backend: expected one of auto, torch, nvdiffrast"):
        load_config(base(latent_prior_dir) + ["recipe=magic3d", "stages.fine.renderer.backend=nerfacc"])


def test_bad_dmtet_start_settings_raise_one_line(latent_prior_dir):
    for override, needle in [("stages.fine.dmtet.init_alpha=1.0", "stages.fine.dmtet.init_alpha: expected an opacity"),
                             ("stages.fine.dmtet.init_level=peak", "stages.fine.dmtet.init_level: expected one of"),
                             ("stages.fine.dmtet.init_level=half-peak stages.fine.dmtet.init_hull=true",
                              "stages.fine.dmtet.init_hull: true needs stages.fine.dmtet.init_level=matched")]:
        with pytest.raises(ConfigError) as info:
            load_config(base(latent_prior_dir) + ["recipe=magic3d", *override.split()])
        assert needle in str(info.value) and "\n" not in str(info.value)


def test_unknown_key_suggests_close_match(latent_prior_dir):
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        load_config(base(latent_prior_dir) + ["stages.coarse.stepz=5"])
    with pytest.raises(ConfigError, match="did you mean 'dreamfusion'"):
        load_config(base(latent_prior_dir) + ["recipe=dreamfusoin"])


def test_default_prior_missing_names_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from dream3d.config import DEFAULT_PRIOR, PROJECT_ROOT

    if (PROJECT_ROOT / DEFAULT_PRIOR).is_dir():
        pytest.skip("the shape-world prior is shipped")
    with pytest.raises(ConfigError, match="^prior: folder 'assets/priors/shapeworld' not found"):
        load_config(["prompt=a red cube"])


@pytest.mark.parametrize(
    "args",
    [
        ["prompt="],
        ["prompt=a cube", "stages.coarse.stepz=5"],
        ["prompt=a cube", "recipe=nope"],
        ["prompt=a cube", "prior=/nonexistent/prior"],
        ["prompt=a cube", "steps=-1"],
        ["prompt=a cube", "no-equals-sign"],
    ],
)
def test_cli_bad_input_exits_nonzero_and_writes_nothing(tmp_path, capsys, latent_prior_dir, args):
    run_dir = tmp_path / "out" / "dreamfusion" / "existing"
    run_dir.mkdir(parents=True)
    (run_dir / "keep.txt").write_text("earlier result")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    extra = [] if any(a.startswith("prior=") for a in args) else [f"prior={latent_prior_dir}"]
    if not any(a.startswith("recipe=") for a in args):
        extra.append("recipe=dreamfusion")
    code = cli.main(["fit", *args, *extra, f"output_dir={tmp_path / 'out'}", "name=existing"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("dream3d: error: ")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_cli_refuses_existing_run_folder(tmp_path, capsys, latent_prior_dir):
    run_dir = tmp_path / "dreamfusion" / "taken"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("prompt: x\n")
    code = cli.main(["fit", "prompt=a cube", "recipe=dreamfusion", f"prior={latent_prior_dir}", f"output_dir={tmp_path}",
                     "name=taken"])
    assert code == 2
    assert "already exists" in capsys.readouterr().err
    assert (run_dir / "config.yaml").read_text() == "prompt: x\n"


def test_cli_help_lists_recipes_and_keys(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["fit", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "recipes: " in out and "dreamfusion" in out
    for key in ("prompt", "recipe", "prior", "seed", "steps", "resume"):
        assert key in out


def test_prior_world_list_and_export(tmp_path, capsys):
    assert cli.main(["prior", "world", "--list"]) == 0
    out = capsys.readouterr().out
    assert "a snowman" in out and "a red cube" in out
    glb = tmp_path / "snowman.glb"
    assert cli.main(["prior", "world", "export", "name=snowman", f"out={glb}"]) == 0
    import trimesh

    assert len(trimesh.load(glb, force="mesh").faces) > 100
    assert cli.main(["prior", "world", "export", "name=snowmen", f"out={tmp_path / 'x.glb'}"]) == 2
    assert "close matches: snowman" in capsys.readouterr().err
    assert not (tmp_path / "x.glb").exists()


def test_prior_sample_writes_a_grid(tmp_path, capsys, latent_prior_dir):
    out = tmp_path / "grid.png"
    code = cli.main(["prior", "sample", "prompt=a red cube", "n=2", "steps=3", f"prior={latent_prior_dir}", f"out={out}"])
    assert code == 0, capsys.readouterr().err
    from PIL import Image

    assert Image.open(out).size[0] >= 2 * 32
    for bad, needle in [("n=0", "n and steps"), ("sampler=euler", "sampler: expected one of"), ("stepz=3", "did you mean 'steps'"),
                        ("prompt=", "prompt: expected a non-empty text")]:
        args = ["prior", "sample", "prompt=a cube", f"prior={latent_prior_dir}", f"out={tmp_path / 'bad.png'}", bad]
        assert cli.main(args) == 2
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


def _prior_with_settings(latent_prior_dir, tmp_path, text: str):
    import shutil

    prior = tmp_path / "prior"
    shutil.copytree(latent_prior_dir, prior)
    (prior / "dream3d.yaml").write_text(text)
    return prior


def test_prior_settings_apply_under_recipe_and_command_line(latent_prior_dir, tmp_path):
    """A prior's dream3d.yaml sets every stage's keys that the recipe and the command line leave alone."""
    plain = load_config(base(latent_prior_dir))
    assert plain.stages["coarse"].renderer.background == "mlp" and plain.stages["coarse"].camera.framing == "distance"
    prior = _prior_with_settings(latent_prior_dir, tmp_path, "stages:\n  renderer:\n    background: solid\n"
                                 "    ambient: 0.3\n  camera.framing: fill\n  guidance:\n    guidance_scale: 20\n")
    cfg = load_config(base(prior))
    coarse = cfg.stages["coarse"]
    assert coarse.renderer.background == "solid" and coarse.renderer.ambient == 0.3 and coarse.camera.framing == "fill"
    assert coarse.guidance.guidance_scale == 100.0  # the recipe sets it: the recipe wins
    cfg = load_config(base(prior) + ["stages.coarse.renderer.background=random"])
    assert cfg.stages["coarse"].renderer.background == "random"  # the command line wins
    magic = load_config(["prompt=a mug", "recipe=magic3d", f"prior={prior}"])
    assert all(s.renderer.background == "solid" and s.camera.framing == "fill" for s in magic.stages.values())


def test_shipped_prior_declares_its_world():
    cfg = load_config(["prompt=a mug"])  # the default prior and recipe
    for stage in cfg.stages.values():
        assert stage.renderer.background == "solid" and stage.renderer.background_color == [1.0, 1.0, 1.0]
        assert stage.camera.framing == "fill" and stage.camera.fill_range == [0.75, 1.0]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("stages:\n  renderer:\n    backgrund: solid\n", "unknown key 'stages.<stage>.renderer.backgrund'"),
        ("stages:\n  camera:\n    framing: [1, 2]\n", "stages.<stage>.camera.framing: expected text"),
        ("renderer:\n  background: solid\n", "expected one key, 'stages'"),
        ("stages: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
        ("stages:\n  renderer: [\n", "not valid YAML"),
    ],
)
def test_bad_prior_settings_one_line(latent_prior_dir, tmp_path, text, needle):
    prior = _prior_with_settings(latent_prior_dir, tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(base(prior))
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert "dream3d.yaml" in str(err.value) and not (tmp_path / "pwned").exists()


def test_bad_prior_setting_value_names_the_stage_key(latent_prior_dir, tmp_path):
    prior = _prior_with_settings(latent_prior_dir, tmp_path, "stages:\n  camera:\n    framing: sideways\n")
    with pytest.raises(ConfigError, match=r"stages.coarse.camera.framing: expected one of distance, fill, got 'sideways'"):
        load_config(base(prior))


def test_a_run_config_names_the_shipped_prior_relative_to_the_project(latent_prior_dir, tmp_path, monkeypatch):
    """config.yaml records a prior inside the project as a project-relative path, so a run folder made in one
    checkout resumes in another (and from any working directory); a prior elsewhere stays absolute."""
    import yaml

    from dream3d.config import PROJECT_ROOT, to_yaml

    cfg = load_config(["prompt=a red cube", "recipe=dreamfusion", f"prior={PROJECT_ROOT / 'assets/priors/shapeworld'}"])
    assert cfg.prior == str(PROJECT_ROOT / "assets/priors/shapeworld")  # absolute while it runs
    stored = yaml.safe_load(to_yaml(cfg))
    assert stored["prior"] == "assets/priors/shapeworld"
    monkeypatch.chdir(tmp_path)  # elsewhere: resolved against the project
    assert load_config({}, base=stored).prior == str(PROJECT_ROOT / "assets/priors/shapeworld")
    outside = yaml.safe_load(to_yaml(load_config(base(latent_prior_dir))))
    assert outside["prior"] == str(latent_prior_dir.resolve())


def test_a_latent_stage_refuses_reference_colours_at_config_time(latent_prior_dir):
    with pytest.raises(ConfigError, match=r"stages\.latent\.loss\.reference_rgb: a latent-nerf stage renders latents"):
        load_config(["prompt=a red cube", "recipe=latent-nerf", f"prior={latent_prior_dir}",
                     "stages.latent.loss.reference_rgb=1.0"])
