"""The shape world's catalogue: named, captioned, coloured triangle meshes to render training images from.

Two kinds of object:

* **primitives**: every named colour in :data:`COLORS` times every primitive in
  :data:`~dream3d.shapeworld.primitives.PRIMITIVES` ("a red cube", "an orange torus", ...);
* **composites**: everyday objects assembled from primitives, most with a recognisable front or an
  asymmetry ("a snowman" has its carrot nose at +Z, "a chair" its backrest at -Z, "a mug" its handle at +X).

Conventions (shared with :mod:`dream3d.cameras`): Y up, canonical front facing +Z, every object centred on
its bounding box at the origin and scaled so its largest extent is :data:`OBJECT_EXTENT` (inside the box
[-0.5, 0.5]^3). Colours are per vertex, RGB in [0, 1]. The catalogue is deterministic.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from dream3d.shapeworld import primitives as P
from dream3d.shapeworld.primitives import Mesh

OBJECT_EXTENT = 0.9  # largest side of every object's bounding box after normalisation

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.18, 0.66, 0.22),
    "blue": (0.16, 0.32, 0.86),
    "yellow": (0.96, 0.86, 0.16),
    "orange": (0.97, 0.52, 0.10),
    "purple": (0.56, 0.22, 0.72),
    "white": (0.93, 0.93, 0.93),
    "black": (0.09, 0.09, 0.09),
}

VIEW_SUFFIXES = {"front": "front view", "side": "side view", "back": "back view", "overhead": "overhead view"}

# palette of the composites (RGB in [0, 1])
_BROWN = (0.45, 0.28, 0.12)
_DARK_BROWN = (0.25, 0.14, 0.06)
_WOOD = (0.62, 0.42, 0.22)
_LEAF = (0.16, 0.52, 0.16)
_SNOW = (0.96, 0.96, 0.98)
_CARROT = (0.98, 0.48, 0.06)
_COAL = (0.06, 0.06, 0.06)
_GLASS = (0.55, 0.78, 0.95)
_CREAM = (0.95, 0.90, 0.78)


@dataclass
class ShapeObject:
    """One catalogue entry: verts [V,3] float32, faces [F,3] int64, colors [V,3] float32 in [0, 1]."""

    name: str  # identifier, e.g. "red_cube", "snowman"
    caption: str  # plain English, e.g. "a red cube", "a snowman"
    verts: Tensor
    faces: Tensor
    colors: Tensor
    has_front: bool  # True when the object looks different from the front and the back (view prompts matter)
    category: str  # "primitive" or what the composite is ("food", "furniture", ...)

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])


# --------------------------------------------------------------------------------------------------------------
# Assembly helpers
# --------------------------------------------------------------------------------------------------------------

Part = tuple[Mesh, Union[Sequence[float], Tensor]]  # a mesh and its colour: one RGB or per-vertex [V,3]


def _assemble(parts: Sequence[Part]) -> tuple[Tensor, Tensor, Tensor]:
    """Merge coloured parts, centre the bounding box at the origin and scale it to :data:`OBJECT_EXTENT`."""
    mesh = P.merge([m for m, _ in parts])
    colors = []
    for m, c in parts:
        c = torch.as_tensor(c, dtype=torch.float32)
        colors.append(c.expand(m.verts.shape[0], 3) if c.dim() == 1 else c)
    lo, hi = mesh.verts.amin(0), mesh.verts.amax(0)
    verts = (mesh.verts - 0.5 * (lo + hi)) * (OBJECT_EXTENT / float((hi - lo).max()))
    return verts.contiguous(), mesh.faces.contiguous(), torch.cat(colors).contiguous()


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _rod(start: Sequence[float], end: Sequence[float], radius: float, segments: int = 12) -> Mesh:
    """A closed cylinder from ``start`` to ``end`` (any direction)."""
    a, b = torch.tensor(start, dtype=torch.float32), torch.tensor(end, dtype=torch.float32)
    axis = b - a
    length = float(axis.norm())
    mesh = P.cylinder(radius, length, segments)
    y = axis / length
    helper = torch.tensor([1.0, 0.0, 0.0]) if abs(float(y[0])) < 0.9 else torch.tensor([0.0, 0.0, 1.0])
    x = torch.linalg.cross(helper, y)
    x = x / x.norm()
    z = torch.linalg.cross(x, y)
    rot = torch.stack([x, y, z], dim=1)  # columns: where the mesh's x, y, z axes go (a proper rotation)
    return Mesh(mesh.verts @ rot.T + 0.5 * (a + b), mesh.faces)


# --------------------------------------------------------------------------------------------------------------
# Composites (front = +Z, up = +Y; sizes are arbitrary units, normalised afterwards)
# --------------------------------------------------------------------------------------------------------------


def _pineapple() -> list[Part]:
    body = P.scale(P.sphere(0.5, rings=24, segments=48), (0.62, 0.85, 0.62))
    v = body.verts
    azimuth = torch.atan2(v[:, 0], v[:, 2]) / (2 * math.pi) * 10  # 10 diamonds around
    height = v[:, 1] / 0.85 * 6  # 6 rows of diamonds from bottom to top
    checker = (torch.floor(azimuth + height) + torch.floor(azimuth - height)) % 2
    golden, brown = torch.tensor([0.93, 0.72, 0.16]), torch.tensor([0.58, 0.38, 0.10])
    body_colors = torch.where(checker[:, None] > 0, brown, golden)
    parts: list[Part] = [(body, body_colors)]
    for ring, (tilt, length, count) in enumerate(((18, 0.55, 5), (45, 0.45, 7), (70, 0.32, 9))):
        for k in range(count):
            leaf = P.scale(P.cone(0.06, length, 8), (1.0, 1.0, 0.45))
            leaf = P.translate(leaf, (0, 0.5 * length, 0))  # base at the origin
            leaf = P.rotate(P.rotate(leaf, "x", tilt), "y", 360.0 * (k + 0.5 * ring) / count)
            parts.append((P.translate(leaf, (0, 0.38, 0)), _LEAF))
    return parts


def _snowman() -> list[Part]:
    parts: list[Part] = [
        (P.translate(P.sphere(0.30), (0, 0.30, 0)), _SNOW),
        (P.translate(P.sphere(0.22), (0, 0.74, 0)), _SNOW),
        (P.translate(P.sphere(0.16), (0, 1.07, 0)), _SNOW),
        # carrot nose pointing to the front (+Z): a cone along Y rotated +90 degrees about X
        (P.translate(P.rotate(P.cone(0.035, 0.20, 12), "x", 90), (0, 1.07, 0.24)), _CARROT),
        (P.translate(P.cylinder(0.12, 0.16, 20), (0, 1.27, 0)), _COAL),  # hat
        (P.translate(P.cylinder(0.18, 0.02, 20), (0, 1.20, 0)), _COAL),  # hat brim
        (_rod((0.18, 0.78, 0), (0.48, 0.98, 0), 0.018, 8), _BROWN),  # stick arms
        (_rod((-0.18, 0.78, 0), (-0.48, 0.98, 0), 0.018, 8), _BROWN),
    ]
    for x in (-0.055, 0.055):  # coal eyes on the front
        parts.append((P.translate(P.sphere(0.022, 6, 10), (x, 1.12, 0.145)), _COAL))
    for y in (0.66, 0.76, 0.86):  # buttons on the front
        z = math.sqrt(max(0.22**2 - (y - 0.74) ** 2, 0.0))
        parts.append((P.translate(P.sphere(0.025, 6, 10), (0, y, z)), _COAL))
    return parts


def _mug() -> list[Part]:
    handle = P.rotate(P.torus(0.14, 0.035, 24, 10), "x", 90)  # ring in the XY plane
    return [
        (P.cylinder(0.28, 0.62, 40), (0.20, 0.40, 0.78)),
        (P.translate(P.cylinder(0.25, 0.02, 40), (0, 0.305, 0)), _DARK_BROWN),  # coffee
        (P.translate(handle, (0.29, 0.0, 0)), (0.20, 0.40, 0.78)),
    ]


def _house() -> list[Part]:
    walls = (0.92, 0.86, 0.70)
    parts: list[Part] = [
        (P.translate(P.box(0.9, 0.6, 0.7), (0, 0.3, 0)), walls),
        (P.translate(P.scale(P.pyramid(1.0, 0.42), (1.05, 1.0, 0.85)), (0, 0.81, 0)), (0.70, 0.16, 0.12)),
        (P.translate(P.box(0.12, 0.3, 0.12), (0.25, 0.95, -0.1)), (0.55, 0.25, 0.2)),  # chimney
        (P.translate(P.box(0.18, 0.34, 0.03), (0, 0.17, 0.355)), _BROWN),  # door, on the front
        (P.translate(P.sphere(0.015, 6, 8), (0.05, 0.17, 0.375)), (0.9, 0.8, 0.2)),  # door knob
    ]
    for x in (-0.29, 0.29):  # front windows
        parts.append((P.translate(P.box(0.16, 0.14, 0.02), (x, 0.36, 0.355)), _GLASS))
    for z in (-0.15, 0.15):  # side windows
        parts.append((P.translate(P.box(0.02, 0.14, 0.14), (0.455, 0.36, z)), _GLASS))
        parts.append((P.translate(P.box(0.02, 0.14, 0.14), (-0.455, 0.36, z)), _GLASS))
    return parts


def _table() -> list[Part]:
    parts: list[Part] = [(P.translate(P.box(1.0, 0.06, 0.65), (0, 0.57, 0)), _WOOD)]
    for x in (-0.44, 0.44):
        for z in (-0.27, 0.27):
            parts.append((P.translate(P.box(0.06, 0.54, 0.06), (x, 0.27, z)), (0.50, 0.33, 0.16)))
    return parts


def _mushroom() -> list[Part]:
    cap = P.scale(P.dome(0.5, rings=10, segments=40), (1.0, 0.6, 1.0))
    parts: list[Part] = [
        (P.translate(P.frustum(0.13, 0.10, 0.45, 24), (0, 0.225, 0)), _CREAM),
        (P.translate(cap, (0, 0.42, 0)), (0.82, 0.10, 0.08)),
    ]
    for k, (elev, az) in enumerate(((70, 0), (40, 30), (40, 110), (40, 190), (40, 270), (20, 70), (20, 230), (20, 330))):
        e, a = math.radians(elev), math.radians(az)
        pos = (0.5 * math.cos(e) * math.sin(a), 0.42 + 0.3 * math.sin(e), 0.5 * math.cos(e) * math.cos(a))
        parts.append((P.translate(P.scale(P.sphere(0.05, 6, 10), (1.0, 0.6, 1.0)), pos), _SNOW))
    return parts


def _tree() -> list[Part]:
    parts: list[Part] = [(P.translate(P.cylinder(0.08, 0.3, 16), (0, 0.15, 0)), _BROWN)]
    for y, r, h in ((0.45, 0.42, 0.5), (0.75, 0.33, 0.45), (1.02, 0.23, 0.4)):
        parts.append((P.translate(P.cone(r, h, 24), (0, y, 0)), (0.10, 0.45, 0.16)))
    return parts


def _chair() -> list[Part]:
    legs = (0.40, 0.25, 0.12)
    parts: list[Part] = [(P.translate(P.box(0.5, 0.06, 0.5), (0, 0.45, 0)), _WOOD)]
    for x in (-0.21, 0.21):
        for z in (-0.21, 0.21):
            parts.append((P.translate(P.box(0.05, 0.42, 0.05), (x, 0.21, z)), legs))
        parts.append((P.translate(P.box(0.05, 0.5, 0.05), (x, 0.73, -0.225)), legs))  # back posts, at -Z
    parts.append((P.translate(P.box(0.5, 0.22, 0.04), (0, 0.82, -0.225)), _WOOD))  # backrest, at the back
    return parts


def _car() -> list[Part]:
    red = (0.80, 0.10, 0.10)
    parts: list[Part] = [
        (P.translate(P.box(0.5, 0.22, 1.0), (0, 0.2, 0)), red),
        (P.translate(P.box(0.44, 0.18, 0.5), (0, 0.4, -0.08)), _GLASS),  # cabin, set back from the bonnet
    ]
    for x in (-0.25, 0.25):
        for z in (-0.32, 0.32):
            wheel = P.rotate(P.cylinder(0.11, 0.08, 20), "z", 90)
            parts.append((P.translate(wheel, (x, 0.11, z)), _COAL))
        parts.append((P.translate(P.sphere(0.04, 6, 10), (0.7 * x, 0.22, 0.5)), (1.0, 0.95, 0.6)))  # headlights
        parts.append((P.translate(P.box(0.08, 0.04, 0.02), (0.7 * x, 0.24, -0.5)), (0.95, 0.2, 0.1)))  # taillights
    return parts


def _rocket() -> list[Part]:
    parts: list[Part] = [
        (P.translate(P.cylinder(0.16, 0.7, 24), (0, 0.35, 0)), _SNOW),
        (P.translate(P.cone(0.16, 0.3, 24), (0, 0.85, 0)), (0.85, 0.12, 0.12)),
        (P.translate(P.rotate(P.cylinder(0.06, 0.04, 16), "x", 90), (0, 0.5, 0.15)), _GLASS),  # porthole, front
    ]
    for k in range(3):
        fin = P.translate(P.box(0.03, 0.22, 0.16), (0, 0.11, 0.2))
        parts.append((P.rotate(fin, "y", 120.0 * k + 60.0), (0.85, 0.12, 0.12)))
    return parts


# name -> (builder, caption, has_front, category)
_COMPOSITES: dict[str, tuple[Callable[[], list[Part]], str, bool, str]] = {
    "pineapple": (_pineapple, "a pineapple", False, "food"),
    "snowman": (_snowman, "a snowman", True, "character"),
    "mug": (_mug, "a mug", True, "kitchenware"),
    "house": (_house, "a house", True, "building"),
    "table": (_table, "a table", False, "furniture"),
    "mushroom": (_mushroom, "a mushroom", False, "plant"),
    "tree": (_tree, "a tree", False, "plant"),
    "chair": (_chair, "a chair", True, "furniture"),
    "car": (_car, "a car", True, "vehicle"),
    "rocket": (_rocket, "a rocket", True, "vehicle"),
}


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _build() -> tuple[ShapeObject, ...]:
    objects = []
    for color_name, rgb in COLORS.items():
        for prim_name, builder in P.PRIMITIVES.items():
            verts, faces, colors = _assemble([(builder(), rgb)])
            objects.append(ShapeObject(
                f"{color_name}_{prim_name}", _article(f"{color_name} {prim_name}"), verts, faces, colors,
                has_front=False, category="primitive",
            ))
    for name, (builder, caption, has_front, category) in _COMPOSITES.items():
        verts, faces, colors = _assemble(builder())
        objects.append(ShapeObject(name, caption, verts, faces, colors, has_front, category))
    return tuple(objects)


def catalogue() -> list[ShapeObject]:
    """Every object, in a fixed order: the coloured primitives, then the composites.

    Objects are built once and shared between calls: treat their tensors as read-only (clone to edit).
    """
    return list(_build())


def get(caption_or_name: str) -> ShapeObject:
    """Look an object up by name ("red_cube") or caption ("a red cube"), case-insensitively.

    Raises KeyError naming the close matches when there is no such object.
    """
    key = caption_or_name.strip().lower()
    for obj in _build():
        if key in (obj.name, obj.caption, obj.caption.split(" ", 1)[1]):
            return obj
    names = [o.name for o in _build()] + [o.caption for o in _build()]
    close = difflib.get_close_matches(key, names, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else f"; known names: {', '.join(names[:len(names) // 2])}"
    raise KeyError(f"no shape-world object {caption_or_name!r}{hint}")


def match_prompt(prompt: str) -> tuple[str, Optional[ShapeObject]]:
    """(caption without a view suffix, catalogue object or None): exact, case-insensitive caption match."""
    text = " ".join(prompt.split())
    for suffix in VIEW_SUFFIXES.values():
        if text.lower().endswith(", " + suffix):
            text = text[: -len(suffix) - 2].rstrip()
    for obj in _build():
        if obj.caption.lower() == text.lower():
            return obj.caption, obj
    return text, None


def caption_with_view(caption: str, view_label: str) -> str:
    """Append a view phrase: ("a snowman", "back") -> "a snowman, back view" (labels of ``cameras.VIEW_LABELS``)."""
    if view_label not in VIEW_SUFFIXES:
        raise ValueError(f"unknown view label {view_label!r}; expected one of {', '.join(VIEW_SUFFIXES)}")
    return f"{caption}, {VIEW_SUFFIXES[view_label]}"


def format_catalogue(objects: Sequence[ShapeObject] | None = None) -> str:
    """A plain-text table of the catalogue (name, caption, category, has_front, faces), one object per line."""
    objects = catalogue() if objects is None else objects
    rows = [("name", "caption", "category", "front", "faces")]
    rows += [(o.name, o.caption, o.category, "yes" if o.has_front else "no", str(o.num_faces)) for o in objects]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

