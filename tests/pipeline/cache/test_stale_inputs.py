"""Changed source files (issue 21): a shard records its inputs' size and mtime; replacing a video and its skeleton
after a build is named by the rerun and by ``make verify``, and ``--rebuild-changed`` (``REBUILD_CHANGED=1``)
rebuilds exactly that shard."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.cache import input_stats
from pipeline.cache import reader as cache
from pipeline.cache.config import CacheConfig
from pipeline.datasets import manifest
from pipeline.tools import verify_cache
from tasks import cache as cache_tasks
from tests.helpers import synthetic_dataset


@pytest.fixture
def built(tmp_path) -> tuple[Path, Path, list[str]]:
    """A 2-sample synthetic dataset cached in 2 shards (pixels extractor); returns data root, cache folder, argv."""
    root = synthetic_dataset(tmp_path / "data", n=2, seed=5, min_frames=30, max_frames=40)
    argv = ["--dataset", "ntu60", "--manifest", str(root / "manifest.csv"), "--cache-dir", str(tmp_path / "cache"),
            "--extractor", "pixels", "--shard-size", "1", "--decode-workers", "0", "--device", "cpu"]
    assert cache_tasks.main(argv) == 0
    (folder,) = [d for d in (tmp_path / "cache" / "ntu60").iterdir() if d.is_dir()]
    return root, folder, argv


def _replace_first_sample(root: Path) -> str:
    """Overwrite sample 0's video and skeleton with sample 1's (same manifest, new content); returns its id."""
    rows = manifest.read_manifest(root / "manifest.csv").to_dict("records")
    for column in ("video_path", "skeleton_path"):
        shutil.copyfile(root / rows[1][column], root / rows[0][column])
        os.utime(root / rows[0][column], ns=(1, 10**18))  # a time the build never saw, even on coarse clocks
    return rows[0]["sample_id"]


def test_each_shard_records_its_inputs_size_and_mtime(built):
    root, folder, _ = built
    with h5py.File(folder / "shard_00000.h5") as f:
        record = json.loads(f.attrs[input_stats.INPUTS_ATTR])
    ((sample_id, inputs),) = record.items()
    row = manifest.read_manifest(root / "manifest.csv").set_index("sample_id").loc[sample_id]
    video = root / row["video_path"]
    assert inputs["video"] == [str(video), video.stat().st_size, video.stat().st_mtime_ns]
    assert inputs["skeleton"][0] == str(root / row["skeleton_path"])
    assert input_stats.shard_changes(folder / "shard_00000.h5") == []
    assert CacheConfig(dataset="ntu60").digest() == "3555f5a6798f"  # the config hash (folder names) did not change


def test_changed_inputs_are_named_by_the_rerun_and_by_verify_then_rebuilt(built, capsys):
    root, folder, argv = built
    sample_id = _replace_first_sample(root)
    capsys.readouterr()
    assert cache_tasks.main(argv) == 0
    out = capsys.readouterr().out
    warning = [l for l in out.splitlines() if l.startswith("warning:")]
    assert len(warning) == 1 and "shard_00000.h5" in warning[0] and sample_id in warning[0]
    assert "REBUILD_CHANGED=1" in warning[0] and "rebuilding" not in out
    assert verify_cache.verify_folder(folder).keys() == {folder / "shard_00000.h5"}
    assert verify_cache.main([str(folder)]) == 1
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("BAD")]
    assert len(line) == 1 and "stale" in line[0] and sample_id in line[0]

    with cache.open_cache(folder) as reader:
        old = reader.read_features(int(np.flatnonzero(reader.sample_ids == sample_id)[0]))
    assert cache_tasks.main([*argv, "--rebuild-changed"]) == 0
    out = capsys.readouterr().out
    (rebuilt,) = [l for l in out.splitlines() if l.startswith("rebuilding")]
    assert rebuilt.startswith(f"rebuilding {folder / 'shard_00000.h5'}: 2 input file(s) changed since it was built")
    assert sample_id in rebuilt and "1 more" in rebuilt
    assert verify_cache.verify_folder(folder) == {}
    with cache.open_cache(folder) as reader:
        new = reader.read_features(int(np.flatnonzero(reader.sample_ids == sample_id)[0]))
        other = reader.read_features(int(np.flatnonzero(reader.sample_ids != sample_id)[0]))
    assert not np.array_equal(new, old) and np.array_equal(new, other)  # now the replaced files' content
    assert cache_tasks.main(argv) == 0
    assert "warning:" not in capsys.readouterr().out


def test_unreachable_inputs_are_not_a_change_and_old_shards_are_not_checked(built):
    root, folder, _ = built
    shard = folder / "shard_00000.h5"
    shutil.move(root, root.with_name("moved"))  # the data lives elsewhere now (another machine)
    assert input_stats.shard_changes(shard) == []
    record = json.dumps({"s": {"video": [str(shard), None, None]}})  # missing at build time, there now
    assert input_stats.changed_inputs(record) == [f"s video {shard}: appeared after the build"]
    with h5py.File(shard, "r+") as f:
        del f.attrs[input_stats.INPUTS_ATTR]  # a shard written before the record
    assert input_stats.shard_changes(shard) == []
