"""The build lock of a folder: one cache or crop-store build per folder at a time, released by the kernel when its
holder exits (``kill -9`` included); a ``pipeline.utils.lock.FolderLock`` on ``.build.lock``."""

from __future__ import annotations

from pathlib import Path

from pipeline.cache.layout import LOCK_NAME, CacheError
from pipeline.utils.lock import FolderLock


class CacheBusyError(CacheError):
    """Another process holds the cache folder's build lock."""


class BuildLock(FolderLock):
    """An exclusive, non-blocking ``flock`` on ``<cache_dir>/.build.lock``: one cache build per folder at a time.

    Raises:
        CacheBusyError: on ``__enter__``, when another process holds the lock.
    """

    def __init__(self, cache_dir: str | Path):
        super().__init__(Path(cache_dir) / LOCK_NAME)

    def busy(self, holder: str) -> Exception:
        return CacheBusyError(f"{self.path.parent} is being built by {holder}; wait for it to finish "
                              "(or use a luigid scheduler, SCHEDULER=host:port, to share the work)")
