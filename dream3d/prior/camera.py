"""The camera input of a camera-conditioned prior: camera tokens in the text context.

MVDream tells Stable Diffusion where the camera is by an MLP of the flattened camera-to-world matrix added to
the timestep embedding. On the shape world's small prior that pathway learned nothing of the azimuth in 1000
fine-tuning steps (docs/quality.md, round 6): a timestep-embedding vector reaches every pixel of a feature map
alike, while which side of an object shows is a question of where things are. The text prior already learned
views through cross-attention (", back view" words, spatially selective), so dream3d puts the camera there:

    context'[:, L-K:] = context[:, L-K:] + MLP(camera_condition(c2w)).view(K, D)

the last K positions of the prompt's embeddings [B,L,D] (padding for every caption of the shape world and
every short prompt) get a learned function of the camera's 16 numbers
(:func:`dream3d.cameras.camera_condition`). The MLP's last layer starts at zero, so a fresh
:class:`CameraTokens` leaves the prior exactly as it was; "no camera" adds nothing, so a camera-conditioned
prior without a camera is a text prior (its fine-tuned UNet's, not the base's weights).

A prior folder carries it in ``camera_encoder/`` (``config.json`` + ``model.safetensors``, no code), outside
``model_index.json``: plain diffusers loads the folder as a text-to-image pipeline and ignores it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from dream3d.cameras import CAMERA_CONDITION_DIM, camera_condition

CAMERA_FOLDER = "camera_encoder"
_FORMAT = "dream3d-camera-tokens-1"


class CameraTokens(nn.Module):
    """c2w [B,4,4] -> additions to the last ``tokens`` positions of text embeddings [B,L,dim] (module docstring)."""

    def __init__(self, dim: int, tokens: int = 4, hidden: int = 256):
        super().__init__()
        self.dim, self.tokens, self.hidden = dim, tokens, hidden
        self.mlp = nn.Sequential(nn.Linear(CAMERA_CONDITION_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, tokens * dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, text: Tensor, c2w: Optional[Tensor], keep: Optional[Tensor] = None) -> Tensor:
        """text [B,L,D]; c2w [B,4,4] or None (no camera: ``text`` itself); ``keep`` [B] drops some cameras."""
        if c2w is None:
            return text
        B, L, D = text.shape
        if c2w.shape[0] != B:
            raise ValueError(f"camera tokens: {c2w.shape[0]} cameras for {B} prompts")
        if L < self.tokens or D != self.dim:
            raise ValueError(f"camera tokens: text embeddings [{B},{L},{D}] do not fit {self.tokens} tokens of {self.dim}")
        w = self.mlp[0].weight
        add = self.mlp(camera_condition(c2w).to(w.device, w.dtype)).view(B, self.tokens, D)
        if keep is not None:
            add = add * keep.to(add.dtype).view(B, 1, 1)
        return torch.cat([text[:, :L - self.tokens], text[:, L - self.tokens:] + add.to(text.dtype)], dim=1)

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(
            {"format": _FORMAT, "dim": self.dim, "tokens": self.tokens, "hidden": self.hidden}, indent=2) + "\n")
        save_file({k: v.detach().float().contiguous() for k, v in self.state_dict().items()},
                  str(folder / "model.safetensors"))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "CameraTokens":
        """Read ``config.json`` (plain numbers, checked) and ``model.safetensors`` (tensors only); ValueError
        naming the file on anything unexpected."""
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            config = json.loads((folder / "config.json").read_text())
            if not isinstance(config, dict) or config.get("format") != _FORMAT or not all(
                    type(config.get(k)) is int and config[k] > 0 for k in ("dim", "tokens", "hidden")):
                raise ValueError(f"config.json: expected format {_FORMAT} with positive integers dim, tokens, hidden")
            module = cls(config["dim"], config["tokens"], config["hidden"])
            module.load_state_dict(load_file(str(folder / "model.safetensors")))
        except Exception as exc:  # a broken file of any kind (safetensors has its own error class): one line
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"{folder}: not a camera encoder ({reason})") from None
        return module.eval().requires_grad_(False)
