"""Shared fixtures: tiny, randomly initialised diffusers priors saved with save_pretrained (real models), built by
``tests/tiny_prior.py``."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
