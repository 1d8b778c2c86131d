"""A disk that fills up (or a file-size limit) while a cache or crop shard is written, a read-only CACHE_DIR, and
``make verify`` of a read-only copy: one line each, the finished shards kept, no temp file left, no segfault."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cache import integrity, layout
from pipeline.cache import writer as writer_module
from pipeline.tools import verify_cache
from tasks import cache as cache_tasks
from tests.conftest import REPO
from tests.helpers import synthetic_dataset

LIMITED = """
import resource, signal, sys
import numpy as np
from pipeline.cache.provenance import make_attrs
from pipeline.cache.writer import ShardWriter, fail_safe_h5
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    if sys.argv[3] == "shard":
        with ShardWriter(sys.argv[1], n_rows_max=4, num_joints=25, t_p=20, attrs=make_attrs({"dataset": "ntu60"}, ""),
                         protocols=("cs",), atomic=True) as w:
            for i in range(4):
                w.append(features=np.random.default_rng(i).random((1024, 8, 7, 7), np.float32),
                         poses=np.zeros((2, 3, 25, 20), np.float32), sample_id=f"s{i}", label=0, action="a",
                         clip_index=0, frame_indices=np.arange(64), box=np.zeros(4), splits={"cs": "train"})
    else:
        with fail_safe_h5(sys.argv[1]) as f:
            for i in range(4):
                f.create_dataset(f"v{i}", data=np.random.default_rng(i).integers(0, 255, 400_000, dtype=np.uint8))
    print("written")
except OSError as err:
    print(f"error: {err}")
"""


@pytest.mark.parametrize("kind", ["shard", "crops"])
@pytest.mark.parametrize("limit", [3_000, 9_000, 300_000, 900_000])
def test_a_file_size_limit_is_one_line_and_no_segfault(tmp_path, kind, limit) -> None:
    out = tmp_path / "out" / "shard_00000.h5"
    out.parent.mkdir()
    proc = subprocess.run([sys.executable, "-c", LIMITED, str(out), str(limit), kind], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]  # was -11 (SIGSEGV): HDF5 closed the failed file twice
    (line,) = proc.stdout.strip().splitlines()
    assert line.startswith("error: ") and "File too large (errno 27)" in line and str(out.parent) in line
    assert list(out.parent.iterdir()) == []  # neither the file nor a temp file is left


def test_a_shard_written_under_no_limit_is_whole(tmp_path) -> None:
    out = tmp_path / "shard_00000.h5"
    proc = subprocess.run([sys.executable, "-c", LIMITED, str(out), str(10**9), "shard"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "written", proc.stderr[-2000:]
    assert integrity.check_integrity(out, full=True) == ""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("data"), n=6, seed=11, min_frames=30, max_frames=50)


def _argv(dataset: Path, cache_root: Path) -> list[str]:
    return ["--dataset", "ntu60", "--manifest", str(dataset / "manifest.csv"), "--cache-dir", str(cache_root),
            "--extractor", "pixels", "--shard-size", "2", "--decode-workers", "0"]


def test_a_full_disk_during_make_cache_keeps_the_finished_shards(dataset, tmp_path, monkeypatch, capsys) -> None:
    real_write = writer_module.FailSafeFile._write_some

    def full_on_shard_1(self, view):  # the disk fills up while shard 1 is written
        if "shard_00001" in str(self.name):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, view)

    monkeypatch.setattr(writer_module.FailSafeFile, "_write_some", full_on_shard_1)
    argv = _argv(dataset, tmp_path / "c")
    assert cache_tasks.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: shard 1 could not be built: ShardWriteError: ")
    assert "No space left on device" in err and "free some space" in err and "rerun to continue" in err
    (folder,) = [d for d in (tmp_path / "c" / "ntu60").iterdir() if d.is_dir()]
    names = sorted(p.name for p in folder.iterdir())
    assert "shard_00000.h5" in names and "shard_00002.h5" in names and "shard_00001.h5" not in names
    assert not [n for n in names if "tmp" in n]  # no temp file of the failed shard
    kept = (folder / "shard_00000.h5").stat().st_mtime_ns
    monkeypatch.undo()  # space freed
    assert cache_tasks.main(argv) == 0
    assert (folder / "shard_00000.h5").stat().st_mtime_ns == kept and (folder / layout.MERGED_NAME).is_file()


def test_a_read_only_cache_dir_is_one_line(dataset, tmp_path, monkeypatch, capsys) -> None:
    root = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.is_relative_to(root):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)  # tests run as root, for whom chmod does not make a folder read-only
    assert cache_tasks.main(_argv(dataset, root)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: CACHE_DIR {root}: cannot write") and "Read-only file system" in err
    assert "\n" not in err and "Traceback" not in err


def test_verify_works_on_a_read_only_copy(dataset, tmp_path, monkeypatch, capsys) -> None:
    assert cache_tasks.main(_argv(dataset, tmp_path / "c")) == 0
    capsys.readouterr()
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "c", copy, copy_function=shutil.copy)  # new modification times, as `cp -r` gives

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(integrity, "atomic_write_text", refuse)
    assert verify_cache.main([str(copy)]) == 0
    assert "all good" in capsys.readouterr().out
