"""The trained runs ``make predict`` and ``make explain`` are tested with (built once for the package)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks import cache as cache_tasks
from tests.helpers import SMALL_MODEL, synthetic_dataset
from vpn_head.engine.config import TrainConfig
from vpn_head.train.head import train


@pytest.fixture(scope="package")
def runs(tmp_path_factory) -> dict[str, Path]:
    """12 synthetic NTU videos (cv: 8 train, 4 test), their pixel-feature cache (2 clips a video), a vpn and an i3d
    run."""
    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    synthetic_dataset(data, n=12, seed=3, min_frames=30, max_frames=70, manifest_path=root / "ntu60.csv")
    assert cache_tasks.main(["--dataset", "ntu60", "--manifest", str(root / "ntu60.csv"), "--cache-dir",
                             str(root / "cache"), "--extractor", "pixels", "--decode-workers", "0",
                             "--clips-per-video", "2"]) == 0
    torch.set_num_threads(1)
    for variant, epochs in (("vpn", 2), ("i3d", 1)):
        train(TrainConfig(dataset="ntu60", protocol="cv", variant=variant, model=SMALL_MODEL, epochs=epochs,
                          batch_size=4, lr=0.05, num_workers=0, cache=str(root / "cache"),
                          runs_dir=str(root / "runs"), run_name=variant, device="cpu"))
    return {"root": root, "data": data, "manifest": root / "ntu60.csv", "run": root / "runs" / "vpn",
            "i3d": root / "runs" / "i3d"}
