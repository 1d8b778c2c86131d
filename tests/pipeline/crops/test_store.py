"""The person-crop store (``make crops``, from the manifest alone): what it holds, that the fine-tune's crops from it
match the source path's within codec error, resumption after ``kill -9``, failures rows, ``make verify``, and the
``PIXELS=`` choice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from pipeline.cache import layout
from pipeline.cache.failures import read_failures
from pipeline.crops import store as crop_store
from pipeline.crops import store_build
from pipeline.datasets import manifest
from pipeline.tools import verify_cache
from pipeline.video import crop
from pipeline.video import reader as video
from tasks import cache as cache_tasks
from tasks import crops as crops_tasks
from tests.conftest import REPO, shared_path
from tests.helpers import synthetic_dataset
from vpn_head.data.augment import AugmentConfig, jitter_box
from vpn_head.data.clips import resolve_cache
from vpn_head.data.pixels import PixelClips, PixelVideos, sample_paths

STRONG_JITTER = AugmentConfig(flip_prob=0.5, temporal_jitter=True, box_scale=0.1, box_shift=0.1)


def build(root: Path, n: int, frame_size=(320, 192), store_args=("--store-size", "72", "--shard-size", "2"),
          seed: int = 3) -> dict[str, Path]:
    """``n`` synthetic NTU videos, their crop store (unless ``store_args`` is None; built before any cache
    exists) and a pixels-extractor cache."""
    synthetic_dataset(root / "data", n=n, seed=seed, min_frames=24, max_frames=40, manifest_path=root / "manifest.csv",
                      num_classes=2, frame_size=frame_size)
    paths = {"root": root, "manifest": root / "manifest.csv", "cache": root / "cache", "data": root / "data"}
    if store_args is not None:
        assert crops_main(paths, *store_args) == 0
        assert not list(paths["cache"].rglob("cache.h5")), "make crops needs no cache"
    assert cache_tasks.main(["--dataset", "ntu60", "--manifest", str(root / "manifest.csv"), "--cache-dir",
                             str(root / "cache"), "--extractor", "pixels", "--shard-size", "16"]) == 0
    paths["cache_folder"] = layout.resolve(paths["cache"], "ntu60")
    if store_args is not None:
        paths["store"] = crop_store.find_store(paths["cache_folder"])
    return paths


def crops_main(paths: dict[str, Path], *extra: str) -> int:
    return crops_tasks.main(["--dataset", "ntu60", "--manifest", str(paths["manifest"]), "--cache-dir",
                             str(paths["cache"]), *extra])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("crops"), n=6)


def clips(data: dict[str, Path], pixels: str, augment: AugmentConfig | None = STRONG_JITTER, split: str = "train",
          **kwargs) -> PixelClips:
    return PixelClips(resolve_cache(data["cache"], "ntu60"), "cs", split, "ntu60", sample_paths(data["manifest"]),
                      clip_len=kwargs.pop("clip_len", 16), crop_size=kwargs.pop("crop_size", 64), augment=augment,
                      seed=5, pixels=pixels, **kwargs)


def grey_levels(a, b) -> float:
    """Mean absolute difference of two clips in [-1, 1], in 8-bit grey levels."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean() * 127.5)


# ----------------------------------------------------------------------------------------------------------
# the region: every jittered box lies inside it


def test_jitter_reach_holds_every_jittered_box_and_is_tight():
    rng = np.random.default_rng(0)
    for _ in range(40):
        width, height = int(rng.integers(200, 2000)), int(rng.integers(200, 1200))
        side = rng.uniform(20, 1.3 * max(width, height))
        x0, y0 = rng.uniform(-0.2 * width, width), rng.uniform(-0.2 * height, height)
        box = crop.clip_box(np.array([[[[x0, y0], [x0 + side, y0 + side]]]]), width, height, pad=0.0)
        scale, shift = rng.uniform(0, 0.3), rng.uniform(0, 0.3)
        reach = crop.jitter_reach(box, width, height, scale, shift)
        drawn = np.stack([jitter_box(box, width, height, rng, scale, shift) for _ in range(300)])  # (300, 4)
        tol = 1e-3 * max(width, height)
        assert (drawn[:, :2] >= reach[:2] - tol).all() and (drawn[:, 2:] <= reach[2:] + tol).all()
        assert (reach[:2] >= 0).all() and reach[2] <= width and reach[3] <= height
        # tight: the extreme draws come within 10% of the box side of the reach
        slack = 0.1 * float(box[2] - box[0])
        assert (drawn[:, :2].min(0) <= reach[:2] + slack).all() and (drawn[:, 2:].max(0) >= reach[2:] - slack).all()


def test_any_clip_reach_holds_every_clip_box_of_any_frames_jittered():
    rng = np.random.default_rng(1)
    for _ in range(30):
        width, height = int(rng.integers(200, 2000)), int(rng.integers(200, 1200))
        frames = int(rng.integers(5, 40))
        centre = rng.uniform([0, 0], [width, height])
        walk = np.cumsum(rng.normal(0, 0.05 * width, (frames, 1, 1, 2)), axis=0)  # the person moves
        joints = centre + walk + rng.normal(0, 0.1 * height, (frames, 2, 5, 2))  # (T, 2, 5, 2)
        joints[rng.random((frames, 2)) < 0.3] = np.nan  # missing bodies
        pad, scale, shift = rng.uniform(0, 0.3), rng.uniform(0, 0.3), rng.uniform(0, 0.3)
        reach, _ = crop.any_clip_reach(joints, width, height, pad, scale, shift)
        tol = 1e-6 * max(width, height)
        for _ in range(20):
            subset = np.sort(rng.choice(frames, int(rng.integers(1, frames + 1)), replace=False))
            shown = joints[subset] if np.isfinite(joints[subset]).all(-1).any() else joints  # as extract._clip_box
            box = crop.clip_box(shown, width, height, pad=pad)
            drawn = np.stack([box] + [jitter_box(box, width, height, rng, scale, shift) for _ in range(20)])
            assert (drawn[:, :2] >= reach[:2] - tol).all() and (drawn[:, 2:] <= reach[2:] + tol).all()
    empty = np.full((4, 1, 3, 2), np.nan)
    assert crop.any_clip_reach(empty, 320, 192, 0.1, 0.1, 0.1)[0].tolist() == [0, 0, 320, 192]


def test_store_region_downscales_the_box_to_size_and_never_enlarges():
    config = crop_store.StoreConfig(dataset="ntu60", manifest_sha256="x", size=256, crop_pad=0.0)
    joints = np.array([[[[600.0, 100.0], [1500.0, 1000.0]]]])  # (1, 1, 2, 2): a 900 px square person
    (x0, y0, x1, y1), (w, h) = store_build.store_region(joints, 1920, 1080, config)
    assert x0 <= 1050 - 900 * 1.1 * 0.6 and x1 >= 1050 + 900 * 1.1 * 0.6 and (y0, y1) == (0, 1080)  # centre 1050
    assert w % 2 == 0 and h % 2 == 0 and abs(h / (y1 - y0) * 900 - 256) < 2  # the box's short side is ~256 px
    _, small = store_build.store_region(np.array([[[[10.0, 10.0], [60.0, 60.0]]]]), 320, 192, config)
    assert small[0] <= 320 and small[1] <= 192  # a box under `size` keeps the source resolution


# ----------------------------------------------------------------------------------------------------------
# the fine-tune reads it


def test_store_holds_every_frame_of_every_manifest_video(data):
    store = crop_store.CropStore(data["store"])
    videos = sample_paths(data["manifest"])
    assert set(store.index) == set(videos) and len(videos) == 6
    assert sorted(set(store.index.values())) == ["crops_00000.h5", "crops_00001.h5", "crops_00002.h5"]
    for sample_id, (video_path, _) in videos.items():
        with video.open_video(video_path) as reader:
            assert store.num_frames(sample_id) == reader.num_frames
    sample_id = sorted(videos)[0]
    last = store.num_frames(sample_id) - 1
    frames, view = store.read(sample_id, np.array([last, 0, last]))
    assert frames.dtype == np.uint8 and frames.shape[0] == 3 and np.array_equal(frames[0], frames[2])
    assert view.source_size == (320, 192)
    assert store.read(sample_id, np.array([last + 1])) is None  # outside the stored frames
    assert read_failures(data["store"] / layout.FAILURES_NAME).empty
    config = json.loads((data["store"] / layout.CONFIG_NAME).read_text())
    cache_config = json.loads((data["cache_folder"] / layout.CONFIG_NAME).read_text())
    assert config["manifest_sha256"] == cache_config["manifest_sha256"]


def test_store_crops_equal_source_crops_within_codec_error_with_augmentation(data):
    store, source = clips(data, "store"), clips(data, "source")
    assert store.store is not None and source.store is None
    errors = []
    for i in range(len(store)):
        for epoch in (0, 1):
            a, b = store[(epoch, i)], source[(epoch, i)]
            assert a[0].shape == b[0].shape == (3, 16, 64, 64)
            np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())  # poses: same frames, same flip
            assert a[2:] == b[2:]
            errors.append(grey_levels(a[0], b[0]))
    assert max(errors) < 6.0, errors
    other = source[(0, 1)][0]  # another clip: the comparison can fail
    assert grey_levels(store[(0, 0)][0], other) > 3 * max(errors)


def test_store_videos_for_the_papers_evaluation_match_the_source(data):
    store = PixelVideos(clips(data, "store", augment=None), num_clips=2, short_side=48)
    source = PixelVideos(clips(data, "source", augment=None), num_clips=2, short_side=48)
    for i in range(len(store)):
        a, b = store[i], source[i]
        assert a[0].shape == b[0].shape and grey_levels(a[0], b[0]) < 6.0
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())


def test_a_video_the_store_lacks_is_read_from_the_source(data):
    both = clips(data, "store")
    sample = both.sample_ids[0]
    _, stored = both.read_pixels(sample, both.frame_indices[0][:2])
    del both.store.index[sample]  # as after a failures.csv row of the store
    frames, view = both.read_pixels(sample, both.frame_indices[0][:2])
    assert stored.scale[0] < 1 and view.scale == (1.0, 1.0) and frames.shape[1:3] == (192, 320)
    assert both[(0, 0)][0].shape == (3, 16, 64, 64)


def test_a_corrupt_store_entry_is_read_from_the_source_with_a_logged_line(data, tmp_path, caplog):
    copy = tmp_path / "store"
    shutil.copytree(data["store"], copy)
    both = clips(data, "store")
    both.store = crop_store.CropStore(copy)
    sample = both.sample_ids[0]
    with h5py.File(copy / both.store.index[sample], "r+") as f:
        name = sample.replace("/", "\\")
        attrs = dict(f[name].attrs)
        del f[name]
        f.create_dataset(name, data=np.frombuffer(b"garbage" * 50, np.uint8)).attrs.update(attrs)
    frames, view = both.read_pixels(sample, both.frame_indices[0][:2])
    assert view.scale == (1.0, 1.0) and frames.shape[1:3] == (192, 320)
    assert "reading the source video of " + sample in caplog.text
    assert store_build.verify_store(copy) and not store_build.verify_store(data["store"])


def test_pixels_choice_auto_store_source_and_margins(data, tmp_path, caplog):
    cache = data["cache_folder"]
    assert crop_store.select_store(cache, "source", 0.1, 0.1) is None
    assert crop_store.select_store(cache, "auto", 0.1, 0.1).folder == data["store"]
    assert crop_store.select_store(cache, "auto", 0.2, 0.1) is None and "reading the source videos" in caplog.text
    with pytest.raises(crop_store.StoreError, match="holds box jitter up to scale 0.1"):
        crop_store.select_store(cache, "store", 0.2, 0.1)
    with pytest.raises(ValueError, match="pixels must be one of"):
        crop_store.select_store(cache, "disk", 0.1, 0.1)
    empty = tmp_path / "ntu60" / "abc"
    empty.mkdir(parents=True)
    (empty / layout.CONFIG_NAME).write_text(json.dumps({"manifest_sha256": "another manifest", "crop_pad": 0.15}))
    assert crop_store.select_store(empty, "auto", 0.1, 0.1) is None
    with pytest.raises(crop_store.StoreError, match="no finished crop store.*make crops"):
        crop_store.select_store(empty, "store", 0.1, 0.1)


@pytest.mark.skipif(not shared_path("samples", "ntu", "S001C001P001R001A001_rgb.avi").is_file(),
                    reason="needs ../shared/samples/ntu (the real 1080p NTU sample)")
def test_real_1080p_sample_store_crops_match_the_source_at_224(tmp_path):
    root = shared_path("samples", "ntu")
    df, _ = manifest.scan("ntu60", root)
    df = df[df["sample_id"] == "S001C001P001R001A001"].reset_index(drop=True)
    df["cs"] = "train"
    manifest.write_manifest(df, tmp_path / "manifest.csv", data_root=root)
    paths = {"manifest": tmp_path / "manifest.csv", "cache": tmp_path / "cache"}
    assert crops_main(paths) == 0
    assert cache_tasks.main(["--dataset", "ntu60", "--manifest", str(paths["manifest"]), "--cache-dir",
                             str(paths["cache"]), "--extractor", "pixels"]) == 0
    store, source = clips(paths, "store", crop_size=224), clips(paths, "source", crop_size=224)
    frames, view = store.read_pixels(store.sample_ids[0], store.frame_indices[0][:4])
    assert view.source_size == (1920, 1080) and frames.shape[1] * frames.shape[2] < 1920 * 1080 / 8
    errors = [grey_levels(store[(e, 0)][0], source[(e, 0)][0]) for e in range(3)]
    assert max(errors) < 4.0, errors


# ----------------------------------------------------------------------------------------------------------
# building: bad inputs, kill -9


def test_corrupt_and_missing_videos_get_failures_rows(tmp_path):
    synthetic_dataset(tmp_path / "data", n=4, seed=4, min_frames=24, max_frames=40,
                      manifest_path=tmp_path / "manifest.csv", num_classes=2, frame_size=(320, 192))
    paths = {"manifest": tmp_path / "manifest.csv", "cache": tmp_path / "cache"}
    videos = sample_paths(paths["manifest"])
    ids = sorted(videos)
    videos[ids[0]][0].write_bytes(b"not a video at all" * 100)
    truncated = videos[ids[1]][0]
    truncated.write_bytes(truncated.read_bytes()[:2000])
    videos[ids[2]][0].unlink()
    assert crops_main(paths, "--store-size", "64") == 0
    store = store_folder(paths)
    failures = read_failures(store / layout.FAILURES_NAME).set_index("sample_id")
    assert set(failures.index) == set(ids[:3]) and (failures["stage"] == "crops").all()
    assert "file not found" in failures.loc[ids[2], "reason"]
    assert set(crop_store.CropStore(store).index) == {ids[3]}


def store_folder(paths: dict[str, Path]) -> Path:
    """The store ``crops/LATEST`` names under the paths' cache root."""
    root = layout.crops_root(paths["cache"] / "ntu60")
    return layout.crops_dir(paths["cache"] / "ntu60", (root / layout.LATEST).read_text().strip())


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert crops_tasks.main(["--dataset", "ntu60", "--manifest", str(tmp_path / "none.csv")]) == 2
    assert "manifest" in capsys.readouterr().err
    synthetic_dataset(tmp_path / "data", n=1, seed=4, min_frames=24, max_frames=24,
                      manifest_path=tmp_path / "m.csv", num_classes=2, frame_size=(64, 64))
    assert crops_tasks.main(["--dataset", "ntu60", "--manifest", str(tmp_path / "m.csv"), "--data-root",
                             str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: DATA_ROOT") and err.count("\n") == 1


def test_make_verify_checks_a_store_and_names_a_corrupt_stream(tmp_path, capsys):
    synthetic_dataset(tmp_path / "data", n=2, seed=8, min_frames=24, max_frames=30,
                      manifest_path=tmp_path / "manifest.csv", num_classes=2, frame_size=(160, 96))
    paths = {"manifest": tmp_path / "manifest.csv", "cache": tmp_path / "cache"}
    assert crops_main(paths, "--store-size", "48") == 0
    assert verify_cache.main([str(paths["cache"])]) == 0
    assert "1 crop store(s)" in capsys.readouterr().out
    store = store_folder(paths)
    shard = store / "crops_00000.h5"
    with h5py.File(shard, "r+") as f:
        name = next(iter(f))
        stream = f[name][()]
        stream[len(stream) // 3:] = 0  # the end of the stream zeroed
        f[name][...] = stream
    assert verify_cache.main([str(paths["cache"])]) == 1
    assert f"BAD {shard}:" in capsys.readouterr().out


def test_kill_9_during_make_crops_resumes_without_redoing_finished_shards(tmp_path):
    synthetic_dataset(tmp_path / "data", n=8, seed=6, min_frames=24, max_frames=40,
                      manifest_path=tmp_path / "manifest.csv", num_classes=2, frame_size=(640, 384))
    paths = {"manifest": tmp_path / "manifest.csv", "cache": tmp_path / "cache"}
    command = [sys.executable, "-m", "tasks.crops", "--dataset", "ntu60", "--manifest", str(paths["manifest"]),
               "--cache-dir", str(paths["cache"]), "--shard-size", "1", "--store-size", "128"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    first = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(paths["cache"].glob("ntu60/crops/*/crops_[0-9]*.h5"))  # Luigi runs shards in any order
        if found:
            first = found[0]
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first is not None, "no shard ever appeared"
    folder = first.parent
    assert not (folder / layout.CROPS_INDEX).exists(), "the build finished before the kill: nothing was tested"
    done_before = {p.name: p.stat().st_mtime_ns for p in folder.glob("crops_*.h5")}
    (folder / "crops_00007.h5-luigi-tmp-000000001").write_bytes(b"half a shard")  # as a kill mid-write leaves
    assert subprocess.run(command, cwd=REPO, capture_output=True).returncode == 0
    for name, mtime in done_before.items():
        assert (folder / name).stat().st_mtime_ns == mtime, f"{name} was rebuilt"
    assert len(list(folder.glob("crops_*.h5"))) == 8 and not list(folder.glob(layout.CROPS_TEMP_GLOB))
    assert len(json.loads((folder / layout.CROPS_INDEX).read_text())) == 8
    assert pd.read_csv(folder / layout.FAILURES_NAME).empty
