r"""The true object as the guidance: a diagnostic that tells which stage loses the shape (``guidance.truth_steps``).

For a prompt that is a catalogue caption, the shape world knows the object behind it. For the first
``guidance.truth_steps`` steps of a stage, the guidance's term is replaced by the photometric error of each render
against the true object rendered from the same camera, lit the same way:

    L_truth = ½ Σ_p (c_p - c*_p)²,

summed over the pixels p (c the render over the stage's background, c* the true mesh's), so each pixel gets a
gradient of the size of its error, as with the reference view (:mod:`dream3d.reference`). The true mesh is placed
as the prior's training data placed it: centred on its bounding box, its bounding sphere the stage's
``camera.framing_radius``; it is rendered by the mesh rasteriser (antialiased) with Lambert + ``renderer.ambient``
under each camera's point light, the stage's always-lit shading. No UNet runs in those steps, so they are about
three times as fast as score distillation.

At the switch to the stage's own guidance the optimiser starts afresh (its Adam moments cleared), as a stage
initialised from a fitted one does: the photometric gradients are several times smaller than score
distillation's, and moments carried over from them made the first guided steps several times too large (a
green sphere burst into a grey fog filling the view).

Nothing of the prior's judgement is in those steps: a stage fitted to the truth shows what its representation,
regularisers and later stages make of a right start. Truth for the whole NeRF stage, then the default mesh stage,
measures what the mesh stage loses; truth for its first 100 steps, what a right start is worth (docs/quality.md,
round 17). It is not a way to make objects: it needs the answer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dream3d.cameras import Cameras
from dream3d.errors import Dream3DError
from dream3d.render.mesh import render_mesh
from dream3d.render.mesh_geometry import framed
from dream3d.render.shading import point_light_shader
from dream3d.shapeworld.catalogue import match_prompt


class TruthTarget:
    """The true object of ``prompt`` for a stage with ``framing_radius`` and ``ambient``; called with a stage's
    renders and their cameras it returns the terms a guidance returns (``sds`` is L_truth, ``t`` 0)."""

    def __init__(self, prompt: str, framing_radius: float, ambient: float, key: str = "guidance.truth_steps"):
        caption, obj = match_prompt(prompt)
        if obj is None:
            raise Dream3DError(f"{key}: the prompt {caption!r} is not a shape-world catalogue caption, so there is no "
                               "true object to fit (dream3d prior catalogue lists them); expected truth_steps=0")
        self.verts = framed(obj.verts, framing_radius)
        self.faces, self.colors, self.ambient = obj.faces, obj.colors, float(ambient)

    def render(self, cams: Cameras, background: Tensor) -> Tensor:
        """The true object from ``cams``, lit by each camera's point light -> rgb [B,H,W,3] over ``background``."""
        cams = cams.to("cpu")
        with torch.no_grad():
            return render_mesh(self.verts, self.faces, cams, self.colors,
                               shade=point_light_shader(cams.light_position, "diffuse", self.ambient),
                               background=background.detach().cpu())["rgb"]

    def __call__(self, rgb: Tensor, cams: Cameras, background: Tensor) -> dict[str, Tensor]:
        residual = rgb - self.render(cams, background).to(rgb)
        return {"sds": 0.5 * residual.pow(2).sum(), "grad_norm": residual.detach().norm(),
                "t": torch.zeros((), device=rgb.device)}
