"""The synthetic NTU dataset: genuine formats, determinism, geometry of the drawing, class signal, protocol cover."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import cv2
import decord
import numpy as np
import pytest

from pipeline.datasets import ntu
from pipeline.datasets.ntu import NTU_JOINTS
from pipeline.synthetic import dataset as synthetic
from pipeline.synthetic.dataset import SyntheticConfig

SMALL = SyntheticConfig(n=24, seed=3, frame_size=(192, 108), min_frames=20, max_frames=40,
                        two_person_fraction=0.5, zero_body_frames=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("synthetic")
    return root, synthetic.generate(root, SMALL)


def _decode_cv2(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def test_layout_ids_and_labels(dataset):
    root, ids = dataset
    assert len(ids) == SMALL.n == len(set(ids))
    for plan, sample_id in zip(synthetic.plan_samples(SMALL), ids):
        sid = ntu.parse_sample_id(sample_id)
        assert plan.sample_id == sample_id and sid.action == plan.label + 1 and sid.camera in (1, 2, 3)
        video, skeleton = synthetic.sample_paths(root, sample_id)
        assert video == root / "nturgb+d_rgb" / f"{sample_id}_rgb.avi" and video.is_file()
        assert skeleton == root / "nturgb+d_skeletons" / f"{sample_id}.skeleton" and skeleton.is_file()
    assert not list(root.rglob(".writing_*"))


def test_same_seed_gives_identical_files_and_frames(tmp_path):
    config = SyntheticConfig(n=3, seed=11, frame_size=(128, 72), min_frames=8, max_frames=12)
    ids_a = synthetic.generate(tmp_path / "a", config)
    ids_b = synthetic.generate(tmp_path / "b", config)
    ids_c = synthetic.generate(tmp_path / "c", dataclasses.replace(config, seed=12))
    assert ids_a == ids_b
    for sample_id in ids_a:
        (video_a, skel_a), (video_b, skel_b) = (synthetic.sample_paths(tmp_path / r, sample_id) for r in "ab")
        assert skel_a.read_bytes() == skel_b.read_bytes()
        frames_a, frames_b = _decode_cv2(video_a), _decode_cv2(video_b)
        assert len(frames_a) == len(frames_b) > 0
        assert all(np.array_equal(fa, fb) for fa, fb in zip(frames_a, frames_b))
    skel_c = synthetic.sample_paths(tmp_path / "c", ids_c[0])[1]
    assert skel_c.read_bytes() != synthetic.sample_paths(tmp_path / "a", ids_a[0])[1].read_bytes()


def test_skeleton_round_trip(dataset):
    root, ids = dataset
    plans = synthetic.plan_samples(SMALL)
    assert any(p.two_person for p in plans) and not all(p.two_person for p in plans)
    for plan in plans:
        sample = synthetic.build_sample(plan, SMALL)
        seq = ntu.read_skeleton(synthetic.sample_paths(root, plan.sample_id)[1])
        num_bodies = 2 if plan.two_person else 1
        assert seq.num_frames == plan.num_frames == len(sample.frames)
        assert seq.num_bodies == num_bodies
        assert seq.body_ids.tolist() == [b.body_id for b in sample.frames[-1]]
        assert all(b.body_id >= 2**56 for b in sample.frames[-1])
        present = seq.frames_with_bodies()
        assert not present[: SMALL.zero_body_frames].any() and present[SMALL.zero_body_frames:].all()
        written = np.stack([np.stack([b.joints for b in bodies]) for bodies in sample.frames[SMALL.zero_body_frames:]])
        np.testing.assert_allclose(seq.joints[present], written[..., 0:3], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(seq.color_xy[present], written[..., 5:7], rtol=1e-6, atol=1e-4)
        # the colour coordinates are the pinhole projection of the 3D joints, in 1920x1080 space
        np.testing.assert_allclose(seq.color_xy[present], synthetic.project_color(seq.joints[present]), atol=0.05)


def test_file_format_matches_the_real_ntu_files(dataset, shared):
    root, ids = dataset
    ours = synthetic.sample_paths(root, ids[0])[1].read_bytes()
    real = (shared / "samples" / "ntu" / "S001C001P001R001A001.skeleton").read_bytes()
    assert ours.count(b"\r\n") == ours.count(b"\n") and real.count(b"\r\n") == real.count(b"\n")
    line = next(l for l in ours.split(b"\r\n") if len(l.split()) == 12)
    assert len(line.split()) == len(real.split(b"\r\n")[4].split())
    header = synthetic.sample_paths(root, ids[0])[0].read_bytes()[:512]
    assert header.startswith(b"RIFF") and header[8:12] == b"AVI " and header.count(b"DIVX") == 2


def test_videos_decode_to_the_skeleton_frame_count(dataset):
    root, ids = dataset
    width, height = SMALL.frame_size
    for i, sample_id in enumerate(ids):
        video, skeleton = synthetic.sample_paths(root, sample_id)
        num_frames = ntu.read_skeleton(skeleton).num_frames
        frames = _decode_cv2(video)
        assert len(frames) == num_frames and frames[0].shape == (height, width, 3)
        if i < 4:  # the other backends on a few videos
            assert len(decord.VideoReader(str(video))) == num_frames
            with av.open(str(video)) as container:
                assert container.streams.video[0].codec_context.name == "mpeg4"
                assert sum(1 for _ in container.decode(video=0)) == num_frames


def _person_box(color_xy: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """Box of colour joints (M, 25, 2) scaled to the video, grown by 10% of its height (what a crop would use)."""
    scale = np.array(frame_size) / np.array(ntu.COLOR_FRAME_SIZE)
    uv = color_xy.reshape(-1, 2) * scale
    (x0, y0), (x1, y1) = uv.min(0), uv.max(0)
    margin = 0.1 * (y1 - y0)
    return np.array([x0 - margin, y0 - margin, x1 + margin, y1 + margin])


def _box_mask(box: np.ndarray, shape: tuple[int, int], pad: float = 0.0) -> np.ndarray:
    ys, xs = np.mgrid[: shape[0], : shape[1]] + 0.5
    return (xs >= box[0] - pad) & (xs <= box[2] + pad) & (ys >= box[1] - pad) & (ys <= box[3] + pad)


@pytest.mark.parametrize("frame_size", [(192, 108), (160, 120)])
def test_person_is_inside_its_joint_box_and_distractors_outside(frame_size):
    config = dataclasses.replace(SMALL, n=6, frame_size=frame_size, two_person_fraction=0.5)
    for plan in synthetic.plan_samples(config):
        sample = synthetic.build_sample(plan, config)
        width, height = frame_size
        for t in (config.zero_body_frames, plan.num_frames // 2, plan.num_frames - 1):
            frame = synthetic.render_frame(sample, t)
            changed = (cv2.absdiff(frame, sample.background).max(axis=2) > 25)
            color_xy = np.stack([body.joints[:, 5:7] for body in sample.frames[t]])  # as written to the file
            person = _box_mask(_person_box(color_xy, frame_size), (height, width))
            others = np.zeros_like(person)
            for d in sample.distractors:
                box = _box_mask(d.boxes[t], (height, width), pad=1.5)
                assert not (box & person).any(), "a distractor overlaps the person's box"
                others |= box
            assert changed[person].sum() > 0.02 * person.sum(), "no person drawn inside the joint box"
            assert changed[others].sum() > 0, "no distractor drawn"
            assert changed[~person & ~others].sum() <= 0.002 * changed.size


def test_decoded_video_is_close_to_the_drawing(dataset):
    root, ids = dataset
    plan = synthetic.plan_samples(SMALL)[0]
    sample = synthetic.build_sample(plan, SMALL)
    decoded = _decode_cv2(synthetic.sample_paths(root, ids[0])[0])
    for t in (0, len(decoded) - 1):
        assert cv2.PSNR(decoded[t], synthetic.render_frame(sample, t)) > 25


def test_classes_differ_only_in_right_hand_motion():
    config = SyntheticConfig(n=48, seed=5)
    hand, spine, left = NTU_JOINTS.index("HandRight"), NTU_JOINTS.index("SpineBase"), NTU_JOINTS.index("HandLeft")
    hand_var = {c: [] for c in range(config.num_classes)}
    left_var = {c: [] for c in range(config.num_classes)}
    axis_var = {c: [] for c in range(config.num_classes)}
    for plan in synthetic.plan_samples(config):
        xyz = synthetic.build_sample(plan, config).xyz[0]  # (T, 25, 3)
        rel = xyz[:, hand] - xyz[:, spine]  # (T, 3)
        hand_var[plan.label].append(rel.var(axis=0).sum())
        left_var[plan.label].append((xyz[:, left] - xyz[:, spine]).var(axis=0).sum())
        if plan.camera == 1:  # seen (about) frontally: the pattern's axes are the image axes
            axis_var[plan.label].append(rel.var(axis=0)[:2])
    means = {c: float(np.mean(v)) for c, v in hand_var.items()}
    assert means[0] < 0.1 * min(means[c] for c in (1, 2, 3)), means  # "still" vs moving hands
    up_down, left_right = np.mean(axis_var[1], axis=0), np.mean(axis_var[2], axis=0)
    assert up_down[1] > 5 * up_down[0] and left_right[0] > 5 * left_right[1]
    left_means = [float(np.mean(v)) for v in left_var.values()]
    assert max(left_means) < 3 * min(left_means)  # the rest of the body does not depend on the class


def _splits(sample_id: str) -> dict[str, str]:
    sid = ntu.parse_sample_id(sample_id)
    splits = {
        "cs1": "train" if sid.subject in ntu.NTU120_CS_TRAIN_SUBJECTS else "test",
        "cs2": "train" if sid.setup % 2 == 0 else "test",
    }
    if sid.setup <= 17:
        splits["cs"] = "train" if sid.subject in ntu.NTU60_CS_TRAIN_SUBJECTS else "test"
        splits["cv"] = "train" if sid.camera in (2, 3) else "test"
    return splits


@pytest.mark.parametrize("num_classes,ntu120", [(4, False), (4, True), (8, False)])
def test_every_protocol_has_train_and_test_of_every_class(num_classes, ntu120):
    config = SyntheticConfig(n=6 * num_classes if not ntu120 else 12 * num_classes, num_classes=num_classes,
                             ntu120=ntu120)
    seen = set()
    for plan in synthetic.plan_samples(config):
        seen |= {(protocol, split, plan.label) for protocol, split in _splits(plan.sample_id).items()}
    for protocol in ("cs", "cv", "cs1", "cs2"):
        for label in range(num_classes):
            assert {(protocol, "train", label), (protocol, "test", label)} <= seen, (protocol, label)
    setups = {ntu.parse_sample_id(p.sample_id).setup for p in synthetic.plan_samples(config)}
    assert (max(setups) >= 18) == ntu120 and min(setups) >= 1


def test_full_hd_video(tmp_path):
    config = SyntheticConfig(n=1, frame_size=(1920, 1080), min_frames=3, max_frames=3)
    (sample_id,) = synthetic.generate(tmp_path, config)
    frames = _decode_cv2(synthetic.sample_paths(tmp_path, sample_id)[0])
    assert len(frames) == 3 and frames[0].shape == (1080, 1920, 3)


@pytest.mark.parametrize("field,value,match", [
    ("n", 0, "n must be"),
    ("num_classes", 9, "num_classes"),
    ("frame_size", (641, 360), "even"),
    ("frame_size", (32, 32), "frame_size"),
    ("min_frames", 0, "min_frames"),
    ("max_frames", 10, "min_frames <= max_frames"),
    ("two_person_fraction", 1.5, "two_person_fraction"),
    ("zero_body_frames", 40, "zero_body_frames"),
    ("distance_m", (1.0, 3.0), "distance_m"),
])
def test_bad_config_is_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**{field: value})


def test_too_many_samples_for_distinct_ids_is_refused():
    with pytest.raises(ValueError, match="too large"):
        synthetic.plan_samples(SyntheticConfig(n=30_000, num_classes=1))


def test_existing_dataset_is_not_mixed_silently(tmp_path):
    config = SyntheticConfig(n=2, frame_size=(96, 64), min_frames=4, max_frames=4)
    synthetic.generate(tmp_path, config)
    with pytest.raises(FileExistsError, match="overwrite"):
        synthetic.generate(tmp_path, dataclasses.replace(config, seed=1))
    ids = synthetic.generate(tmp_path, dataclasses.replace(config, seed=1), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "nturgb+d_skeletons").iterdir()) == sorted(f"{i}.skeleton" for i in ids)


def test_cli(tmp_path, capsys):
    assert synthetic.main(["--root", str(tmp_path), "--n", "2", "--frame-size", "96x64", "--min-frames", "5",
                           "--max-frames", "6"]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    assert len(list((tmp_path / "nturgb+d_rgb").glob("*_rgb.avi"))) == 2
    assert synthetic.main(["--root", str(tmp_path), "--n", "0"]) == 2
    assert "n must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synthetic.main(["--root", str(tmp_path), "--frame-size", "640by360"])


def test_one_camera_per_take_gives_independent_takes_covering_every_view():
    from pipeline.datasets.ntu import ntu_splits, parse_sample_id
    from pipeline.synthetic.dataset import SyntheticConfig, plan_samples

    plans = plan_samples(SyntheticConfig(n=48, cameras_per_take=1))
    assert len({p.take for p in plans}) == 48 and len({p.sample_id for p in plans}) == 48
    for protocol in ("cs", "cv"):
        for label in range(4):
            splits = {ntu_splits(parse_sample_id(p.sample_id), "ntu60")[protocol] for p in plans if p.label == label}
            assert splits == {"train", "test"}, (protocol, label)
    with pytest.raises(ValueError, match="cameras_per_take"):
        SyntheticConfig(cameras_per_take=4)
