"""Load one of ``scripts/*.py`` as a module, for the tests that call a script's functions or its ``main``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(filename: str):
    """``scripts/<filename>`` executed as a fresh module named ``script_<stem>`` (not put in ``sys.modules``)."""
    path = SCRIPTS / filename
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
