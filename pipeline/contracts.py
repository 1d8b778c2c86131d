"""Data contracts, declared once (docs/design.md, Data contracts). Tests check every writer against these.

Manifest CSV
    One row per sample. ``MANIFEST_COLUMNS`` first, then one column per protocol of the dataset
    (``cs``, ``cv``, ``cs1``, ``cs2``, ``cv1``, ``cv2``, ``v3_12``) holding ``train``/``val``/``test`` or empty,
    then ``problem`` (empty when the sample is usable, otherwise why it is not).
    ``label`` indexes the dataset's full class list (``DatasetSpec.classes``); a protocol's own 0-based label
    is ``datasets.protocol_label(spec, protocol, action)``. Paths are relative to DATA_ROOT.

HDF5 cache (one file per shard, plus a merged virtual-dataset view ``cache.h5``)
    One row per clip (a video gives ``clips_per_video`` rows, in clip order, consecutive).
    The I3D input and feature shapes come from ``pipeline.i3d.spec`` (re-exported here).
    ``CACHE_DATASETS`` lists every dataset with its dtype and per-row shape (``J`` joints, ``t_p`` poses).
    Every file carries the attrs in ``CACHE_ATTRS``.

failures.csv
    ``FAILURE_COLUMNS``: a bad sample is skipped and recorded, never fatal, never silent.
"""

from __future__ import annotations

from pipeline.i3d.spec import CLIP_FRAMES, CROP_SIZE, FEATURE_SHAPE  # noqa: F401  (the I3D spec, re-exported)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "sample_id", "dataset", "video_path", "skeleton_path", "label", "action", "subject", "view",
)
PROTOCOL_VALUES: tuple[str, ...] = ("train", "val", "test", "")
PROBLEM_COLUMN = "problem"

MAX_BODIES = 2

CACHE_DATASETS: dict[str, tuple[str, str]] = {
    # name: (dtype, per-row shape as a description)
    "features": ("float16", f"{FEATURE_SHAPE} for the paper's clip; i3d_spec.feature_shape(clip_len, crop_size)"),
    "poses": ("float32", "(2, 3, J, t_p)"),
    "sample_ids": ("utf-8 str", "()"),
    "labels": ("int64", "()"),
    "clip_index": ("int32", "()"),
    "frame_indices": ("int32", f"({CLIP_FRAMES},) for the paper's clip; (clip_len,)"),
    "boxes": ("float32", "(4,) x0, y0, x1, y1 in source-frame pixels"),
}
CACHE_ATTRS: tuple[str, ...] = (
    "config_json", "i3d_weights_sha256", "versions_json", "code_version", "created_utc",
)
FAILURE_COLUMNS: tuple[str, ...] = ("sample_id", "stage", "reason")
