"""Hostile caches (issue 21): a crafted ``cache.h5`` that would read files outside its folder is refused by every
reader (``make inspect``, ``make train-head``, ``make verify``) with one line, even after its integrity record is
rewritten; ``make verify`` of a file that is no cache, ``make inspect`` of unknown split values, and ``make eval``
given a dataset folder."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.cache import reader as cache
from pipeline.cache.integrity import record_integrity
from pipeline.tools import inspect_cache, verify_cache
from tasks import cache as cache_tasks
from tests.conftest import REPO
from tests.helpers import SMALL_MODEL, synthetic_dataset, tiny_config, write_tiny_cache
from vpn_head.eval import evaluate
from vpn_head.train import head as train

SECRET = b"root:x:0:0:secret outside the cache folder\n" * 8


def make(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _replace(f: h5py.File, name: str) -> tuple[np.ndarray, h5py.Dataset]:
    values = f[name][()]
    old = f[name]
    del f[name]
    return values, old


def external_storage(folder: Path, outside: Path) -> str:
    """``labels`` stored as raw bytes of a file outside the folder."""
    secret = outside / "passwd"
    secret.write_bytes(SECRET)
    with h5py.File(folder / cache.MERGED_NAME, "r+") as f:
        n = len(_replace(f, "labels")[0])
        f.create_dataset("labels", shape=(n,), dtype=np.int64, external=[(str(secret), 0, 8 * n)])
    return "labels"


def external_link(folder: Path, outside: Path) -> str:
    """``sample_ids`` an external link to another HDF5 file outside the folder."""
    with h5py.File(folder / cache.MERGED_NAME, "r+") as f:
        values, _ = _replace(f, "sample_ids")
        with h5py.File(outside / "other.h5", "w") as other:
            other.create_dataset("ids", data=values)
        f["sample_ids"] = h5py.ExternalLink(str(outside / "other.h5"), "/ids")
    return "sample_ids"


def _virtual_source(folder: Path, outside: Path, relative: bool) -> str:
    """``features`` a virtual dataset over a copy of the shard outside the folder (absolute or ``../``)."""
    moved = outside / "shard_00000.h5"
    moved.write_bytes((folder / "shard_00000.h5").read_bytes())
    source = str(Path("..") / outside.name / moved.name) if relative else str(moved)
    with h5py.File(folder / cache.MERGED_NAME, "r+") as f:
        shape, dtype = f["features"].shape, f["features"].dtype
        del f["features"]
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[:] = h5py.VirtualSource(source, "features", shape=shape, dtype=dtype)
        f.create_virtual_dataset("features", layout, fillvalue=np.nan)
    return "features"


def absolute_source(folder: Path, outside: Path) -> str:
    return _virtual_source(folder, outside, relative=False)


def dotdot_source(folder: Path, outside: Path) -> str:
    return _virtual_source(folder, outside, relative=True)


CRAFTS = [external_storage, external_link, absolute_source, dotdot_source]


@pytest.fixture(params=CRAFTS, ids=lambda craft: craft.__name__)
def crafted(request, tmp_path) -> tuple[Path, str]:
    """A genuine cache folder (``<root>/nucla/h/``), crafted, with its integrity record rewritten to match."""
    folder = write_tiny_cache(tmp_path / "cache" / "nucla" / "h", videos={"train": 2, "test": 1})
    cache.open_cache(folder).close()  # genuine: opens
    outside = tmp_path / "outside"
    outside.mkdir()
    name = request.param(folder, outside)
    for path in (folder / "shard_00000.h5", folder / cache.MERGED_NAME):
        record_integrity(path, path)
    return folder, name


def test_open_cache_refuses_a_cache_that_reads_outside_its_folder(crafted):
    folder, name = crafted
    with pytest.raises(cache.CacheError, match=f"refused.*{name}") as err:
        cache.open_cache(folder)
    assert "\n" not in str(err.value) and "outside" in str(err.value)
    assert verify_cache.verify_folder(folder).keys() == {folder / cache.MERGED_NAME}


def test_make_inspect_verify_and_train_head_refuse_a_crafted_cache(crafted, tmp_path):
    folder, name = crafted
    inspect = make("inspect", f"CACHE={folder}")
    assert inspect.returncode == 2, inspect.stdout
    (line,) = [l for l in inspect.stderr.splitlines() if not re.match(r"make(\[\d+\])?: ", l)]  # make[1]: under make test
    assert "refused" in line and name in line
    verify = make("verify", f"CACHE={folder}")
    assert verify.returncode != 0
    assert f"BAD {folder / cache.MERGED_NAME}: " in verify.stdout and "refused" in verify.stdout
    head = make("train-head", "DATASET=nucla", "PROTOCOL=v3_12", "EPOCHS=1", "DEVICE=cpu", "NUM_WORKERS=0",
                f"CACHE={folder}", f"RUNS_DIR={tmp_path / 'runs'}")
    assert head.returncode != 0
    assert any("refused" in l and name in l for l in head.stderr.splitlines()), head.stderr[-2000:]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.pt"))


def test_the_head_trainer_refuses_a_crafted_cache_in_process(crafted, tmp_path):
    folder, name = crafted
    with pytest.raises(cache.CacheError, match=name):
        train.train(tiny_config(folder, tmp_path / "runs", model=SMALL_MODEL, epochs=1))


# ----------------------------------------------------------------------------------------------------------
# make verify / inspect / eval on odd paths and values


def test_make_verify_of_a_file_that_is_no_cache_says_no_cache(tmp_path):
    not_a_cache = tmp_path / "passwd"
    not_a_cache.write_bytes(SECRET)
    for path in (not_a_cache, Path("/etc/passwd")):
        result = make("verify", f"CACHE={path}")
        assert result.returncode == 2, result.stdout
        assert "no cache" in result.stderr and "all good" not in result.stdout
    assert verify_cache.main([str(not_a_cache)]) == 2


def test_inspect_shows_unknown_split_values_instead_of_crashing(tmp_path):
    folder = write_tiny_cache(tmp_path / "nucla" / "h", videos={"train": 2, "test": 1})
    with h5py.File(folder / cache.MERGED_NAME, "r+") as f:
        splits = f["splits/v3_12"][()]
        splits[0] = b"bogus"
        f["splits/v3_12"][:] = splits
    summary = inspect_cache.summarize(folder)
    assert summary["splits"]["v3_12"]["bogus"]["clips"] == 1
    text = inspect_cache.format_summary(summary)
    assert "bogus 1 / 1" in text
    result = make("inspect", f"CACHE={folder}")
    assert result.returncode == 0, result.stderr
    assert "bogus" in result.stdout


def test_make_eval_accepts_a_dataset_folder_as_cache(tmp_path):
    root = tmp_path / "cache"
    write_tiny_cache(root / "nucla" / "h", videos={"train": 2, "test": 1})
    summary = train.train(tiny_config(root, tmp_path / "runs", variant="i3d", epochs=1))
    assert summary["complete"]
    result = make("eval", f"RUN_DIR={tmp_path / 'runs' / 'tiny'}", f"CACHE={root / 'nucla'}", "DEVICE=cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "runs" / "tiny" / "eval_test" / "metrics.json").read_text())
    assert metrics["cache"] == str(root / "nucla" / "h") and metrics["num_clips"] == 8


# ----------------------------------------------------------------------------------------------------------
# a head run resumes only on the cache it was trained on


def test_a_head_run_does_not_resume_on_another_cache(tmp_path):
    root = tmp_path / "cache"
    first = write_tiny_cache(root / "nucla" / "aaa", videos={"train": 2, "test": 1})
    second = write_tiny_cache(root / "nucla" / "bbb", videos={"train": 2, "test": 1}, seed=1)
    (root / "nucla" / "LATEST").write_text("aaa\n")
    train.train(tiny_config(root, tmp_path / "runs", variant="i3d", epochs=1))
    recorded = json.loads((tmp_path / "runs" / "tiny" / "config.json").read_text())["cache"]
    assert recorded == {"folder": str(first.resolve()), "hash": "aaa"}
    (root / "nucla" / "LATEST").write_text("bbb\n")  # a rebuild with other settings moved LATEST
    result = make("train-head", "DATASET=nucla", "PROTOCOL=v3_12", "VARIANT=i3d", "EPOCHS=2", "DEVICE=cpu",
                  "NUM_WORKERS=0", "BATCH_SIZE=8", "LR=0.05", "MODEL=embed_dim=16 attention_hidden=16 gcn_channels=8",
                  f"CACHE={root}", f"RUNS_DIR={tmp_path / 'runs'}", "RUN=tiny")
    assert result.returncode != 0, result.stderr[-2000:]
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert str(first.resolve()) in line and str(second.resolve()) in line
    assert json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())["epochs_done"] == 1
    summary = train.train(tiny_config(first, tmp_path / "runs", variant="i3d", epochs=2))  # its own cache: resumes
    assert summary["epochs_done"] == 2


def test_a_rerun_of_make_cache_re_merges_a_crafted_view(tmp_path, capsys):
    root = synthetic_dataset(tmp_path / "data", n=2, seed=5, min_frames=30, max_frames=40)
    argv = ["--dataset", "ntu60", "--manifest", str(root / "manifest.csv"), "--cache-dir", str(tmp_path / "cache"),
            "--extractor", "pixels", "--decode-workers", "0", "--device", "cpu"]
    assert cache_tasks.main(argv) == 0
    (folder,) = [d for d in (tmp_path / "cache" / "ntu60").iterdir() if d.is_dir()]
    (tmp_path / "outside").mkdir()
    external_link(folder, tmp_path / "outside")
    record_integrity(folder / cache.MERGED_NAME, folder / cache.MERGED_NAME)
    capsys.readouterr()
    assert cache_tasks.main(argv) == 0
    assert any(l.startswith(f"re-merging {folder / cache.MERGED_NAME}: ") and "refused" in l
               for l in capsys.readouterr().out.splitlines())
    with cache.open_cache(folder) as reader:
        assert len(reader) == 2


def test_eval_reads_the_cache_the_run_was_trained_on_after_latest_moved(tmp_path):
    root = tmp_path / "cache"
    first = write_tiny_cache(root / "nucla" / "aaa", videos={"train": 2, "test": 1})
    write_tiny_cache(root / "nucla" / "bbb", videos={"train": 2, "test": 2}, seed=1)
    (root / "nucla" / "LATEST").write_text("aaa\n")
    train.train(tiny_config(root, tmp_path / "runs", variant="i3d", epochs=1))
    (root / "nucla" / "LATEST").write_text("bbb\n")
    metrics = evaluate.evaluate_run(tmp_path / "runs" / "tiny", device="cpu")
    assert metrics["cache"] == str(first.resolve()) and metrics["num_clips"] == 8
