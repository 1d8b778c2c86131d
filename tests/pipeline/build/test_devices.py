"""GPU assignment of cache shards, checked on the CPU with a faked device count."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from pipeline.build import devices
from pipeline.build import steps as cache_build
from pipeline.cache import layout
from pipeline.cache.config import CacheConfig
from tasks import cache as cache_tasks


def test_device_order_spreads_shards_over_every_gpu():
    assert devices.device_order("cuda", 0, 8) == [f"cuda:{k}" for k in range(8)]
    assert devices.device_order("cuda", 10, 8) == ["cuda:2", "cuda:3", "cuda:4", "cuda:5", "cuda:6", "cuda:7",
                                                    "cuda:0", "cuda:1"]
    assert {devices.device_order("cuda", i, 8)[0] for i in range(8)} == {f"cuda:{k}" for k in range(8)}
    assert devices.device_order("cuda", 3, 1) == ["cuda"]
    assert devices.device_order("cuda", 3, 0) == ["cuda"]
    assert devices.device_order("cuda:2", 5, 8) == ["cuda:2"]
    assert devices.device_order("cpu", 5, 8) == ["cpu"]


def test_gpu_slots_is_one_shard_per_gpu():
    assert cache_build.gpu_slots("cuda", 8, 8) == 8
    assert cache_build.gpu_slots("cuda", 8, 2) == 2
    assert cache_build.gpu_slots("cuda", 1, 8) == 1
    assert cache_build.gpu_slots("cuda:1", 8, 8) == 1
    assert cache_build.gpu_slots("cpu", 4, 0) == 1


def test_running_shards_hold_different_gpus_and_a_fourth_waits(tmp_path):
    with ExitStack() as stack:
        held = [stack.enter_context(devices.claim_device("cuda", 0, 3, tmp_path)) for _ in range(3)]
        assert held == ["cuda:0", "cuda:1", "cuda:2"]
        got: list[str] = []
        release = threading.Event()

        def fourth() -> None:
            with devices.claim_device("cuda", 1, 3, tmp_path) as device:
                got.append(device)
                release.wait(10)

        thread = threading.Thread(target=fourth)
        thread.start()
        time.sleep(0.3)
        assert got == []  # every GPU is taken: it waits for its first choice
    thread.join(0.3)
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert got == ["cuda:1"]
    release.set()
    thread.join(10)
    with devices.claim_device("cuda", 0, 3, tmp_path) as device:
        assert device == "cuda:0"  # released again


@pytest.mark.parametrize("requested, count, expected", [("cuda", 4, "cuda:1"), ("cuda", 1, "cuda"),
                                                         ("cuda:3", 4, "cuda:3"), ("cpu", 0, "cpu")])
def test_a_cache_shard_runs_on_its_assigned_device(tmp_path, monkeypatch, requested, count, expected):
    seen = {}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(devices, "default_lock_dir", lambda: tmp_path / "locks")
    monkeypatch.setattr(cache_build, "manifest_rows", lambda manifest, protocol: ({"sample_id": "a"},) * 12)
    monkeypatch.setattr(cache_build, "load_extractor",
                        lambda extractor, weights, device: seen.setdefault("model", device))

    def fake_extract(rows, data_root, config, model, out_path, *, device, **kwargs):
        seen["extract"] = device
        Path(out_path).write_bytes(b"")
        return cache_build.extract.ShardStats(samples=len(rows))

    monkeypatch.setattr(cache_build.extract, "extract_shard", fake_extract)
    config = CacheConfig(dataset="ntu60", extractor="pixels", shard_size=2)
    config.cache_dir(tmp_path).mkdir(parents=True)
    shard = cache_tasks.CacheShard(config_json=config.to_json(), cache_root=str(tmp_path), manifest="m.csv",
                                   data_root=str(tmp_path), device=requested, shard_index=5)
    shard.run()
    assert seen == {"model": expected, "extract": expected}
    assert f'"device": "{expected}"' in (config.cache_dir(tmp_path) / layout.RUN_LOG).read_text()
