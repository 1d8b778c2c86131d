"""The ``.skeleton`` fast path (``ntu._parse_well_formed``) gives bit-identical tracks to the line-by-line parse, and
hands anything unusual to it (which names the error)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets import ntu

SAMPLES = Path(__file__).resolve().parents[3].parent / "shared" / "samples" / "ntu"


def _strict(path: Path, monkeypatch) -> tuple[int, list]:
    with monkeypatch.context() as m:
        m.setattr(ntu, "_parse_well_formed", lambda lines: None)
        return ntu._parse(path)


def _same(fast, strict) -> None:
    assert fast[0] == strict[0] and len(fast[1]) == len(strict[1])
    for a, b in zip(fast[1], strict[1]):
        assert a.body_id == b.body_id and a.frames == b.frames
        ja, jb = a.arrays()[1], b.arrays()[1]
        assert ja.dtype == jb.dtype == np.float64
        np.testing.assert_array_equal(ja.view(np.uint64), jb.view(np.uint64))  # bit for bit


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"no real NTU samples at {SAMPLES}")
def test_real_skeletons_parse_bit_identically(monkeypatch):
    files = sorted(SAMPLES.glob("*.skeleton"))
    assert files
    for path in files:
        lines = path.read_bytes().decode("ascii").splitlines()
        assert ntu._parse_well_formed(lines) is not None, path  # real files take the fast path
        _same(ntu._parse(path), _strict(path, monkeypatch))


def _body(values: np.ndarray, body_id: int = 72057594037931101) -> ntu.BodyRecord:
    return ntu.BodyRecord(body_id, values, (0, 0, 0, 0, 0, 1, 0.1, -0.2, 2))


def test_awkward_numbers_parse_bit_identically(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    joints = rng.normal(0, 3, (ntu.NUM_JOINTS, ntu.JOINT_FIELDS)) * 10.0 ** rng.integers(-12, 12, (25, 12))
    joints[:, 11] = rng.integers(0, 3, 25)
    joints[0, :3] = (1e-300, -0.0, 3.4e38)
    path = tmp_path / "x.skeleton"
    half = joints * 0.5
    half[:, 11] = joints[:, 11]
    ntu.write_skeleton(path, [[_body(joints)], [], [_body(half), _body(joints, 7)]])
    _same(ntu._parse(path), _strict(path, monkeypatch))


@pytest.mark.parametrize("bad", ["nan", "1_0", "0x1A", "1e", "1.2.3", "inf", "1e39"])
def test_unusual_values_leave_the_fast_path(tmp_path, monkeypatch, bad):
    joints = np.zeros((ntu.NUM_JOINTS, ntu.JOINT_FIELDS))
    path = tmp_path / "x.skeleton"
    ntu.write_skeleton(path, [[_body(joints)]])
    lines = path.read_text().splitlines()
    lines[4] = " ".join([bad] + lines[4].split()[1:])
    assert ntu._parse_well_formed(lines) is None
    path.write_text("\r\n".join(lines) + "\r\n")
    if bad == "1_0":  # the line-by-line parse reads it as float("1_0") == 10, as before
        assert ntu._parse(path)[1][0].joints[0][0, 0] == 10.0
        return
    with pytest.raises(ntu.SkeletonFormatError, match="line 5"):
        ntu._parse(path)
