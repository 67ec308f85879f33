"""Prompt embeddings with view-dependent prompting (DreamFusion) and a per-prompt cache."""

from __future__ import annotations

from torch import Tensor

from dream3d.cameras import VIEW_LABELS

VIEW_SUFFIX = {label: f", {label} view" for label in VIEW_LABELS}


def view_prompt(prompt: str, label: str | None) -> str:
    """``"a pineapple"`` + ``"back"`` -> ``"a pineapple, back view"``; ``label=None`` keeps the prompt."""
    return prompt if label is None else prompt + VIEW_SUFFIX[label]


class PromptEmbeddings:
    """Conditional and unconditional (negative-prompt) embeddings for each view label.

    The text encoder runs once per distinct text; results are cached on the object and in a process-wide
    cache keyed by (prior path, text), so several stages with one prior share them.
    """

    _cache: dict[tuple[str, str], Tensor] = {}

    def __init__(self, prior, prompt: str, negative_prompt: str = "", view_dependent: bool = True):
        self.prior = prior
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.view_dependent = view_dependent

    def _embed(self, text: str) -> Tensor:
        key = (self.prior.path, text)
        if key not in self._cache:
            self._cache[key] = self.prior.encode_text([text])[0]
        return self._cache[key]

    def embed_view(self, label: str) -> Tensor:
        """The embedding [L,D] of the prompt with one view's words (whatever ``view_dependent`` says: Perp-Neg)."""
        return self._embed(view_prompt(self.prompt, label))

    def embed_negative(self) -> Tensor:
        """The embedding [L,D] of the negative prompt (the unconditional term)."""
        return self._embed(self.negative_prompt)

    def texts(self, labels: list[str]) -> list[str]:
        return [view_prompt(self.prompt, lab if self.view_dependent else None) for lab in labels]

    def __call__(self, labels: list[str]) -> tuple[Tensor, Tensor]:
        """labels (one per image) -> (cond [B,L,D], uncond [B,L,D])."""
        import torch

        cond = torch.stack([self._embed(t) for t in self.texts(labels)])
        uncond = self._embed(self.negative_prompt).unsqueeze(0).expand_as(cond)
        return cond, uncond
