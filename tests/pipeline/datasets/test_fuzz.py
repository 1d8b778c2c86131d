"""Property-based fuzzing of the four skeleton readers over mutations of the real sample files.

Each case takes a real file (NTU ``.skeleton``; N-UCLA all_sqe JSON; an N-UCLA raw per-frame text built from a real
JSON's frame; a Smarthome LCR-Net JSON built from a window of the real SSTA-PRS Smarthome poses, since no genuine
Smarthome JSON is public), applies a few byte-level mutations (bit flips, insertions, deletions, truncation,
hostile tokens such as ``1e39``, ``-5``, ``nan``, ``null``, ``[[[[``) or, for JSON, replaces any value of the
parsed document with an arbitrary JSON value, and reads it. The property: the reader returns, or raises the
project's ``SkeletonFormatError``; nothing else, under an address-space bound of ``MEMORY_HEADROOM`` above the
process's size and a per-case time bound of ``CASE_SECONDS``.

The default run is small (``FAST_EXAMPLES`` per reader), derandomised and part of ``make test``. The long run is
marked ``slow`` and ``fuzz``; ``fuzz`` is excluded by default (pyproject ``addopts``), so ``make test`` does not run
it: ``make fuzz [N=...]`` does, with ``FUZZ_EXAMPLES`` (default 2,500) cases per reader, 10,000 in all, with fresh
randomness. ``FUZZ_REPORT=<file.json>`` writes the counts (cases, clean parses, project errors).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.datasets import ntu, nucla, smarthome
from pipeline.datasets.skeleton_io import SkeletonFormatError
from tests.conftest import shared_path

FAST_EXAMPLES = 60
SLOW_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2500"))
MEMORY_HEADROOM = 1 << 30
CASE_SECONDS = 10.0
TOKENS = [b"-1", b"0", b"-5", b"300", b"1e39", b"-1e39", b"nan", b"inf", b"1e400", b"99999999999999999999999",
          b"18446744073709551616", b"4000000", b"", b"null", b"[]", b"{}", b'"x"', b"true", b"\xff\xfe", b"[[[[[[",
          b"]]]]", b"\r\n", b",", b"\x00"]
DELIMITERS = b" \t\r\n,:[]{}"
COUNTS: dict[str, Counter] = {}


# ---------------------------------------------------------------------------------------------------- seeds


def _ntu_seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted(shared_path("samples", "ntu").glob("*.skeleton"))]


def _nucla_seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted(shared_path("samples", "nucla").glob("*.json"))]


def _nucla_raw_seeds() -> list[bytes]:
    """Raw per-frame skeleton texts (header line, 20 ``x,y,z,state`` lines) from real N-UCLA frames."""
    seeds = []
    for raw in _nucla_seeds()[:3]:
        frames = json.loads(raw)["skeletons"]
        for frame in frames[:: max(1, len(frames) // 3)]:
            lines = ["1"] + [f"{x},{y},{z},2" for x, y, z in frame]
            seeds.append(("\r\n".join(lines) + "\r\n").encode())
    return seeds


def _smarthome_seeds(frames: int = 24) -> list[bytes]:
    """LCR-Net JSON windows of the real Smarthome poses (COCO-17 re-layout; 13 of its joints as LCR-Net's)."""
    kpts = np.load(shared_path("samples", "smarthome", "WatchTV_p02_r03_v05_c05_LCRNet2d.npz"))["kpts"]
    seeds = []
    for start in range(0, len(kpts) - frames, len(kpts) // 4):
        window = kpts[start:start + frames, 4:17].astype(float)  # (frames, 13, 2)
        doc = {"K": 1, "njts": smarthome.NUM_JOINTS, "frames": [
            [] if t % 7 == 3 else [{"pose2d": [*joints[:, 0], *joints[:, 1]],
                                    "pose3d": [*(joints[:, 0] / 500), *(joints[:, 1] / 500), *([0.1] * 13)],
                                    "cumscore": 5.0 + t % 3}]
            for t, joints in enumerate(window)]}
        seeds.append(json.dumps(doc).encode())
    return seeds


READERS: dict[str, tuple[Callable[[], list[bytes]], Callable[[Path], object], bool]] = {
    # name: (seeds, reader, is JSON)
    "ntu_skeleton": (_ntu_seeds, lambda p: ntu.read_skeleton(p, max_bodies=2), False),
    "nucla_json": (_nucla_seeds, nucla.read_sqe_json, True),
    "nucla_raw_text": (_nucla_raw_seeds, nucla.read_frame_skeletons, False),
    "smarthome_json": (_smarthome_seeds, smarthome.read_lcrnet_json, True),
}


# ---------------------------------------------------------------------------------------------------- mutations

_position = st.integers(0, 2**31)
BYTE_MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), _position, st.integers(1, 255)),
    st.tuples(st.just("insert"), _position, st.binary(max_size=12) | st.sampled_from(TOKENS)),
    st.tuples(st.just("delete"), _position, st.integers(1, 64)),
    st.tuples(st.just("truncate"), _position),
    st.tuples(st.just("token"), _position, st.sampled_from(TOKENS)),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12)
JSON_MUTATIONS = st.tuples(st.just("json"), _position, JSON_VALUES)


def _token_span(data: bytes, at: int) -> tuple[int, int]:
    start = at
    while start > 0 and data[start - 1] not in DELIMITERS:
        start -= 1
    end = at
    while end < len(data) and data[end] not in DELIMITERS:
        end += 1
    return start, end


def _containers(value: object, out: list) -> list:
    """Every (container, key) pair of a parsed JSON document, depth first."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append((value, key))
        _containers(child, out)
    return out


def mutate(data: bytes, operations: list[tuple]) -> bytes:
    """Apply the drawn operations in order (positions wrap around the current length)."""
    for op, position, *args in operations:
        at = position % (len(data) + 1)
        if op == "flip" and data:
            at %= len(data)
            data = data[:at] + bytes([data[at] ^ args[0]]) + data[at + 1:]
        elif op == "insert":
            data = data[:at] + args[0] + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + args[0]:]
        elif op == "truncate":
            data = data[:at]
        elif op == "token":
            start, end = _token_span(data, at)
            data = data[:start] + args[0] + data[end:]
        elif op == "json":
            try:
                doc = json.loads(data)
            except (ValueError, RecursionError):
                continue
            slots = _containers(doc, [])
            if slots:
                parent, key = slots[position % len(slots)]
                parent[key] = args[0]
            else:
                doc = args[0]
            data = json.dumps(doc).encode()
    return data


# ---------------------------------------------------------------------------------------------------- the property


@contextlib.contextmanager
def memory_bound(headroom: int = MEMORY_HEADROOM):
    """Cap this process's address space at its current size plus ``headroom`` (restored afterwards)."""
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + headroom if hard == resource.RLIM_INFINITY else min(hard, size + headroom)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _run_case(name: str, path: Path, data: bytes) -> None:
    """Read ``data`` with reader ``name``: only a result or a SkeletonFormatError may come out, in time."""
    reader = READERS[name][1]
    path.write_bytes(data)
    counts = COUNTS[name]
    counts["cases"] += 1
    start = time.perf_counter()
    try:
        reader(path)
        counts["parsed"] += 1
    except SkeletonFormatError:
        counts["project_error"] += 1
    except BaseException as err:
        counts[f"other:{type(err).__name__}"] += 1
        raise
    elapsed = time.perf_counter() - start
    assert elapsed < CASE_SECONDS, f"{name}: one case took {elapsed:.1f} s"


def _fuzz(name: str, examples: int, derandomize: bool) -> None:
    seeds_fn, _, is_json = READERS[name]
    seeds = seeds_fn()
    COUNTS[name] = Counter()
    operations = st.lists(st.one_of(BYTE_MUTATIONS, JSON_MUTATIONS) if is_json else BYTE_MUTATIONS,
                          min_size=1, max_size=4)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case"

        @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(seed=st.sampled_from(seeds), ops=operations)
        def case(seed: bytes, ops: list[tuple]) -> None:
            _run_case(name, path, mutate(seed, ops))

        with memory_bound():
            case()
    _report(name)


def _report(name: str) -> None:
    counts = COUNTS[name]
    print(f"fuzz {name}: {dict(counts)}")
    target = os.environ.get("FUZZ_REPORT")
    if target:
        report = json.loads(Path(target).read_text()) if Path(target).is_file() else {}
        report[name] = dict(counts)
        Path(target).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("name", sorted(READERS))
def test_mutated_real_files_give_a_result_or_the_project_error(name):
    _fuzz(name, FAST_EXAMPLES, derandomize=True)


@pytest.mark.slow
@pytest.mark.fuzz
@pytest.mark.parametrize("name", sorted(READERS))
def test_fuzz_many_cases(name):
    """``SLOW_EXAMPLES`` per reader (10,000 in all by default); ``make fuzz N=...`` sets the number."""
    _fuzz(name, SLOW_EXAMPLES, derandomize=False)
    assert COUNTS[name]["cases"] >= SLOW_EXAMPLES


def test_mutations_do_what_they_say():
    assert mutate(b"1 2 3", [("token", 2, b"1e39")]) == b"1 1e39 3"
    assert mutate(b"abc", [("flip", 1, 1)]) == b"acc"
    assert mutate(b"abcdef", [("delete", 1, 2), ("truncate", 2)]) == b"ad"
    assert mutate(b'{"a": [1, 2]}', [("json", 2, None)]) == b'{"a": [1, null]}'
    assert all(seeds_fn() for seeds_fn, _, _ in READERS.values())
