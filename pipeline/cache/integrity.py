"""Integrity records of cache files: size, mtime and sha256 recorded when a file is written, checked on reruns.

Every finished cache file has ``<name>.integrity.json`` beside it (``record_integrity``). ``check_integrity`` is a
rerun's cheap check and, with ``full=True``, ``make verify``'s (``python -m pipeline.tools.verify_cache PATH``), which
also reads every chunk so that HDF5 verifies its Fletcher-32 checksums.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.cache.format import VIRTUAL_DATASETS, open_h5
from pipeline.cache.layout import CacheError, integrity_path
from pipeline.utils.fileio import atomic_write_text, file_sha256

log = logging.getLogger(__name__)


def record_integrity(written: str | Path, final: str | Path) -> None:
    """Record the size, modification time and sha256 of ``written`` as those of ``final`` (the same bytes, before
    a rename onto ``final``), atomically."""
    written, final = Path(written), Path(final)
    stat = written.stat()
    _write_record(final, {"file": final.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                          "sha256": file_sha256(written)})


def _write_record(final: Path, record: dict[str, Any]) -> None:
    atomic_write_text(integrity_path(final), json.dumps(record, sort_keys=True) + "\n")


def check_integrity(path: str | Path, *, full: bool = False, adopt_legacy: bool = False) -> str:
    """Check a cache file against its integrity record; return "" when it matches, else what is wrong.

    Cheap check (``full=False``, what a rerun of ``make cache`` does): the size must match the record, and the
    sha256 is recomputed only when the modification time differs from the record (a file changed by a program;
    a file copied without its times is hashed once and its record updated). Full check (``make verify``): the
    sha256 always, then every chunk of every dataset is read, so HDF5 verifies its Fletcher-32 checksums, and
    features and poses must be finite. ``adopt_legacy`` (what a rerun does): a file without a record, written by
    a version before integrity records (its shards were renamed into place only when complete), is read back
    whole once and recorded when every chunk reads and every value is finite, instead of being rebuilt.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        record = json.loads(integrity_path(path).read_text(encoding="utf-8"))
        size, mtime_ns, sha256 = int(record["bytes"]), int(record["mtime_ns"]), str(record["sha256"])
    except FileNotFoundError:
        if adopt_legacy:  # a finished file from before integrity records: read it all once, then record it
            problem = read_every_chunk(path)
            if problem:
                return f"no integrity record and a full read fails: {problem}"
            record_integrity(path, path)
            log.warning("%s predates integrity records: read back whole, recorded as it is", path)
            return ""
        return f"no integrity record {integrity_path(path).name} (written before checksums, or interrupted)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable integrity record {integrity_path(path).name} ({type(err).__name__}: {err})"
    stat = path.stat()
    if stat.st_size != size:
        return f"{stat.st_size} bytes, {size} recorded (truncated or overwritten)"
    if full or stat.st_mtime_ns != mtime_ns:
        if file_sha256(path) != sha256:
            return "sha256 differs from the one recorded when it was written (bytes changed)"
        if stat.st_mtime_ns != mtime_ns:  # same bytes with a new time (a copy): hash once, not on every run
            try:
                _write_record(path, {**record, "mtime_ns": stat.st_mtime_ns})
            except OSError as err:  # a read-only copy (make verify of a backup): checked all the same
                log.info("%s: record not updated (%s); it is checked by its sha256 each time", path,
                         err.strerror or err)
    return read_every_chunk(path) if full else ""


def read_every_chunk(path: Path) -> str:
    """Read every stored chunk of every dataset (virtual ones are their shards' business); "" or the problem."""
    problems: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if problems or not isinstance(obj, h5py.Dataset) or obj.is_virtual or obj.size == 0:
            return
        for chunk in (obj.iter_chunks() if obj.chunks else [()]):
            try:
                values = obj[chunk]
            except OSError as err:
                problems.append(f"dataset {name}, chunk {chunk}: {err}")
                return
            if name in VIRTUAL_DATASETS and not np.isfinite(values).all():
                problems.append(f"dataset {name}, chunk {chunk}: non-finite values")
                return

    try:
        with open_h5(path) as f:
            f.visititems(visit)
    except (CacheError, OSError) as err:
        return str(err)
    return "; ".join(problems)
