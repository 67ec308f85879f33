"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A failed or interrupted run therefore never leaves a half-written or zero-byte file in place of an
earlier result.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on error remove it.

    ``keep_suffix`` ends the temporary name with ``path``'s extension (``.turntable.tmp123.mp4``), for writers
    such as ffmpeg that choose the file format from the name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_suffix:
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    else:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_png(path: str | Path, image: np.ndarray) -> None:
    """image [H,W,3] or [H,W] uint8 -> PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
