"""pipeline/tools/run_i3d.py: the features and classify commands, their one-line errors, and their agreement with
the library (the CricketShot clip through the real weights)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.i3d.model import InceptionI3d, extract_features
from pipeline.tools import run_i3d
from tests.conftest import REPO, shared_path
from tests.helpers import cricket_clip


def test_cli_features_round_trip(tmp_path, random_model: InceptionI3d) -> None:
    x = (np.random.default_rng(0).random((2, 3, 9, 224, 224), dtype=np.float32) * 2 - 1)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "sub" / "y.npy"
    argv = ["features", "--input", str(tmp_path / "x.npy"), "--output", str(out), "--batch-size", "2"]
    assert run_i3d.main([*argv[:1], "--weights", str(tmp_path / "absent.pt"), *argv[1:]]) == 1
    assert run_i3d.main(argv) == 0
    y = np.load(out)
    assert y.dtype == np.float32 and y.shape == (2, 1024, 2, 7, 7)
    expected = extract_features(random_model, torch.from_numpy(x[:1]), batch_size=1, device="cpu", amp_bf16=False)
    np.testing.assert_allclose(y[:1], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((1, 3, 8, 64, 64), np.float32), r"expected \(N, 3, T, 224, 224\)"),
    (np.zeros((3, 8, 224, 224), np.float32), r"expected \(N, 3, T, 224, 224\)"),
    (np.zeros((1, 3, 8, 224, 224), np.float64), "expected float32, got float64"),
    (np.full((1, 3, 8, 224, 224), 255, np.float32), r"values must be in \[-1, 1\].*0..255 pixels"),
    (np.full((1, 3, 8, 224, 224), np.nan, np.float32), "NaN or inf"),
])
def test_cli_features_rejects_bad_input(tmp_path, capsys, array: np.ndarray, message: str) -> None:
    np.save(tmp_path / "x.npy", array)
    argv = ["features", "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]
    assert run_i3d.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "y.npy").exists()


def test_cli_module_entry_point_exits_1_on_missing_input(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.tools.run_i3d", "features", "--input", str(tmp_path / "none.npy"),
         "--output", str(tmp_path / "y.npy")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "none.npy" in result.stderr.strip().splitlines()[-1]


def test_cli_classify_npz_and_npy_match_the_api(tmp_path, capsys, kinetics_model: InceptionI3d) -> None:
    with np.load(shared_path("i3d", "cricketshot_rgb_u8.npz")) as npz:
        frames = npz["frames"][:16]  # (16, 224, 224, 3) uint8
    np.savez(tmp_path / "clip.npz", frames=frames)  # no LUT: the CLI computes pixel / 127.5 - 1
    x = cricket_clip(16)  # (1, 3, 16, 224, 224)
    np.save(tmp_path / "clip.npy", x[0].numpy())  # (3, T, H, W)
    with torch.inference_mode():
        logits = kinetics_model(x)[0]
    labels_path = shared_path("i3d", "label_map.txt")
    labels = labels_path.read_text().splitlines()
    top = torch.argsort(logits, descending=True)[:5].tolist()
    for name in ("clip.npz", "clip.npy"):
        argv = ["classify", "--weights", str(shared_path("i3d", "rgb_scratch.pt")), "--labels", str(labels_path),
                "--input", str(tmp_path / name)]
        assert run_i3d.main(argv) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert float(lines[0].split(":")[1]) == pytest.approx(logits.norm().item(), abs=1e-3)
        assert [line.split(" ", 2)[2] for line in lines[1:]] == [labels[i] for i in top]
        assert [float(line.split()[1]) for line in lines[1:]] == pytest.approx(logits[top].tolist(), abs=1e-3)


@pytest.mark.parametrize(("name", "arrays", "message"), [
    ("a.npz", {"images": np.zeros((9, 8, 8, 3), np.uint8)}, "must hold 'frames'"),
    ("b.npz", {"frames": np.zeros((9, 8, 8, 3), np.float32)}, "frames must be uint8"),
    ("c.npz", {"frames": np.zeros((9, 8, 8, 3), np.uint8), "lut_float32": np.zeros(10, np.float32)},
     "lut_float32 must be float32 \\(256,\\)"),
    ("d.npy", np.zeros((2, 3, 9, 8, 8), np.float32), r"expected \(3, T, H, W\) or \(1, 3, T, H, W\)"),
    ("e.npy", np.full((3, 9, 8, 8), 2.0, np.float32), r"values must be in \[-1, 1\]"),
    ("f.mp4", None, "must be a .npy clip or a .npz"),
])
def test_classify_input_errors(tmp_path, name: str, arrays, message: str) -> None:
    path = tmp_path / name
    if isinstance(arrays, dict):
        np.savez(path, **arrays)
    elif arrays is not None:
        np.save(path, arrays)
    else:
        path.write_bytes(b"")
    with pytest.raises(ValueError, match=message):
        run_i3d.load_classify_input(path)
