#!/usr/bin/env python
"""What the guidance asks for, free of 3D: score distillation on the pixels of one 64x64 image per prompt.

    .venv/bin/python scripts/sds2d.py --space latent --space image --scale 20 --out /tmp/sds2d.png
    .venv/bin/python scripts/sds2d.py --init grey --scale 100 "a red cube" "a snowman"

Each image starts white (``--init white``, the shipped prior's background) or mid-grey and is optimised with
Adam (lr 0.03, ``--steps``) on sigmoid logits by :class:`dream3d.guidance.sds.SDSGuidance` with the given
guidance scale, ``space`` and timesteps in [0.02, t_max] with t_max annealed from 0.98 to 0.5 (the recipes'
schedule). One row per (space, scale) setting, one column per prompt, written as one PNG grid. A 3D fit can
only be as clean as these images: on the shipped prior the latent space hatches the whole image with a
high-frequency pattern (the VAE encoder's Jacobian), the image space draws smooth, shaded objects.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dream3d.config import DEFAULT_PRIOR, PROJECT_ROOT  # noqa: E402
from dream3d.guidance import GuidanceConfig  # noqa: E402
from dream3d.guidance.sds import SDSGuidance  # noqa: E402
from dream3d.prior import PromptEmbeddings, load_prior  # noqa: E402
from dream3d.prior.sample import save_grid  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prompts", nargs="*", default=["a red cube", "an orange torus", "a snowman", "a chair"])
    ap.add_argument("--prior", default=str(PROJECT_ROOT / DEFAULT_PRIOR))
    ap.add_argument("--space", action="append", choices=["latent", "image"], help="repeat for rows (default both)")
    ap.add_argument("--scale", action="append", type=float, help="guidance scale; repeat for rows (default 20)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--init", choices=["white", "grey"], default="white")
    ap.add_argument("--view", default="front", help="view label appended to the prompt (front, side, back, overhead)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="outputs/sds2d.png")
    args = ap.parse_args()
    prior = load_prior(args.prior)
    rows = []
    for space in args.space or ["latent", "image"]:
        for scale in args.scale or [20.0]:
            cfg = GuidanceConfig(guidance_scale=scale, space=space, t_min=0.02, t_max=[0, 0.98, 0.5, args.steps])
            guidance = SDSGuidance(cfg, prior)
            for prompt in args.prompts:
                cond, uncond = PromptEmbeddings(prior, prompt)([args.view])
                logits = torch.full((1, 64, 64, 3), 3.0 if args.init == "white" else 0.0, requires_grad=True)
                opt = torch.optim.Adam([logits], lr=0.03)
                gen = torch.Generator().manual_seed(args.seed)
                for step in range(args.steps):
                    loss = guidance(torch.sigmoid(logits), cond, uncond, step, gen)["sds"]
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                rows.append(torch.sigmoid(logits.detach()))
            print(f"space={space} scale={scale:g}: {len(args.prompts)} prompts done", flush=True)
    out = save_grid(torch.cat(rows), args.out, columns=len(args.prompts))
    print(f"wrote {out} (rows: {', '.join(f'{s}/{c:g}' for s in args.space or ['latent', 'image'] for c in args.scale or [20.0])})")


if __name__ == "__main__":
    main()
