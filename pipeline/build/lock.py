"""The build lock of a folder: one cache or crop-store build per folder at a time, released by the kernel when its
holder exits (``kill -9`` included)."""

from __future__ import annotations

import fcntl
import os
import platform
from pathlib import Path

from pipeline.cache.layout import LOCK_NAME, CacheError
from pipeline.cache.provenance import utc_now


class CacheBusyError(CacheError):
    """Another process holds the cache folder's build lock."""


class BuildLock:
    """An exclusive, non-blocking ``flock`` on ``<cache_dir>/.build.lock``: one cache build per folder at a time.

    The kernel drops the lock when its holder exits, ``kill -9`` included, so a stale lock cannot outlive a run.
    The file holds the holder's host, pid and start time for the message a second run prints.

    Raises:
        CacheBusyError: on ``__enter__``, when another process holds the lock.
    """

    def __init__(self, cache_dir: str | Path):
        self.path = Path(cache_dir) / LOCK_NAME
        self._fd = -1

    def __enter__(self) -> BuildLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise CacheBusyError(f"{self.path.parent} is being built by {holder}; wait for it to finish "
                                 "(or use a luigid scheduler, SCHEDULER=host:port, to share the work)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {platform.node()} since {utc_now()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor releases the lock
        self._fd = -1
