"""Pixels for the end-to-end fine-tune: the cached clips re-decoded from the videos, and their sampler.

Every cache row holds its clip's 64 frame indices and person box, the manifest the video path (relative to
DATA_ROOT). ``PixelClips`` decodes, crops (``pipeline.video.crop``) and augments (``vpn_head.data.augment``) each clip in
the DataLoader workers. Its pixels (``pixels=``, ``PIXELS=``) come from the cache's person-crop store
(``pipeline.crops.store_build``, ``make crops``; an unreadable entry falls back with a logged line) when one exists and holds the run's box jitter (``auto``, the default, or
``store``), else from the source videos (``pipeline.video.reader.read_clip``; ``source``); boxes and jitter stay in
source pixels and are mapped into the store's frames, so both paths cut the same crops up to codec error. The poses are the cache's when the clip shows exactly
the cached frames, else they are recomputed from the skeleton file at the frames shown (``pipeline.datasets.poses``, as
the cache pipeline does). The frame count a video was sampled over is its largest cached frame index + 1, since
every sampling ends on the last frame. ``PixelVideos`` serves the paper's evaluation (K clips over the whole
person box); ``StepSampler`` deals whole optimizer steps to the ranks.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Mapping
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from pipeline.cache.reader import CacheError, open_cache
from pipeline.crops import store as crop_store
from pipeline.datasets.manifest import read_manifest, resolve_data_root
from pipeline.datasets.poses import align_frames, clip_poses, load_skeleton
from pipeline.i3d.spec import CLIP_FRAMES, CROP_SIZE
from pipeline.utils.per_process import PerProcess
from pipeline.video import crop
from pipeline.video import reader as video
from vpn_head.data.augment import AugmentConfig, clip_indices, crop_keep_aspect, flip_clip, flip_poses, jitter_box
from vpn_head.data.clips import CachedClips, video_groups
from vpn_head.runtime import DistContext

log = logging.getLogger(__name__)


def sample_paths(manifest: str | os.PathLike, data_root: str | os.PathLike = "") -> dict[str, tuple[Path, Path]]:
    """sample_id -> (video path, skeleton path), absolute, from a manifest.

    Args:
        manifest: manifest CSV.
        data_root: folder its paths are relative to; empty: the one recorded beside the manifest.

    Raises:
        FileNotFoundError: no manifest, or no DATA_ROOT given nor recorded.
    """
    df = read_manifest(manifest)
    root = resolve_data_root(manifest, data_root)
    return {sid: (root / v, root / s) for sid, v, s in zip(df["sample_id"], df["video_path"], df["skeleton_path"])}


class PixelClips(Dataset):
    """The cached clips of one protocol split, as pixels decoded from the videos.

    Items are ``(clip, poses, label, row)``: float32 ``(3, clip_len, crop, crop)`` RGB in [-1, 1], float32
    ``(2, 3, J, t_p)`` poses, the protocol label and the cache row. A key is an index, or ``(epoch, index)``
    from ``StepSampler``: with ``augment`` the augmentation draws from a generator seeded by
    ``(seed, epoch, index)``, so a clip's augmentation does not depend on workers, ranks or resumption.

    Attributes:
        spec: the dataset's registry entry.
        rows, labels, sample_ids, class_names: as ``vpn_head.data.clips.CachedClips``.
        frame_indices: (N, 64) cached frame indices of each row.
        boxes: (N, 4) cached person boxes.
        num_frames: sample_id -> frames the cache sampled the video over.
        t_p: poses per clip.
    """

    def __init__(self, cache: str | os.PathLike, protocol: str, split: str, dataset: str,
                 paths: Mapping[str, tuple[Path, Path]], clip_len: int = CLIP_FRAMES, crop_size: int = CROP_SIZE,
                 augment: AugmentConfig | None = None, seed: int = 0, carve_fraction: float = 0.0,
                 carve_seed: int = 0, pixels: str = "auto") -> None:
        """Index the split and check that its videos are where the manifest says (``carve_fraction`` and
        ``carve_seed``: the validation set carved from train by subject, as ``CachedClips``; ``pixels``: see the
        module docstring).

        Raises:
            CacheError: as ``CachedClips``; a sample missing from the manifest; ``pixels="store"`` without a
                store that holds the jitter (``pipeline.crops.store.StoreError``).
            ValueError: an unknown ``pixels``.
            FileNotFoundError: the first video of the split does not exist (wrong DATA_ROOT).
        """
        index = CachedClips(cache, protocol, split, dataset=dataset, carve_fraction=carve_fraction,
                            carve_seed=carve_seed)
        self.path, self.spec, self.split = index.path, index.spec, split
        self.rows, self.labels, self.sample_ids = index.rows, index.labels, index.sample_ids
        self.class_names = index.class_names
        with open_cache(self.path) as reader:
            self.frame_indices = reader.frame_indices[self.rows]  # (N, 64)
            self.boxes = reader.boxes[self.rows]  # (N, 4)
            self.t_p = int(reader.t_p)
            last: dict[str, int] = {}
            for sid, indices in zip(reader.sample_ids, reader.frame_indices):
                last[sid] = max(last.get(sid, 0), int(indices.max()))
            config = reader.attrs["config_json"]
        self.num_frames = {sid: n + 1 for sid, n in last.items()}
        self.backend = config.get("backend", video.DEFAULT_BACKEND)
        self.fallback = tuple(config.get("fallback", video.DEFAULT_FALLBACK))
        self._sample_of_row = dict(zip(self.rows.tolist(), self.sample_ids))
        missing = sorted(set(self.sample_ids) - set(paths))
        if missing:
            raise CacheError(f"{self.path}: {len(missing)} {split} samples are not in the manifest, e.g. "
                             f"{missing[0]}; give the manifest the cache was built from")
        self.paths = {sid: paths[sid] for sid in np.unique(self.sample_ids)}
        first_video = self.paths[self.sample_ids[0]][0]
        if not first_video.exists():
            raise FileNotFoundError(f"video {first_video} does not exist: wrong DATA_ROOT (--data-root) for "
                                    f"this manifest?")
        self.clip_len, self.crop_size = clip_len, crop_size
        self.augment, self.seed = augment, seed
        self._reader = PerProcess(functools.partial(open_cache, self.path))
        jitter = (augment.box_scale, augment.box_shift) if augment is not None else (0.0, 0.0)
        self.store = crop_store.select_store(self.path, pixels, *jitter)

    def __len__(self) -> int:
        return len(self.rows)

    def sample_ids_of(self, rows: np.ndarray) -> np.ndarray:
        """Sample ids of cache ``rows`` (as items report them), in the order given."""
        return np.array([self._sample_of_row[int(row)] for row in rows])

    def cached_poses(self, index: int) -> np.ndarray:
        """Poses of item ``index`` as cached, (2, 3, J, t_p); the reader opens lazily per process."""
        return self._reader.get().read_poses(int(self.rows[index]))

    def read_frames(self, sample_id: str, indices: np.ndarray) -> np.ndarray:
        """Decode frames ``indices`` of a sample's video: uint8 (len(indices), H, W, 3)."""
        path = self.paths[sample_id][0]
        frames, _ = video.read_clip(path, indices, video.backends_for(path, self.backend, self.fallback))
        return frames

    def read_pixels(self, sample_id: str, indices: np.ndarray) -> tuple[np.ndarray, crop_store.StoreView]:
        """Frames ``indices`` of a sample from the store when it holds them, else from the video.

        Returns:
            ``(frames, view)``: uint8 (len(indices), h, w, 3) RGB, and how they map to source pixels.
        """
        try:
            stored = self.store.read(sample_id, indices) if self.store is not None else None
        except crop_store.StoreError as err:
            log.warning("%s: reading the source video of %s", err, sample_id)
            stored = None
        if stored is not None:
            return stored
        frames = self.read_frames(sample_id, indices)  # (T, H, W, 3)
        return frames, crop_store.StoreView((frames.shape[2], frames.shape[1]))

    def poses_at(self, sample_id: str, indices: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
        """Poses of the clip showing video frames ``indices``, computed as the cache pipeline does.

        Args:
            sample_id: the sample.
            indices: (clip_len,) video frame indices.
            frame_size: (width, height) of the decoded video.

        Returns:
            float32 (2, 3, J, t_p).
        """
        skeleton = load_skeleton(self.spec, self.paths[sample_id][1], frame_size)
        skeleton_frames = align_frames(indices, self.num_frames[sample_id], skeleton.num_frames)
        return clip_poses(skeleton.joints3d[skeleton_frames], self.t_p, self.spec.centre_joint)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        aug = self.augment
        rng = np.random.default_rng([self.seed, epoch, index]) if aug is not None else None
        sample_id, cached = self.sample_ids[index], self.frame_indices[index]
        indices = clip_indices(cached, self.clip_len, rng if aug and aug.temporal_jitter else None)  # (clip_len,)
        frames, view = self.read_pixels(sample_id, indices)  # (T, h, w, 3)
        width, height = view.source_size
        box = self.boxes[index]
        if aug is not None and (aug.box_scale or aug.box_shift):
            box = jitter_box(box, width, height, rng, aug.box_scale, aug.box_shift)
        crops = crop.to_uint8_crops(frames, view.box(box), self.crop_size,
                                    area_from=view.area_from)  # (T, S, S, 3)
        if np.array_equal(indices, cached):
            poses = self.cached_poses(index)  # (2, 3, J, t_p)
        else:
            poses = self.poses_at(sample_id, indices, (width, height))  # (2, 3, J, t_p)
        if aug is not None and rng.random() < aug.flip_prob:
            crops, poses = flip_clip(crops), flip_poses(poses, self.spec.left_right)
        clip = torch.from_numpy(crop.normalize_crops(crops))  # (3, T, S, S)
        return clip, torch.from_numpy(poses.astype(np.float32)), int(self.labels[index]), int(self.rows[index])


class PixelVideos(Dataset):
    """The videos of a ``PixelClips`` split for the paper's evaluation: K clips over the whole person box.

    Items are ``(clips, poses, label, video)``: float32 ``(K, 3, clip_len, h, w)`` (short side
    ``short_side``), float32 ``(K, 2, 3, J, t_p)`` poses recomputed at each clip's frames, the label and the
    video's index. A video's box encloses the cached boxes of all its clips; its K windows are
    ``pipeline.video.reader.sample_frame_indices(num_frames, clip_len, K)``.
    """

    def __init__(self, clips: PixelClips, num_clips: int, short_side: int) -> None:
        self.clips, self.num_clips, self.short_side = clips, num_clips, short_side
        groups, self.video_ids = video_groups(clips.sample_ids)
        self.labels = np.zeros(len(self.video_ids), np.int64)
        self.labels[groups] = clips.labels
        boxes = [clips.boxes[groups == v] for v in range(len(self.video_ids))]  # each (clips of v, 4)
        self.boxes = np.stack([np.concatenate([b[:, :2].min(0), b[:, 2:].max(0)]) for b in boxes])  # (V, 4)

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        sample_id = self.video_ids[index]
        indices = video.sample_frame_indices(self.clips.num_frames[sample_id], self.clips.clip_len,
                                             self.num_clips)  # (K, clip_len)
        frames, view = self.clips.read_pixels(sample_id, indices.ravel())  # (K * clip_len, h, w, 3)
        width, height = view.source_size
        box = self.boxes[index]
        x0, y0, x1, y1 = crop.box_to_pixels(box, width, height)
        crops = crop_keep_aspect(frames, view.box(box), self.short_side,
                                 aspect_of=(x1 - x0, y1 - y0))  # (K * clip_len, h, w, 3)
        crops = crops.reshape(*indices.shape, *crops.shape[1:])  # (K, clip_len, h, w, 3)
        clips = np.stack([crop.normalize_crops(c) for c in crops])  # (K, 3, clip_len, h, w)
        poses = np.stack([self.clips.poses_at(sample_id, i, (width, height)) for i in indices])  # (K, 2, 3, J, t_p)
        return torch.from_numpy(clips), torch.from_numpy(poses), int(self.labels[index]), index


class StepSampler(DistributedSampler):
    """A ``DistributedSampler`` over whole optimizer steps that yields ``(epoch, index)`` keys.

    Every epoch one permutation of the dataset (seeded by ``seed + epoch``) is dealt to the ranks in turn; only
    its first ``floor(N / step_clips) * step_clips`` entries are used, so every step has ``step_clips`` clips and
    step k of any world size holds the permutation's entries ``[k * step_clips, (k + 1) * step_clips)``. The
    sampler's state is its epoch.
    """

    def __init__(self, dataset: Dataset, ctx: DistContext, step_clips: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
        steps = len(dataset) // step_clips
        if steps == 0:
            raise ValueError(f"the training split has {len(dataset)} clips, fewer than one step of {step_clips}")
        self.num_keys = steps * step_clips // ctx.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in islice(super().__iter__(), self.num_keys))

    def __len__(self) -> int:
        return self.num_keys
