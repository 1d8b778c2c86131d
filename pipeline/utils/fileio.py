"""Small file utilities every stage shares: atomic writes and sha256.

A file a reader may see is never half-written: writers fill a hidden temporary file beside the target and
``os.replace`` it onto the target, which is atomic on one filesystem. A crash leaves at most a stray
``.<name>.tmp-*`` file, which the next writer ignores.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HASH_BLOCK = 4 << 20
"""Bytes read at a time when hashing a file."""
TRANSIENT_ERRNOS: frozenset[int] = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE,
    errno.ENFILE, errno.EMFILE, errno.EFBIG,
})
"""``OSError`` numbers of a passing fault of the machine (full disk, I/O error, no memory, interrupted call, stale
NFS handle, too many open files), not of the data being read."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is a passing fault of the machine: ``MemoryError``,
    ``InterruptedError``, or an ``OSError`` of ``TRANSIENT_ERRNOS``. Such an error says nothing about a sample, so
    it is never recorded as the sample's fault; the next run retries it."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (MemoryError, InterruptedError)):
            return True
        if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False


def temp_path(path: str | os.PathLike) -> Path:
    """A hidden, unique temporary name beside ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is removed.

    The caller must have closed the file when the block ends (e.g. ``with h5py.File(tmp, "w")`` inside).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (fsynced before the rename unless ``fsync`` is False)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def atomic_write_csv(path: str | os.PathLike, header: Iterable[Any], rows: Iterable[Iterable[Any]]) -> None:
    """Write a CSV (``header`` then ``rows``, ``\\n`` line ends) to ``path`` atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes, read in ``HASH_BLOCK`` pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
