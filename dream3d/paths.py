"""Where the project is, and paths recorded relative to it.

``PROJECT_ROOT`` is the checkout (or installed tree) that holds the ``dream3d`` package and the shipped ``assets/``.
A run folder records the priors inside it project-relative (:func:`portable_path`), so a run made in one checkout
resumes, refits and evaluates in another: ``prior`` is resolved against the project as well as the working
directory (:func:`dream3d.config.resolve_prior_path`).
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def portable_path(path: str) -> str:
    """``path`` relative to the project when it lies inside it (the shipped priors), else as given."""
    if not path or not Path(path).is_absolute():
        return path
    try:
        return Path(path).resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return path
