#!/usr/bin/env python
"""Train the shape-world prior that ships in ``assets/priors/shapeworld`` (CPU, about 2 hours on 2 cores).

    .venv/bin/python scripts/train_shapeworld_prior.py                       # the full run
    .venv/bin/python scripts/train_shapeworld_prior.py --resume              # continue an interrupted run
    .venv/bin/python scripts/train_shapeworld_prior.py --preset smoke --out /tmp/sw   # about a minute
    .venv/bin/python scripts/train_shapeworld_prior.py --probe               # time one step of each stage
    .venv/bin/python scripts/train_shapeworld_prior.py --preset camera      # camera-conditioned prior, ~33 min

Stages: render data (cached in --cache) -> tokenizer -> VAE -> text encoder + UNet -> classifier -> save in
the Stable Diffusion layout. See :mod:`dream3d.shapeworld.train`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dream3d.shapeworld.config import preset  # noqa: E402
from dream3d.shapeworld.train import probe, train  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("full", "camera", "smoke"), default="full",
                    help="camera: fine-tune --base's UNet with a camera input (default base: the shipped prior)")
    ap.add_argument("--base", default=None, help="camera preset: the prior folder to start from")
    ap.add_argument("--out", default=None, help="pipeline folder (default: assets/priors/shapeworld, "
                    "with --preset camera assets/priors/shapeworld-camera)")
    ap.add_argument("--cache", default=None, help="rendered-data cache folder (default: .cache/shapeworld)")
    ap.add_argument("--steps-vae", type=int, default=None)
    ap.add_argument("--steps-unet", type=int, default=None)
    ap.add_argument("--steps-classifier", type=int, default=None)
    ap.add_argument("--steps-camera", type=int, default=None, help="camera preset: UNet fine-tuning steps")
    ap.add_argument("--camera-set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="camera preset: CameraPriorConfig settings, e.g. lr=1e-4 front_share=0.3")
    ap.add_argument("--batch", type=int, default=None, help="batch of the VAE and UNet stages")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (faster only on CPUs with native bf16)")
    ap.add_argument("--resume", action="store_true", help="continue each stage from its checkpoint")
    ap.add_argument("--keep-checkpoints", action="store_true",
                    help="keep training/*.pt after saving (without them a later --resume starts over)")
    ap.add_argument("--probe", action="store_true", help="only time one step of each stage and estimate the run")
    return ap.parse_args(argv)


def set_camera_field(camera, item: str) -> str:
    """Set one ``key=value`` of a CameraPriorConfig (the value parsed as the field's type); an error text or ''."""
    import dataclasses

    key, sep, text = item.partition("=")
    fields = {f.name: f for f in dataclasses.fields(camera)}
    if not sep or key not in fields or key == "base":
        return f"expected key=value with key one of {', '.join(k for k in fields if k != 'base')}"
    kind = type(getattr(camera, key))
    try:
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError
            value = text.lower() == "true"
        else:
            value = kind(text)
    except ValueError:
        return f"expected a {kind.__name__} for {key}, got {text!r}"
    setattr(camera, key, value)
    return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.preset != "camera" and (args.base is not None or args.steps_camera is not None or args.camera_set):
        print(f"train_shapeworld_prior: --base, --steps-camera and --camera-set go with --preset camera, "
              f"not {args.preset}",
              file=sys.stderr)
        return 2
    if args.preset == "smoke" and args.out is None:  # a smoke model must never become the shipped default prior
        print(f"train_shapeworld_prior: --preset {args.preset} needs --out (the default folder is the shipped prior)",
              file=sys.stderr)
        return 2
    overrides = {k: v for k, v in {"out": args.out, "cache": args.cache, "seed": args.seed,
                                   "threads": args.threads}.items() if v is not None}
    cfg = preset(args.preset, **overrides)
    cfg.bf16 = cfg.bf16 or args.bf16
    cfg.keep_checkpoints = cfg.keep_checkpoints or args.keep_checkpoints
    if args.steps_vae is not None:
        cfg.vae.steps = args.steps_vae
    if args.steps_unet is not None:
        cfg.unet.steps = args.steps_unet
    if args.steps_classifier is not None:
        cfg.classifier.steps = args.steps_classifier
    if args.steps_camera is not None:
        cfg.camera.steps = args.steps_camera
    if args.base is not None:
        cfg.camera.base = args.base
    for item in args.camera_set:
        error = set_camera_field(cfg.camera, item)
        if error:
            print(f"train_shapeworld_prior: --camera-set {item}: {error}", file=sys.stderr)
            return 2
    if args.batch is not None:
        cfg.vae.batch = cfg.unet.batch = cfg.camera.batch = args.batch
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - start) / 60:6.1f} min] {message}", flush=True)

    if args.probe:
        probe(cfg, log=log)
        return 0
    summary = train(cfg, resume=args.resume, log=log)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
