"""A handle opened lazily in the process that uses it: the one pattern for HDF5 files and cache readers that
DataLoader workers share.

An h5py file handle must not cross a ``fork``: a worker that inherits its parent's handle reads through the
parent's HDF5 state. ``PerProcess`` opens its resource on first use in each process (it compares
``os.getpid()``), closes it only in the process that opened it, and is pickled without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """A resource (``open_fn()``) opened once per process, on first ``get()``.

    Args:
        open_fn: opens the resource; must itself be picklable when the holder is (a module-level function or a
            ``functools.partial`` of one).
        close_fn: closes it (default: its ``close()`` method).
    """

    def __init__(self, open_fn: Callable[[], T], close_fn: Callable[[T], None] | None = None) -> None:
        self._open_fn = open_fn
        self._close_fn = close_fn
        self._value: T | None = None
        self._pid = -1

    def get(self) -> T:
        """This process's resource, opened now when this process has none yet."""
        if self._value is None or self._pid != os.getpid():
            self._value = self._open_fn()
            self._pid = os.getpid()
        return self._value

    @property
    def is_open(self) -> bool:
        """Whether this process holds the resource."""
        return self._value is not None and self._pid == os.getpid()

    def close(self) -> None:
        """Close the resource if this process opened it; another process's copy is only forgotten."""
        if self.is_open:
            (self._close_fn or type(self._value).close)(self._value)
        self._value, self._pid = None, -1

    def __getstate__(self) -> dict[str, Any]:
        return {"_open_fn": self._open_fn, "_close_fn": self._close_fn, "_value": None, "_pid": -1}
