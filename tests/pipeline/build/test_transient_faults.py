"""A passing fault of the machine while a sample is read (MemoryError, a full disk, an I/O error, an interrupted
call) is never filed as the sample's fault: it is an ``environment`` failure, and a plain rerun completes the cache
(no RETRY_FAILED=1). A real content failure stays final."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.build import extract
from pipeline.cache import layout
from pipeline.cache.failures import read_failures
from pipeline.cache.provenance import make_attrs
from pipeline.cache.reader import open_cache
from pipeline.cache.writer import ShardWriter
from pipeline.utils.fileio import is_transient
from pipeline.video import reader as video
from tasks import cache as cache_tasks
from tests.helpers import synthetic_dataset

FAULTS = {
    "memory": MemoryError(),
    "full disk": OSError(errno.ENOSPC, "No space left on device"),
    "io error": OSError(errno.EIO, "Input/output error"),
    "interrupted": InterruptedError(errno.EINTR, "Interrupted system call"),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """6 synthetic NTU samples and their manifest."""
    return synthetic_dataset(tmp_path_factory.mktemp("data"), n=6, seed=7, min_frames=30, max_frames=50)


def _argv(dataset: Path, cache_root: Path, *extra: str) -> list[str]:
    return ["--dataset", "ntu60", "--manifest", str(dataset / "manifest.csv"), "--cache-dir", str(cache_root),
            "--extractor", "pixels", "--shard-size", "3", "--decode-workers", "0", *extra]


def _folder(cache_root: Path) -> Path:
    (folder,) = [d for d in (cache_root / "ntu60").iterdir() if d.is_dir()]
    return folder


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_passing_fault_is_retried_by_a_plain_rerun(dataset, tmp_path, monkeypatch, capsys, fault) -> None:
    real = video.read_sampled_clips
    calls = {"n": 0}

    def flaky(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] in (2, 5):  # two samples, in both shards, meet the fault once
            raise FAULTS[fault]
        return real(path, *args, **kwargs)

    monkeypatch.setattr(video, "read_sampled_clips", flaky)
    argv = _argv(dataset, tmp_path / "c")
    assert cache_tasks.main(argv) == 1
    assert "2 samples could not be reached or met a passing fault" in capsys.readouterr().err
    folder = _folder(tmp_path / "c")
    failures = read_failures(folder / layout.FAILURES_NAME)
    assert failures["stage"].tolist() == [extract.ENVIRONMENT_STAGE] * 2  # never `unexpected` or `decode`
    assert all(r.startswith(extract.TRANSIENT_PREFIX) for r in failures["reason"])
    assert cache_tasks.main(argv) == 0  # no RETRY_FAILED=1
    assert len(read_failures(folder / layout.FAILURES_NAME)) == 0
    with open_cache(folder) as cache:
        assert len(set(np.asarray(cache.sample_ids).astype(str))) == 6


def test_a_passing_fault_does_not_fall_back_to_another_backend(tmp_path, monkeypatch) -> None:
    tried = []

    def failing(name):
        def open_reader(path, threads=1):
            tried.append(name)
            raise MemoryError()
        return open_reader

    monkeypatch.setattr(video, "_backend", failing)
    with pytest.raises(MemoryError):
        video.open_video(tmp_path / "v.avi", "opencv", ("pyav",))
    assert tried == ["opencv"]


def test_is_transient_follows_the_cause_and_keeps_content_errors_final() -> None:
    for error in FAULTS.values():
        assert is_transient(error)
    wrapped = ValueError("decode failed")
    wrapped.__cause__ = OSError(errno.EIO, "Input/output error")
    assert is_transient(wrapped)
    for error in (ValueError("bad"), OSError(errno.ENOENT, "missing"), OSError(errno.EACCES, "denied"),
                  RuntimeError("x"), video.DecodeError("v.avi", "no frames")):
        assert not is_transient(error)
    import av

    assert not video.passing_fault(av.error.OSError(errno.EIO, "ffmpeg's EIO on a damaged stream"))


def test_a_memory_error_filed_by_an_older_build_is_retried_too(tmp_path) -> None:
    """Caches built before this fix hold `unexpected` MemoryError rows: a plain rerun retries them as well."""
    shard = tmp_path / "shard_00000.h5"
    with ShardWriter(shard, n_rows_max=0, num_joints=25, t_p=20, attrs=make_attrs({"dataset": "ntu60"}, ""),
                     protocols=("cs", "cv")) as writer:
        writer.add_failure("S001C001P001R001A001", "unexpected", "MemoryError: ")
    assert "1 environment failures to retry" in extract.shards_to_rebuild([shard])[shard]
    stages = pd.Series(["unexpected", "unexpected", "decode", "environment"])
    reasons = pd.Series(["OSError: [Errno 28] No space left", "KeyError: 'x'", "MemoryError", "missing"])
    assert extract.retried_by_rerun(stages, reasons).tolist() == [True, False, False, True]
