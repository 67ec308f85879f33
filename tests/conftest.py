"""Shared fixtures: tiny, randomly initialised diffusers priors saved with save_pretrained (real models), built by
``tests/tiny_prior.py``; ``device``, the device that the device-dependent tests run on.

``DREAM3D_TEST_DEVICE`` picks that device: ``cpu`` (the default) or ``cuda``. The renderer, field, guidance and
short-fit tests take the ``device`` fixture; the rest are CPU-only and ignore it. Asking for ``cuda`` where no CUDA
device is present fails each test that takes ``device`` with one line (no silent skip: a GPU run that ran nothing
on the GPU must not look green); the other tests run as usual.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def requested_device() -> str:
    """``DREAM3D_TEST_DEVICE`` (default cpu), lower-cased; one line when it is neither cpu nor cuda."""
    name = os.environ.get("DREAM3D_TEST_DEVICE", "cpu").strip().lower() or "cpu"
    if name not in ("cpu", "cuda"):
        pytest.fail(f"DREAM3D_TEST_DEVICE: expected cpu or cuda, got '{name}'", pytrace=False)
    return name


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs on DREAM3D_TEST_DEVICE (scripts/device_check.sh runs -m device)")


def pytest_collection_modifyitems(config, items):
    """Every test that takes ``device`` is marked ``device``, so ``-m device`` selects the GPU-relevant tests."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device of the device-dependent tests (``DREAM3D_TEST_DEVICE``; cpu unless set to cuda)."""
    name = requested_device()
    if name == "cuda" and not torch.cuda.is_available():
        pytest.fail("DREAM3D_TEST_DEVICE=cuda: no CUDA device is available here (torch.cuda.is_available() is False);"
                    " unset it or set it to cpu", pytrace=False)
    if name == "cuda":  # the tests compare with closed forms and CPU references: full fp32, not TF32 convolutions
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return torch.device(name)


@pytest.fixture(scope="session")
def latent_prior_dir(tmp_path_factory):
    from tiny_prior import build_tiny_prior

    return build_tiny_prior(tmp_path_factory.mktemp("prior") / "latent", latent=True)


@pytest.fixture(scope="session")
def camera_prior_dir(tmp_path_factory):
    from tiny_prior import build_tiny_prior

    return build_tiny_prior(tmp_path_factory.mktemp("prior") / "camera", latent=True, camera=True)


@pytest.fixture(scope="session")
def pixel_prior_dir(tmp_path_factory):
    from tiny_prior import build_tiny_prior

    return build_tiny_prior(tmp_path_factory.mktemp("prior") / "pixel", latent=False)


@pytest.fixture(scope="session")
def pixel_prior(pixel_prior_dir):
    from dream3d.prior import load_prior

    return load_prior(str(pixel_prior_dir))
