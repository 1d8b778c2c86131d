"""The cache layout's one lookup order, the light config, the unchanged config hash, the per-process handle."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

from pipeline.cache import layout
from pipeline.cache.config import CacheConfig
from pipeline.cache.layout import CacheError, resolve
from pipeline.utils.per_process import PerProcess
from tests.conftest import REPO


def _cache(folder):
    folder.mkdir(parents=True)
    (folder / layout.MERGED_NAME).write_bytes(b"")
    return folder


def test_resolve_follows_the_documented_order(tmp_path):
    one = _cache(tmp_path / "ntu60" / "aaa")
    assert resolve(one / layout.MERGED_NAME) == one / layout.MERGED_NAME  # 1. a file
    assert resolve(one) == one  # 2. a cache folder
    assert resolve(tmp_path, "ntu60") == one  # 3. the only cache of the dataset folder
    assert resolve(tmp_path / "ntu60") == one  # ... given as the dataset folder itself
    two = _cache(tmp_path / "ntu60" / "bbb")
    with pytest.raises(CacheError, match="several caches .* no LATEST"):
        resolve(tmp_path, "ntu60")
    layout.write_latest(one)
    assert resolve(tmp_path, "ntu60") == one and resolve(tmp_path / "ntu60") == one  # LATEST first
    layout.write_latest(two)
    assert resolve(tmp_path, "ntu60") == two
    (tmp_path / "ntu60" / layout.LATEST).write_text("gone\n")
    with pytest.raises(CacheError, match="names .*gone, which holds no cache.h5"):
        resolve(tmp_path, "ntu60")
    with pytest.raises(CacheError, match="no cache at .*make cache DATASET=nucla"):
        resolve(tmp_path, "nucla")


def test_a_folder_of_unmerged_shards_resolves_to_itself(tmp_path):
    (tmp_path / layout.SHARD_NAME.format(0)).write_bytes(b"")
    assert resolve(tmp_path) == tmp_path  # open_cache then says "run the merge step"


def test_a_build_folder_is_the_config_hash_under_the_dataset(tmp_path):
    config = CacheConfig(dataset="ntu60")
    assert config.cache_dir(tmp_path) == layout.cache_dir(tmp_path, "ntu60", config.digest())
    assert layout.shard_path(tmp_path, 7) == tmp_path / "shard_00007.h5"
    assert layout.num_shards(401, 200) == 3 and layout.num_shards(0, 200) == 1
    layout.shard_path(tmp_path, 1).write_bytes(b"")
    assert layout.shards_done(tmp_path, 3) == [1] and layout.shards_done(tmp_path / "none", 3) == []


def test_default_config_hash_is_unchanged():
    """Existing caches keep their folder: the hash of the default config is the one main computed before."""
    assert CacheConfig(dataset="ntu60").digest() == "3555f5a6798f"
    old = CacheConfig(dataset="ntu60").to_json()  # a config.json written before keeps its meaning
    assert CacheConfig.from_json(old) == CacheConfig(dataset="ntu60")


def test_reading_a_config_loads_no_heavy_library():
    code = ("import sys, pipeline.cache.config; "
            "print(sorted(m for m in ('h5py', 'av', 'decord', 'torch', 'cv2') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.strip() == "[]"


class _Handle:
    opened: list[int] = []

    def __init__(self) -> None:
        self.closed = False
        _Handle.opened.append(os.getpid())

    def close(self) -> None:
        self.closed = True


def test_per_process_handle_reopens_in_a_new_process_and_is_pickled_without_it(monkeypatch):
    _Handle.opened.clear()
    handle = PerProcess(_Handle)
    first = handle.get()
    assert handle.get() is first and handle.is_open and len(_Handle.opened) == 1
    clone = pickle.loads(pickle.dumps(handle))
    assert not clone.is_open and clone.get() is not first
    monkeypatch.setattr(os, "getpid", lambda: -2)  # as a forked DataLoader worker sees it
    assert not handle.is_open
    second = handle.get()
    assert second is not first and not first.closed  # the parent's handle is not closed by the child
    handle.close()
    assert second.closed and not handle.is_open
