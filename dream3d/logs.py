"""A quiet console: dream3d's own lines, progress bars and real warnings, not library chatter.

Filters only warnings that are known and that a user cannot act on (each listed with why); anything else a
library warns about stays visible. Lightning's INFO lines ("GPU available: False ...") go below the
console's level.
"""

from __future__ import annotations

import logging
import os
import warnings

# (message regex, category, why it is safe to hide)
KNOWN_WARNINGS = [
    (r".*does not have many workers.*", None, "our step loader yields step numbers, not data"),
    (r".*The number of training batches .* is smaller than the logging interval.*", None, "no logger is used"),
    (r".*resuming from a checkpoint that ended before the epoch ended.*", None,
     "steps draw their randomness from (seed, step): a resume mid-epoch is exact"),
    (r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*", None, "inside Lightning"),
    (r".*Precision .* is not supported by the model summary.*", None, "no model summary is printed"),
    (r".*LightningDeprecationWarning.*", None, "inside Lightning"),
    (r".*TripleDES has been moved.*", None, "a dependency of a dependency"),
    (r".*torch.utils._pytree._register_pytree_node is deprecated.*", None, "inside transformers"),
]


def quiet_libraries() -> None:
    """Install the filters and levels (idempotent). ``DREAM3D_DEBUG=1`` keeps everything."""
    if os.environ.get("DREAM3D_DEBUG"):
        return
    for message, category, _ in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category or Warning)
    # Lightning's INFO lines (accelerator banners, tips, "`Trainer.fit` stopped: max_steps reached"). Its import
    # sets its logger to INFO, so this runs again after the import (run.py calls it before each trainer).
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet_loaders() -> None:
    """No per-file progress bars from transformers / diffusers while a prior loads (it takes about a second)."""
    if os.environ.get("DREAM3D_DEBUG"):
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
