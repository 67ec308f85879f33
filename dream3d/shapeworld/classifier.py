"""The shape world's evaluation classifier: which catalogue object (and so which colour) an image shows.

A small CNN with two heads, trained on true renders (:mod:`dream3d.shapeworld.data`):

* **entries**: one class per catalogue object (58); object-kind probabilities ("cube", ..., "snowman") and
  colour probabilities (the named colours of :data:`COLORS`, plus ``"none"`` for the composites, whose colours
  are fixed) are sums of entry probabilities;
* **views**: front / side / back / overhead, trained on the objects that have a front only (a sphere's
  front and back look alike), for checking view-dependent generations.

It is stored next to the prior (``<prior>/classifier/model.safetensors`` + ``config.json``) but is not a
diffusers component: ``model_index.json`` does not list it. Load with :func:`load_classifier`, then
``clf.classify(images)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream3d.cameras import VIEW_LABELS
from dream3d.io import atomic_path, write_json
from dream3d.shapeworld.catalogue import COLORS, catalogue
from dream3d.shapeworld.config import TrainConfig, architecture
from dream3d.shapeworld.data import ShapeDataset
from dream3d.shapeworld.trainer import Log, StageRunner

NO_COLOUR = "none"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def class_table() -> dict:
    """Class names from the catalogue: entries (name, caption, kind, colour), kinds, colours, views."""
    entries = []
    for obj in catalogue():
        if obj.category == "primitive":
            colour, kind = obj.name.split("_", 1)
        else:
            colour, kind = NO_COLOUR, obj.name
        entries.append({"name": obj.name, "caption": obj.caption, "kind": kind, "colour": colour,
                        "has_front": obj.has_front})
    kinds = list(dict.fromkeys(e["kind"] for e in entries))
    return {"entries": entries, "kinds": kinds, "colours": [*COLORS, NO_COLOUR], "views": list(VIEW_LABELS)}


class ShapeClassifier(nn.Module):
    """CNN: images [B,3,S,S] in [-1,1] -> (entry logits [B,E], view logits [B,4]).

    Each width adds a stage (two 3x3 conv + BatchNorm + ReLU, then 2x2 max-pool); global average pooling
    feeds the two linear heads. ``classes`` is :func:`class_table`'s dictionary.
    """

    def __init__(self, widths: list[int], image_size: int, classes: dict):
        super().__init__()
        self.widths, self.image_size, self.classes = list(widths), int(image_size), classes
        layers: list[nn.Module] = []
        c_in = 3
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.entry_head = nn.Linear(c_in, len(classes["entries"]))
        self.view_head = nn.Linear(c_in, len(classes["views"]))
        kind_of = [classes["kinds"].index(e["kind"]) for e in classes["entries"]]
        colour_of = [classes["colours"].index(e["colour"]) for e in classes["entries"]]
        # [E,K] and [E,C] one-hot maps: entry probabilities -> kind / colour probabilities
        self.register_buffer("kind_map", F.one_hot(torch.tensor(kind_of), len(classes["kinds"])).float(), False)
        self.register_buffer("colour_map", F.one_hot(torch.tensor(colour_of), len(classes["colours"])).float(), False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x).mean(dim=(2, 3))
        return self.entry_head(h), self.view_head(h)

    def prepare(self, images: Tensor) -> Tensor:
        """images [B,H,W,3] in [0,1] (any size) -> network input [B,3,S,S] in [-1,1]."""
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"classify expects images [B,H,W,3], got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x.clamp(0, 1) * 2.0 - 1.0

    @torch.no_grad()
    def classify(self, images: Tensor) -> dict:
        """images [B,H,W,3] in [0,1] -> dict of probabilities and predictions.

        ``entry_probs`` [B,E], ``object_probs`` [B,K] (kinds: ``classes["kinds"]``), ``colour_probs`` [B,C]
        (``classes["colours"]``, last "none"), ``view_probs`` [B,4]; ``captions`` (of the most likely entry),
        ``objects``, ``colours``, ``views``: lists of B names.
        """
        was_training = self.training
        self.eval()
        entry_logits, view_logits = self(self.prepare(images).to(self.kind_map.device))
        self.train(was_training)
        entry = entry_logits.float().softmax(-1)
        obj, colour, view = entry @ self.kind_map, entry @ self.colour_map, view_logits.float().softmax(-1)
        c = self.classes
        return {
            "entry_probs": entry, "object_probs": obj, "colour_probs": colour, "view_probs": view,
            "captions": [c["entries"][i]["caption"] for i in entry.argmax(-1).tolist()],
            "objects": [c["kinds"][i] for i in obj.argmax(-1).tolist()],
            "colours": [c["colours"][i] for i in colour.argmax(-1).tolist()],
            "views": [c["views"][i] for i in view.argmax(-1).tolist()],
        }


def classify(classifier: ShapeClassifier, images: Tensor) -> dict:
    """Function form of :meth:`ShapeClassifier.classify`."""
    return classifier.classify(images)


# --------------------------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------------------------


def save_classifier(model: ShapeClassifier, folder: str | Path, metrics: Optional[dict] = None) -> Path:
    """Write ``model.safetensors`` (fp32) and ``config.json`` (sizes, class names, held-out metrics)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    config = {"widths": model.widths, "image_size": model.image_size, "classes": model.classes,
              "metrics": metrics or {}}
    write_json(folder / CONFIG, config)
    return folder


def load_classifier(folder: str | Path, device: str | torch.device = "cpu") -> ShapeClassifier:
    """Load a classifier saved by :func:`save_classifier` (e.g. ``assets/priors/shapeworld/classifier``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"no classifier in {folder} (expected {CONFIG} and {WEIGHTS})")
    config = json.loads((folder / CONFIG).read_text())
    model = ShapeClassifier(config["widths"], config["image_size"], config["classes"])
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


def augment(x: Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.85, 1.1), shift: float = 0.06) -> Tensor:
    """Random zoom / shift (white fill) and brightness jitter of x [B,3,H,W] in [-1,1]."""
    B = x.shape[0]
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(B, generator=gen)
    t = (torch.rand(B, 2, generator=gen) * 2 - 1) * shift
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = 1 / s, 1 / s, t
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x - 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1.0
    gain = 1.0 + 0.1 * (torch.rand(B, 1, 1, 1, generator=gen) * 2 - 1)
    return ((x + 1.0) * gain - 1.0).clamp(-1.0, 1.0)


def classifier_losses(model: ShapeClassifier, x: Tensor, entry: Tensor, view: Tensor, view_weight: float) -> dict:
    """Cross-entropies of one batch: x [B,3,S,S] in [-1,1], entry / view ids [B]; views count only for objects
    with a front. Returns loss (weighted total), entry, view and the batch's entry accuracy."""
    entry_logits, view_logits = model(x)
    entry_loss = F.cross_entropy(entry_logits, entry)
    has_front = torch.tensor([e["has_front"] for e in model.classes["entries"]])[entry]
    view_loss = (F.cross_entropy(view_logits, view, reduction="none") * has_front).sum() / has_front.sum().clamp_min(1)
    accuracy = (entry_logits.argmax(-1) == entry).float().mean()
    return {"loss": entry_loss + view_weight * view_loss, "entry": entry_loss, "view": view_loss, "acc": accuracy}


@torch.no_grad()
def evaluate(model: ShapeClassifier, data: ShapeDataset, batch: int = 256) -> dict:
    """Held-out accuracies: entry (object and colour right), object kind, colour, view (objects with a front)."""
    entry_hits = kind_hits = colour_hits = view_hits = view_count = 0
    truth = model.classes["entries"]
    for start in range(0, len(data), batch):
        idx = torch.arange(start, min(start + batch, len(data)))
        out = model.classify(data.tensor(idx).permute(0, 2, 3, 1))
        for k, i in enumerate(idx.tolist()):
            e = truth[int(data.object_ids[i])]
            entry_hits += out["captions"][k] == e["caption"]
            kind_hits += out["objects"][k] == e["kind"]
            colour_hits += out["colours"][k] == e["colour"]
            if e["has_front"]:
                view_count += 1
                view_hits += out["views"][k] == VIEW_LABELS[int(data.view_ids[i])]
    n = len(data)
    return {"entry": entry_hits / n, "object": kind_hits / n, "colour": colour_hits / n,
            "view_front_objects": view_hits / max(view_count, 1), "n": n}


def train_classifier(
    cfg: TrainConfig, train: ShapeDataset, test: ShapeDataset, folder: str | Path, resume: bool, log: Log,
) -> dict:
    """Stage 5 of :func:`dream3d.shapeworld.train.train`: fit on ``train`` (steps run by the shared
    :class:`~dream3d.shapeworld.trainer.StageRunner`), measure on ``test``, save to ``folder``. Returns the
    metrics."""
    c = cfg.classifier
    torch.manual_seed(cfg.seed + 31)
    model = ShapeClassifier(c.widths, c.image_size, class_table())
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed + 32)
    signature = {"classifier": architecture(c), "n": len(train)}
    runner = StageRunner("classifier", cfg, {"classifier": model}, opt, gen, c.steps, c.lr, max(1, c.steps // 20),
                         signature, resume, log)
    images = torch.from_numpy(train.images)
    entries, views = torch.from_numpy(train.object_ids), torch.from_numpy(train.view_ids)

    def step(_: int) -> dict[str, float]:
        idx = torch.randint(len(train), (c.batch,), generator=gen)
        x = images[idx].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        if x.shape[-1] != c.image_size:
            x = F.interpolate(x, size=(c.image_size, c.image_size), mode="bilinear", antialias=True)
        losses = classifier_losses(model, augment(x, gen), entries[idx], views[idx], c.view_weight)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        return {k: v.item() for k, v in losses.items()}

    runner.run(step, ["loss", "entry", "view", "acc"])
    model.eval()
    metrics = evaluate(model, test)
    log("classifier: held-out accuracy " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n")
        + f"  ({metrics['n']} images)")
    save_classifier(model, folder, {"held_out": metrics, "config": asdict(c)})
    return metrics
