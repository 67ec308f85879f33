"""The shape world: a procedural catalogue of coloured, captioned 3D objects (Y up, front +Z, inside [-0.5, 0.5]^3).

Rendered with :func:`dream3d.render.raster.render_mesh` from random cameras, it supplies the training images
(with view-dependent captions) of the small prior that ships with dream3d.
"""

from dream3d.prior.shapeworld.catalogue import (
    COLORS,
    ShapeObject,
    caption_with_view,
    catalogue,
    export_glb,
    format_catalogue,
    get,
)
from dream3d.prior.shapeworld.primitives import PRIMITIVES, Mesh

__all__ = [
    "COLORS",
    "PRIMITIVES",
    "Mesh",
    "ShapeObject",
    "caption_with_view",
    "catalogue",
    "export_glb",
    "format_catalogue",
    "get",
]
