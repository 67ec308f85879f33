"""The shape world: a procedural catalogue of coloured, captioned 3D objects (Y up, front +Z, inside [-0.5, 0.5]^3).

Rendered with :func:`dream3d.render.mesh.render_mesh` from random cameras, it supplies the training images
(with view-dependent captions) of the small prior that ships with dream3d. Modules: ``primitives`` and
``catalogue`` (the objects), ``data`` (rendered datasets), ``tokenizer`` (the caption tokenizer), ``config``,
``trainer``, ``pipeline``, ``classifier`` and ``train`` (training the prior and its evaluation classifier),
``evaluate`` (scoring a trained prior). Loading and sampling a prior is :mod:`dream3d.prior`'s.
"""

from dream3d.shapeworld.catalogue import (
    COLORS,
    ShapeObject,
    caption_with_view,
    catalogue,
    format_catalogue,
    get,
)
from dream3d.shapeworld.primitives import PRIMITIVES, Mesh

__all__ = [
    "COLORS",
    "PRIMITIVES",
    "Mesh",
    "ShapeObject",
    "caption_with_view",
    "catalogue",
    "format_catalogue",
    "get",
]
