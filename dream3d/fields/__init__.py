"""Neural field building blocks: hash-grid encodings and small MLPs."""

from dream3d.fields.encoding import (
    HashGridConfig,
    HashGridEncoding,
    TcnnHashGridEncoding,
    grid_resolutions,
    make_encoding,
    tcnn_available,
)
from dream3d.fields.mlp import MLP, get_activation, trunc_exp

__all__ = [
    "HashGridConfig",
    "HashGridEncoding",
    "TcnnHashGridEncoding",
    "grid_resolutions",
    "make_encoding",
    "tcnn_available",
    "MLP",
    "get_activation",
    "trunc_exp",
]
