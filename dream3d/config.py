"""Run configuration: dataclasses are the schema, recipe YAML files set values, ``key=value`` overrides win.

``load_config(["prompt=a pineapple", "recipe=dreamfusion", "stages.coarse.steps=500"])`` returns a validated
:class:`RunConfig`. Every problem (unknown key, wrong type, bad value, unknown recipe, missing prior folder)
raises :class:`ConfigError` with one line that names the key and the expected form, before any work is done.

Scalar schedules follow threestudio: a plain number, or ``[start_step, start_value, end_value, end_step]``
interpolated linearly between the two steps (see :func:`dream3d.schedule.scheduled`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from dream3d.cameras import CameraConfig
from dream3d.errors import Dream3DError
from dream3d.guidance import GuidanceConfig
from dream3d.paths import PROJECT_ROOT, portable_path
from dream3d.reference import ReferenceConfig
from dream3d.render.volume import RendererConfig
from dream3d.representations.dmtet import DMTetConfig
from dream3d.representations.nerf import NeRFConfig
from dream3d.systems.config import LossConfig, MeshStageConfig, OptimConfig

CONFIG_DIR = PROJECT_ROOT / "configs"
DEFAULT_PRIOR = "assets/priors/shapeworld"


class ConfigError(Dream3DError, ValueError):
    """A one-line, user-facing configuration error."""


# ----------------------------------------------------------------------------------------------- schema
@dataclass
class StageConfig:
    """One stage of a recipe: a Lightning system optimising one representation."""

    system: str = "nerf-sds"
    steps: int = 1000
    init: Optional[str] = None  # name of an earlier stage whose result initialises this one
    representation: NeRFConfig = field(default_factory=NeRFConfig)
    dmtet: DMTetConfig = field(default_factory=DMTetConfig)  # mesh stages
    mesh: MeshStageConfig = field(default_factory=MeshStageConfig)  # mesh stages
    renderer: RendererConfig = field(default_factory=RendererConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    val_every: int = 200
    ckpt_every: int = 200


@dataclass
class RunConfig:
    """A whole run: prompt, prior, recipe stages and run-wide settings."""

    prompt: str = ""
    negative_prompt: str = ""
    threads: int = 0  # torch CPU threads; 0: $OMP_NUM_THREADS if set, else every core
    view_dependent: bool = True
    recipe: str = "mvdream"  # the default since it beat magic3d on every figure of the subset (docs/quality.md, round 8)
    prior: str = DEFAULT_PRIOR
    prior_dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    # beside a camera-conditioned prior: a text prior with the same text encoder and VAE; stages with
    # guidance.text_prior take the text term from it and only the camera term from the prior (guidance/sds.py)
    text_prior: str = ""
    # Sketch-Shape (representations/sketch.py): a rough closed mesh that holds the density of the NeRF stages
    # weighting loss.sketch (the latent-nerf recipe's), lenient within about sketch_sigma of its surface
    sketch: str = ""
    # 0.05: at 0.1 a mushroom's thin stem lay wholly inside the lenient band, faded, and the export was a floating
    # cap (IoU 0.53, "a red torus"); at 0.05 it is a mushroom (R-precision 1.00, IoU 0.85; docs/quality.md, round 9)
    sketch_sigma: float = 0.05
    # a picture of the prompt drawn from the prior at one camera, matched by stages that weight loss.reference_mask
    # or loss.reference_rgb (dream3d/reference.py)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    mesh: str = ""  # Latent-Paint (recipe latent-paint): the mesh to texture, a .glb/.obj/.ply file
    attention_slicing: bool = False  # the prior's UNet attention in slices, its VAE a sample at a time (less memory)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    output_dir: str = "outputs"
    name: Optional[str] = None  # run folder name; default <prompt-slug>-<time>
    steps: Optional[int] = None  # total step budget, split over the stages in the recipe's proportions
    guidance: Optional[str] = None  # shorthand: sets every stage's guidance.name
    particles: int = 1  # independent 3D results optimised together (VSD: against one shared LoRA model)
    export: bool = True  # end fit with export/model.glb (+ export_formats) and the turntable video
    export_formats: str = "glb"  # comma list of glb, obj, ply
    mesh_resolution: int = 128  # marching-cubes grid of the export
    texture_size: int = 1024  # baked texture, pixels a side
    video_views: int = 120  # turntable frames (0: no video)
    video_size: int = 512  # turntable frame size, pixels
    stages: dict[str, StageConfig] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- recipes & keys
def list_recipes() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


KEY_HELP = {
    "prompt": "what to make, e.g. \"a pineapple\" (required)",
    "negative_prompt": "what to steer away from (the unconditional prompt of CFG)",
    "threads": "torch CPU threads (0: $OMP_NUM_THREADS if set, else every core; 1 when several fits share the machine)",
    "view_dependent": "append \", front/side/back/overhead view\" to the prompt per camera",
    "recipe": "stage recipe: a name from configs/ or a recipe .yaml file",
    "prior": "diffusers text-to-image folder or hub id",
    "prior_dtype": "auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16",
    "text_prior": "beside a camera prior: a text prior (same text encoder and VAE) for the guidance's text term "
                  "in stages with guidance.text_prior (its colours; the camera from prior)",
    "sketch": "a rough closed mesh (.glb/.obj/.ply, world units: Y up, front +Z, inside the box of radius 1) that "
              "steers the shape (Sketch-Shape); used by stages weighting loss.sketch, e.g. recipe=latent-nerf",
    "mesh": "recipe=latent-paint: the mesh to texture (.glb/.obj/.ply; centred and scaled to the object size)",
    "sketch_sigma": "Sketch-Shape's leniency: within about this distance of the sketch's surface the shape is free",
    "reference": "the picture drawn from the prior that stages weighting loss.reference_mask/reference_rgb match: "
                 "reference.samples, steps, guidance_scale, elevation, azimuth, fovy, fill, threshold",
    "attention_slicing": "compute the prior's UNet attention in slices and its VAE a sample at a time: less GPU "
                         "memory (a Stable Diffusion recipe on an 8 GB card), a little slower",
    "seed": "random seed; a run is reproducible from it on the same machine",
    "device": "auto | cpu | cuda",
    "output_dir": "where run folders go: <output_dir>/<recipe>/<name>",
    "name": "run folder name (default <prompt-slug>-<time>)",
    "steps": "total step budget, split over the stages in the recipe's proportions",
    "guidance": "guidance for every stage: sds | vsd | sjc (each at its paper's guidance_scale, 100, 7.5 and 100, "
                "unless the stage sets one)",
    "particles": "how many 3D results to optimise together (VSD shares one LoRA model among them)",
    "export": "end fit by exporting export/model.glb and export/turntable.mp4 (false: skip)",
    "export_formats": "mesh formats written at the end of fit: comma list of glb, obj, ply",
    "mesh_resolution": "marching-cubes grid of the exported mesh",
    "texture_size": "baked texture size of the exported mesh, pixels a side",
    "video_views": "turntable frames written at the end of fit (0: no video)",
    "video_size": "turntable frame size, pixels",
}


def main_keys() -> list[tuple[str, str]]:
    """(key, description) of the run-wide keys, for ``--help``."""
    out = []
    for f in dataclasses.fields(RunConfig):
        if f.name == "stages":
            continue
        default = f.default if f.default is not dataclasses.MISSING else "..."
        out.append((f.name, f"{KEY_HELP.get(f.name, '')} [default {default!r}]"))
    out.append(("stages.<name>.<key>", "per-stage settings, e.g. stages.coarse.steps=500"))
    return out


def _one_line(exc: OmegaConfBaseException, source: str) -> ConfigError:
    full_key = getattr(exc, "full_key", None) or "?"
    if isinstance(exc, ConfigKeyError):
        return ConfigError(f"unknown key '{full_key}' in {source}{_hint(full_key)}")
    if isinstance(exc, ValidationError):
        msg = str(exc).splitlines()[0]
        m = re.search(r"could not be converted to (\w+)", msg) or re.search(r"is not a valid (\w+)", msg)
        expected = m.group(1).lower() if m else ("a value, not null" if "is not Optional" in msg else "the declared type")
        value = re.search(r"Value '(.*?)'", msg)
        got = f" got {value.group(1)!r}" if value else ""
        return ConfigError(f"{full_key}: expected {expected},{got} (in {source})")
    return ConfigError(f"{full_key}: {str(exc).splitlines()[0]} (in {source})")


# ------------------------------------------------------------------------------------- key types
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _field_type(key: str) -> Any:
    """The declared type of a dotted key (``prompt``, ``stages.<name>.guidance.t_max``); a dataclass for a
    section; None for an unknown key."""
    parts = key.split(".")
    cls: Any = RunConfig
    if parts[0] == "stages" and len(parts) >= 2:
        cls, parts = StageConfig, parts[2:]
        if not parts:
            return StageConfig
    for i, part in enumerate(parts):
        hints = _hints(cls)
        if part not in hints:
            return None
        kind = hints[part]
        if i == len(parts) - 1:
            return kind
        if not dataclasses.is_dataclass(kind):
            return None
        cls = kind
    return cls


def _is_text(kind: Any) -> bool:
    """str and Optional[str] keys hold text: taken literally, never parsed as YAML or interpolated."""
    return kind is str or kind == Optional[str]


def _hint(key: str) -> str:
    """' (did you mean ...?)' for an unknown dotted key, or ''."""
    parts = key.split(".")
    if parts[0] != "stages" and _field_type(parts[0]) is None and parts[0] in _hints(StageConfig):
        stage_key = _close_in(StageConfig, parts[1:], prefix=parts[0]) if len(parts) > 1 else parts[0]
        return f" (per-stage keys go under stages.<stage>: did you mean 'stages.<stage>.{stage_key}'?)"
    section = _field_type(".".join(parts[:-1])) if len(parts) > 1 else RunConfig
    if parts[0] == "stages" and len(parts) == 3:
        section = StageConfig
    if not dataclasses.is_dataclass(section):
        return ""
    names = list(_hints(section))
    leaf = parts[-1]
    hits = [n for n in names if n.startswith(leaf)] if len(leaf) >= 2 else []
    hits = hits or difflib.get_close_matches(leaf, names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(h) for h in hits[:3])}?)" if hits else ""


def _close_in(cls: Any, parts: list[str], prefix: str) -> str:
    """The closest real key under ``prefix`` of section ``cls`` (for the per-stage hint)."""
    section = _hints(cls).get(prefix)
    if not dataclasses.is_dataclass(section) or len(parts) != 1:
        return ".".join([prefix, *parts])
    names = list(_hints(section))
    hits = [n for n in names if n.startswith(parts[0])] or difflib.get_close_matches(parts[0], names, n=1, cutoff=0.5)
    return f"{prefix}.{hits[0] if hits else parts[0]}"


_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _number(text: str) -> Optional[float]:
    """'3' -> 3, '1e3' -> 1000.0, 'nan' -> nan (validation names it), anything else -> None."""
    try:
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    except ValueError:
        return None


def _typed(key: str, raw: str, kind: Any) -> Any:
    """A command-line value for a non-text key, typed by the schema (no YAML comments, no interpolation)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    optional = origin is typing.Union and type(None) in args
    if optional:
        if raw.strip().lower() in ("null", "none", "~"):
            return None
        kind = next(a for a in args if a is not type(None))
    text = raw.strip()
    if kind is bool:
        if text.lower() not in _BOOL_WORDS:
            raise ConfigError(f"{key}: expected bool (true or false), got {raw!r}")
        return _BOOL_WORDS[text.lower()]
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}: expected integer, got {raw!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected float, got {raw!r}") from None
    number = _number(text)  # numbers, schedules and lists: a number, or a list of numbers
    if number is not None:
        return number
    if text.startswith("[") and text.endswith("]"):
        items = [_number(item.strip()) for item in text[1:-1].split(",")] if text[1:-1].strip() else []
        if all(item is not None for item in items):
            return items
    if "${" in text:
        raise ConfigError(f"{key}: expected a number or a list, got {raw!r} (interpolation is not supported)")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{key}: expected a number or a list like [0, 10, 1000, 5000], got {raw!r}") from None
    return value


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def _split_text(tree: Any, source: str, prefix: str = "") -> tuple[dict, dict[str, Any]]:
    """A YAML mapping (a recipe or a stored run config) -> (its typed part for OmegaConf, its text values by
    dotted key). Text never passes through OmegaConf, so '${...}' in a prompt stays literal; a '${'
    interpolation in a typed value is refused."""
    if not isinstance(tree, dict):
        where = f"'{prefix[:-1]}'" if prefix else "the top level"
        raise ConfigError(f"{source}: expected a mapping of keys at {where}, got {type(tree).__name__}")
    typed: dict = {}
    text: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        kind = _field_type(key)
        if kind is None:
            raise ConfigError(f"unknown key '{key}' in {source}{_hint(key)}")
        if dataclasses.is_dataclass(kind) or key == "stages":
            if v is None:
                continue
            sub_typed, sub_text = _split_text(v, source, key + ".") if key != "stages" else _split_stages(v, source)
            typed[k] = sub_typed
            text.update(sub_text)
        elif _is_text(kind):
            if isinstance(v, (dict, list)):
                raise ConfigError(f"{key}: expected text, got a {type(v).__name__} (in {source})")
            text[key] = v if v is None or isinstance(v, str) else str(v)
        else:
            if isinstance(v, str) and "${" in v:
                raise ConfigError(f"{key}: interpolation is not supported, got {v!r} (in {source})")
            typed[k] = v
    return typed, text


def _split_stages(stages: Any, source: str) -> tuple[dict, dict[str, Any]]:
    if not isinstance(stages, dict):
        raise ConfigError(f"{source}: expected a mapping of stages under 'stages', got {type(stages).__name__}")
    typed, text = {}, {}
    for name, stage in stages.items():
        sub_typed, sub_text = _split_text(stage if stage is not None else {}, source, f"stages.{name}.")
        typed[name], _ = sub_typed, text.update(sub_text)
    return typed, text


def _apply_text(cfg: RunConfig, text: dict[str, Any]) -> None:
    for key, value in text.items():
        parts = key.split(".")
        node: Any = cfg
        if parts[0] == "stages":
            node, parts = cfg.stages[parts[1]], parts[2:]
        for part in parts[:-1]:
            node = getattr(node, part)
        kind = _field_type(key)
        if value is None and kind is str:
            raise ConfigError(f"{key}: expected text, got null")
        setattr(node, parts[-1], value)


# --------------------------------------------------------------------------------------------- loading
def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["a=1", "b.c=x y"]`` -> ordered dict. Raises ConfigError for an argument without '='."""
    out: dict[str, str] = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"argument '{arg}': expected key=value (e.g. prompt=\"a pineapple\")")
        key, value = arg.split("=", 1)
        out[key.strip()] = value
    return out


def typed_values(kv: dict[str, str], defaults: dict[str, Any], command: str) -> dict[str, Any]:
    """``key=value`` strings of a command other than fit -> values typed like ``defaults`` (a default of
    None means an optional float). Unknown keys and bad values raise a one-line ConfigError."""
    values = dict(defaults)
    for key, raw in kv.items():
        if key not in defaults:
            hint = difflib.get_close_matches(key, list(defaults), n=1)
            raise ConfigError(f"unknown key '{key}' for {command}" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                              + f"; expected {', '.join(defaults)}")
        kind = type(defaults[key]) if defaults[key] is not None else float
        try:
            if kind is bool:
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                values[key] = raw.lower() in ("true", "1", "yes")
            else:
                values[key] = kind(raw)
        except ValueError:
            raise ConfigError(f"{key}: expected {kind.__name__}, got '{raw}'") from None
        if kind is float and not math.isfinite(values[key]):
            raise ConfigError(f"{key}: expected a finite number, got '{raw}'")
    return values


def _merge(base: DictConfig, updates: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, updates)
    except OmegaConfBaseException as exc:
        raise _one_line(exc, source) from None


def read_yaml(path: Path, what: str) -> dict:
    """A YAML mapping from ``path`` (safe loader: plain data only), or a one-line ConfigError naming the file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected {what} in YAML)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where} (expected {what})") from None
    if data is None:
        raise ConfigError(f"{path}: empty (expected {what})")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {what} (a mapping of keys), got a {type(data).__name__}")
    return data


def recipe_path(recipe: str) -> Path:
    """A recipe name from configs/ or an explicit ``.yaml`` file -> its file; one-line ConfigError otherwise."""
    if "/" in recipe and not recipe.endswith((".yaml", ".yml")):
        raise ConfigError(f"recipe: expected a recipe name from configs/ or a .yaml file, got '{recipe}'")
    if recipe.endswith((".yaml", ".yml")):
        path = Path(recipe).expanduser()
        if not path.is_file():
            raise ConfigError(f"recipe: file '{recipe}' not found (expected a recipe name from configs/ or a "
                              ".yaml file)")
        return path
    path = CONFIG_DIR / f"{recipe}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9][\w-]*", recipe) or not path.is_file():
        recipes = list_recipes()
        hint = difflib.get_close_matches(recipe, recipes, n=1)
        raise ConfigError(
            f"recipe: unknown recipe '{recipe}'; expected one of {', '.join(recipes)} or a .yaml file"
            + (f" (did you mean '{hint[0]}'?)" if hint else "")
        )
    return path


def recipe_name(recipe: str) -> str:
    """The folder name of a recipe: its name, or a recipe file's stem made safe (run folders stay under
    output_dir)."""
    stem = Path(recipe).stem if recipe.endswith((".yaml", ".yml")) or "/" in recipe else recipe
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "recipe"


PRIOR_SETTINGS = "dream3d.yaml"  # in a prior folder: the stage settings of the world it was trained on


def _under(base: dict, top: dict) -> dict:
    """``top`` merged over ``base`` (nested mappings key by key; ``top`` wins)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _under(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def prior_stage_settings(prior: str) -> dict:
    """The stage settings a prior folder declares in its :data:`PRIOR_SETTINGS` file, as a nested mapping.

    The file is plain YAML (safe loader) with one key, ``stages:``, a mapping of stage keys (dotted or nested,
    e.g. ``renderer.background: solid``) that every stage of every recipe uses unless the recipe or the command
    line sets them: what the prior saw in training (background, framing, lighting), so that recipes describe
    methods and priors their world. Stable Diffusion has no such file and keeps the recipes' (DreamFusion's)
    settings. ``{}`` when there is no file (or the prior is a hub id)."""
    folder = _local_prior_folder(prior)
    path = folder / PRIOR_SETTINGS if folder is not None else None
    if path is None or not path.is_file():
        return {}
    data = read_yaml(path, "prior settings (a mapping with one key, stages)")
    if set(data) != {"stages"} or not isinstance(data["stages"], dict):
        raise ConfigError(f"{path}: expected one key, 'stages', holding a mapping of stage keys")
    nested: dict = {}

    def collect(node: dict, prefix: str) -> None:  # dotted and nested keys alike end up nested
        for k, v in node.items():
            if isinstance(v, dict):
                collect(v, f"{prefix}{k}.")
            else:
                _set_dotted(nested, f"{prefix}{k}", v)

    collect(data["stages"], "")
    _split_text({"stages": {"<stage>": nested}}, f"prior settings {path}")  # unknown keys and bad values: one line
    return nested


def load_config(args: list[str] | dict[str, str], base: Optional[Any] = None) -> RunConfig:
    """Merge schema <- prior settings <- recipe YAML (or ``base``, a stored run config mapping) <- overrides;
    validate; return. Prior settings (:func:`prior_stage_settings`) apply to every stage of a recipe and not
    to a stored run config, which holds them already.

    Text keys (prompt, negative_prompt, name, paths, choices) are taken literally from the command line and
    from files; typed keys are typed by the schema. Nothing is interpolated."""
    overrides = parse_overrides(args) if isinstance(args, list) else dict(args)
    schema = OmegaConf.structured(RunConfig)
    if isinstance(base, DictConfig):
        base = OmegaConf.to_container(base, resolve=False)
    if base is None:
        recipe = overrides.get("recipe", RunConfig.recipe)
        path = recipe_path(recipe)
        tree = read_yaml(path, "a recipe")
        source = f"recipe {path.name}"
        tree.pop("recipe", None)
        prior = overrides.get("prior", tree.get("prior", RunConfig.prior))  # a recipe may name its prior
        defaults = prior_stage_settings(prior if isinstance(prior, str) else RunConfig.prior)
        if defaults and isinstance(tree.get("stages"), dict):
            tree["stages"] = {name: _under(defaults, stage if isinstance(stage, dict) else {})
                              for name, stage in tree["stages"].items()}
    else:
        tree, source = dict(base), "stored run config"
    typed_tree, text = _split_text(tree, source)
    stage_names = list((typed_tree.get("stages") or {}).keys())
    cfg = _merge(schema, typed_tree, source)
    cli_typed: dict = {}
    cli_text: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key.startswith("stages."):
            parts = key.split(".")
            if len(parts) < 3 or parts[1] not in stage_names:
                raise ConfigError(
                    f"unknown key '{key}': recipe '{cfg.recipe}' has stages {', '.join(stage_names)};"
                    " expected stages.<stage>.<key>=value"
                )
        kind = _field_type(key)
        if kind is None or dataclasses.is_dataclass(kind) or key == "stages":
            raise ConfigError(f"unknown key '{key}' in command line{_hint(key)}")
        if _is_text(kind):
            # text as typed; an optional key (stage init, name, guidance) also takes null for "none"
            cli_text[key] = None if kind is not str and raw.strip() == "null" else raw
        else:
            _set_dotted(cli_typed, key, _typed(key, raw, kind))
    cfg = _merge(cfg, cli_typed, "command line")
    try:
        run: RunConfig = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise _one_line(exc, source) from None
    _apply_text(run, text)
    _apply_text(run, cli_text)
    if base is None:
        run.recipe = recipe_name(overrides.get("recipe", RunConfig.recipe))
    _apply_shorthands(run, overrides)
    validate(run)
    return run


# the guidance scale each method's paper uses; ``guidance=<name>`` on the command line sets it too
PAPER_GUIDANCE_SCALE = {"sds": 100.0, "vsd": 7.5, "sjc": 100.0}


def _apply_shorthands(cfg: RunConfig, overrides: dict[str, str]) -> None:
    if cfg.guidance is not None:
        for name, stage in cfg.stages.items():
            stage.guidance.name = cfg.guidance
            explicit = f"stages.{name}.guidance.guidance_scale" in overrides
            if "guidance" in overrides and not explicit and cfg.guidance in PAPER_GUIDANCE_SCALE:
                stage.guidance.guidance_scale = PAPER_GUIDANCE_SCALE[cfg.guidance]
    if cfg.steps is not None and cfg.steps > 0 and cfg.stages:
        if cfg.steps < len(cfg.stages):
            raise ConfigError(f"steps: expected at least {len(cfg.stages)} (one per stage of recipe '{cfg.recipe}': "
                              f"{', '.join(cfg.stages)}), got {cfg.steps}")
        total = sum(s.steps for s in cfg.stages.values()) or 1
        names = list(cfg.stages)
        left = cfg.steps
        for i, name in enumerate(names):
            stage = cfg.stages[name]
            later = len(names) - i - 1  # every later stage keeps at least one step
            n = left if i == len(names) - 1 else min(max(1, round(cfg.steps * stage.steps / total)), left - later)
            stage.steps, left = n, left - n


# ------------------------------------------------------------------------------------------ validation
def _check_schedule(key: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        if value[3] < value[0]:
            raise ConfigError(f"{key}: schedule end_step {value[3]} is before start_step {value[0]}")
        return
    raise ConfigError(f"{key}: expected a number or [start_step, start_value, end_value, end_step], got {value!r}")


def _check_range(key: str, value: list[float], lo: float, hi: float) -> None:
    if len(value) != 2 or not (lo <= value[0] <= value[1] <= hi):
        raise ConfigError(f"{key}: expected [min, max] with {lo} <= min <= max <= {hi}, got {list(value)}")


def _choice(key: str, value: str, options: list[str]) -> None:
    if value not in options:
        raise ConfigError(f"{key}: expected one of {', '.join(options)}, got '{value}'")


def _local_prior_folder(prior: str) -> Optional[Path]:
    """The folder ``prior`` names (absolute, relative to the working directory or to the project), if any."""
    for candidate in (Path(prior).expanduser(), PROJECT_ROOT / prior):
        if candidate.is_dir():
            return candidate
    return None


def resolve_prior_path(prior: str, key: str = "prior") -> str:
    """A local folder (absolute, relative to the working directory or to the project) or a hub id; errors name ``key``."""
    candidate = _local_prior_folder(prior)
    if candidate is not None:
        if not (candidate / "model_index.json").is_file() and not (candidate / "unet").is_dir():
            raise ConfigError(f"{key}: folder {candidate} has no model_index.json or unet/ (expected a diffusers pipeline folder)")
        return str(candidate.resolve())
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", prior) and not prior.startswith((".", "/", "~")):
        owner = prior.split("/")[0]
        if Path(owner).is_dir() or (PROJECT_ROOT / owner).is_dir():  # 'assets/shapewrold': a mistyped local path
            raise ConfigError(f"{key}: folder '{prior}' not found (expected a diffusers pipeline folder)")
        _check_hub_prior(prior, key)
        return prior  # a hub id; from_pretrained resolves it (cache or download)
    hint = " (the shape-world prior is not shipped yet: pass prior=<diffusers folder or hub id>)" if prior == DEFAULT_PRIOR else ""
    raise ConfigError(f"{key}: folder '{prior}' not found; expected a diffusers pipeline folder or a hub id like stabilityai/stable-diffusion-2-1-base{hint}")


def _check_hub_prior(repo: str, key: str = "prior") -> None:
    """A hub id must be in the local Hugging Face cache or reachable: asked once, here, rather than by every
    component's ``from_pretrained`` with its retries."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, "model_index.json"), str):
        return
    try:
        hf_hub_download(repo, "model_index.json")
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{key}: '{repo}' is not a local folder, not in the Hugging Face cache, and could not be "
                          f"fetched ({reason[:160]})") from None


def _field_name(n: NeRFConfig) -> str:
    """A NeRF stage's field in words: 'hashgrid' or 'voxels (<G> a side)'."""
    return f"voxels ({n.voxel_resolution} a side)" if n.field == "voxels" else n.field


def _check_mesh_stage(p: str, st: StageConfig, stages: dict[str, StageConfig]) -> None:
    """Settings of the mesh stages (systems dmtet, dmtet-geometry, mesh-texture)."""
    from dream3d.registry import mesh_systems

    if st.system not in mesh_systems():
        return
    m, d = st.mesh, st.dmtet
    if d.resolution < 4 or d.radius <= 0 or not 0 < d.deformation_bound <= 1:
        raise ConfigError(f"{p}.dmtet: expected resolution >= 4, radius > 0 and 0 < deformation_bound <= 1, got "
                          f"{d.resolution}, {d.radius}, {d.deformation_bound}")
    _choice(f"{p}.dmtet.init_level", d.init_level, ["half-peak", "matched"])
    if d.init_hull and d.init_level != "matched":
        raise ConfigError(f"{p}.dmtet.init_hull: true needs {p}.dmtet.init_level=matched (the hull is of its "
                          f"silhouettes), got init_level={d.init_level}")
    if not 0 < d.init_alpha < 1:
        raise ConfigError(f"{p}.dmtet.init_alpha: expected an opacity between 0 and 1 (exclusive), got {d.init_alpha}")
    if not 0 <= d.init_core_alpha < 1:
        raise ConfigError(f"{p}.dmtet.init_core_alpha: expected an opacity in [0, 1) (0: off), got {d.init_core_alpha}")
    _choice(f"{p}.mesh.material", m.material, ["albedo", "pbr"])
    _choice(f"{p}.mesh.light", m.light, ["studio", "uniform"])
    if len(m.init_size) != 3 or min(m.init_size) <= 0 or max(m.init_size) >= d.radius:
        raise ConfigError(f"{p}.mesh.init_size: expected three semi-axes in (0, dmtet.radius), got {list(m.init_size)}")
    if min(m.init_fit_steps, m.texture_fit_steps, m.latent_mask_steps) < 0:
        raise ConfigError(f"{p}.mesh: init_fit_steps, texture_fit_steps and latent_mask_steps must be >= 0")
    if st.init is None and m.init not in ("sphere", "ellipsoid") and not Path(m.init).expanduser().is_file():
        raise ConfigError(f"{p}.mesh.init: expected sphere, ellipsoid or a mesh file (.glb/.obj/.ply), got '{m.init}'"
                          " (not a file)")
    if st.system == "mesh-texture":
        source = stages.get(st.init) if st.init else None
        if source is None or source.system not in mesh_systems():
            raise ConfigError(f"{p}.init: a mesh-texture stage textures the geometry of an earlier dmtet or "
                              f"dmtet-geometry stage; got {st.init!r}")
        if source.dmtet.resolution != d.resolution:
            raise ConfigError(f"{p}.dmtet.resolution: expected {source.dmtet.resolution} like stage '{st.init}', "
                              f"got {d.resolution}")


def _check_finite(node: Any, prefix: str = "") -> None:
    """Every number in the config (schedules and lists included) is finite: nan and inf name their key."""
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            _check_finite(value, key + ".")
        elif isinstance(value, dict):
            for name, sub in value.items():
                _check_finite(sub, f"{key}.{name}.")
        else:
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in items):
                raise ConfigError(f"{key}: expected finite numbers, got {value}")


def _check_truth(p: str, st) -> None:
    """``guidance.truth_steps`` (guidance/truth.py) renders the true object lit as the stage's renders are: it needs
    a NeRF or DMTet stage (lit colour renders) that is always lit (no albedo-only or textureless steps) over a
    fixed background."""
    steps = st.guidance.truth_steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ConfigError(f"{p}.guidance.truth_steps: expected an integer >= 0, got {steps!r}")
    if steps == 0:
        return
    r = st.renderer
    if st.system not in ("nerf-sds", "dmtet"):
        raise ConfigError(f"{p}.guidance.truth_steps: a {st.system} stage is not supported (its renders are not the "
                          "lit colours of the true object); expected 0, or a nerf-sds or dmtet stage")
    if r.albedo_prob or r.textureless_prob or r.ambient_only_steps or (st.system == "nerf-sds" and r.background != "solid"):
        raise ConfigError(f"{p}.guidance.truth_steps: needs always-lit renders over a solid background "
                          "(renderer.albedo_prob=0, textureless_prob=0, ambient_only_steps=0, background=solid: the "
                          "shipped prior's settings)")


def validate(cfg: RunConfig) -> None:
    """Check values that types alone cannot. Raises ConfigError (one line) on the first problem."""
    from dream3d.registry import GUIDANCES, LATENT_SYSTEMS, SYSTEMS, mesh_systems
    from dream3d.schedule import is_zero

    if not cfg.prompt.strip():
        raise ConfigError('prompt: expected a non-empty text, e.g. prompt="a pineapple"')
    _check_finite(cfg)
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed: expected an integer from 0 to 4294967295, got {cfg.seed}")
    if cfg.threads < 0:
        raise ConfigError(f"threads: expected 0 (automatic) or a positive integer, got {cfg.threads}")
    if cfg.steps is not None and cfg.steps <= 0:
        raise ConfigError(f"steps: expected a positive integer, got {cfg.steps}")
    if not 1 <= cfg.particles <= 64:
        raise ConfigError(f"particles: expected an integer from 1 to 64, got {cfg.particles}")
    _check_reference(cfg)
    _choice("device", cfg.device, ["auto", "cpu", "cuda"])
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device: cuda was asked for but no CUDA device is available; expected device=cpu or auto")
    _choice("prior_dtype", cfg.prior_dtype, ["auto", "fp32", "fp16", "bf16"])
    if cfg.name is not None and (not cfg.name.strip() or "/" in cfg.name or cfg.name in (".", "..")):
        raise ConfigError(f"name: expected a folder name without '/', got '{cfg.name}'")
    if not cfg.stages:
        raise ConfigError(f"stages: recipe '{cfg.recipe}' defines no stages")
    _check_paint(cfg)
    if cfg.export:
        from dream3d.export.mesh import FORMATS

        formats = [f.strip() for f in cfg.export_formats.split(",") if f.strip()]
        if not formats or any(f not in FORMATS for f in formats):
            raise ConfigError(f"export_formats: expected a comma list of {', '.join(FORMATS)}, "
                              f"got '{cfg.export_formats}'")
        if cfg.mesh_resolution < 16 or cfg.texture_size < 16:
            raise ConfigError(f"mesh_resolution / texture_size: expected at least 16, got {cfg.mesh_resolution} / "
                              f"{cfg.texture_size}")
        if cfg.video_views < 0 or cfg.video_size < 16:
            raise ConfigError(f"video_views / video_size: expected >= 0 / >= 16, got {cfg.video_views} / {cfg.video_size}")
    seen: list[str] = []
    for name, st in cfg.stages.items():
        p = f"stages.{name}"
        if st.steps <= 0:
            raise ConfigError(f"{p}.steps: expected a positive integer, got {st.steps}")
        _choice(f"{p}.system", st.system, sorted(SYSTEMS))
        _choice(f"{p}.guidance.name", st.guidance.name, sorted(GUIDANCES))
        if st.init is not None and st.init not in seen:
            raise ConfigError(f"{p}.init: expected the name of an earlier stage ({', '.join(seen) or 'none'}), got '{st.init}'")
        _check_mesh_stage(p, st, cfg.stages)
        seen.append(name)
        for key in ("val_every", "ckpt_every"):
            if getattr(st, key) <= 0:
                raise ConfigError(f"{p}.{key}: expected a positive integer, got {getattr(st, key)}")
        c = st.camera
        _check_range(f"{p}.camera.elevation_range", c.elevation_range, -90, 90)
        _check_range(f"{p}.camera.azimuth_range", c.azimuth_range, -360, 360)
        _check_range(f"{p}.camera.distance_range", c.distance_range, 1e-3, 1e3)
        _check_range(f"{p}.camera.fovy_range", c.fovy_range, 1, 179)
        _choice(f"{p}.camera.framing", c.framing, ["distance", "fill"])
        _check_range(f"{p}.camera.fill_range", c.fill_range, 0.05, 1.0)
        if not 0 < c.framing_radius <= 1e3:
            raise ConfigError(f"{p}.camera.framing_radius: expected a positive number, got {c.framing_radius}")
        _check_range(f"{p}.camera.light_distance_range", c.light_distance_range, 0, 1e3)
        for key in ("height", "width", "batch_size", "eval_size"):
            if getattr(c, key) <= 0:
                raise ConfigError(f"{p}.camera.{key}: expected a positive integer, got {getattr(c, key)}")
        r = st.renderer
        _choice(f"{p}.renderer.backend", r.backend,
                ["auto", "torch", "nvdiffrast"] if st.system in mesh_systems() else ["auto", "torch", "nerfacc"])
        if r.backend == "nerfacc":
            _check_nerfacc(f"{p}.renderer.backend", cfg.device)
        _choice(f"{p}.renderer.background", r.background, ["mlp", "solid", "random"])
        if r.num_samples <= 0:
            raise ConfigError(f"{p}.renderer.num_samples: expected a positive integer, got {r.num_samples}")
        if len(r.background_color) != 3:
            raise ConfigError(f"{p}.renderer.background_color: expected [r, g, b] in [0, 1], got {r.background_color}")
        n = st.representation
        _choice(f"{p}.representation.backend", n.backend, ["auto", "torch", "tcnn"])
        _choice(f"{p}.representation.output", n.output, ["rgb", "latent"])
        if (n.output == "latent") != (st.system in LATENT_SYSTEMS):
            raise ConfigError(f"{p}.representation.output: '{n.output}' with system '{st.system}'; expected latent "
                              f"exactly with systems {', '.join(LATENT_SYSTEMS)} (rgb otherwise)")
        if n.latent_channels < 1:
            raise ConfigError(f"{p}.representation.latent_channels: expected a positive integer, got {n.latent_channels}")
        _choice(f"{p}.representation.normals", n.normals, ["analytic", "finite_difference"])
        _choice(f"{p}.representation.field", n.field, ["hashgrid", "voxels"])
        if not 2 <= n.voxel_resolution <= 512:
            raise ConfigError(f"{p}.representation.voxel_resolution: expected an integer from 2 to 512, got "
                              f"{n.voxel_resolution}")
        source = cfg.stages.get(st.init) if st.init else None
        if source is not None and st.system not in mesh_systems() and source.system not in mesh_systems() and \
                _field_name(source.representation) != _field_name(n):
            raise ConfigError(f"{p}.representation.field: {_field_name(n)}, but its init stage '{st.init}' has "
                              f"{_field_name(source.representation)}; expected the same field (a NeRF stage "
                              "continues its init stage's)")
        _choice(f"{p}.representation.density_activation", n.density_activation, ["softplus", "trunc_exp", "relu"])
        if n.radius <= 0:
            raise ConfigError(f"{p}.representation.radius: expected a positive number, got {n.radius}")
        g = st.guidance
        _choice(f"{p}.guidance.weighting", g.weighting, ["sds", "uniform", "fantasia"])
        _choice(f"{p}.guidance.space", g.space, ["latent", "image"])
        _check_schedule(f"{p}.guidance.t_min", g.t_min)
        _check_schedule(f"{p}.guidance.t_max", g.t_max)
        _check_schedule(f"{p}.guidance.grad_clip", g.grad_clip, allow_none=True)
        if g.guidance_scale < 0:
            raise ConfigError(f"{p}.guidance.guidance_scale: expected a number >= 0, got {g.guidance_scale}")
        _check_truth(p, st)
        if g.camera_scale is not None and g.camera_scale < 0:
            raise ConfigError(f"{p}.guidance.camera_scale: expected a number >= 0 or null, got {g.camera_scale}")
        if g.text_prior and not cfg.text_prior:
            raise ConfigError(f"{p}.guidance.text_prior: true needs the run's text_prior (a text prior folder beside "
                              "the camera prior), which is not set")
        if g.perp_neg and not cfg.view_dependent:
            raise ConfigError(f"{p}.guidance.perp_neg: true needs view_dependent=true (it mixes the view prompts)")
        for key in ("perp_neg_f_fs", "perp_neg_f_sf", "perp_neg_f_sb", "perp_neg_f_fsb"):
            if len(getattr(g, key)) != 3:
                raise ConfigError(f"{p}.guidance.{key}: expected [a, b, c] of f(r) = a exp(-b r) + c, got "
                                  f"{list(getattr(g, key))}")
        o = st.optim
        for key in ("lr_encoding", "lr_network", "lr_background", "lr_sdf", "lr_deformation"):
            if getattr(o, key) < 0:
                raise ConfigError(f"{p}.optim.{key}: expected a learning rate >= 0, got {getattr(o, key)}")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ConfigError(f"{p}.optim.betas: expected [beta1, beta2] with each in [0, 1), got {list(o.betas)}")
        if o.eps <= 0:
            raise ConfigError(f"{p}.optim.eps: expected a number > 0, got {o.eps}")
        if not 1 <= g.paas_samples <= 64:
            raise ConfigError(f"{p}.guidance.paas_samples: expected an integer from 1 to 64, got {g.paas_samples}")
        if g.lora_rank < 1 or g.lora_lr <= 0 or g.camera_hidden < 1 or not 0 <= g.camera_dropout < 1:
            raise ConfigError(f"{p}.guidance: expected lora_rank >= 1, lora_lr > 0, camera_hidden >= 1 and "
                              f"0 <= camera_dropout < 1, got {g.lora_rank}, {g.lora_lr}, {g.camera_hidden}, "
                              f"{g.camera_dropout}")
        for f in dataclasses.fields(LossConfig):
            _check_schedule(f"{p}.loss.{f.name}", getattr(st.loss, f.name))
        if st.system in LATENT_SYSTEMS and not is_zero(st.loss.reference_rgb):
            raise ConfigError(f"{p}.loss.reference_rgb: a {st.system} stage renders latents, not colours; expected 0 "
                              "(loss.reference_mask works)")
    if cfg.sketch:
        _check_sketch(cfg)
    cfg.prior = resolve_prior_path(cfg.prior)
    if cfg.text_prior:
        cfg.text_prior = resolve_prior_path(cfg.text_prior, "text_prior")


def _mesh_file(key: str, value: str) -> str:
    """A run key naming a mesh file (``mesh``, ``sketch``): the resolved path, or one line if it is not a .glb, .obj
    or .ply file that exists."""
    from dream3d.export.mesh import FORMATS

    path = Path(value).expanduser()
    if path.suffix.lower().lstrip(".") not in FORMATS or not path.is_file():
        raise ConfigError(f"{key}: {value}: expected a mesh file ({', '.join('.' + f for f in FORMATS)}) that exists")
    return str(path.resolve())


def _check_paint(cfg: RunConfig) -> None:
    """``mesh=<file>`` becomes the ``mesh.init`` of the stages that paint a given mesh; those stages need one."""
    from dream3d.registry import PAINT_SYSTEMS

    painting = [name for name, st in cfg.stages.items() if st.system in PAINT_SYSTEMS]
    if cfg.mesh:
        path = _mesh_file("mesh", cfg.mesh)
        if not painting:
            raise ConfigError(f"mesh: recipe '{cfg.recipe}' paints no given mesh; expected recipe=latent-paint")
        cfg.mesh = path
        for name in painting:
            cfg.stages[name].mesh.init = cfg.mesh
    for name in painting:
        st = cfg.stages[name]
        source = cfg.stages.get(st.init) if st.init else None
        if st.init is not None and (source is None or source.system not in PAINT_SYSTEMS):
            raise ConfigError(f"stages.{name}.init: a {st.system} stage starts from an earlier latent-paint or "
                              f"mesh-paint stage or from mesh=<file>; got {st.init!r}")
        if st.init is None and st.mesh.init in ("sphere", "ellipsoid"):
            raise ConfigError(f"mesh: recipe '{cfg.recipe}' textures a given mesh; expected mesh=<a .glb, .obj or "
                              ".ply file>")


def _check_sketch(cfg: RunConfig) -> None:
    """``sketch=<mesh>``: a mesh file that exists, a positive leniency, and a stage that weights loss.sketch."""
    from dream3d.registry import mesh_systems
    from dream3d.schedule import is_zero

    path = _mesh_file("sketch", cfg.sketch)
    if cfg.sketch_sigma <= 0:
        raise ConfigError(f"sketch_sigma: expected a distance > 0, got {cfg.sketch_sigma}")
    if not any(st.system not in mesh_systems() and not is_zero(st.loss.sketch) for st in cfg.stages.values()):
        raise ConfigError(f"sketch: no NeRF stage of recipe '{cfg.recipe}' weights loss.sketch; expected "
                          "recipe=latent-nerf or stages.<name>.loss.sketch=<weight>")
    cfg.sketch = path


def _check_reference(cfg: RunConfig) -> None:
    r = cfg.reference
    if not 1 <= r.samples <= 64:
        raise ConfigError(f"reference.samples: expected an integer from 1 to 64, got {r.samples}")
    if r.steps < 1:
        raise ConfigError(f"reference.steps: expected a positive integer, got {r.steps}")
    if not 0 < r.fovy < 180:
        raise ConfigError(f"reference.fovy: expected degrees between 0 and 180, got {r.fovy}")
    if not 0 < r.fill <= 1:
        raise ConfigError(f"reference.fill: expected a share of the view in (0, 1], got {r.fill}")
    if not 0 < r.threshold < 1:
        raise ConfigError(f"reference.threshold: expected a colour difference in (0, 1), got {r.threshold}")
    if not -90 <= r.elevation <= 90:
        raise ConfigError(f"reference.elevation: expected degrees from -90 to 90, got {r.elevation}")


def _check_nerfacc(key: str, device: str) -> None:
    """``renderer.backend=nerfacc`` runs only on CUDA with nerfacc installed: say so before any work."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        raise ConfigError(f"{key}: nerfacc needs a CUDA device (device={device}, CUDA available: "
                          f"{torch.cuda.is_available()}); expected auto or torch here")
    try:
        import nerfacc  # noqa: F401
    except Exception:
        raise ConfigError(f"{key}: nerfacc does not import; install it with pip install 'nerfacc>=0.5' "
                          f"(or 'dream3d[cuda]'), or expected auto or torch") from None


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as plain YAML (text quoted where YAML would retype it; nothing interpolated); the priors
    inside the project as project-relative paths (:func:`portable_path`)."""
    tree = dataclasses.asdict(cfg)
    for key in ("prior", "text_prior"):
        tree[key] = portable_path(tree[key])
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=1000)


def load_run_config(path: Path) -> RunConfig:
    """A run folder's stored config file (:attr:`dream3d.rundir.RunFolder.config_path`) as a RunConfig, without
    re-validating it (its prior may be elsewhere now). One-line ConfigError naming the file when it is missing
    or not a dream3d config."""
    path = Path(path)
    tree = load_stored(path)
    try:
        typed_tree, text = _split_text(tree, "stored run config")
        cfg = _merge(OmegaConf.structured(RunConfig), typed_tree, "stored run config")
        try:
            run: RunConfig = OmegaConf.to_object(cfg)
        except OmegaConfBaseException as exc:
            raise _one_line(exc, "stored run config") from None
        _apply_text(run, text)
    except ConfigError as exc:
        raise stored_config_error(path, exc) from None
    return run


def stored_config_error(path: Path, exc: ConfigError) -> ConfigError:
    """A problem of a stored config.yaml as one line that starts with the file's path."""
    message = str(exc)
    if message.startswith(str(path)):
        return exc
    message = re.sub(r" \(in stored run config\)| in stored run config", "", message)
    message = re.sub(r"^stored run config: ", "", message)
    return ConfigError(f"{path}: {message}")


def load_stored(path: Path) -> dict:
    """The resolved config stored in a run folder, as a plain mapping (read with YAML's safe loader)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found (expected a dream3d run folder with config.yaml)")
    return read_yaml(path, "a dream3d run config")
