"""The hand-aware pose shuffle: every donor holds the other hand forward; the plain shuffle's same-hand share."""

from __future__ import annotations

import numpy as np

from vpn_head.eval import diagnostics as diag


def test_hand_aware_shuffle_pairs_only_videos_of_the_other_hand():
    ids = np.array([f"v{i}" for i in range(8) for _ in range(2)])  # 8 videos, 2 clips each
    hands = {f"v{i}": ("left" if i % 3 else "right") for i in range(8)}
    for seed in range(5):
        source = diag.hand_aware_shuffle(ids, hands, seed)
        assert source is not None and source.shape == ids.shape
        assert all(hands[ids[r]] != hands[ids[s]] for r, s in enumerate(source))
        assert diag.same_hand_share(ids, source, hands) == 0.0
    plain = diag.shuffle_poses(ids, seed=0)
    share = diag.same_hand_share(ids, plain, hands)
    same = [hands[ids[r]] == hands[ids[plain[r]]] for r in range(0, 16, 2)]
    assert share == np.mean(same)


def test_hand_aware_shuffle_needs_two_hands_and_every_video_known():
    ids = np.array(["a", "b", "c"])
    assert diag.hand_aware_shuffle(ids, {"a": "left", "b": "left", "c": "left"}, 0) is None
    assert diag.hand_aware_shuffle(ids, {"a": "left", "b": "right"}, 0) is None


def test_read_hands_from_the_synthetic_truth(tmp_path):
    (tmp_path / diag.TRUTH_FILE).write_text("sample_id,label,active_hand,active_joint\nS1,0,left,7\nS2,1,right,11\n")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("sample_id\n")
    assert diag.read_hands(manifest, tmp_path) == {"S1": "left", "S2": "right"}
    (tmp_path / diag.TRUTH_FILE).unlink()
    assert diag.read_hands(manifest, tmp_path) is None
