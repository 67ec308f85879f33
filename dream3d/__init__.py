"""dream3d: text-to-3D by score distillation (SDS, VSD) with pure-PyTorch backends."""

__version__ = "0.1.0"
