"""Shared fixtures: where ../shared lives, and skips with a clear reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VPN_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Return a path under ../shared, skipping the calling test with a clear reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the real fixtures in ../shared (set VPN_SHARED to move it)")
    return path


@pytest.fixture
def shared() -> Path:
    """Root of ../shared (skips when absent)."""
    return shared_path()
