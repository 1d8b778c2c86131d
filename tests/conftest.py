"""Shared fixtures: where ../shared lives (skips with a clear reason when it is absent), one torch thread.

Shared builders (tiny caches, test shards, synthetic datasets) live in tests/helpers.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two threads stall each other (10x slower steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
