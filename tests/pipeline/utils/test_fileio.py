"""pipeline.utils.fileio: atomic writes leave either the old file or the new one, never a partial one."""

import hashlib
import json

import pytest

from pipeline.utils import fileio


def test_atomic_write_json_and_csv_round_trip(tmp_path):
    fileio.atomic_write_json(tmp_path / "a" / "x.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"a": [1, 2], "b": 1}
    fileio.atomic_write_csv(tmp_path / "x.csv", ["k", "v"], [("a", 1), ("b", 2)])
    assert (tmp_path / "x.csv").read_text() == "k,v\na,1\nb,2\n"


def test_atomic_path_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_temp_paths_are_hidden_unique_and_beside_the_target(tmp_path):
    a, b = fileio.temp_path(tmp_path / "f.h5"), fileio.temp_path(tmp_path / "f.h5")
    assert a != b and a.parent == tmp_path and a.name.startswith(".f.h5.tmp-")


def test_file_sha256_matches_hashlib_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "HASH_BLOCK", 7)
    data = bytes(range(256)) * 3
    (tmp_path / "b").write_bytes(data)
    assert fileio.file_sha256(tmp_path / "b") == hashlib.sha256(data).hexdigest()
