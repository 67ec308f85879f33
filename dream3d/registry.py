"""Name -> class for the pluggable parts. Modules register themselves on import; the names are the config values.

    SYSTEMS["nerf-sds"]      -> dream3d.systems.nerf.NeRFSystem
    GUIDANCES["sds"]         -> dream3d.guidance.sds.SDSGuidance

Lookups import the implementing modules lazily, so ``dream3d --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

T = TypeVar("T")

# name -> "module:attribute": the one list of system names; kept as strings so config validation needs no heavy
# imports
SYSTEMS: dict[str, str] = {
    "nerf-sds": "dream3d.systems.nerf:NeRFSystem",
    "latent-nerf": "dream3d.systems.nerf:LatentNeRFSystem",
    "sjc": "dream3d.systems.nerf:SJCSystem",
    "dmtet": "dream3d.systems.mesh:DMTetSystem",
    "dmtet-geometry": "dream3d.systems.mesh:DMTetGeometrySystem",
    "mesh-texture": "dream3d.systems.mesh:MeshTextureSystem",
    "latent-paint": "dream3d.systems.mesh:LatentPaintSystem",
    "mesh-paint": "dream3d.systems.mesh:MeshPaintSystem",
}
GUIDANCES: dict[str, str] = {"sds": "dream3d.guidance.sds:SDSGuidance", "vsd": "dream3d.guidance.vsd:VSDGuidance",
                             "sjc": "dream3d.guidance.sjc:SJCGuidance"}


# the systems whose fields output the prior's latent channels (representation.output: latent)
LATENT_SYSTEMS: tuple[str, ...] = ("latent-nerf", "sjc", "latent-paint")


# the systems that texture a given mesh (Latent-Paint; the run key ``mesh``)
PAINT_SYSTEMS: tuple[str, ...] = ("latent-paint", "mesh-paint")


def mesh_systems() -> tuple[str, ...]:
    """The systems whose stages optimise a mesh (DMTet), not a volume: those implemented in systems.mesh."""
    return tuple(name for name, where in SYSTEMS.items() if where.startswith("dream3d.systems.mesh:"))


def resolve(table: dict[str, str], name: str, kind: str) -> Callable:
    if name not in table:
        raise KeyError(f"unknown {kind} '{name}'; expected one of {', '.join(sorted(table))}")
    module, attr = table[name].split(":")
    return getattr(importlib.import_module(module), attr)
