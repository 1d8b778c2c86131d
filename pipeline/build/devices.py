"""Which GPU a cache shard runs on, so that the shards running at once on a multi-GPU machine use different GPUs.

Luigi gives its worker processes no index, so a shard takes its device itself when it starts: ``device_order`` lists
the GPUs it may use, starting at ``shard_index % device_count`` (shards started together spread over the GPUs), and
``claim_device`` holds an exclusive lock file on the first free one for as long as the shard runs (waiting for the
first choice when every GPU is taken). Locks live in the machine's temp folder, so they also keep two cache builds
on one machine apart, and machines sharing a central scheduler each share out only their own GPUs.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def default_lock_dir() -> Path:
    """Per-user folder of the device lock files."""
    return Path(tempfile.gettempdir()) / f"vpn-pipeline-device-locks-{os.getuid()}"


def device_order(device: str, shard_index: int, device_count: int) -> list[str]:
    """The devices a shard may run on, first choice first.

    Args:
        device: what the user asked for: ``cuda`` means any GPU of this machine; ``cuda:1``, ``cpu`` … are kept.
        shard_index: the shard's index.
        device_count: GPUs on this machine (``torch.cuda.device_count()``).

    Returns:
        For ``cuda`` with several GPUs every GPU, from ``cuda:{shard_index % device_count}`` on; else ``[device]``.
    """
    if device != "cuda" or device_count <= 1:
        return [device]
    first = shard_index % device_count
    return [f"cuda:{(first + k) % device_count}" for k in range(device_count)]


@contextmanager
def claim_device(device: str, shard_index: int, device_count: int, lock_dir: Path | None = None) -> Iterator[str]:
    """Hold one device of ``device_order`` for the ``with`` block: the first one no other process holds, else wait
    for the first choice. A single candidate is returned without locking.

    Yields:
        The device to run on (``cuda:k``, or ``device`` itself).
    """
    order = device_order(device, shard_index, device_count)
    if len(order) == 1:
        yield order[0]
        return
    folder = lock_dir or default_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name, wait in [*((name, False) for name in order), (order[0], True)]:
        fd = os.open(folder / f"{name.replace(':', '-')}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield name
        finally:
            os.close(fd)  # releases the lock
        return
