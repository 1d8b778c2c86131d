"""``make two-stage`` decodes each source video once: crops -> cache -> fine-tune -> cache with the fine-tuned
I3D, every stage after the first reading the person-crop store. The stages run in this process (as the make
recipe runs them, in its order) with every video backend wrapped to count the opens of each source file."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest

from pipeline.cache import layout
from pipeline.cache.config import CacheConfig
from pipeline.video import reader as video
from tasks import cache as cache_tasks
from tasks import crops as crops_tasks
from tests.conftest import REPO
from tests.helpers import synthetic_dataset
from vpn_head.train import finetune as ft

TINY_HEAD = {"embed_dim": 16, "attention_hidden": 16, "gcn_channels": 8, "dropout": 0.0}


@pytest.fixture
def counted_opens(monkeypatch) -> Counter:
    """Every video backend wrapped: the returned counter holds the opens of each file, by resolved path."""
    opens: Counter = Counter()

    def counting(factory):
        def open_counted(path, *args, **kwargs):
            opens[str(Path(path).resolve())] += 1
            return factory(path, *args, **kwargs)
        return open_counted

    for name, factory in list(video.BACKENDS.items()):
        monkeypatch.setitem(video.BACKENDS, name, counting(factory))
    return opens


def test_two_stage_decodes_each_source_video_once(tmp_path, counted_opens):
    data = tmp_path / "data"
    synthetic_dataset(data, n=8, seed=3, min_frames=24, max_frames=40, manifest_path=tmp_path / "manifest.csv",
                      num_classes=2, frame_size=(160, 96))
    common = ["--dataset", "ntu60", "--manifest", str(tmp_path / "manifest.csv")]
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    assert crops_tasks.main([*common, "--cache-dir", str(cache), "--store-size", "64"]) == 0
    videos = sorted(str(p.resolve()) for p in data.rglob("*_rgb.avi"))
    assert len(videos) == 8 and dict(counted_opens) == {v: 1 for v in videos}  # the store cut each once
    shape = ["--clip-len", "8", "--crop-size", "64"]
    assert cache_tasks.main([*common, "--protocol", "cs", "--cache-dir", str(cache), "--extractor", "pixels",
                             "--decode-workers", "0", "--pixels", "store"]) == 0
    assert ft.main([*common, "--protocol", "cs", "--cache-dir", str(cache), "--runs-dir", str(runs), "--run-name",
                    "ts_i3d", "--epochs", "1", "--batch-size", "4", "--per-gpu-batch", "2", *shape, "--frozen-bn",
                    "--eval-clips", "1", "--eval-crop-size", "64", "--num-workers", "0", "--eval-split", "test",
                    "--pixels", "store", *(f"--model={k}={v}" for k, v in TINY_HEAD.items())]) == 0
    weights = runs / "ts_i3d" / "best.pt"
    assert weights.is_file()
    assert cache_tasks.main([*common, "--protocol", "cs", "--cache-dir", str(tmp_path / "two-stage"),
                             "--i3d-weights", str(weights), *shape, "--t-p", "4", "--crops-root", str(cache), "--device", "cpu",
                             "--decode-workers", "0", "--pixels", "store"]) == 0
    assert dict(counted_opens) == {v: 1 for v in videos}, "a stage after make crops decoded a source video"
    folder = layout.resolve(tmp_path / "two-stage", "ntu60")
    assert CacheConfig.from_json((folder / layout.CONFIG_NAME).read_text()).pixels.startswith("store:")


def test_make_two_stage_runs_crops_first_and_every_later_stage_from_the_store():
    out = subprocess.run(["make", "-n", "two-stage", "DATASET=ntu60", "PROTOCOL=cs", "VENV=/nonexistent"],
                         cwd=REPO, capture_output=True, text=True).stdout.splitlines()
    stages = [line for line in out if " -m tasks." in line or " -m vpn_head." in line]
    modules = [line.split(" -m ")[1].split()[0] for line in stages]
    assert modules[:4] == ["tasks.crops", "tasks.cache", "vpn_head.train.finetune", "tasks.cache"]
    assert all("--pixels store" in line for line in stages[1:4])
