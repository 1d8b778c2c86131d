"""Issue 21 items 6-9: manifest content, CSV injection, pyskl pickles that ask for gigabytes or hold keypoints that
are not poses, video frames too large to decode, and checkpoints that are not finite."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cache.failures import append_failures, read_failures, write_failures
from pipeline.datasets import bounds as input_bounds
from pipeline.datasets import manifest, pose_pickle
from tasks import cache as cache_task
from tests.conftest import REPO, shared_path
from tests.helpers import tiny_config, write_tiny_cache
from vpn_head.engine import loop as engine
from vpn_head.train.head import train

IDS = ("S001C001P001R001A001", "S001C001P001R001A002", "S001C002P003R001A010")


# ---------------------------------------------------------------------------------------------- item 7: manifests


@pytest.fixture
def ntu_manifest(tmp_path) -> tuple[Path, pd.DataFrame, Path]:
    """A valid ntu60 manifest of three samples (one-byte files) and its DATA_ROOT."""
    root = tmp_path / "data"
    root.mkdir()
    for sample_id in IDS:
        (root / f"{sample_id}_rgb.avi").write_bytes(b"v")
        (root / f"{sample_id}.skeleton").write_bytes(b"1")
    df, _ = manifest.scan("ntu60", root)
    path = tmp_path / "ntu60.csv"
    manifest.write_manifest(df, path, data_root=root)
    assert len(manifest.read_manifest(path)) == 3
    return path, pd.read_csv(path, dtype=str, keep_default_na=False), root


def _duplicate(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df.iloc[[0]]], ignore_index=True)


def _set(column: str, value: str, row: int = 1):
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[row, column] = value
        return df
    return edit


@pytest.mark.parametrize("edit, message", [
    (_duplicate, f"line 5: sample_id '{IDS[0]}' is already on line 2"),
    (_set("label", "999"), "line 3: label 999 is outside [0, 60)"),
    (_set("label", "-5"), "line 3: label -5 is outside [0, 60)"),
    (_set("label", "abc"), "line 3: label 'abc' is not an integer"),
    (_set("label", "-1"), "line 3: label -1 (no class) on a row without a problem"),
    (_set("action", "flying"), "line 3: action 'flying' is not class 1 of ntu60 ('eat meal/snack'): an unknown action"),
    (_set("sample_id", "a01_s01_e00_v01"), "line 3: sample_id is not a ntu60 id"),
    (_set("sample_id", "S020C001P001R001A002"), "line 3: sample_id is not a ntu60 id: 'S020C001P001R001A002' is not"),
    (_set("sample_id", "S001C001P001R001A003"), "line 3: sample_id 'S001C001P001R001A003' is of action 'brushing"),
    (_set("dataset", "ntu120"), "line 3: dataset 'ntu120', but line 2 says 'ntu60'"),
])
def test_read_manifest_refuses_content_that_contradicts_the_dataset(ntu_manifest, edit, message):
    path, df, _ = ntu_manifest
    edit(df).to_csv(path, index=False)
    with pytest.raises(ValueError) as err:
        manifest.read_manifest(path)
    text = str(err.value)
    assert text.startswith(f"manifest {path}: ") and message in text and "\n" not in text, text


def test_read_manifest_names_the_line_of_bytes_that_are_not_utf8(ntu_manifest):
    path, _, _ = ntu_manifest
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"eat meal", b"eat \xff\xfemeal")
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=rf"^manifest {path}: line 3: bytes that are not UTF-8"):
        manifest.read_manifest(path)


def test_make_cache_refuses_a_duplicated_id_with_one_line_before_any_task(ntu_manifest, tmp_path, capsys):
    path, df, root = ntu_manifest
    _duplicate(df).to_csv(path, index=False)
    code = cache_task.main(["--dataset", "ntu60", "--manifest", str(path), "--cache-dir", str(tmp_path / "cache"),
                            "--data-root", str(root), "--extractor", "pixels"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: manifest {path}: line 5: sample_id") and "\n" not in err
    assert not (tmp_path / "cache").exists()


def test_failures_csv_escapes_cells_a_spreadsheet_would_run(tmp_path):
    rows = [(IDS[0], "skeleton", '=HYPERLINK("http://evil","x")'), ("+1", "decode", "-2+3"),
            ("@SUM(A1)", "crop", "\tTAB"), (IDS[1], "decode", "plain, with a comma")]
    expected = [(IDS[0], "skeleton", '\'=HYPERLINK("http://evil","x")'), ("'+1", "decode", "'-2+3"),
                ("'@SUM(A1)", "crop", "'\tTAB"), (IDS[1], "decode", "plain, with a comma")]
    for name, write in (("append.csv", append_failures), ("write.csv", write_failures)):
        write(tmp_path / name, rows)
        write(tmp_path / name, [])  # appending nothing / rewriting keeps a header; escaping is idempotent
        if name == "write.csv":
            write(tmp_path / name, [tuple(r) for r in read_failures(tmp_path / "append.csv").itertuples(index=False)])
        got = [tuple(r) for r in read_failures(tmp_path / name).itertuples(index=False)]
        assert got == expected, name


# ---------------------------------------------------------------------------------------------- item 8: pyskl pickles

_LONG_2_32 = b"\x8a\x05\x00\x00\x00\x00\x01"  # LONG1 2**32
BOMBS = {
    "bytes": b"\x80\x02cbuiltins\nbytes\n" + _LONG_2_32 + b"\x85R.",  # bytes(2**32)
    "bytearray": b"\x80\x02cbuiltins\nbytearray\n" + _LONG_2_32 + b"\x85R.",
    "list_range": b"\x80\x02cbuiltins\nlist\ncbuiltins\nrange\nK\x00" + _LONG_2_32 + b"K\x01\x87R\x85R.",
    "binbytes8": b"\x80\x04\x8e" + struct.pack("<Q", 2**32) + b"abc.",  # a length prefix 4 GiB past the end
    "str_of_nested_refs": b"\x80\x02cbuiltins\nstr\n]q\x000" + b"".join(  # str of 5 levels of 100 references:
        b"]q" + bytes([k + 1]) + b"(" + (b"h" + bytes([k])) * 100 + b"e" + (b"0" if k < 4 else b"")
        for k in range(5)) + b"\x85R.",  # a 1e10-character repr from 1 KB
    "ndarray": b"\x80\x02cnumpy\nndarray\n" + _LONG_2_32 + b"\x85\x85R.",  # ndarray((2**32,))
    "reconstruct": (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _LONG_2_32
                    + b"\x85C\x01b\x87R."),  # _reconstruct(ndarray, (2**32,), b"b")
}
_LOAD_BOUNDED = """
import json, resource, sys
from pipeline.datasets import pose_pickle
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))  # 1 GiB more than the imports: no bomb fits
out = {}
for path in sys.argv[1:]:
    try:
        pose_pickle.restricted_load(path)
        out[path] = "loaded"
    except BaseException as err:
        out[path] = f"{type(err).__name__}: {err}"
print(json.dumps(out))
"""


def test_tiny_memory_bomb_pickles_are_refused_without_allocating(tmp_path):
    paths = []
    for name, data in BOMBS.items():
        assert len(data) < 1200
        paths.append(tmp_path / f"{name}.pkl")
        paths[-1].write_bytes(data)
    run = subprocess.run([sys.executable, "-c", _LOAD_BOUNDED, *map(str, paths)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    for path in paths:
        assert results[str(path)].startswith("UnpicklingError: "), (path.name, results[str(path)])
        assert ("could allocate without bound" in results[str(path)]
                or "bytes in a bytes8, but only" in results[str(path)]), (path.name, results[str(path)])


def test_ordinary_pickles_of_every_protocol_still_load(tmp_path):
    data = {"annotations": [{"frame_dir": "x", "keypoint": np.arange(150, dtype=np.float32).reshape(1, 2, 25, 3),
                             "obj": np.array([1.5, "a"], dtype=object), "set": {1, 2}, "fs": frozenset({3}),
                             "bytes": b"\x00\xff", "ba": bytearray(b"ab"), "c": 1 + 2j, "r": range(3)}]}
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        (tmp_path / "ok.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
        got = pose_pickle.restricted_load(tmp_path / "ok.pkl")["annotations"][0]
        np.testing.assert_array_equal(got["keypoint"], data["annotations"][0]["keypoint"])
        assert (got["set"], got["fs"], got["bytes"], got["ba"], got["c"], got["r"]) == ({1, 2}, {3}, b"\x00\xff",
                                                                                        b"ab", 1 + 2j, range(3))
        assert got["obj"].tolist() == [1.5, "a"]


def _keypoints() -> dict[str, np.ndarray]:
    good = np.random.default_rng(0).normal(0, 0.3, (2, 8, 25, 3)).astype(np.float32)
    objects = np.empty((1, 8, 25, 3), dtype=object)
    objects[...] = 0.25
    dicts = np.empty((1, 2, 25, 3), dtype=object)
    dicts[...] = {}
    one_body_nan = good.copy()
    one_body_nan[1, 2, 7] = np.nan
    absurd = good.copy()
    absurd[0, 3, 4, 0] = 1e30
    return {"S001C001P001R001A001": good, "S001C001P001R001A002": objects, "S001C001P001R001A003": dicts,
            "S001C001P001R001A004": good.astype(np.complex64) + 1j, "S001C001P001R001A005": np.full_like(good, np.nan),
            "S001C001P001R001A006": np.zeros((1, 0, 25, 3), np.float32), "S001C001P001R001A007": one_body_nan,
            "S001C001P001R001A008": absurd, "S001C001P001R001A009": np.zeros_like(good)}


def test_keypoints_that_are_not_poses_get_a_problem(tmp_path):
    keypoints = _keypoints()
    pkl = tmp_path / "poses.pkl"
    pkl.write_bytes(pickle.dumps({"annotations": [{"frame_dir": s, "keypoint": k} for s, k in keypoints.items()]}))
    df = pd.DataFrame({"sample_id": list(keypoints), "dataset": "ntu60", "problem": ""})
    problems = pose_pickle.attach_poses(df, pkl, tmp_path / "poses.h5").set_index("sample_id")["problem"]
    assert problems["S001C001P001R001A001"] == ""
    expected = {"A002": "keypoint dtype is object", "A003": "keypoint dtype is object",
                "A004": "keypoint dtype is complex64", "A005": "no body in any frame",
                "A006": "(M=1, T=0, V=25, C=3): no body or no frame",
                "A007": "keypoint of body 1 in frame 2 is NaN/inf (or beyond float32) in 1 of its 25 joints only",
                "A008": "beyond the 10 m bound of ntu60 poses", "A009": "no body in any frame"}
    for action, message in expected.items():
        problem = problems[f"S001C001P001R001{action}"]
        assert problem.startswith("poses in the pose pickle: ") and message in problem, (action, problem)


# ---------------------------------------------------------------------------------------------- item 9: frame size

_DECODE_BOUNDED = """
import json, resource, sys
from pathlib import Path
from pipeline.build import extract
from pipeline.datasets import manifest
from pipeline.video import reader as video
from pipeline.cache.config import CacheConfig
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 3 * 2**29, vm + 3 * 2**29))  # 1.5 GiB: one clip of 4000x4000 is 3 GiB
root = Path(sys.argv[1])
try:
    video.read_sampled_clips(next(root.glob("*.avi")))
    read = "read"
except BaseException as err:
    read = f"{type(err).__name__}: {err}"
df, _ = manifest.scan("ntu60", root)
row = extract.PreparedSamples([df.iloc[0].to_dict()], root, CacheConfig(dataset="ntu60"))[0]
print(json.dumps({"read": read, "row": [getattr(row, "stage", ""), getattr(row, "reason", "")]}))
"""


def test_a_tiny_mjpg_of_4000x4000_frames_is_refused_before_decoding(tmp_path):
    sample_id = "S001C001P001R001A001"
    path = tmp_path / f"{sample_id}_rgb.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (4000, 4000))
    writer.write(np.zeros((4000, 4000, 3), np.uint8))
    writer.release()
    assert path.stat().st_size < 400_000
    shutil.copy(shared_path("samples", "ntu", f"{sample_id}.skeleton"), tmp_path / f"{sample_id}.skeleton")
    run = subprocess.run([sys.executable, "-c", _DECODE_BOUNDED, str(tmp_path)], capture_output=True, text=True,
                         cwd=REPO, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["read"].startswith("DecodeError: ") and "4000x4000 = 16.0 MP, more than the 8.3 MP" in result["read"]
    stage, reason = result["row"]
    assert stage == "decode" and "16.0 MP, more than the 8.3 MP limit" in reason


def test_frame_size_limit_is_documented_and_holds_the_datasets_videos():
    assert input_bounds.frame_size_problem(1920, 1080) == "" and input_bounds.frame_size_problem(3840, 2160) == ""
    assert "VPN_MAX_FRAME_MPIXELS" in input_bounds.frame_size_problem(4000, 4000)


# ---------------------------------------------------------------------------------------------- item 6: checkpoints


@pytest.mark.usefixtures("one_torch_thread")
def test_a_non_finite_batchnorm_running_var_stops_training_without_a_checkpoint(tmp_path, monkeypatch):
    folder = write_tiny_cache(tmp_path / "nucla")
    real_epoch = engine.train_epoch

    def epoch_that_overflows_a_buffer(model, *args, **kwargs):  # as poses of 1e30 did: the loss stays finite
        row = real_epoch(model, *args, **kwargs)
        dict(model.named_buffers())["pose_encoder.backbone.gcn_norm.running_var"][0] = float("inf")
        return row

    monkeypatch.setattr(engine, "train_epoch", epoch_that_overflows_a_buffer)
    with pytest.raises(engine.NonFiniteStateError) as err:
        train(tiny_config(folder, tmp_path / "runs", epochs=1))
    assert "non-finite values in pose_encoder.backbone.gcn_norm.running_var (1 of 8) after epoch 1" in str(err.value)
    assert "\n" not in str(err.value)
    run = tmp_path / "runs" / "tiny"
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists() and not (run / "metrics.json").exists()


def test_finite_state_check_passes_a_trained_model():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model(torch.randn(8, 3))
    engine.check_finite_state(model, 1)
