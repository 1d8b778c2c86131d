"""Which source files a shard was built from, and whether they changed since: size and mtime per input.

A shard's content depends on its samples' videos and skeletons, but its folder name (the ``CacheConfig`` hash)
covers only the manifest and the settings: replacing a video and its skeleton in place leaves the same manifest,
so a rerun would find the shard complete and keep the old features. So every shard records, in its
``inputs_json`` attr, the absolute path, byte size and modification time (ns) of each sample's video and skeleton,
taken before they are read (a file changed during the build also counts as changed). ``shard_changes`` compares
them with the files on disk now: a rerun of ``make cache`` / ``make resume`` names the shards whose inputs
changed (``REBUILD_CHANGED=1`` rebuilds them), and ``make verify`` reports them.

Size and mtime are what ``make``/``rsync`` trust too: a copy that keeps times (``cp -p``, ``rsync -t``) counts as
unchanged, one that does not counts as changed (and so does a file rewritten with the same bytes: no content hash
is kept, since hashing every video on every rerun would cost minutes per 100 GB). A frame folder counts by its own
size and mtime: frames added or removed show, a frame rewritten in place does not. A file that cannot be reached
now is not a change (the data may live on another machine than the cache); shards written before this record
have none and are not checked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from pipeline.cache.format import attr_str, open_h5

INPUTS_ATTR = "inputs_json"
"""The shard attr holding ``{sample_id: {"video": [path, bytes, mtime_ns], "skeleton": [...]}}``."""
INPUT_COLUMNS = {"video": "video_path", "skeleton": "skeleton_path"}
"""Each input's name in the record -> its manifest column."""
MISSING = None
"""The record of an input that did not exist when the shard was built."""


def file_stat(path: Path) -> list[int] | None:
    """``[bytes, mtime_ns]`` of ``path``, or ``MISSING`` when it cannot be reached."""
    try:
        info = path.stat()
    except OSError:
        return MISSING
    return [info.st_size, info.st_mtime_ns]


def inputs_record(paths: Mapping[str, Mapping[str, Path]]) -> str:
    """The ``inputs_json`` attr of a shard whose samples read ``paths`` (sample id -> input name -> file)."""
    record = {sample_id: {name: [os.path.abspath(path), *(file_stat(path) or [MISSING, MISSING])]
                          for name, path in inputs.items()}
              for sample_id, inputs in paths.items()}
    return json.dumps(record, sort_keys=True)


def changed_inputs(record_json: str) -> list[str]:
    """The inputs of an ``inputs_json`` record that differ now: ``"<sample> <input> <path>: <what changed>"``."""
    changed = []
    for sample_id, inputs in sorted(json.loads(record_json).items()):
        for name, (path, size, mtime_ns) in sorted(inputs.items()):
            now = file_stat(Path(path))
            if now is MISSING:
                continue  # unreachable here is not a change (the data may be on another machine)
            if size is MISSING:
                changed.append(f"{sample_id} {name} {path}: appeared after the build")
            elif now[0] != size:
                changed.append(f"{sample_id} {name} {path}: {now[0]} bytes, {size} when built")
            elif now[1] != mtime_ns:
                changed.append(f"{sample_id} {name} {path}: modified after the build")
    return changed


def shard_changes(path: Path) -> list[str]:
    """The changed inputs of shard ``path`` (``changed_inputs``; none when it has no record).

    Raises:
        CacheError: the shard does not open (see ``open_h5``).
    """
    with open_h5(path) as f:
        record = f.attrs.get(INPUTS_ATTR)
    return changed_inputs(attr_str(record)) if record is not None else []


def describe(changes: list[str]) -> str:
    """One line: how many inputs of a shard changed, with the first."""
    more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
    return f"{len(changes)} input file(s) changed since it was built: {changes[0]}{more}"
