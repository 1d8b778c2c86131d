"""Progress output: a tqdm bar on a terminal, plain periodic log lines in a log file.

Every loop of the pipeline and the trainers that reports progress goes through ``show_progress``. It decides once,
from whether stderr (where tqdm draws and where the CLIs log) is a terminal:

- a TTY gets tqdm's bar, redrawn in place and removed when the loop ends;
- anything else (``make cache > build.log 2>&1``, a batch scheduler's log, a pipe) gets one ``logging`` line
  every ``every_s`` seconds and one at the end of a loop that ran that long (a short loop stays silent: its
  caller logs its result), e.g.
  ``INFO pipeline.utils.progress: merge: 12/40 shard (30%), 3.1 shard/s, 9 s elapsed, ETA 9 s, failed=0``,
  instead of thousands of carriage-return redraws that a log file keeps as one unreadable line.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)

T = TypeVar("T")
EVERY_S = 30.0
"""Seconds between two plain progress lines (non-TTY)."""


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """Iterates like tqdm and logs a plain line every ``every_s`` seconds, and when a loop that lasted at least
    ``every_s`` ends.

    Attributes:
        desc: the loop's label.
        total: items expected (None: unknown, no percentage or ETA).
        unit: what one item is.
        every_s: seconds between lines.
        postfix: the latest ``set_postfix`` values, appended to each line.
    """

    def __init__(self, iterable: Iterable[T], desc: str, total: int | None, unit: str, every_s: float):
        self.iterable = iterable
        self.desc = desc
        self.total = total
        self.unit = unit
        self.every_s = every_s
        self.postfix: dict[str, Any] = {}
        self.count = 0

    def __len__(self) -> int:
        return self.total if self.total is not None else len(self.iterable)  # type: ignore[arg-type]

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the next line (as tqdm's ``set_postfix``)."""
        self.postfix = values

    def line(self, elapsed: float) -> str:
        """The progress line after ``self.count`` items and ``elapsed`` seconds."""
        rate = self.count / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.count}/{self.total if self.total is not None else '?'} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.count / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"{elapsed:.0f} s elapsed")
        if self.total and rate > 0 and self.count < self.total:
            parts.append(f"ETA {(self.total - self.count) / rate:.0f} s")
        parts += [f"{key}={value}" for key, value in self.postfix.items()]
        return ", ".join(parts)

    def __iter__(self) -> Iterator[T]:
        start = last = time.monotonic()
        for item in self.iterable:
            yield item
            self.count += 1
            now = time.monotonic()
            if now - last >= self.every_s and (self.total is None or self.count < self.total):
                log.info("%s", self.line(now - start))
                last = now
        elapsed = time.monotonic() - start
        if elapsed >= self.every_s:
            log.info("%s", self.line(elapsed))


def show_progress(iterable: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it",
                  disable: bool = False, every_s: float | None = None, stream: TextIO | None = None
                  ) -> tqdm | LineProgress:
    """``iterable`` wrapped in the progress output this process should give.

    Args:
        iterable: the loop's items.
        desc: the loop's label.
        total: items expected (default ``len(iterable)`` when it has one).
        unit: what one item is (``video``, ``batch``, ...).
        disable: no output at all (e.g. ranks other than 0, or a caller's ``progress=False``).
        every_s: seconds between plain lines when ``stream`` is not a terminal (default ``EVERY_S``).
        stream: the stream that decides (default ``sys.stderr``).

    Returns:
        A tqdm bar (terminal, or disabled) or a ``LineProgress``; both iterate over ``iterable`` and take
        ``set_postfix``.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if disable or is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True,
                    disable=disable, file=stream)
    return LineProgress(iterable, desc, total, unit, EVERY_S if every_s is None else every_s)
