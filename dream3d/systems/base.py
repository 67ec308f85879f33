"""What every stage system shares: loss weighting, regularizers, per-step metrics, validation grids, and
the Lightning callbacks for progress, atomic checkpoints and Ctrl-C."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from dream3d.cameras import Cameras, sample_cameras, turntable
from dream3d.errors import Dream3DError
from dream3d.guidance import perpneg
from dream3d.io import atomic_path, save_png
from dream3d.prior.prompts import PromptEmbeddings
from dream3d.registry import GUIDANCES, resolve
from dream3d.rundir import RunFolder
from dream3d.schedule import is_zero, scheduled


class NonFiniteError(Dream3DError):
    """A loss term or a parameter became nan or inf: the stage stops, the last good checkpoint stays."""

    exit_code = 1


def first_non_finite(module: torch.nn.Module) -> Optional[str]:
    """The name of the first parameter of ``module`` holding a nan or inf, or None."""
    for name, p in module.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return name
    return None


# -------------------------------------------------------------------------------------- regularizers
def sparsity_loss(opacity: Tensor) -> Tensor:
    """Mean sqrt(o^2 + 0.01) over pixels: pushes empty pixels to zero opacity (a smooth L1)."""
    return torch.sqrt(opacity**2 + 0.01).mean()


def opacity_entropy_loss(opacity: Tensor) -> Tensor:
    """Mean binary entropy of the opacity: pushes pixels to fully empty or fully opaque."""
    o = opacity.clamp(1e-5, 1 - 1e-5)
    return -(o * torch.log(o) + (1 - o) * torch.log(1 - o)).mean()


EMPTINESS_BETA = 10.0  # SJC's emptiness_scale


def emptiness_loss(weights: Tensor, slots: int, beta: float = EMPTINESS_BETA) -> Tensor:
    r"""SJC's emptiness loss (Wang et al. 2023, the ``sjc`` recipe): the mean over every sample slot of a render,

        L_empty = (1 / (R S)) Σ_r Σ_i log(1 + β w_{r,i}),

    with w_{r,i} = T_i α_i the compositing weight of sample i on ray r, R the rays, S the samples a ray has
    (``renderer.num_samples``) and β = 10. log(1 + β w) rises steeply for small weights and flattens for large
    ones, so it empties faint haze everywhere while a few opaque samples per ray cost little: sparsity of the
    weights, not of the opacity. ``weights`` [M] are the renderer's evaluated samples; every other slot has a
    weight below the occupancy grid's or the early stop's threshold and adds about 0 (log 1). ``slots`` = R S.
    The value depends on S (a mean over slots), so its weight is tied to ``num_samples``."""
    return torch.log1p(beta * weights).sum() / max(int(slots), 1)


BACKGROUND_DEPTH = 10.0  # SJC's depth of a ray that hits nothing (scene units; the box has radius 1)
CENTER_SHARE = 50.0 / 64.0  # SJC's centre box: 50 x 50 pixels of a 64 x 64 render
CENTER_DEPTH_FLOOR = 0.1  # below this gap, -log continues as its tangent (finite for any render)


def center_depth_loss(depth: Tensor, opacity: Tensor) -> Tensor:
    r"""SJC's centre-depth loss: the object should stand in the middle of the picture, in front of what surrounds it.

    With D(p) = depth(p) + (1 - opacity(p)) d_far the depth of pixel p composited over a far background
    (d_far = 10, SJC's), 𝓑 the centre box of the image (the middle 50/64 of each side) and 𝓑ᶜ the rest,

        Δ = (1/|𝓑ᶜ|) Σ_{q ∈ 𝓑ᶜ} D(q)  -  (1/|𝓑|) Σ_{p ∈ 𝓑} D(p),        L_center = -log Δ,

    averaged over the batch. The paper prints -log(mean_𝓑 D - mean_𝓑ᶜ D), a sign slip its authors acknowledged
    (pals-ttic/sjc issue 21): their code's gradient is that of -log Δ above, which pulls the centre nearer and
    pushes the border away. dream3d writes the intended form and, for Δ below δ = 0.1 (an empty or off-centre
    render), continues -log as its tangent line, -log δ + (δ - Δ)/δ, so the loss stays finite and keeps pulling
    (the paper's form is the log of a negative number there). depth, opacity [B,H,W,1]."""
    B, H, W = depth.shape[:3]
    d = (depth + (1.0 - opacity) * BACKGROUND_DEPTH)[..., 0]  # [B,H,W]
    h, w = max(1, int(H * CENTER_SHARE)), max(1, int(W * CENTER_SHARE))
    top, left = (H - h) // 2, (W - w) // 2
    center = d[:, top:top + h, left:left + w]
    outside = max(H * W - h * w, 1)
    gap = (d.sum((1, 2)) - center.sum((1, 2))) / outside - center.mean((1, 2))  # [B]
    floor = CENTER_DEPTH_FLOOR
    loss = torch.where(gap >= floor, -torch.log(gap.clamp_min(floor)), -math.log(floor) + (floor - gap) / floor)
    return loss.mean()


def normal_consistency_loss(verts: Tensor, faces: Tensor) -> Tensor:
    """Mean 1 - cos between the normals of faces sharing an edge (verts [V,3], faces [F,3]): a smooth surface."""
    from dream3d.render.mesh_geometry import edge_topology, face_normals

    if faces.shape[0] == 0:
        return verts.sum() * 0
    normals = face_normals(verts, faces.long())  # [F,3]
    opposite = edge_topology(faces)  # [F,3], -1 on boundary edges
    face = torch.arange(faces.shape[0], device=faces.device)[:, None].expand_as(opposite)
    keep = opposite >= 0
    return (1.0 - (normals[face[keep]] * normals[opposite[keep]]).sum(-1)).mean()


def laplacian_loss(verts: Tensor, faces: Tensor) -> Tensor:
    """Mean squared distance of each vertex from the mean of its edge neighbours (uniform Laplacian)."""
    if faces.shape[0] == 0:
        return verts.sum() * 0
    f = faces.long()
    a = torch.cat([f[:, 0], f[:, 1], f[:, 2]])
    b = torch.cat([f[:, 1], f[:, 2], f[:, 0]])
    src, dst = torch.cat([a, b]), torch.cat([b, a])  # every edge both ways (shared edges counted twice: same mean)
    total = torch.zeros_like(verts).index_add_(0, src, verts[dst])
    count = torch.zeros(verts.shape[0], 1, device=verts.device, dtype=verts.dtype).index_add_(
        0, src, torch.ones(src.shape[0], 1, device=verts.device, dtype=verts.dtype))
    used = count[:, 0] > 0
    return (verts[used] - total[used] / count[used]).pow(2).sum(-1).mean()


class LatentStage:
    """What the stages whose field outputs the prior's latent channels share (mixed in before their system class:
    ``LatentNeRFSystem``, ``SJCSystem``, ``LatentPaintSystem``): the prior checked for those channels, the latent of
    the background colour and the solid-colour latent -> rgb map (:meth:`latent_setup`), the latent render itself as
    what the guidance scores (no encoder), and validation renders decoded by the VAE (:meth:`decoded`)."""

    def latent_setup(self, prior, stage_name: str, stage_cfg, background_color) -> tuple[Tensor, Tensor]:
        """(the prior's latent of ``background_color`` [C], the solid-colour map [C+1,3]); one line if the prior has
        no latent space of ``representation.latent_channels`` channels."""
        from dream3d.prior.latent import latent_rgb_map, solid_latents

        C = int(stage_cfg.representation.latent_channels)
        if not prior.is_latent or int(prior.unet.config.in_channels) != C:
            have = int(prior.unet.config.in_channels) if prior.is_latent else "none (a pixel prior)"
            raise Dream3DError(f"stages.{stage_name}.representation.latent_channels: {C}, but the prior ({prior.path}) "
                               f"has latent channels {have}; expected a latent prior with {C}")
        return solid_latents(prior, torch.tensor([list(background_color)]))[0], latent_rgb_map(prior)

    def scored_image(self, out: dict[str, Tensor], step: int) -> tuple[Tensor, Optional[Tensor]]:
        """The latent render itself goes to the guidance ([B,C,h,w]): no encoder."""
        return out["rgb"], out["rgb"].permute(0, 3, 1, 2)

    def decoded(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """A latent render for the validation grid: ``rgb`` the VAE's decoding, area-resized to the render's size;
        ``latents`` the render."""
        out["latents"] = out["rgb"]
        lat = out["rgb"].permute(0, 3, 1, 2)
        rgb = self.prior.decode(lat.to(self.prior.dtype)).float()
        out["rgb"] = torch.nn.functional.interpolate(rgb, lat.shape[-2:], mode="area").permute(0, 2, 3, 1)
        return out


VALIDATION_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)


def choose_shading(r, step: int, gen: torch.Generator) -> str:
    """DreamFusion's random shading of a training render (``r``: a RendererConfig): albedo only during the first
    ``ambient_only_steps``, then albedo with probability ``albedo_prob``, else textureless or diffuse."""
    if step < r.ambient_only_steps:
        return "albedo"
    u = float(torch.rand((), generator=gen))
    if u < r.albedo_prob:
        return "albedo"
    return "textureless" if u < r.albedo_prob + (1 - r.albedo_prob) * r.textureless_prob else "diffuse"


class BaseSystem(pl.LightningModule):
    """A stage: optimises ``particles`` (one representation each) for ``stage_cfg.steps`` steps.

    The frozen prior is held outside the module tree (``self.frozen``), so it never enters ``state_dict``
    or checkpoints; subclasses register only trainable parts (and their buffers) as submodules. A subclass
    names its particle class (``Particle``: built by :meth:`make_particle`, also what export rebuilds from a
    checkpoint) and fills in the hooks of :meth:`training_step` and :meth:`render_validation`.
    """

    Particle: type = torch.nn.Module  # the class of one 3D result of this stage

    @classmethod
    def make_particle(cls, stage_cfg) -> torch.nn.Module:
        """One untrained particle of this stage (export rebuilds particles with it before loading weights)."""
        return cls.Particle(stage_cfg)

    def __init__(self, run_cfg, stage_name: str, stage_cfg, prior, run_dir: Optional[Path] = None):
        super().__init__()
        self.run_cfg = run_cfg
        self.stage_name = stage_name
        self.stage_cfg = stage_cfg
        self.frozen = {"prior": prior}
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.last_metrics: dict[str, float] = {}
        self.manual_step = 0  # the step when no trainer drives the module (benchmarks)
        self.timings: Optional[dict[str, float]] = None  # set to a dict to collect section times (ms)
        # registration order fixes the random initialisation (seeded) and the checkpoint's key order
        self.particles = torch.nn.ModuleList([self.make_particle(stage_cfg) for _ in range(run_cfg.particles)])
        self.guidance = resolve(GUIDANCES, stage_cfg.guidance.name, "guidance")(stage_cfg.guidance, prior)
        # a camera-conditioned prior is told the camera itself (guidance cfg_noise): no view words then; systems
        # rebuilt to read a checkpoint have no prior
        takes_camera = prior is not None and prior.takes_camera
        self.prompts = PromptEmbeddings(prior, run_cfg.prompt, run_cfg.negative_prompt,
                                        run_cfg.view_dependent and not takes_camera)
        if takes_camera and stage_cfg.guidance.perp_neg:
            raise Dream3DError(f"stages.{stage_name}.guidance.perp_neg: the prior ({prior.path}) is told the camera, "
                               "not view words; expected a text prior (or perp_neg=false)")
        # the diagnostic's true object (guidance/truth.py) for the stage's first guidance.truth_steps steps
        self.truth = None
        if prior is not None and stage_cfg.guidance.truth_steps > 0:
            from dream3d.guidance.truth import TruthTarget

            self.truth = TruthTarget(run_cfg.prompt, stage_cfg.camera.framing_radius, stage_cfg.renderer.ambient,
                                     f"stages.{stage_name}.guidance.truth_steps")
        # the run's reference picture (dream3d/reference.py), drawn or read back once the stage weights its terms
        self.reference = None
        if prior is not None and (self.wants("reference_mask") or self.wants("reference_rgb")):
            from dream3d.reference import load_or_draw

            folder = None if self.run_dir is None else RunFolder(self.run_dir).reference_dir
            self.reference = load_or_draw(folder, prior, run_cfg.prompt, run_cfg.reference, run_cfg.seed,
                                          stage_cfg.camera.framing_radius, tuple(self.reference_background()),
                                          view_words=run_cfg.view_dependent)
            c = stage_cfg.camera
            self.reference_cams = self.reference.cameras(c.framing_radius, c.height, c.width)

    @property
    def step(self) -> int:
        """The optimisation step: the trainer's global step, or ``manual_step`` outside a trainer."""
        return self._trainer.global_step if self._trainer is not None else self.manual_step

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Accumulate wall time of a section into ``self.timings[name]`` (ms) when timing is on."""
        if self.timings is None:
            yield
            return
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + (time.perf_counter() - start) * 1000

    @property
    def prior(self):
        return self.frozen["prior"]

    @property
    def stage_dir(self) -> Optional[Path]:
        return None if self.run_dir is None else RunFolder(self.run_dir).stage_dir(self.stage_name)

    def step_generator(self, step: int) -> torch.Generator:
        """Random draws of a step depend only on (seed, stage, step): a resumed run repeats them exactly."""
        salt = sum(ord(c) * (i + 1) for i, c in enumerate(self.stage_name))
        return torch.Generator().manual_seed(self.run_cfg.seed * 1_000_003 + salt * 7919 + step)

    def weighted_loss(self, terms: dict[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """sum_k weight_k(step) * term_k over the terms the config weights; also returns plain floats to log."""
        total = torch.zeros((), device=self.device)
        logs: dict[str, float] = {}
        for name, value in terms.items():
            schedule = getattr(self.stage_cfg.loss, name)
            weight = scheduled(schedule, step)
            logs[name] = float(value.detach())
            if weight != 0:
                if not np.isfinite(logs[name]):
                    raise NonFiniteError(f"stage '{self.stage_name}' step {step}: loss term '{name}' is "
                                         f"{logs[name]}")
                total = total + weight * value
        logs["loss"] = float(total.detach())
        if not np.isfinite(logs["loss"]):
            raise NonFiniteError(f"stage '{self.stage_name}' step {step}: the weighted loss is {logs['loss']}")
        return total, logs

    def initialise(self, state: dict[str, Tensor], init_cfg) -> None:
        """Start from an earlier stage's result (its checkpoint's ``state``, its StageConfig ``init_cfg``). The
        default loads whatever matches; systems that change representation (NeRF -> mesh) override it."""
        self.load_state_dict(state, strict=False)

    LATENT_VIEWS = 16  # renders of a latent stage's particle whose decoding fits its latent -> rgb map

    @torch.no_grad()
    def latent_colours(self, state: dict[str, Tensor], k: int, init_cfg) -> Tensor:
        """The affine latent -> rgb map of particle ``k`` of an earlier latent stage (its checkpoint ``state``, its
        StageConfig ``init_cfg``) for an RGB stage that starts from it: fitted to the VAE's decoding of
        :data:`LATENT_VIEWS` of its latent renders from this stage's cameras at the prior's latent size, on the
        object's pixels (:func:`dream3d.prior.latent.fit_latent_rgb_decoded`; the map fitted on solid colours turned a
        yellow pineapple green); without a prior, or with too few object pixels, the particle's solid-colour map."""
        import copy

        from dream3d.prior.latent import fit_latent_rgb_decoded
        from dream3d.registry import SYSTEMS

        stored = state[f"particles.{k}.latent_rgb"]
        prior = self.prior
        if prior is None:
            return stored
        source = resolve(SYSTEMS, init_cfg.system, "system").make_particle(init_cfg).to(self.device)
        prefix = f"particles.{k}."
        source.load_state_dict({n[len(prefix):]: v for n, v in state.items() if n.startswith(prefix)})
        cam_cfg = copy.copy(self.stage_cfg.camera)
        cam_cfg.height = cam_cfg.width = prior.image_size // prior.vae_scale_factor
        cams = sample_cameras(cam_cfg, torch.Generator().manual_seed(self.run_cfg.seed), batch_size=self.LATENT_VIEWS)
        out = self.render_latent_source(source, cams.to(self.device), init_cfg)
        fitted = fit_latent_rgb_decoded(prior, out["rgb"].permute(0, 3, 1, 2), out["opacity"].permute(0, 3, 1, 2) > 0.5,
                                        stored)
        return stored if fitted is None else fitted

    def render_latent_source(self, source, cams: Cameras, init_cfg) -> dict[str, Tensor]:
        """Latent renders (rgb [B,h,w,C], opacity) of an earlier latent stage's particle, for :meth:`latent_colours`.
        The RGB stages that start from a latent one implement it."""
        raise NotImplementedError

    def make_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        """Adam over the non-empty ``groups`` plus, for VSD, the guidance's LoRA and camera embedding."""
        o = self.stage_cfg.optim
        if isinstance(self.guidance, torch.nn.Module):
            groups = groups + self.guidance.parameter_groups()
        groups = [g for g in groups if g["params"]]
        try:  # the fused kernel is ~3x faster on CPU (torch >= 2.4)
            return torch.optim.Adam(groups, betas=tuple(o.betas), eps=o.eps, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.Adam(groups, betas=tuple(o.betas), eps=o.eps)

    def guidance_terms(self, g: dict[str, Tensor], particles: int) -> dict[str, Tensor]:
        """The weighted terms of a guidance output. The guidance averages over the batch of all particles'
        renders: its particle terms (sds, vsd, sjc) are scaled back up so each particle gets its own full gradient;
        the LoRA loss is one model's loss and stays as it is."""
        return {k: (v * particles if k in ("sds", "vsd", "sjc") else v) for k, v in g.items()
                if hasattr(self.stage_cfg.loss, k)}

    def wants(self, term: str) -> bool:
        """Whether a loss term has a non-zero weight at some step (so it is worth computing)."""
        return not is_zero(getattr(self.stage_cfg.loss, term))

    def record(self, logs: dict[str, float]) -> None:
        """Keep the step's figures; StageCallback writes them to metrics.csv and the progress bar."""
        self.last_metrics = logs

    # the training step: a template with hooks ------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        """One step for every particle: (hook) prepare the particle, draw a camera, (hook) render it, (hook) the
        image the guidance scores, (hook) its regularizers; then one guidance call over all particles' images,
        the weighted loss, and the step's figures. Random draws come from (seed, stage, step) in that order."""
        step = self.step
        gen = self.step_generator(step)
        cfg = self.stage_cfg
        n = len(self.particles)
        if self.truth is not None and step == cfg.guidance.truth_steps and self._trainer is not None:
            for optimizer in self.trainer.optimizers:  # the guided steps start afresh (guidance/truth.py)
                optimizer.state.clear()
        cams, images, latents, outs, regs = [], [], [], [], {}
        for k, particle in enumerate(self.particles):
            self.prepare_particle(particle, step, gen)
            cam = sample_cameras(cfg.camera, gen)
            with self.timed("render"):
                out = self.render_training(particle, k, cam, step, gen)
            image, lat = self.scored_image(out, step)
            for term, value in self.regularizers(particle, out).items():
                regs[term] = regs.get(term, 0.0) + value
            cams.append(cam)
            images.append(image)
            latents.append(lat)
            outs.append(out)
        cams_all = Cameras.cat(cams)
        with self.timed("guidance"):
            if self.truth is not None and step < cfg.guidance.truth_steps:  # the diagnostic: no prior
                g = self.truth(torch.cat(images), cams_all, torch.tensor(self.reference_background()))
            else:
                g = self.guide(torch.cat(images), latents, cams_all, step, gen)
        terms = self.guidance_terms(g, n)
        # after the guidance's draws (those of a run without it); a step where a schedule has brought both weights to
        # 0 renders no reference view
        if self.reference is not None and (scheduled(cfg.loss.reference_mask, step)
                                           or scheduled(cfg.loss.reference_rgb, step)):
            from dream3d.reference import reference_terms

            for particle in self.particles:
                with self.timed("reference"):
                    out = self.render_reference(particle, self.reference_cams, step, gen)
                for term, value in reference_terms(out, self.reference, self.wants("reference_mask"),
                                                   self.wants("reference_rgb")).items():
                    regs[term] = regs.get(term, 0.0) + value
        terms.update(regs)
        loss, logs = self.weighted_loss(terms, step)
        logs.update(t=float(g["t"]), grad_norm=float(g["grad_norm"]))
        logs.update(self.step_figures(outs))
        self.record(logs)
        return loss

    def guide(self, images: Tensor, latents: list, cams: Cameras, step: int, gen: torch.Generator) -> dict[str, Tensor]:
        """One guidance call over every particle's image (or latents) from ``cams``: the prompt embeddings for
        their views (or Perp-Neg's mix), then the stage's guidance."""
        cfg = self.stage_cfg
        negatives = None
        if cfg.guidance.perp_neg:
            cond, uncond, neg, weights = perpneg.embeddings(self.prompts, cams, cfg.camera.overhead_threshold,
                                                            cfg.guidance)
            negatives = (neg.to(self.device), weights)
        else:
            labels = cams.view_labels(cfg.camera.front_threshold, cfg.camera.overhead_threshold)
            cond, uncond = self.prompts(labels)
        lat = torch.cat(latents) if latents[0] is not None else None
        return self.guidance(images, cond, uncond, step, generator=gen, cameras=cams, latents=lat,
                             negatives=negatives)

    def prepare_particle(self, particle, step: int, gen: torch.Generator) -> None:
        """Before a particle's camera is drawn (NeRF: the occupancy grid update)."""

    def render_training(self, particle, k: int, cams: Cameras, step: int, gen: torch.Generator) -> dict[str, Tensor]:
        """Particle ``k``'s training render from ``cams``. Subclasses implement."""
        raise NotImplementedError

    def scored_image(self, out: dict[str, Tensor], step: int) -> tuple[Tensor, Optional[Tensor]]:
        """What the guidance scores: an image [B,H,W,3] and, or instead, latents (None: encode the image)."""
        return out["rgb"], None

    def render_reference(self, particle, cams: Cameras, step: int, gen: torch.Generator) -> dict[str, Tensor]:
        """Particle's render from the reference camera (rgb over the background, opacity): the training render."""
        return self.render_training(particle, 0, cams, step, gen)

    def reference_background(self) -> list[float]:
        """The colour behind the object in this stage's renders, which the reference's mask is cut from."""
        return list(self.stage_cfg.renderer.background_color)

    def regularizers(self, particle, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """The regularizer terms of one particle's render (summed over particles)."""
        return {}

    def step_figures(self, outs: list[dict[str, Tensor]]) -> dict[str, float]:
        """Extra per-step figures for metrics.csv (means over particles)."""
        return {}

    # validation -----------------------------------------------------------------------------------
    def render_views(self) -> dict[str, Tensor]:
        """The validation views of every particle (particle k's four views are columns 4k..4k+3): rgb, normal
        and opacity [V,H,W,C] from :meth:`render_validation`."""
        c = self.stage_cfg.camera
        outs = []
        for particle in self.particles:
            for az in VALIDATION_AZIMUTHS:
                cams = turntable(1, c.eval_elevation, c.eval_distance, c.eval_fovy, c.eval_size, start_azimuth=az)
                outs.append(self.render_validation(particle, cams))
        return {k: torch.cat([o[k] for o in outs]) for k in ("rgb", "normal", "opacity")}

    def render_validation(self, particle, cams: Cameras) -> dict[str, Tensor]:
        """One validation render of ``particle``. Subclasses implement."""
        raise NotImplementedError

    def save_validation(self, step: int) -> Optional[Path]:
        """A PNG grid (rows: rgb, normals, opacity; columns: front, right, back, left) in stages/<name>/val/."""
        if self.stage_dir is None:
            return None
        was_training = self.training
        self.eval()
        with torch.no_grad():
            views = self.render_views()
        self.train(was_training)
        rows = [views["rgb"]]
        if "normal" in views:
            n = views["normal"]
            rows.append((n * 0.5 + 0.5) * views["opacity"] + (1 - views["opacity"]))
        rows.append(views["opacity"].expand(*views["opacity"].shape[:-1], 3))
        grid = torch.cat([torch.cat(list(r.clamp(0, 1)), dim=1) for r in rows], dim=0)  # [rows*H, V*W, 3]
        path = RunFolder(self.run_dir).validation_dir(self.stage_name) / f"step{step:06d}.png"
        save_png(path, (grid.cpu().numpy() * 255).round().astype(np.uint8))
        return path


# -------------------------------------------------------------------------------------------- callbacks
class StageCallback(pl.Callback):
    """Progress bar (step, loss, it/s), metrics CSV, validation grids, atomic checkpoints, Ctrl-C save."""

    def __init__(self, ckpt_path: Path, total_steps: int, show_progress: bool = True, saved_step: int = 0):
        self.ckpt_path = Path(ckpt_path)
        self.total_steps = total_steps
        self.show_progress = show_progress
        self.bar = None
        self.interrupted = False
        self.exception: Optional[BaseException] = None  # the KeyboardInterrupt / Terminated that stopped the stage
        self.saved_step = saved_step  # the step of the last checkpoint written (or found on resume)
        self.start_time = time.perf_counter()  # on_train_start resets both; a resumed, finished stage never calls it
        self.start_step = saved_step
        self.metrics_file = None
        self.metrics_writer = None
        self.metrics_keys: list[str] = []

    def save(self, trainer: pl.Trainer) -> None:
        """Write the checkpoint atomically, after checking every parameter is finite: a stage whose weights
        turned nan or inf stops here and the previous (good) checkpoint stays in place."""
        module = trainer.lightning_module
        bad = first_non_finite(module)
        if bad is not None:
            raise NonFiniteError(f"stage '{module.stage_name}' step {trainer.global_step}: parameter '{bad}' is not "
                                 "finite")
        with atomic_path(self.ckpt_path) as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)
        self.saved_step = trainer.global_step

    def on_train_start(self, trainer, module) -> None:
        self.start_time = time.perf_counter()
        self.start_step = trainer.global_step
        if self.show_progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total_steps, initial=trainer.global_step, desc=module.stage_name,
                            dynamic_ncols=True, unit="it")
        if module.stage_dir is not None:
            module.stage_dir.mkdir(parents=True, exist_ok=True)
            path = RunFolder(module.run_dir).metrics_path(module.stage_name)
            if path.exists() and trainer.global_step > 0:  # resume: drop rows past the checkpoint
                with open(path) as f:
                    rows = [r for r in csv.DictReader(f) if int(r["step"]) < trainer.global_step]
                if rows:
                    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
                        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
                        w.writeheader()
                        w.writerows(rows)
                    self.metrics_keys = list(rows[0].keys())
            elif path.exists():
                path.unlink()
            self.metrics_file = open(path, "a", newline="")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # already incremented: number of finished steps
        logs = dict(module.last_metrics)
        if self.metrics_file is not None and logs:
            row = {"step": step - 1, "time": round(time.perf_counter() - self.start_time, 4), **logs}
            if self.metrics_writer is None:
                self.metrics_keys = self.metrics_keys or list(row.keys())
                self.metrics_writer = csv.DictWriter(self.metrics_file, fieldnames=self.metrics_keys, extrasaction="ignore")
                if self.metrics_file.tell() == 0:
                    self.metrics_writer.writeheader()
            self.metrics_writer.writerow(row)
            self.metrics_file.flush()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "sds", "t")}, refresh=False)
        cfg = module.stage_cfg
        if step % cfg.val_every == 0 or step == self.total_steps:
            module.save_validation(step)
        if step % cfg.ckpt_every == 0 or step == self.total_steps:
            self.save(trainer)

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        self.close()
        if isinstance(exception, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (dream3d.errors.Terminated)
            self.interrupted = True
            self.exception = exception
            if first_non_finite(module) is None:
                self.save(trainer)

    def on_train_end(self, trainer, module) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.metrics_file is not None:
            self.metrics_file.close()
            self.metrics_file = None

    def iterations_per_second(self, trainer) -> float:
        elapsed = time.perf_counter() - self.start_time
        return (trainer.global_step - self.start_step) / elapsed if elapsed > 0 else 0.0


class StepDataset(torch.utils.data.Dataset):
    """Indices 0..n-1: the systems draw their own cameras, so a batch is just a step tick."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_threads(threads: int = 0) -> None:
    """torch's intra-op threads: ``threads`` when positive, else $OMP_NUM_THREADS when set, else every core.
    Several fits sharing a machine should take one each (two torch processes on all cores slow each other
    several-fold)."""
    if threads > 0:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)

