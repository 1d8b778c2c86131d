"""``FolderLock``: one holder per folder at a time, an ``flock`` the kernel releases when its holder exits (``kill -9``
included); the cache build and the training runs both lock this way."""

from __future__ import annotations

import fcntl
import os
import platform
from datetime import datetime, timezone
from pathlib import Path


class FolderBusyError(RuntimeError):
    """Another process holds the lock."""


class FolderLock:
    """An exclusive, non-blocking ``flock`` on ``path`` (a lock file), held for the ``with`` block.

    The kernel drops the lock when its holder exits, ``kill -9`` included, so a stale lock cannot outlive its
    holder. The file holds the holder's host, pid and start time for the message a second process prints.
    Subclasses give that message (``busy``).

    Raises:
        FolderBusyError (or what ``busy`` returns): on ``__enter__``, when another process holds the lock.
        OSError: the lock file cannot be created (a read-only folder).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd = -1

    def busy(self, holder: str) -> Exception:
        """The error a second process raises, given the holder's line (``pid 12 on host since ...``)."""
        return FolderBusyError(f"{self.path} is held by {holder}")

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise self.busy(holder) from None
        os.ftruncate(fd, 0)
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on {platform.node()} since {since}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd < 0:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass  # a full or read-only disk must not hide the error that ends the block
        finally:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = -1
