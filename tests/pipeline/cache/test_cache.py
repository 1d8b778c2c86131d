"""HDF5 cache: contract conformance, exact round trips, merged virtual view, atomic writes, failures, bad files."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.cache import failures, layout
from pipeline.cache import format as cache_format
from pipeline.cache import reader as cache
from pipeline.cache.merge import merge_shards
from pipeline.cache.provenance import make_attrs
from pipeline.cache.writer import ShardWriter
from pipeline.contracts import CACHE_ATTRS, CACHE_DATASETS, FAILURE_COLUMNS, FEATURE_SHAPE
from tests.conftest import REPO
from tests.helpers import T_P, J, Records, build_cache, make_records, write_shard

CONFIG = {"dataset": "ntu60", "clip_frames": 64, "t_p": T_P, "data_root": Path("/data/ntu")}


@pytest.fixture
def attrs() -> dict[str, str]:
    return make_attrs(CONFIG, "ab" * 32)


def concat(records: list[Records], name: str) -> np.ndarray:
    return np.concatenate([np.asarray(getattr(r, name)) for r in records if len(r)])


# ---------------------------------------------------------------- contract


def test_row_shapes_match_contract_descriptions():
    shapes = cache_format.row_shapes(J, T_P)
    assert set(shapes) == set(CACHE_DATASETS)
    for name, (_, description) in CACHE_DATASETS.items():
        text = re.match(r"\(([^)]*)\)", description)[1].replace("J", str(J)).replace("t_p", str(T_P))
        assert shapes[name] == tuple(int(v) for v in text.split(",") if v.strip()), name


def test_written_shard_conforms_to_contract(tmp_path, attrs):
    path = tmp_path / "shard.h5"
    write_shard(path, make_records(2), attrs=attrs)
    with h5py.File(path, "r") as f:
        for name, (dtype, _) in CACHE_DATASETS.items():
            ds = f[name]
            assert ds.shape == (2, *cache_format.row_shapes(J, T_P)[name]), name
            if dtype == "utf-8 str":
                assert h5py.check_string_dtype(ds.dtype).encoding == "utf-8"
            else:
                assert ds.dtype == np.dtype(dtype), name
        assert f["features"].chunks == (1, *FEATURE_SHAPE)
        assert f["features"].id.get_create_plist().get_nfilters() > 0  # DEFAULT_COMPRESSION is on
        assert set(CACHE_ATTRS) <= set(f.attrs)
        assert set(f[cache_format.SPLITS_GROUP]) == {"cs", "cv"}
        assert h5py.check_string_dtype(f[cache_format.ACTIONS].dtype).encoding == "utf-8"
        assert f[cache_format.FAILURES].shape == (1, len(FAILURE_COLUMNS))


def test_make_attrs_has_every_attr_as_json_where_named(attrs):
    assert set(attrs) == set(CACHE_ATTRS)
    assert json.loads(attrs["config_json"])["data_root"] == "/data/ntu"
    versions = json.loads(attrs["versions_json"])
    assert {"python", "torch", "h5py", "numpy", "hdf5plugin", "hdf5"} <= set(versions)
    assert attrs["code_version"]
    with pytest.raises(TypeError, match="not JSON serialisable"):
        make_attrs({"bad": object()}, "")


def test_attrs_missing_is_a_clear_error(tmp_path, attrs):
    del attrs["i3d_weights_sha256"]
    with pytest.raises(ValueError, match="i3d_weights_sha256"):
        write_shard(tmp_path / "s.h5", make_records(1), attrs=attrs)
    assert not (tmp_path / "s.h5").exists()


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("compression", ["none", "lzf", "gzip-1", "zstd-1", "bshuf-lz4", "blosc2-lz4-shuffle-5"])
def test_round_trip_is_exact(tmp_path, attrs, compression):
    records = make_records(3)
    path = tmp_path / "shard.h5"
    write_shard(path, records, attrs=attrs, compression=compression)
    with cache.open_cache(path) as reader:
        assert len(reader) == 3
        for i in range(3):
            assert np.array_equal(reader.read_features(i, dtype=np.float16).view(np.uint16),
                                  records.features[i].view(np.uint16))
            assert reader.read_features(i).dtype == np.float32
            assert np.array_equal(reader.read_features(i), records.features[i].astype(np.float32))
            assert np.array_equal(reader.read_poses(i), records.poses[i])
        assert list(reader.sample_ids) == records.sample_ids
        assert list(reader.actions) == records.actions
        assert np.array_equal(reader.labels, records.labels) and reader.labels.dtype == np.int64
        assert np.array_equal(reader.clip_index, records.clip_index)
        assert np.array_equal(reader.frame_indices, np.stack(records.frame_indices))
        assert np.allclose(reader.boxes, np.stack(records.boxes), atol=1e-5)
        for protocol in ("cs", "cv"):
            assert list(reader.splits(protocol)) == records.splits[protocol]
        assert reader.attrs["config_json"] == json.loads(json.dumps(CONFIG, default=str))
        assert reader.attrs["i3d_weights_sha256"] == "ab" * 32
        assert [tuple(r) for r in reader.failures.itertuples(index=False)] == records.failures


def test_read_rows_batches_in_given_order(tmp_path, attrs):
    records = make_records(3)
    write_shard(tmp_path / "s.h5", records, attrs=attrs)
    with cache.open_cache(tmp_path / "s.h5") as reader:
        batch = reader.read_rows([2, 0, -1])
        half = reader.read_rows([1], dtype=np.float16)
        with pytest.raises(IndexError, match="out of range"):
            reader.read_features(3)
        with pytest.raises(cache.CacheError, match="no split column for protocol 'cv1'"):
            reader.splits("cv1")
    assert batch["features"].shape == (3, *FEATURE_SHAPE) and batch["features"].dtype == np.float32
    assert np.array_equal(batch["features"][0], records.features[2].astype(np.float32))
    assert np.array_equal(batch["features"][2], records.features[2].astype(np.float32))
    assert batch["poses"].shape == (3, 2, 3, J, T_P)
    assert list(batch["sample_ids"]) == [records.sample_ids[i] for i in (2, 0, 2)]
    assert half["features"].dtype == np.float16 and np.array_equal(half["features"][0], records.features[1])


def test_float16_to_float32_is_exact_for_every_bit_pattern():
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    assert np.array_equal(cache.float16_to_float32(every), every.astype(np.float32), equal_nan=True)


def test_in_memory_and_pickled_readers_read_the_same(tmp_path, attrs):
    records = make_records(2)
    write_shard(tmp_path / "s.h5", records, attrs=attrs)
    reader = cache.open_cache(tmp_path / "s.h5", in_memory=True)
    reader.close()  # memory-loaded rows stay readable
    assert np.array_equal(reader.read_features(1), records.features[1].astype(np.float32))
    clone = pickle.loads(pickle.dumps(cache.open_cache(tmp_path / "s.h5")))  # e.g. a spawned DataLoader worker
    assert np.array_equal(clone.read_poses(0), records.poses[0])
    clone.close()


# ---------------------------------------------------------------- merge


def test_merge_of_three_shards_with_an_empty_one_is_their_concatenation(tmp_path, attrs):
    paths, records = build_cache(tmp_path / "c", attrs)
    with cache.open_cache(tmp_path / "c") as reader:
        assert len(reader) == 5
        assert h5py.File(tmp_path / "c" / cache.MERGED_NAME)["features"].is_virtual
        assert list(reader.sample_ids) == records[0].sample_ids + records[2].sample_ids
        assert np.array_equal(reader.labels, concat(records, "labels"))
        assert list(reader.splits("cv")) == records[0].splits["cv"] + records[2].splits["cv"]
        expected = concat(records, "features")
        for i in range(5):
            assert np.array_equal(reader.read_features(i, dtype=np.float16), expected[i])
        assert np.array_equal(reader.read_rows(range(5))["poses"], concat(records, "poses"))
        assert list(reader.failures["sample_id"]) == [r.failures[0][0] for r in records]
        assert reader.attrs["config_json"] == json.loads(json.dumps(CONFIG, default=str))


def test_merge_of_only_empty_shards_gives_an_empty_cache(tmp_path, attrs):
    build_cache(tmp_path, attrs, sizes=(0, 0))
    with cache.open_cache(tmp_path) as reader:
        assert len(reader) == 0 and reader.read_rows([])["features"].shape == (0, *FEATURE_SHAPE)
    assert len(failures.read_failures(tmp_path / layout.FAILURES_NAME)) == 2


def test_moved_cache_directory_stays_valid(tmp_path, attrs, monkeypatch):
    _, records = build_cache(tmp_path / "a" / "c", attrs)
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(tmp_path / "a" / "c", moved)
    decoys = tmp_path / "cwd"  # a same-named shard in the working directory must not be picked up
    build_cache(decoys, attrs, sizes=(3,))
    monkeypatch.chdir(decoys)
    with cache.open_cache(moved / cache.MERGED_NAME) as reader:
        expected = concat(records, "features")
        assert all(np.array_equal(reader.read_features(i, dtype=np.float16), expected[i]) for i in range(5))


def test_missing_shard_behind_the_view_raises_naming_it(tmp_path, attrs):
    paths, _ = build_cache(tmp_path, attrs)
    paths[2].unlink()
    with pytest.raises(cache.CacheError, match="shard_00002.h5"):
        cache.open_cache(tmp_path)


def test_shard_rewritten_shorter_after_merge_raises(tmp_path, attrs):
    paths, _ = build_cache(tmp_path, attrs)
    write_shard(paths[0], make_records(1), attrs=attrs)
    with pytest.raises(cache.CacheError, match="shard_00000.h5.*re-merge"):
        cache.open_cache(tmp_path)


def test_merge_with_mismatched_config_is_a_clear_error(tmp_path, attrs):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_shard(a, make_records(1), attrs=attrs)
    write_shard(b, make_records(1, seed=1), attrs=make_attrs({**CONFIG, "t_p": 30}, "ab" * 32))
    with pytest.raises(cache.CacheError, match=r"config_json of b.h5 differs from a.h5 \(t_p: 20 vs 30\)"):
        merge_shards([a, b], tmp_path / cache.MERGED_NAME)
    assert not (tmp_path / cache.MERGED_NAME).exists()


@pytest.mark.parametrize("second, message", [
    (dict(num_joints=13), "J=13"),
    (dict(protocols=("cs",)), "split protocols"),
    (dict(seed=0), "occur more than once"),
])
def test_merge_rejects_shards_that_disagree(tmp_path, attrs, second, message):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_shard(a, make_records(1), attrs=attrs)
    write_shard(b, make_records(1, **{"seed": 1, **second}), attrs=attrs)
    with pytest.raises(cache.CacheError, match=message):
        merge_shards([a, b], tmp_path / cache.MERGED_NAME)


def test_merge_without_shards_or_of_a_merged_view_is_an_error(tmp_path, attrs):
    with pytest.raises(cache.CacheError, match="no shards"):
        merge_shards([], tmp_path / cache.MERGED_NAME)
    paths, _ = build_cache(tmp_path, attrs)
    with pytest.raises(cache.CacheError, match="is a merged view, not a shard"):
        merge_shards([*paths, tmp_path / cache.MERGED_NAME], tmp_path / "again.h5")


# ---------------------------------------------------------------- atomic writes


def test_crash_inside_writer_leaves_no_file(tmp_path, attrs):
    records = make_records(2)
    final = tmp_path / "shard.h5"
    with pytest.raises(RuntimeError, match="extractor died"):
        with ShardWriter(final, n_rows_max=4, num_joints=J, t_p=T_P, attrs=attrs,
                         protocols=("cs", "cv"), atomic=True) as writer:
            for i in range(2):
                writer.append(features=records.features[i], poses=records.poses[i],
                              sample_id=records.sample_ids[i], label=records.labels[i], action="a",
                              clip_index=0, frame_indices=records.frame_indices[i], box=records.boxes[i],
                              splits={"cs": "train", "cv": "test"})
            raise RuntimeError("extractor died")
    assert list(tmp_path.iterdir()) == []


def test_bad_row_mid_write_leaves_no_file(tmp_path, attrs):
    records = make_records(3)
    records.features[2] = records.features[2][:512]
    with pytest.raises(ValueError, match=r"features has shape \(512, 8, 7, 7\)"):
        write_shard(tmp_path / "shard.h5", records, attrs=attrs, atomic=True)
    assert list(tmp_path.iterdir()) == []


def test_killed_process_leaves_no_file_at_the_final_path(tmp_path):
    script = f"""
import os, numpy as np
from pipeline.cache.writer import ShardWriter
from pipeline.cache.provenance import make_attrs
w = ShardWriter({str(tmp_path / 'shard.h5')!r}, n_rows_max=3, num_joints=25, t_p=20,
                attrs=make_attrs({{}}, ''), atomic=True)
w.append(features=np.ones((1024, 8, 7, 7)), poses=np.zeros((2, 3, 25, 20)), sample_id='x', label=0, action='a',
         clip_index=0, frame_indices=np.arange(64), box=np.zeros(4), splits={{}})
os._exit(3)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert not (tmp_path / "shard.h5").exists()
    assert [p.name.startswith(".shard.h5.tmp-") for p in tmp_path.iterdir()] == [True]


@pytest.mark.parametrize("change, message", [
    (dict(features=np.full(FEATURE_SHAPE, 1e6)), "not finite in float16"),
    (dict(poses=np.zeros((2, 3, 13, T_P))), "poses has shape"),
    (dict(splits={"cs": "training", "cv": ""}), "not in"),
    (dict(splits={"cs": "train"}), "split protocols"),
    (dict(frame_indices=np.arange(64) + 0.5), "int32"),
])
def test_writer_rejects_bad_rows(tmp_path, attrs, change, message):
    row = dict(features=np.zeros(FEATURE_SHAPE), poses=np.zeros((2, 3, J, T_P)), sample_id="x", label=0,
               action="a", clip_index=0, frame_indices=np.arange(64), box=np.zeros(4),
               splits={"cs": "train", "cv": ""})
    with ShardWriter(tmp_path / "s.h5", n_rows_max=1, num_joints=J, t_p=T_P, attrs=attrs,
                     protocols=("cs", "cv")) as writer:
        with pytest.raises(ValueError, match=message):
            writer.append(**{**row, **change})
        writer.append(**row)
        with pytest.raises(ValueError, match="shard is full"):
            writer.append(**row)
    assert len(cache.open_cache(tmp_path / "s.h5")) == 1


def test_unknown_compression_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown compression 'zip-9'"):
        cache_format.compression_kwargs("zip-9")


# ---------------------------------------------------------------- failures.csv


def test_append_failures_writes_header_once_and_round_trips(tmp_path):
    path = tmp_path / "sub" / layout.FAILURES_NAME
    failures.append_failures(path, [("a", "decode", "bad, \"header\"")])
    failures.append_failures(path, [("b", "pose", "line one\nline two"), ("c", "crop", "")])
    frame = failures.read_failures(path)
    assert list(frame.columns) == list(FAILURE_COLUMNS)
    assert frame.values.tolist() == [["a", "decode", "bad, \"header\""], ["b", "pose", "line one\nline two"],
                                     ["c", "crop", ""]]
    assert path.read_text().count("sample_id,stage,reason") == 1
    with pytest.raises(ValueError, match="needs"):
        failures.append_failures(path, [("only", "two")])


def test_read_failures_rejects_missing_or_wrong_files(tmp_path):
    with pytest.raises(cache.CacheError, match="does not exist"):
        failures.read_failures(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("id,why\nx,y\n")
    with pytest.raises(cache.CacheError, match="header"):
        failures.read_failures(tmp_path / "bad.csv")


def test_merge_rebuilds_failures_csv_from_shards_idempotently(tmp_path, attrs):
    paths, records = build_cache(tmp_path, attrs)
    expected = [list(r.failures[0]) for r in records]
    csv_path = tmp_path / layout.FAILURES_NAME
    assert failures.read_failures(csv_path).values.tolist() == expected
    failures.append_failures(csv_path, [("stale", "x", "from a crashed run")])
    merge_shards(paths, tmp_path / cache.MERGED_NAME)
    assert failures.read_failures(csv_path).values.tolist() == expected
    assert failures.read_shard_failures(paths[1]).values.tolist() == [expected[1]]
    files = [*(p.name for p in paths), cache.MERGED_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*files, *(layout.integrity_path(f).name for f in files), layout.FAILURES_NAME])


# ---------------------------------------------------------------- bad files


def test_corrupt_file_is_a_cache_error_naming_it(tmp_path):
    path = tmp_path / "shard_00007.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(cache.CacheError, match="shard_00007.h5.*not an HDF5 file"):
        cache.open_cache(path)
    with pytest.raises(cache.CacheError, match="shard_00007.h5"):
        merge_shards([path], tmp_path / cache.MERGED_NAME)


def test_truncated_file_is_a_cache_error_naming_it(tmp_path, attrs):
    path = tmp_path / "shard.h5"
    write_shard(path, make_records(2), attrs=attrs)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(cache.CacheError, match="shard.h5"):
        cache.open_cache(path)


def test_missing_file_and_directory_without_merge_are_clear_errors(tmp_path, attrs):
    with pytest.raises(cache.CacheError, match="does not exist"):
        cache.open_cache(tmp_path / "cache.h5")
    write_shard(tmp_path / "shard_00000.h5", make_records(1), attrs=attrs)
    with pytest.raises(cache.CacheError, match="no cache.h5 .*run the merge step"):
        cache.open_cache(tmp_path)


def test_missing_dataset_or_wrong_shape_is_a_cache_error(tmp_path, attrs):
    path = tmp_path / "s.h5"
    write_shard(path, make_records(1), attrs=attrs)
    with h5py.File(path, "a") as f:
        del f["boxes"]
    with pytest.raises(cache.CacheError, match=r"missing datasets \['boxes'\]"):
        cache.open_cache(path)
    write_shard(path, make_records(1), attrs=attrs)
    with h5py.File(path, "a") as f:
        del f["features"]
        f.create_dataset("features", shape=(1, 512, 8, 7, 7), dtype=np.float16)
    with pytest.raises(cache.CacheError, match=r"features has shape \(1, 512, 8, 7, 7\), expected \(1, 1024"):
        cache.open_cache(path)
    write_shard(path, make_records(1), attrs=attrs)
    with h5py.File(path, "a") as f:
        del f["labels"]
        f.create_dataset("labels", data=np.zeros(1, np.float32))
        del f.attrs["created_utc"]
    with pytest.raises(cache.CacheError, match=r"missing attrs \['created_utc'\]"):
        cache.open_cache(path)
    with h5py.File(path, "a") as f:
        f.attrs["created_utc"] = "now"
    with pytest.raises(cache.CacheError, match="labels has dtype float32, expected int64"):
        cache.open_cache(path)


def test_zero_row_shard_keeps_its_failures(tmp_path, attrs):
    records = make_records(0, seed=4)
    write_shard(tmp_path / "s.h5", records, attrs=attrs)
    with cache.open_cache(tmp_path / "s.h5") as reader:
        assert len(reader) == 0 and reader.protocols == ("cs", "cv")
    assert failures.read_shard_failures(tmp_path / "s.h5").values.tolist() == [list(records.failures[0])]
