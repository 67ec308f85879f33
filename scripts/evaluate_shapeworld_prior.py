#!/usr/bin/env python
"""Score the shape-world prior: sample every catalogue caption and let the evaluation classifier name each sample.

    .venv/bin/python scripts/evaluate_shapeworld_prior.py                    # 16 per caption + view prompts
    .venv/bin/python scripts/evaluate_shapeworld_prior.py --n 4 --views 0 --no-write   # a quick look

Writes into the prior's folder: ``evaluation.json`` (every figure), ``samples.png`` (the first sample of every
caption, in catalogue order, 8 a row) and the tables of its model card (``README.md``, between the
``<!-- evaluation:begin -->`` and ``<!-- evaluation:end -->`` markers). Prints the overall figures and the
seconds one 20-step image takes. See :mod:`dream3d.shapeworld.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- evaluation:begin -->", "<!-- evaluation:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default=str(ROOT / "assets/priors/shapeworld"))
    ap.add_argument("--classifier", default=None, help="default: <prior>/classifier")
    ap.add_argument("--text-prior", default="", help="beside a camera prior: a text prior for the text term (the "
                    "run key text_prior); its figures are printed, not written (implies --no-write)")
    ap.add_argument("--n", type=int, default=16, help="samples per caption")
    ap.add_argument("--views", type=int, default=4, help="samples per object with a front and view prompt (0: skip)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--sampler", default="dpm-solver++")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print only; leave the prior's folder as it is")
    return ap.parse_args(argv)


def update_card(card: Path, tables: str) -> bool:
    """Replace the text between the markers of ``card``; False when the card or its markers are missing."""
    if not card.is_file():
        return False
    text = card.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        return False
    tmp = card.with_name(f".{card.name}.tmp")
    tmp.write_text(pattern.sub(lambda _: f"{BEGIN}\n{tables}\n{END}", text))
    tmp.replace(card)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dream3d.prior import load_prior
    from dream3d.prior.sample import save_grid
    from dream3d.shapeworld.classifier import load_classifier
    from dream3d.shapeworld.evaluate import evaluate_prior, markdown_tables, summary_json, time_one_image

    prior_dir = Path(args.prior)
    prior = load_prior(str(prior_dir), text_prior=args.text_prior)
    classifier = load_classifier(args.classifier or prior_dir / "classifier")
    start = time.perf_counter()
    seconds = time_one_image(prior, args.steps, args.sampler)
    print(f"one image, {args.steps} {args.sampler} steps with guidance: {seconds:.2f} s")
    result = evaluate_prior(prior, classifier, args.n, args.steps, args.guidance, args.sampler, args.seed,
                            views=args.views)
    summary = summary_json(result, seconds)
    summary["minutes"] = round((time.perf_counter() - start) / 60, 1)
    tables = markdown_tables(result)
    print(tables)
    if not args.no_write and not args.text_prior:
        out = prior_dir / "evaluation.json"
        tmp = out.with_name(".evaluation.json.tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(out)
        save_grid(result["first"], prior_dir / "samples.png", columns=8)
        card = prior_dir / "README.md"
        print(f"wrote {out} and {prior_dir / 'samples.png'}; model card "
              + ("updated" if update_card(card, tables) else f"not updated (no {card} with the markers)"))
    o = result["overall"]
    print(f"recognised {o['recognised']:.3f} of {o['samples']} samples"
          + (f", {o['recognised_with_cameras']:.3f} with random cameras" if "recognised_with_cameras" in o else "")
          + (f"; the asked view by camera {result['camera_views']['accuracy']:.3f}" if result["camera_views"] else "")
          + f"; {summary['minutes']} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
