"""The frozen text-to-image prior: loading (diffusers ``from_pretrained``) and prompt embeddings."""

from dream3d.prior.loader import Prior, PriorError, load_prior
from dream3d.prior.prompts import PromptEmbeddings, view_prompt

__all__ = ["Prior", "PriorError", "PromptEmbeddings", "load_prior", "view_prompt"]
