"""Fixtures of the pipeline tests: the I3D models, built once per test module."""

from __future__ import annotations

import pytest

from pipeline.i3d.model import InceptionI3d, load_i3d
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def random_model() -> InceptionI3d:
    """Random-init trunk (Mixed_5c), eval mode."""
    return load_i3d(None)


@pytest.fixture(scope="module")
def kinetics_model() -> InceptionI3d:
    """The real rgb_scratch weights with the logits head."""
    return load_i3d(shared_path("i3d", "rgb_scratch.pt"), with_logits=True)
