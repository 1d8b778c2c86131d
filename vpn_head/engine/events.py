"""A run's event log, ``runs/<name>/events.jsonl``: one JSON object per line, beside ``metrics.json``.

The training engine writes it for both trainers (rank 0 only):

- ``{"event": "run_start", "time", "kind", "run", "start_epoch", "epochs", "config"}`` when ``fit`` starts (a
  resumed run adds one more, with its ``start_epoch``);
- ``{"event": "epoch", "time", <every train_log.csv column>}`` after each epoch, once the epoch's checkpoint is
  on disk (NaN and infinities become ``null``, so every line is strict JSON);
- ``{"event": "run_end", "time", "status", "epochs_done", "best_epoch", "best_value", "error"}`` when ``fit``
  returns (``status`` ``complete`` or ``stopped`` short of the asked epochs) or raises (``failed``,
  ``interrupted``; ``error`` names the exception).

Opening the log reconciles it with the checkpoint it resumes from, so each epoch appears exactly once: epoch
records the checkpoint does not hold (``last.pt`` replaced by an older copy) and repeated epochs are dropped,
epochs the checkpoint holds but the log lacks (a process killed between writing ``last.pt`` and the log line)
are added from its history, marked ``recovered_from_checkpoint``, and a torn line is dropped.

Every epoch record is mirrored as TensorBoard scalars (``vpn_head.engine.board``) when the package is installed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.utils.fileio import atomic_write_text
from vpn_head.engine.board import ScalarBoard

log = logging.getLogger(__name__)

EVENTS_NAME = "events.jsonl"


def _strict(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and non-finite floats as None (strict JSON)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """The records of an event log; lines that are not JSON objects (a torn last line) are skipped with a warning.

    Raises:
        OSError: the file cannot be read.
    """
    return _parse(Path(path))[0]


def _parse(path: Path) -> tuple[list[dict[str, Any]], int]:
    """``(records, lines skipped)`` of an event log."""
    events, skipped = [], 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            events.append(record)
        else:
            skipped += 1
            log.warning("%s line %d is not a JSON object: dropped", path, number)
    return events, skipped


class EventLog:
    """Appends the records of one run to ``<run_dir>/events.jsonl``.

    Args:
        run_dir: the run folder.
        columns: the ``train_log.csv`` columns an epoch record carries.
        history: the epoch rows the run's checkpoint holds (``Progress.history``), to reconcile the log with.
    """

    def __init__(self, run_dir: Path, columns: Sequence[str], history: Iterable[Mapping[str, Any]]):
        self.path = Path(run_dir) / EVENTS_NAME
        self.columns = tuple(columns)
        self.board = ScalarBoard(run_dir)
        history = list(history)
        done = {row["epoch"] for row in history}
        events, skipped = _parse(self.path) if self.path.exists() else ([], 0)
        kept, seen = [], set()
        for record in events:
            if record.get("event") == "epoch":
                epoch = record.get("epoch")
                if epoch not in done or epoch in seen:  # past the checkpoint, or a repeat
                    continue
                seen.add(epoch)
            kept.append(record)
        dropped = len(events) + skipped - len(kept)
        added = [self.epoch_record(row, recovered=True) for row in history if row["epoch"] not in seen]
        if dropped or added:
            kept += added
            atomic_write_text(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
            log.warning("%s: reconciled with the checkpoint's %d epoch(s): %d line(s) dropped, %d epoch(s) added",
                        self.path, len(history), dropped, len(added))

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as a line (flushed, so a log follower sees it at once)."""
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(_strict(record), allow_nan=False) + "\n")
            handle.flush()

    def epoch_record(self, row: Mapping[str, Any], recovered: bool = False) -> dict[str, Any]:
        """The ``epoch`` record of a ``train_log.csv`` row: every column (missing ones ``null``)."""
        record = {"event": "epoch", "time": _now(), **{c: row.get(c, math.nan) for c in self.columns}}
        if recovered:
            record["recovered_from_checkpoint"] = True
        return _strict(record)

    def run_start(self, kind: str, run: str, start_epoch: int, epochs: int, config: Mapping[str, Any]) -> None:
        """Record that training (re)starts after ``start_epoch`` finished epochs."""
        self.append({"event": "run_start", "time": _now(), "kind": kind, "run": run, "start_epoch": start_epoch,
                     "epochs": epochs, "config": config})

    def epoch(self, row: Mapping[str, Any]) -> None:
        """Record a finished epoch (and its TensorBoard scalars)."""
        self.append(self.epoch_record(row))
        self.board.epoch(row)

    def run_end(self, status: str, epochs_done: int, best_epoch: int, best_value: float, error: str = "") -> None:
        """Record how ``fit`` ended (and close the TensorBoard writer)."""
        self.board.close()
        self.append({"event": "run_end", "time": _now(), "status": status, "epochs_done": epochs_done,
                     "best_epoch": best_epoch, "best_value": best_value, "error": error})
