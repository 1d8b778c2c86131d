"""``failures.csv`` and the failures stored in cache files: every skipped sample as ``sample_id, stage, reason``.

A bad sample is skipped and recorded, never fatal, never silent (docs/design.md, Data contracts).

A reason quotes what a file held, and a spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a
formula (CSV injection). The two CSV writers here (``append_failures``, ``write_failures``) prefix such a cell with
``'`` (``csv_safe``); the failures stored inside cache files keep the text as it was.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.cache.format import FAILURES, open_h5, strings
from pipeline.cache.layout import CacheError
from pipeline.contracts import FAILURE_COLUMNS
from pipeline.utils.fileio import atomic_write_csv


def failure_row(row: Sequence[Any]) -> tuple[str, str, str]:
    """``row`` as a checked ``(sample_id, stage, reason)`` of strings.

    Raises:
        ValueError: not three values, or an empty sample_id or stage.
    """
    if len(row) != len(FAILURE_COLUMNS):
        raise ValueError(f"a failure row needs {FAILURE_COLUMNS}, got {tuple(row)!r}")
    sample_id, stage, reason = (str(v) for v in row)
    if not sample_id or not stage:
        raise ValueError(f"a failure row needs a sample_id and a stage, got {tuple(row)!r}")
    return sample_id, stage, reason


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What a spreadsheet takes for the start of a formula (OWASP's CSV-injection list)."""


def csv_safe(cell: str) -> str:
    """``cell`` as a CSV cell no spreadsheet evaluates: ``'`` before a leading ``=``, ``+``, ``-``, ``@``, tab or CR."""
    return f"'{cell}" if cell.startswith(FORMULA_STARTS) else cell


def _csv_rows(rows: Iterable[Sequence[Any]]) -> list[tuple[str, ...]]:
    return [tuple(csv_safe(cell) for cell in failure_row(r)) for r in rows]


def append_failures(path: str | Path, rows: Sequence[Sequence[Any]]) -> None:
    """Append ``(sample_id, stage, reason)`` rows to a failures.csv, writing the header when it is new; each cell
    is ``csv_safe``.

    Safe with concurrent writers: one locked, O_APPEND write per call.
    """
    rows = _csv_rows(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if os.fstat(fd).st_size == 0:
            writer.writerow(FAILURE_COLUMNS)
        writer.writerows(rows)
        os.write(fd, buffer.getvalue().encode("utf-8"))
    finally:
        os.close(fd)


def write_failures(path: str | Path, rows: Iterable[Sequence[Any]]) -> None:
    """Replace ``path`` atomically with a failures.csv holding exactly ``rows`` (header only when none), each cell
    ``csv_safe``."""
    atomic_write_csv(path, FAILURE_COLUMNS, _csv_rows(rows))


def read_failures(path: str | Path) -> pd.DataFrame:
    """Read a failures.csv into a DataFrame of strings with columns ``FAILURE_COLUMNS``.

    Raises:
        CacheError: the file is missing or its header is not ``sample_id,stage,reason``.
    """
    path = Path(path)
    if not path.exists():
        raise CacheError(f"{path}: failures file does not exist")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if tuple(frame.columns) != FAILURE_COLUMNS:
        raise CacheError(f"{path}: header is {tuple(frame.columns)}, expected {FAILURE_COLUMNS}")
    return frame


def read_shard_failures(path: str | Path) -> pd.DataFrame:
    """The failures stored inside one shard (or merged) file, as ``read_failures`` returns them."""
    with open_h5(Path(path)) as f:
        if FAILURES not in f:
            raise CacheError(f"{path}: missing dataset {FAILURES}")
        values = strings(f[FAILURES]).reshape(-1, len(FAILURE_COLUMNS))
    return pd.DataFrame(values, columns=list(FAILURE_COLUMNS))
