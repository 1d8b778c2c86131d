"""Skeleton files in and out: opened safely, read into the one structure every dataset's reader returns.

``SkeletonClip`` is what a dataset's skeleton reader (``DatasetSpec.read_skeleton``) gives back, whatever the file
format: 3D joints for the pose network and image coordinates for the person crop, bodies in stable slots.

A skeleton reader is handed whatever sits under a dataset folder: a named pipe (opening it would block forever),
a symlink to ``/dev/zero`` (reading it never ends), a file far larger than any real skeleton. ``read_bounded``
opens without blocking, refuses anything but a regular file, and reads at most ``max_bytes`` (default
``MAX_SKELETON_BYTES``, set by the environment variable ``VPN_MAX_SKELETON_MB``), so a reader's memory and time
are bounded by a size the user chose.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.contracts import MAX_BODIES

MAX_SKELETON_BYTES = int(float(os.environ.get("VPN_MAX_SKELETON_MB", "64")) * 2**20)
"""Largest skeleton file read (real ones: NTU <= ~2 MB, N-UCLA JSON < 100 KB, Smarthome JSON a few MB)."""
MAX_FRAMES = 100_000
"""Largest frame count a skeleton may declare or hold (55 minutes at 30 fps; real clips have < 10,000)."""
FLOAT32_MAX = 3.4028234663852886e38

_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


class SkeletonFormatError(ValueError):
    """A skeleton file that does not follow its format; the message names the file and the line."""


@dataclass(frozen=True)
class SkeletonClip:
    """A sample's skeleton, bodies in stable slots.

    Attributes:
        joints3d: (T_s, 2, J, 3) float32, NaN where a body is absent.
        joints2d: (T_s, 2, J, 2) float32 pixel coordinates in the video frame, NaN where absent.
    """

    joints3d: np.ndarray
    joints2d: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.joints3d)


def pad_bodies(a: np.ndarray) -> np.ndarray:
    """(T, M, J, C) -> (T, 2, J, C), NaN-padded or truncated to ``MAX_BODIES``."""
    out = np.full((a.shape[0], MAX_BODIES) + a.shape[2:], np.nan, dtype=np.float32)
    out[:, : min(MAX_BODIES, a.shape[1])] = a[:, :MAX_BODIES]
    return out


def read_bounded(path: str | Path, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` bytes.

    Raises:
        SkeletonFormatError: not a regular file, or larger than ``max_bytes``.
        OSError: the file cannot be opened (missing, permission): the environment's problem, not the data's.
    """
    limit = MAX_SKELETON_BYTES if max_bytes is None else max_bytes
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens at once instead of blocking
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise SkeletonFormatError(f"{path}: is {kind}, not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise SkeletonFormatError(f"{path}: larger than the {limit / 2**20:.0f} MiB limit for a skeleton file "
                                  "(set VPN_MAX_SKELETON_MB to raise it)")
    return data


def load_json(path: str | Path) -> object:
    """Parse a bounded JSON file (``read_bounded``); every failure of its content is a ``SkeletonFormatError``."""
    try:
        return json.loads(read_bounded(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SkeletonFormatError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise SkeletonFormatError(f"{path}: JSON nested too deeply") from None
