"""Trusting the cache: checksums, verify, rebuild of bad shards, non-finite data, environment vs content failures,
paths inside DATA_ROOT, one build per folder, weights checked once (issue 10's table, row by row)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.build import extract
from pipeline.build.lock import BuildLock
from pipeline.cache import layout
from pipeline.cache import reader as cache
from pipeline.cache.failures import read_failures
from pipeline.cache.integrity import check_integrity
from pipeline.cache.provenance import make_attrs
from pipeline.cache.reader import CacheError, open_cache
from pipeline.cache.writer import ShardWriter
from pipeline.datasets import manifest
from pipeline.tools import verify_cache
from tasks import cache as cache_tasks
from tests.conftest import REPO
from tests.helpers import synthetic_dataset, tiny_config, write_tiny_cache
from vpn_head.train import head as train_module

PY = sys.executable


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """6 synthetic NTU samples and their manifest."""
    return synthetic_dataset(tmp_path_factory.mktemp("data"), n=6, seed=5, min_frames=30, max_frames=50)


def _argv(manifest_path: Path, cache_root: Path, *extra: str) -> list[str]:
    return ["--dataset", "ntu60", "--manifest", str(manifest_path), "--cache-dir", str(cache_root),
            "--extractor", "pixels", "--shard-size", "2", "--decode-workers", "0", *extra]


def _folder(cache_root: Path) -> Path:
    (folder,) = [d for d in (cache_root / "ntu60").iterdir() if d.is_dir()]
    return folder


@pytest.fixture(scope="module")
def built(dataset, tmp_path_factory) -> Path:
    """A clean pixel-feature cache of ``dataset`` in 3 shards (never modified: tests copy it)."""
    root = tmp_path_factory.mktemp("built")
    assert cache_tasks.main(_argv(dataset / "manifest.csv", root)) == 0
    return _folder(root)


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A writable copy of the built cache (same folder layout, so a rerun of the build finds it)."""
    target = tmp_path / "cache" / "ntu60" / built.name
    shutil.copytree(built, target)
    (target.parent / "LATEST").write_text(built.name + "\n")
    return target


def _rows(path: Path) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray, int]]:
    with open_cache(path) as reader:
        rows = reader.read_rows(np.arange(len(reader)))
    return {(s, int(k)): (f, p, int(lab)) for s, k, f, p, lab in
            zip(rows["sample_ids"], rows["clip_index"], rows["features"], rows["poses"], rows["labels"])}


def _xor_in_chunk(path: Path, dataset: str, row: int, at: int = 16, n: int = 8) -> None:
    """XOR ``n`` bytes inside the stored (compressed) chunk of ``dataset``'s ``row``; the file size is unchanged."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info_by_coord((row,) + (0,) * (f[dataset].ndim - 1)).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + at)
        data = bytearray(fh.read(n))
        fh.seek(offset + at)
        fh.write(bytes(b ^ 0xA5 for b in data))


# ---------------------------------------------------------------------------------------------------- checksums


def test_every_dataset_of_shards_and_view_is_checksummed(built):
    for path in (built / "shard_00000.h5", built / cache.MERGED_NAME):
        with h5py.File(path, "r") as f:
            stored = []
            f.visititems(lambda name, obj: stored.append(obj) if isinstance(obj, h5py.Dataset) else None)
            assert stored and all(ds.fletcher32 for ds in stored if not ds.is_virtual), path
        assert check_integrity(path, full=True) == ""


def test_xor_in_a_features_chunk_raises_naming_the_shard_never_nans(copy):
    shard = copy / "shard_00001.h5"
    size = shard.stat().st_size
    _xor_in_chunk(shard, "features", 0)
    assert shard.stat().st_size == size
    with open_cache(shard) as reader, pytest.raises(CacheError, match=r"shard_00001\.h5: cannot read features"):
        reader.read_features(0)
    with open_cache(copy) as reader, pytest.raises(CacheError, match=r"shard_00001\.h5.*\(S0"):
        reader.read_rows(np.arange(len(reader)))  # through the merged view: names the shard and the sample
    with pytest.raises(CacheError, match=r"shard_00001\.h5"):
        open_cache(copy, in_memory=True)
    assert "sha256 differs" in check_integrity(shard)  # the file was changed by a program: rehashed


def test_flipped_label_byte_is_an_error_not_another_label(copy):
    shard = copy / "shard_00000.h5"
    _xor_in_chunk(shard, "labels", 0, at=0, n=1)
    with pytest.raises(CacheError, match=r"shard_00000\.h5.*unreadable cache file"):
        open_cache(shard)


def test_verify_names_each_bad_shard_and_a_rerun_rebuilds_exactly_those(dataset, copy, capsys):
    clean = _rows(copy)
    truncated, flipped, untouched = (copy / f"shard_0000{i}.h5" for i in range(3))
    with open(truncated, "r+b") as fh:
        fh.truncate(truncated.stat().st_size - 7)
    _xor_in_chunk(flipped, "poses", 1)
    assert verify_cache.main([str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"BAD {truncated}" in out and f"BAD {flipped}" in out and f"BAD {untouched}" not in out
    assert "2 bad" in out
    before = untouched.stat().st_mtime_ns
    assert cache_tasks.main(_argv(dataset / "manifest.csv", copy.parents[1])) == 0
    out = capsys.readouterr().out
    assert f"rebuilding {truncated}" in out and f"rebuilding {flipped}" in out and str(untouched) not in out
    assert untouched.stat().st_mtime_ns == before
    rebuilt = _rows(copy)
    assert rebuilt.keys() == clean.keys()
    for key, (features, poses, label) in clean.items():
        assert np.array_equal(rebuilt[key][0], features) and np.array_equal(rebuilt[key][1], poses)
        assert rebuilt[key][2] == label
    assert verify_cache.main([str(copy.parents[1])]) == 0
    assert "all good" in capsys.readouterr().out
    assert not [p for p in copy.iterdir() if "tmp" in p.name]


def test_verify_of_no_cache_is_exit_2(tmp_path, capsys):
    assert verify_cache.main([str(tmp_path)]) == 2
    assert "no cache" in capsys.readouterr().err


def test_train_head_on_a_cache_corrupted_behind_its_back_exits_naming_the_shard(tmp_path, capsys):
    folder = write_tiny_cache(tmp_path / "nucla")
    _xor_in_chunk(folder / "shard_00000.h5", "features", 3)
    for workers in ("0", "2"):  # in this process, and raised in a DataLoader worker
        code = train_module.main(["--dataset", "nucla", "--protocol", "v3_12", "--cache-dir", str(folder), "--epochs", "1",
                                  "--runs-dir", str(tmp_path / f"runs{workers}"), "--num-workers", workers,
                                  "--device", "cpu"])
        err = capsys.readouterr().err.strip()  # (tqdm's bar shares stderr)
        last = err.splitlines()[-1]
        assert code != 0 and last.startswith("error: ") and "shard_00000.h5: cannot read features" in last
        assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------------- non-finite


def test_non_finite_poses_stop_training_naming_the_sample(tmp_path):
    folder = write_tiny_cache(tmp_path / "nucla")
    with h5py.File(folder / "shard_00000.h5", "r+") as f:  # valid checksums, garbage values
        f["poses"][2] = np.nan
        sample = f["sample_ids"].asstr()[2]
    with pytest.raises(CacheError, match=rf"non-finite poses in row 2 \({sample}\)"):
        train_module.train(tiny_config(folder, tmp_path / "runs", epochs=1))


def test_writer_refuses_non_finite_poses(tmp_path):
    attrs = make_attrs({"dataset": "nucla"}, "")
    with pytest.raises(ValueError, match="poses are not finite"):
        with ShardWriter(tmp_path / "s.h5", n_rows_max=1, num_joints=20, t_p=5, attrs=attrs) as writer:
            writer.append(features=np.zeros((1024, 8, 7, 7)), poses=np.full((2, 3, 20, 5), np.nan), sample_id="a",
                          label=0, action="x", clip_index=0, frame_indices=np.arange(64), box=np.zeros(4), splits={})
    assert not (tmp_path / "s.h5").exists()


# ---------------------------------------------------------------------------------------------------- environment


def test_wrong_data_root_is_refused_in_one_line_and_the_right_one_then_builds(dataset, tmp_path, capsys):
    argv = _argv(dataset / "manifest.csv", tmp_path / "c")
    assert cache_tasks.main([*argv, "--data-root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: DATA_ROOT {tmp_path / 'nowhere'} does not exist") and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert cache_tasks.main([*argv, "--data-root", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "files of the first 6 samples are all missing" in err and "\n" not in err
    assert not (tmp_path / "c" / "ntu60" / "LATEST").exists()
    assert cache_tasks.main([*argv, "--data-root", str(dataset)]) == 0
    with open_cache(_folder(tmp_path / "c")) as reader:
        assert len(reader) == 6


def test_missing_file_is_retried_by_the_next_run_corrupt_one_only_with_retry_failed(dataset, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    df = manifest.read_manifest(root / "manifest.csv")
    manifest.write_manifest(df, root / "manifest.csv", data_root=root)
    skeleton = root / df.loc[0, "skeleton_path"]
    hidden = skeleton.with_name("hidden")
    skeleton.rename(hidden)  # as if a disk were unmounted
    video = root / df.loc[3, "video_path"]
    video.write_bytes(b"not a video" * 100)  # a content failure
    argv = _argv(root / "manifest.csv", tmp_path / "c")
    assert cache_tasks.main(argv) == 1
    assert "1 samples could not be reached" in capsys.readouterr().err
    folder = _folder(tmp_path / "c")
    failures = read_failures(folder / layout.FAILURES_NAME)
    assert sorted(failures["stage"]) == ["decode", extract.ENVIRONMENT_STAGE]
    hidden.rename(skeleton)
    shard_1 = folder / "shard_00001.h5"
    before = shard_1.stat().st_mtime_ns
    assert cache_tasks.main(argv) == 0
    assert "rebuilding" in capsys.readouterr().out
    assert read_failures(folder / layout.FAILURES_NAME)["stage"].tolist() == ["decode"]
    assert shard_1.stat().st_mtime_ns == before  # the content failure stays recorded, its shard untouched
    assert cache_tasks.main(argv) == 0 and shard_1.stat().st_mtime_ns == before
    shutil.copy(dataset / df.loc[3, "video_path"], video)
    assert cache_tasks.main([*argv, "--retry-failed"]) == 0
    assert len(read_failures(folder / layout.FAILURES_NAME)) == 0 and shard_1.stat().st_mtime_ns != before


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside/{name}", "link/{name}"])
def test_manifest_paths_outside_data_root_are_failures_never_opened(dataset, tmp_path, path):
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    outside = tmp_path / "outside"
    outside.mkdir()
    df = manifest.read_manifest(root / "manifest.csv")
    name = Path(df.loc[1, "video_path"]).name
    shutil.copy(root / df.loc[1, "video_path"], outside / name)
    (root / "link").symlink_to(outside)
    df.loc[0, "video_path"] = path.format(name=name)  # another sample's video, outside the root
    manifest.write_manifest(df, root / "m.csv", data_root=root)
    assert cache_tasks.main(_argv(root / "m.csv", tmp_path / "c")) == 0
    folder = _folder(tmp_path / "c")
    failures = read_failures(folder / layout.FAILURES_NAME)
    assert failures.values.tolist()[0][:2] == [df.loc[0, "sample_id"], "manifest"]
    assert "DATA_ROOT" in failures.loc[0, "reason"]
    with open_cache(folder) as reader:
        assert df.loc[0, "sample_id"] not in set(reader.sample_ids)


# ---------------------------------------------------------------------------------------------------- concurrency


def test_second_build_of_a_folder_exits_naming_the_holder(dataset, tmp_path, capsys):
    argv = _argv(dataset / "manifest.csv", tmp_path / "c")
    assert cache_tasks.main(argv) == 0
    folder = _folder(tmp_path / "c")
    (folder / "shard_00000.h5").unlink()
    with BuildLock(folder):
        assert cache_tasks.main(argv) == 3
        err = capsys.readouterr().err.strip()
        assert f"pid {os.getpid()}" in err and "\n" not in err
        assert not (folder / "shard_00000.h5").exists()  # nothing computed by the refused run
    assert cache_tasks.main(argv) == 0 and (folder / "shard_00000.h5").exists()
    assert not [p for p in folder.iterdir() if "tmp" in p.name]


def test_two_concurrent_builds_compute_each_shard_once(dataset, tmp_path):
    cmd = [PY, "-m", "tasks.cache", *_argv(dataset / "manifest.csv", tmp_path / "c")]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 3], results
    folder = _folder(tmp_path / "c")
    log_lines = (folder / layout.RUN_LOG).read_text().splitlines()
    assert sum('"shard"' in line for line in log_lines) == 3  # each shard written once
    assert (folder / cache.MERGED_NAME).exists() and not [p for p in folder.iterdir() if "tmp" in p.name]


# ---------------------------------------------------------------------------------------------------- weights


def test_wrong_weights_file_is_one_line_and_exit_2(dataset, tmp_path, capsys):
    weights = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(3)}, weights)
    argv = _argv(dataset / "manifest.csv", tmp_path / "c")
    argv[argv.index("pixels")] = "i3d"
    assert cache_tasks.main([*argv, "--i3d-weights", str(weights)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: I3D_WEIGHTS {weights}") and "\n" not in err
    weights.write_bytes(b"\x80\x02garbage")
    assert cache_tasks.main([*argv, "--i3d-weights", str(weights)]) == 2
    assert "\n" not in capsys.readouterr().err.strip()
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").rglob("shard_*.h5"))


def test_a_shard_from_before_integrity_records_is_adopted_not_rebuilt(tmp_path):
    """A finished shard without a record (written by a version before records) is read back whole once and
    recorded; a damaged one is still rebuilt."""
    folder = write_tiny_cache(tmp_path / "legacy", "nucla")
    shard = folder / "shard_00000.h5"
    layout.integrity_path(shard).unlink()
    assert extract.shards_to_rebuild([shard]) == {}
    assert layout.integrity_path(shard).is_file() and check_integrity(shard, full=True) == ""
    layout.integrity_path(shard).unlink()
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size - 7)
    assert "full read fails" in extract.shards_to_rebuild([shard])[shard]
