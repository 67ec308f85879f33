"""How well a prior draws the shape world: sample every catalogue caption, let the classifier name each sample.

A sample counts as *recognised* when the classifier's most likely catalogue entry is the prompted one, i.e.
object kind and colour are both right (the composites have one fixed colour scheme, so for them the kind
decides). With ``views=True`` each caption is also prompted with the four DreamFusion view suffixes, and
for the objects that have a front the classifier's view is compared with the prompted one: the figure that
matters for view-dependent prompting in the 3D stages.

Used by ``scripts/evaluate_shapeworld_prior.py``, which writes the tables into the prior's model card.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from dream3d.cameras import VIEW_LABELS
from dream3d.prior.loader import Prior
from dream3d.prior.sample import sample
from dream3d.shapeworld.catalogue import caption_with_view
from dream3d.shapeworld.classifier import ShapeClassifier

Log = Callable[[str], None]


def evaluate_prior(
    prior: Prior, classifier: ShapeClassifier, n: int = 16, steps: int = 20, guidance: float = 7.5,
    sampler: str = "dpm-solver++", seed: int = 0, captions: Optional[Sequence[str]] = None, views: int = 0,
    log: Log = print,
) -> dict:
    """Sample ``n`` images of every catalogue caption (or of ``captions``) and classify them.

    ``views > 0`` also samples ``views`` images per caption and view suffix (front/side/back/overhead).
    Returns ``{"rows": [...], "overall": {...}, "views": {...} or None, "settings": {...}, "first": Tensor}``;
    each row has caption, n, object / colour / recognised fractions and the most frequent wrong caption;
    ``first`` [C,H,W,3] holds the first sample of every caption (for a grid image).
    """
    entries = classifier.classes["entries"]
    by_caption = {e["caption"]: e for e in entries}
    captions = list(captions) if captions is not None else [e["caption"] for e in entries]
    unknown = [c for c in captions if c not in by_caption]
    if unknown:
        raise ValueError(f"not catalogue captions: {', '.join(map(repr, unknown))}")
    rows, first = [], []
    start = time.perf_counter()
    for i, caption in enumerate(captions):
        truth = by_caption[caption]
        images = sample(prior, caption, n, steps, guidance, sampler, seed + i)
        out = classifier.classify(images)
        hits = [c == caption for c in out["captions"]]
        mistakes = Counter(c for c, ok in zip(out["captions"], hits) if not ok)
        rows.append({
            "caption": caption, "n": n,
            "object": sum(o == truth["kind"] for o in out["objects"]) / n,
            "colour": sum(c == truth["colour"] for c in out["colours"]) / n,
            "recognised": sum(hits) / n,
            "confused_with": mistakes.most_common(1)[0][0] if mistakes else "",
        })
        first.append(images[0])
        log(f"{i + 1:3d}/{len(captions)} {caption:28s} recognised {rows[-1]['recognised']:.2f}  "
            f"({time.perf_counter() - start:.0f} s)")
    total = n * len(rows)
    overall = {key: sum(r[key] * r["n"] for r in rows) / total for key in ("object", "colour", "recognised")}
    overall.update(samples=total, captions=len(rows),
                   captions_below_90=[r["caption"] for r in rows if r["recognised"] < 0.9])
    result = {"rows": rows, "overall": overall, "views": None, "camera_views": None, "first": torch.stack(first),
              "settings": {"n": n, "steps": steps, "guidance": guidance, "sampler": sampler, "seed": seed}}
    if prior.takes_camera:  # what a 3D fit asks: every caption from the stages' random cameras
        from dream3d.cameras import CameraConfig, sample_cameras

        hits = 0
        for i, caption in enumerate(captions):
            c2w = sample_cameras(CameraConfig(), torch.Generator().manual_seed(seed + i), n).c2w
            out = classifier.classify(sample(prior, caption, n, steps, guidance, sampler, seed + i, c2w=c2w))
            hits += sum(c == caption for c in out["captions"])
        overall["recognised_with_cameras"] = hits / total
        log(f"recognised with random cameras {hits / total:.3f}")
    if views > 0:
        chosen = [by_caption[c] for c in captions]
        result["views"] = evaluate_views(prior, classifier, chosen, views, steps, guidance, sampler, seed, log)
        if prior.takes_camera:
            result["camera_views"] = evaluate_views(prior, classifier, chosen, views, steps, guidance, sampler,
                                                    seed, log, by_camera=True)
    return result


# the cameras a view is asked for with (degrees): inside each view label's region of dream3d.cameras.view_labels
# with a margin, at the elevations the 3D stages draw most (overhead: above 60)
VIEW_REGIONS = {"front": ((0, 40), (-30, 30)), "side": ((0, 40), (60, 120)), "back": ((0, 40), (150, 210)),
                "overhead": ((65, 85), (-180, 180))}


def view_cameras(view: str, n: int, gen: torch.Generator) -> Tensor:
    """c2w [n,4,4] of ``n`` random cameras inside ``view``'s region (:data:`VIEW_REGIONS`; side: left or right)."""
    from dream3d.cameras import make_cameras

    (e0, e1), (a0, a1) = VIEW_REGIONS[view]
    elevation = e0 + (e1 - e0) * torch.rand(n, generator=gen)
    azimuth = a0 + (a1 - a0) * torch.rand(n, generator=gen)
    if view == "side":
        azimuth = azimuth * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    return make_cameras(elevation, azimuth, torch.ones(n), torch.full((n,), 55.0), 64, 64).c2w


def evaluate_views(prior: Prior, classifier: ShapeClassifier, entries: list[dict], n: int, steps: int,
                   guidance: float, sampler: str, seed: int, log: Log = print, by_camera: bool = False) -> dict:
    """For the objects with a front: fraction of ``caption, <view> view`` samples classified as that view (and as
    that object). Returns per-view fractions and a [V,V] confusion matrix (rows: prompted, columns: seen).

    ``by_camera`` (a camera-conditioned prior): the bare caption with ``n`` random cameras in each view's region
    (:func:`view_cameras`) instead of the view words; the same seeds and output layout."""
    fronted = [e for e in entries if e["has_front"]]
    confusion = torch.zeros(len(VIEW_LABELS), len(VIEW_LABELS), dtype=torch.long)
    recognised = 0
    for i, e in enumerate(fronted):
        for v, view in enumerate(VIEW_LABELS):
            s = seed + 1000 + 10 * i + v
            if by_camera:
                c2w = view_cameras(view, n, torch.Generator().manual_seed(s))
                images = sample(prior, e["caption"], n, steps, guidance, sampler, s, c2w=c2w)
            else:
                images = sample(prior, caption_with_view(e["caption"], view), n, steps, guidance, sampler, s)
            out = classifier.classify(images)
            recognised += sum(c == e["caption"] for c in out["captions"])
            for seen in out["views"]:
                confusion[v, VIEW_LABELS.index(seen)] += 1
        log(f"{'camera ' if by_camera else ''}views {i + 1}/{len(fronted)} {e['caption']}")
    per_view = {view: (confusion[v, v] / confusion[v].sum().clamp_min(1)).item() for v, view in enumerate(VIEW_LABELS)}
    total = int(confusion.sum())
    return {"objects": [e["caption"] for e in fronted], "n_per_view": n, "per_view": per_view,
            "accuracy": (confusion.diag().sum() / max(total, 1)).item(), "recognised": recognised / max(total, 1),
            "confusion": confusion.tolist(), "labels": list(VIEW_LABELS)}


def time_one_image(prior: Prior, steps: int = 20, sampler: str = "dpm-solver++", repeats: int = 3) -> float:
    """Median seconds to sample one image with classifier-free guidance (after one warm-up run)."""
    sample(prior, "a red cube", 1, steps, 7.5, sampler, 0)
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        sample(prior, "a red cube", 1, steps, 7.5, sampler, r + 1)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def markdown_tables(result: dict) -> str:
    """The per-caption table (and the view table) as Markdown for the model card."""
    s, o = result["settings"], result["overall"]
    lines = [
        f"{o['samples']} samples: {s['n']} per caption, {s['steps']} {s['sampler']} steps, guidance {s['guidance']}, "
        f"seeds {s['seed']}+caption index. **Recognised (object and colour right): {o['recognised']:.1%}**; "
        f"object right {o['object']:.1%}; colour right {o['colour']:.1%}. Captions under 90%: "
        f"{', '.join(o['captions_below_90']) or 'none'}."
        + (f" With random cameras of the 3D stages (a camera prior): recognised {o['recognised_with_cameras']:.1%}."
           if "recognised_with_cameras" in o else ""),
        "",
        "| caption | recognised | object | colour | most frequent mistake |",
        "|---|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['caption']} | {r['recognised']:.0%} | {r['object']:.0%} | {r['colour']:.0%} | "
                     f"{r['confused_with'] or '-'} |")
    v, c = result.get("views"), result.get("camera_views")
    if v:
        lines += _view_table(v, f"View prompts, on the {len(v['objects'])} objects with a front ({v['n_per_view']} "
                                f"samples per object and view): the classifier sees the prompted view", "prompted")
    if c:
        lines += _view_table(c, f"Cameras instead of view words (bare captions, {c['n_per_view']} random cameras per "
                                f"object and view region): the classifier sees the asked view", "camera in")
    return "\n".join(lines)


def _view_table(v: dict, lead: str, rows: str) -> list[str]:
    """Lines of one view figure: the sentence (``lead`` + the accuracies) and its confusion table."""
    lines = ["", f"{lead} in **{v['accuracy']:.1%}** of them, and the prompted object in {v['recognised']:.1%}.", "",
             f"| {rows} \\ seen | " + " | ".join(v["labels"]) + " |", "|---|" + "---:|" * len(v["labels"])]
    return lines + [f"| {label} | " + " | ".join(str(x) for x in row) + " |"
                    for label, row in zip(v["labels"], v["confusion"])]


def summary_json(result: dict, seconds_per_image: Optional[float] = None) -> dict:
    """``result`` without the image tensor, plus the timing: what ``evaluation.json`` holds."""
    out = {k: v for k, v in result.items() if not isinstance(v, Tensor)}
    if seconds_per_image is not None:
        out["seconds_per_image_20_steps"] = round(seconds_per_image, 3)
    return out
