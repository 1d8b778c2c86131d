"""Builders the test modules share: tiny caches and configs, test shards, synthetic datasets, tiny VPN heads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.cache import reader as cache
from pipeline.cache.merge import merge_shards
from pipeline.cache.provenance import make_attrs
from pipeline.cache.writer import ShardWriter, write_rows
from pipeline.contracts import FEATURE_SHAPE
from pipeline.datasets import manifest
from pipeline.datasets.ntu import format_sample_id
from pipeline.datasets.nucla import NUCLA_ACTION_IDS
from pipeline.datasets.registry import get_dataset
from pipeline.synthetic.dataset import SyntheticConfig, generate
from tests.conftest import shared_path
from vpn_head.model.config import PAPER_READING, VPNConfig
from vpn_head.train.head import TrainConfig

# ---------------------------------------------------------------- tiny training caches and configs

SMALL_MODEL = {"embed_dim": 16, "attention_hidden": 16, "gcn_channels": 8}
"""Narrow embedding/attention layers keep the CPU steps fast; the features stay (1024, 8, 7, 7)."""
_SPLIT_VIEW = {"train": 1, "val": 2, "test": 3}


def tiny_sample_id(dataset: str, split: str, c: int, v: int) -> str:
    """A genuine sample id of ``dataset`` for video ``v`` of class ``c`` (index in the full class list) in ``split``:
    subject ``v % 5 + 1`` (so a split has several subjects), the split encoded in the view/camera/setup."""
    spec = get_dataset(dataset)
    subject = v % 5 + 1
    if dataset == "nucla":
        return f"a{NUCLA_ACTION_IDS[c]:02d}_s{subject:02d}_e{v:02d}_v{_SPLIT_VIEW[split]:02d}"
    if dataset == "smarthome":
        return f"{spec.classes[c]}_p{subject:02d}_r00_v{v:02d}_c{_SPLIT_VIEW[split]:02d}"
    return format_sample_id(_SPLIT_VIEW[split], 1, subject, v + 1, c + 1)


def write_tiny_cache(folder: Path, dataset: str = "nucla", classes: tuple[int, ...] = (0, 1, 2, 3),
                     videos: dict[str, int | dict[int, int]] | None = None, clips: dict[str, int] | None = None,
                     seed: int = 0, feature_fn=None, built_protocol: str = "") -> Path:
    """Write a merged cache of separable clips: class c lifts feature channels [16c, 16c+16) and pose x.

    Args:
        folder: the cache directory to create (gets shard_00000.h5 and cache.h5).
        dataset: registry name; every protocol of it gets the same split per video.
        classes: indices into the dataset's FULL class list.
        videos: videos per class per split (default train 6, test 2), or per split a {class: videos} dict.
        clips: clips per video per split (default train 1, test 2).
        seed: noise seed.
        feature_fn: optional ``(class_index, sample_id, clip, rng) -> (1024, 8, 7, 7)`` features.
        built_protocol: the ``CacheConfig.protocol`` the cache records (a cache built for one protocol only).

    Returns:
        ``folder``.
    """
    spec = get_dataset(dataset)
    videos = videos or {"train": 6, "test": 2}
    clips = clips or {"train": 1, "test": 2}
    rng = np.random.default_rng(seed)
    counts = {split: n if isinstance(n, dict) else dict.fromkeys(classes, n) for split, n in videos.items()}
    rows = [(tiny_sample_id(dataset, split, c, v), c, split, k) for split in videos for c in classes
            for v in range(counts[split].get(c, 0)) for k in range(clips[split])]
    protocols = tuple(spec.protocols)
    folder.mkdir(parents=True, exist_ok=True)
    shard = folder / "shard_00000.h5"
    with ShardWriter(shard, n_rows_max=len(rows), num_joints=spec.num_joints, t_p=spec.t_p,
                     attrs=make_attrs({"dataset": dataset, "t_p": spec.t_p, "protocol": built_protocol}, ""),
                     protocols=protocols,
                     compression="none") as writer:
        for sample_id, c, split, k in rows:
            if feature_fn is None:
                features = rng.normal(0.0, 1.0, (1024, 8, 7, 7)).astype(np.float32)
                features[16 * c:16 * (c + 1)] += 2.0
            else:
                features = feature_fn(c, sample_id, k, rng)
            poses = rng.normal(0.0, 0.1, (2, 3, spec.num_joints, spec.t_p)).astype(np.float32)
            poses[0, 0] += 0.5 * c
            writer.append(features=features, poses=poses, sample_id=sample_id, label=c, action=spec.classes[c],
                          clip_index=k, frame_indices=np.arange(64), box=np.array([0, 0, 8, 8]),
                          splits={p: split for p in protocols})
    merge_shards([shard], folder / "cache.h5")
    return folder


def tiny_config(cache: Path, runs: Path, **overrides) -> TrainConfig:
    """A two-epoch CPU head-training config (N-UCLA v3_12, SMALL_MODEL) on ``cache``, run "tiny" under ``runs``."""
    values = dict(dataset="nucla", protocol="v3_12", variant="vpn", model=SMALL_MODEL, epochs=2, batch_size=8,
                  lr=0.05, num_workers=0, cache=str(cache), runs_dir=str(runs), run_name="tiny", device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


# ---------------------------------------------------------------- test shards (random clips, exact round trips)

J, T_P = 25, 20
"""Joints and pose frames of the test shards (NTU's)."""


@dataclass
class Records:
    """The clips and failures of one test shard, kept to compare with what the reader returns."""

    num_joints: int
    t_p: int
    protocols: tuple[str, ...]
    features: list[np.ndarray] = field(default_factory=list)
    poses: list[np.ndarray] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    clip_index: list[int] = field(default_factory=list)
    frame_indices: list[np.ndarray] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    splits: dict[str, list[str]] = field(default_factory=dict)
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def rows(self) -> list[dict]:
        """``ShardWriter.append`` keyword arguments of every clip."""
        return [dict(features=self.features[i], poses=self.poses[i], sample_id=self.sample_ids[i],
                     label=self.labels[i], action=self.actions[i], clip_index=self.clip_index[i],
                     frame_indices=self.frame_indices[i], box=self.boxes[i],
                     splits={p: v[i] for p, v in self.splits.items()}) for i in range(len(self))]


def write_shard(path: Path, records: Records, *, attrs: dict[str, str], **kwargs) -> None:
    """Write ``records`` with the pipeline's one writer (``kwargs``: compression, atomic)."""
    write_rows(path, records.rows(), num_joints=records.num_joints, t_p=records.t_p, attrs=attrs,
               protocols=records.protocols, failures=records.failures, **kwargs)


def make_records(n: int, *, seed: int = 0, prefix: str = "S001C001P001R001A", protocols=("cs", "cv"),
                 num_joints: int = J) -> Records:
    """n clips of post-ReLU-like float16 features (exact zeros included) and random metadata."""
    rng = np.random.default_rng(seed)
    records = Records(num_joints=num_joints, t_p=T_P, protocols=tuple(protocols),
                      splits={p: [] for p in protocols})
    for i in range(n):
        records.features.append(np.maximum(rng.standard_normal(FEATURE_SHAPE, dtype=np.float32) * 3, 0)
                                .astype(np.float16))
        records.poses.append(rng.standard_normal((2, 3, num_joints, T_P)).astype(np.float32))
        records.sample_ids.append(f"{prefix}{seed:02d}{i:02d}")
        records.labels.append(int(rng.integers(60)))
        records.actions.append(f"act é{i}")
        records.clip_index.append(i % 2)
        records.frame_indices.append(rng.integers(0, 300, 64))
        records.boxes.append(rng.random(4) * 100)
        for k, p in enumerate(protocols):
            records.splits[p].append(("train", "test", "")[(i + k) % 3])
    records.failures.append((f"{prefix}bad{seed}", "decode", f"shard {seed}: truncated, \"quoted\", comma"))
    return records


def build_cache(folder: Path, attrs: dict[str, str], sizes=(3, 0, 2)) -> tuple[list[Path], list[Records]]:
    """Write one shard per size into ``folder`` and merge them into ``folder/cache.h5``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, records = [], []
    for k, n in enumerate(sizes):
        records.append(make_records(n, seed=k))
        paths.append(folder / f"shard_{k:05d}.h5")
        write_shard(paths[-1], records[-1], attrs=attrs, atomic=True)
    merge_shards(paths, folder / cache.MERGED_NAME)
    return paths, records


# ---------------------------------------------------------------- synthetic NTU datasets


def synthetic_dataset(root: Path, n: int, seed: int, min_frames: int, max_frames: int,
                      manifest_path: Path | None = None, **options) -> Path:
    """Generate ``n`` synthetic NTU samples under ``root``, scan them and write their manifest (``data_root=root``)
    to ``manifest_path`` (default ``root/manifest.csv``); ``options`` are further ``SyntheticConfig`` fields.
    Returns ``root``."""
    generate(root, SyntheticConfig(n=n, seed=seed, min_frames=min_frames, max_frames=max_frames, **options))
    df, _ = manifest.scan("ntu60", root)
    manifest.write_manifest(df, manifest_path or root / "manifest.csv", data_root=root)
    return root


# ---------------------------------------------------------------- tiny VPN heads (equation-level tests)

CHAIN = ((0, 1), (1, 2))
"""Edges of a 3-joint chain 0 - 1 - 2."""


def tiny_head_config(**overrides) -> VPNConfig:
    """A small head (3 joints, 16 channels) that runs in milliseconds, in the paper's reading (the equation tests
    check the paper's equations; the departures from it are tested in test_fidelity.py)."""
    values = dict(num_classes=4, num_joints=3, edges=CHAIN, t_p=4, feature_channels=16, embed_dim=8,
                  attention_hidden=8, **PAPER_READING)
    values.update(overrides)
    return VPNConfig(**values)


def tiny_inputs(config: VPNConfig, n: int = 4, size: tuple[int, int] = (7, 7), seed: int = 0):
    """Seeded random ``(features, poses)`` of ``n`` clips shaped for ``config``."""
    g = torch.Generator().manual_seed(seed)
    features = torch.rand(n, config.feature_channels, config.feature_time, *size, generator=g)
    poses = torch.randn(n, 2, 3, config.num_joints, config.t_p, generator=g)
    return features, poses


def cricket_clip(n_frames: int | None = None) -> torch.Tensor:
    """CricketShot as (1, 3, T, 224, 224) float32 in [-1, 1], restored with the file's own LUT."""
    with np.load(shared_path("i3d", "cricketshot_rgb_u8.npz")) as npz:
        x = npz["lut_float32"][npz["frames"][:n_frames]]  # (T, 224, 224, 3)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2)[None]))  # (1, 3, T, 224, 224)
