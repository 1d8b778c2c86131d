"""The cached clips as a PyTorch dataset, for one protocol and split.

Each cache row is one clip (a video with several clips has consecutive rows with the same ``sample_id``).
``CachedClips`` keeps only the rows of the requested split whose action belongs to the protocol, relabels
them with the protocol's 0-based labels, and reads one row (one HDF5 chunk) per item. The HDF5 file is
opened lazily in the process that reads it, so no h5py handle crosses a DataLoader fork.
``in_memory=True`` loads the split once (features kept as float16) when it fits in the available RAM.

Features are read as stored (float16) and cast by torch, which is faster than numpy's cast; with
``feature_dtype=torch.float16`` the cast is left to the consumer, which halves the bytes a DataLoader worker
hands over and a GPU copy moves (the trainer casts on its device; see ``bench/bench_head.py``).
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.cache import layout
from pipeline.cache.reader import CacheError, CacheReader, open_cache
from pipeline.contracts import MAX_BODIES
from pipeline.crops.joints import read_crop_joints
from pipeline.datasets.registry import DatasetSpec, get_dataset, protocol_label
from pipeline.utils.per_process import PerProcess
from vpn_head.data.splits import CARVED_VAL, carve_validation

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test", CARVED_VAL)
"""``val_carved`` is the validation set carved from ``train`` by subject (see ``vpn_head.data.splits``)."""
MEMORY_HEADROOM = 0.8
"""``in_memory`` loads a split only when it needs at most this fraction of the available RAM."""
LOAD_BLOCK_ROWS = 64
"""Rows read per HDF5 call while loading a split into memory."""


class EmptySplitError(CacheError):
    """The requested split has no rows of the protocol's classes."""


def resolve_cache(path: str | os.PathLike, dataset: str) -> Path:
    """Find the cache to read, by the lookup order of ``pipeline.cache.layout`` (one rule for every reader).

    Args:
        path: a ``.h5`` file, a cache directory holding ``cache.h5``, or a cache root (``cache/``) holding
            ``<dataset>/<config-hash>/cache.h5`` (its ``LATEST`` first, else its only cache).
        dataset: registry name, used to look under a cache root.

    Returns:
        The path to pass to ``open_cache``.

    Raises:
        CacheError: nothing found, ``LATEST`` names a folder without ``cache.h5``, or several caches under a
            root and no ``LATEST`` pointer (the error lists them).
    """
    return layout.resolve(path, dataset)


def video_groups(sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map rows (clips) to videos, for pooling clip scores into one score per video.

    Args:
        sample_ids: (N,) sample id of each row.

    Returns:
        ``(group, video_ids)``: (N,) int64 video index of each row, numbered in order of first appearance,
        and (V,) the sample id of each video.
    """
    video_ids, first, group = np.unique(np.asarray(sample_ids), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # videos in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[group.reshape(-1)].astype(np.int64), video_ids[order]


def available_memory_bytes() -> int:
    """RAM the kernel says a new allocation can use (``MemAvailable``), or free pages where that is absent."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def selection_split(cache: str | os.PathLike, protocol: str, dataset: str, requested: str = "auto") -> str:
    """The split that chooses a run's ``best.pt``: ``requested``, or for ``auto`` the protocol's ``val`` split when
    the cache has one (Smarthome), else ``val_carved`` (training subjects held out; never the test split)."""
    if requested != "auto":
        return requested
    try:
        CachedClips(cache, protocol, "val", dataset=dataset)  # indexes the split only; loads nothing
        return "val"
    except EmptySplitError:
        return CARVED_VAL


class CachedClips(Dataset):
    """The clips of one protocol split of a feature cache.

    Items are ``(features, poses, label, row)``: ``(C, T, H, W)`` features as ``feature_dtype``, float32
    ``(2, 3, J, t_p)`` poses, the protocol's 0-based label and the cache row index.

    Attributes:
        path: the cache path given to ``open_cache``.
        spec: the dataset's registry entry.
        protocol: the protocol name.
        split: ``train``, ``val`` or ``test``.
        rows: (N,) int64 cache rows of the split, ascending.
        labels: (N,) int64 protocol labels of those rows.
        sample_ids: (N,) sample id of each row.
        class_names: the protocol's class list.
        feature_shape: per-row feature shape.
        pose_shape: per-row pose shape.
        in_memory: whether the split was loaded into RAM.
        feature_dtype: dtype of the features handed out.
        held_out_subjects: subjects carved out of ``train`` (empty when nothing is carved).
    """

    def __init__(self, path: str | os.PathLike, protocol: str, split: str, in_memory: bool = False,
                 dataset: str | None = None, feature_dtype: torch.dtype = torch.float32,
                 carve_fraction: float = 0.0, carve_seed: int = 0, crop_joints: bool = False) -> None:
        """Index the split (and load it when ``in_memory`` and it fits).

        Args:
            path: cache directory (with ``cache.h5``) or ``.h5`` file.
            protocol: protocol of the cache's dataset (``cs``, ``cv``, ``cv1``, ...).
            split: ``train``, ``val`` or ``test``.
            in_memory: load the whole split into RAM once, if it fits.
            dataset: expected dataset name; a cache of another dataset is an error.
            feature_dtype: ``torch.float32`` (default) or ``torch.float16`` (as stored).
            carve_fraction: with ``split="train"`` and a value > 0, leave out the training clips of this share
                of the training subjects; ``split="val_carved"`` returns exactly those clips.
            carve_seed: chooses the carved subjects.
            crop_joints: append each clip's crop joints (``pipeline.crops.joints``, the cache folder's side file)
                to its poses as channels 3-4, (2, 5, J, t_p): the input of ``spatial_attention="joints"``. The
                pose-shuffle diagnostic then moves them with the 3D poses, as the pose they are part of.

        Raises:
            CacheError: missing or unreadable cache, wrong dataset, unknown protocol or split, empty split, or a
                cache built for another protocol only (``CacheConfig.protocol``).
        """
        if split not in SPLITS:
            raise CacheError(f"unknown split {split!r}; choose one of {SPLITS}")
        if feature_dtype not in (torch.float32, torch.float16):
            raise ValueError(f"feature_dtype must be torch.float32 or torch.float16, got {feature_dtype}")
        self.feature_dtype = feature_dtype
        self.path = Path(path)
        self.protocol = protocol
        self.split = split
        self._reader: PerProcess[CacheReader] = PerProcess(partial(open_cache, self.path))
        self._features: np.ndarray | None = None
        self._poses: np.ndarray | None = None
        with open_cache(self.path) as reader:
            config = reader.attrs["config_json"]
            name = config.get("dataset") if isinstance(config, dict) else None
            if not isinstance(name, str):
                raise CacheError(f"{self.path}: its config_json attr names no dataset")
            if dataset is not None and name != dataset:
                raise CacheError(f"{self.path} is a {name!r} cache, not {dataset!r}")
            self.spec: DatasetSpec = get_dataset(name)
            if protocol not in self.spec.protocols:
                raise CacheError(f"{name} has no protocol {protocol!r}; choose one of {sorted(self.spec.protocols)}")
            built = config.get("protocol") or ""
            if built and built != protocol:  # it holds the samples of `built` only: a subset of `protocol`'s
                raise CacheError(f"{self.path} was built for {name} protocol {built!r} only (PROTOCOL={built} at "
                                 f"make cache), so it holds a subset of {protocol!r}'s samples; build a cache with "
                                 f"PROTOCOL={protocol} or PROTOCOL= (every sample)")
            self.class_names = self.spec.protocol_classes(protocol)
            splits = np.asarray(reader.splits(protocol)).astype(str)
            labels = self._protocol_labels(np.asarray(reader.actions).astype(str))
            all_ids = np.asarray(reader.sample_ids).astype(str)
            keep = (splits == ("train" if split == CARVED_VAL else split)) & (labels >= 0)
            self.held_out_subjects = np.zeros(0, dtype=np.int64)
            if split == CARVED_VAL or (split == "train" and carve_fraction > 0):
                if split == CARVED_VAL and carve_fraction <= 0:
                    raise CacheError(f"split {CARVED_VAL!r} needs carve_fraction > 0")
                is_val, self.held_out_subjects = carve_validation(name, all_ids[keep], carve_fraction, carve_seed)
                keep[np.flatnonzero(keep)[is_val if split == "train" else ~is_val]] = False
            if not keep.any():
                in_split = int((splits == split).sum())
                why = (f"none of its {in_split} rows has a {protocol} class" if in_split
                       else f"no row is marked {split!r} for {protocol}")
                raise EmptySplitError(f"{self.path}: split {split!r} of {name}/{protocol} is empty ({why})")
            self.rows = np.flatnonzero(keep).astype(np.int64)
            self.labels = labels[keep]
            self.sample_ids = all_ids[keep]
            self.feature_shape = reader.feature_shape
            self.pose_shape = (MAX_BODIES, 5 if crop_joints else 3, reader.num_joints, reader.t_p)
            self._crop_joints = (read_crop_joints(self.path, reader.sample_ids, reader.frame_indices,
                                                  reader.boxes)[self.rows] if crop_joints else None)
            self.in_memory = in_memory and self._fits_in_memory()
            if self.in_memory:
                self._load(reader)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def sample_ids_of(self, rows: np.ndarray) -> np.ndarray:
        """Sample ids of cache ``rows`` (as items report them), in the order given."""
        return self.sample_ids[np.searchsorted(self.rows, rows)]

    def _protocol_labels(self, actions: np.ndarray) -> np.ndarray:
        lookup = {a: protocol_label(self.spec, self.protocol, a) for a in np.unique(actions)}
        return np.array([lookup[a] for a in actions], dtype=np.int64)

    def _row_bytes(self) -> int:
        return 2 * int(np.prod(self.feature_shape)) + 4 * int(np.prod(self.pose_shape))

    def _fits_in_memory(self) -> bool:
        need, have = len(self) * self._row_bytes(), available_memory_bytes()
        gib = 2.0 ** 30
        if need > MEMORY_HEADROOM * have:
            log.warning("in_memory: %s split needs %.2f GiB but only %.2f GiB RAM is available; "
                        "reading from disk instead", self.split, need / gib, have / gib)
            return False
        log.info("in_memory: loading %d %s clips (%.2f GiB of %.2f GiB available)",
                 len(self), self.split, need / gib, have / gib)
        return True

    def _load(self, reader: CacheReader) -> None:
        self._features = np.empty((len(self), *self.feature_shape), dtype=np.float16)
        self._poses = np.empty((len(self), *self.pose_shape), dtype=np.float32)
        for start in range(0, len(self), LOAD_BLOCK_ROWS):
            block = reader.read_rows(self.rows[start:start + LOAD_BLOCK_ROWS], dtype=np.float16)
            self._features[start:start + LOAD_BLOCK_ROWS] = block["features"]
            self._poses[start:start + LOAD_BLOCK_ROWS, :, :3] = block["poses"]
        if self._crop_joints is not None:
            self._poses[:, :, 3:] = self._crop_joints

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        row = int(self.rows[index])
        if self._features is not None:  # copies: a caller never writes into the loaded split
            features, poses = self._features[index].copy(), self._poses[index].copy()
        else:
            reader = self._reader.get()  # this process's reader (a forked worker opens its own)
            features, poses = reader.read_features(row, dtype=np.float16), reader.read_poses(row)
            if self._crop_joints is not None:
                poses = np.concatenate([poses, self._crop_joints[index]], axis=1)  # (2, 5, J, t_p)
        features = torch.from_numpy(features).to(self.feature_dtype)  # (C, T, H, W)
        return features, torch.from_numpy(poses), int(self.labels[index]), row

    def close(self) -> None:
        """Close this process's HDF5 handle (a later item reopens it)."""
        self._reader.close()
