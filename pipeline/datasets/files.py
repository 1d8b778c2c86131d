"""Finding a dataset's sample files under DATA_ROOT: the folder walk, pairing files by sample, the scan report.

Each dataset module says which files make a sample (``DatasetSpec.find_samples``); this module holds what every
such scanner shares. The walk follows symlinked folders that stay inside DATA_ROOT (each real folder once, so a
loop ends) and notes what it could not read or did not follow; nothing is dropped silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".webm")
"""Video files a scanner pairs with skeletons (any case)."""

SampleFiles = dict[str, Path]
"""The files of one sample: ``{"video": path, "skeleton": path}``, either may be absent."""


@dataclass
class ScanReport:
    """What a scan saw besides the samples: unparseable names, files outside the dataset, duplicates, folders
    it could not read or did not follow, and names in an unexpected case (all as escaped, printable text)."""

    unparsed: list[str] = field(default_factory=list)
    outside_dataset: int = 0
    duplicates: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    not_followed: list[str] = field(default_factory=list)
    wrong_case: list[str] = field(default_factory=list)


def printable(text: str) -> str:
    """``text`` with bytes that are not UTF-8 (as os gives them: surrogate escapes) written as ``\\xNN``."""
    return os.fsencode(text).decode("utf-8", errors="backslashreplace")


def relative(path: Path | None, root: Path) -> str:
    """``path`` relative to ``root`` as printable POSIX text ('' for None)."""
    return "" if path is None else printable(path.relative_to(root).as_posix())


def real_path(path: Path) -> Path | None:
    """``path.resolve()``, or None for a symlink loop (``resolve`` raises RuntimeError for one on Python < 3.13,
    OSError on later ones): a loop is reported, never a traceback."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return None


def walk(root: Path, report: ScanReport) -> Iterator[Path]:
    """Every file under ``root`` (sorted), following symlinked folders that stay inside it, each real folder once."""
    seen: set[tuple[int, int]] = set()

    def unreadable(err: OSError) -> None:
        report.unreadable.append(f"{printable(relative(Path(err.filename), root))} ({err.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        here = Path(dirpath)
        try:
            info = os.stat(here)
        except OSError:
            dirnames[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:  # reached again through a symlink: a loop or a second link
            report.not_followed.append(f"{printable(relative(here, root))} (a folder already scanned: symlink loop?)")
            dirnames[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        keep = []
        for name in sorted(dirnames):
            sub = here / name
            real = real_path(sub) if sub.is_symlink() else sub
            if real is None:
                report.not_followed.append(f"{printable(relative(sub, root))} (a symlink loop)")
                continue
            if not real.is_relative_to(root):
                report.not_followed.append(f"{printable(relative(sub, root))} -> {printable(str(real))} "
                                           "(outside DATA_ROOT)")
                continue
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            yield here / name


def add_file(found: dict[str, SampleFiles], key: str, kind: str, path: Path, report: ScanReport) -> None:
    """Record ``path`` as the ``kind`` file of sample ``key``; a second one is reported as a duplicate and ignored."""
    slot = found.setdefault(key, {})
    if kind in slot:
        report.duplicates.append(f"{key}: second {kind} {path} ignored (kept {slot[kind]})")
        return
    slot[kind] = path


def pair_files(root: Path, report: ScanReport, kind_of: Callable[[Path], str | None],
               sample_of: Callable[[Path], str | None]) -> dict[str, SampleFiles]:
    """Walk ``root`` and pair each sample's files by sample id.

    Args:
        root: the resolved DATA_ROOT.
        report: collects what is skipped.
        kind_of: ``"video"`` or ``"skeleton"`` for a file of a sample, ``"wrong_case"`` for one whose suffix has an
            unexpected case (reported, skipped), ``None`` for a file to ignore.
        sample_of: the sample id a file belongs to, ``None`` for a valid id outside this dataset (counted);
            raises ValueError for a name that does not parse (reported).

    Returns:
        sample id -> its files.
    """
    found: dict[str, SampleFiles] = {}
    for path in walk(root, report):
        kind = kind_of(path)
        if kind == "wrong_case":
            report.wrong_case.append(relative(path, root))
        if kind not in ("video", "skeleton"):
            continue
        try:
            key = sample_of(path)
        except ValueError:
            report.unparsed.append(relative(path, root))
            continue
        if key is None:
            report.outside_dataset += 1
            continue
        add_file(found, key, kind, path, report)
    return found
