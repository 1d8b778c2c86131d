"""An edited official split column (test clips marked ``train``) and symlink loops under DATA_ROOT: the manifest
refuses the first in one line, and the scan and the cache build report the second instead of a traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.build import extract
from pipeline.cache.config import CacheConfig
from pipeline.contracts import PROBLEM_COLUMN
from pipeline.datasets import manifest, nucla, smarthome
from pipeline.datasets.files import real_path
from pipeline.datasets.registry import get_dataset
from tasks import cache as cache_tasks
from tests.helpers import synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("data"), n=4, seed=3, min_frames=30, max_frames=40)


# ---------------------------------------------------------------- official protocol columns


@pytest.mark.parametrize("protocol", ["cs", "cv"])
def test_an_edited_official_split_is_refused_naming_the_line(dataset, tmp_path, protocol) -> None:
    df = manifest.read_manifest(dataset / "manifest.csv")
    i = len(df) - 1
    official = df.loc[i, protocol]
    edited = "train" if official == "test" else "test"
    df.loc[i, protocol] = edited  # e.g. test clips marked train would train the model
    path = tmp_path / "m.csv"
    manifest.write_manifest(df, path, data_root=dataset)
    with pytest.raises(ValueError, match=rf"line {i + 2}: column '{protocol}' says '{edited}', but the official "
                                         rf"ntu60 {protocol} split of .* is '{official}'; put a split of your own in "
                                         "a column of its own name"):
        manifest.read_manifest(path)


def test_a_custom_split_in_a_column_of_its_own_name_is_kept(dataset, tmp_path) -> None:
    df = manifest.read_manifest(dataset / "manifest.csv")
    df["my_split"] = ["train", "test"] * (len(df) // 2) + ["train"] * (len(df) % 2)
    path = tmp_path / "m.csv"
    manifest.write_manifest(df, path, data_root=dataset)
    assert manifest.read_manifest(path)["my_split"].tolist() == df["my_split"].tolist()


@pytest.mark.parametrize(("spec", "sample_id"), [
    (smarthome.SPEC, "Cook.Cleandishes_p02_r00_v02_c03"),
    (nucla.SPEC, "a01_s01_e00_v01"),
])
def test_every_official_column_is_checked_against_the_sample_id(spec, sample_id) -> None:
    info = spec.parse_sample_id(sample_id)
    row = {"label": str(spec.classes.index(info.action)), "action": info.action, "sample_id": sample_id,
           PROBLEM_COLUMN: "", **info.splits}
    assert manifest._row_problem(spec, row) == ""
    protocol = next(iter(info.splits))
    row[protocol] = "train" if info.splits[protocol] != "train" else "test"
    assert f"column '{protocol}' says" in manifest._row_problem(spec, row)


# ---------------------------------------------------------------- symlink loops


def _loops(root: Path, df) -> None:
    """A folder loop (a -> b, b -> a), a self loop, and sample 0's skeleton replaced by a symlink loop."""
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    os.symlink("self", root / "self")
    skeleton = root / df.loc[0, "skeleton_path"]
    skeleton.unlink()
    os.symlink(skeleton.name, skeleton)


def test_symlink_loops_are_reported_by_the_scan_and_the_build(dataset, tmp_path, capsys) -> None:
    root = tmp_path / "data"
    shutil.copytree(dataset, root, symlinks=True)
    df = manifest.read_manifest(root / "manifest.csv")
    _loops(root, df)
    assert real_path(root / "self") is None and real_path(root) == root.resolve()
    scanned, _ = manifest.scan("ntu60", root)  # was: RuntimeError: Symlink loop from ...
    row = scanned.set_index("sample_id").loc[df.loc[0, "sample_id"]]
    assert row[PROBLEM_COLUMN] == "skeleton is a symlink loop"
    assert len(scanned) == len(df)
    manifest.write_manifest(df, root / "manifest.csv", data_root=root)  # the old rows: the build meets the loop
    argv = ["--dataset", "ntu60", "--manifest", str(root / "manifest.csv"), "--cache-dir", str(tmp_path / "c"),
            "--extractor", "pixels", "--decode-workers", "0"]
    assert cache_tasks.main(argv) == 0
    assert "1 samples skipped" in capsys.readouterr().out
    with pytest.raises(ValueError, match="is a symlink loop"):
        manifest.inside_root(root, df.loc[0, "skeleton_path"])
    with pytest.raises(extract.SampleError, match="symlink loop"):
        extract.prepare_sample(df.loc[0].to_dict(), root, get_dataset("ntu60"), CacheConfig(dataset="ntu60"))
