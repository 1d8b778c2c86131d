"""pipeline.video.crop: the clip box (contains joints, square, inside the frame, padding) and crop + resize values."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.video.crop import box_to_pixels, clip_box, crop_and_resize, normalize_crops, to_uint8_crops

W, H = 1920, 1080


def joints_around(points: list[tuple[float, float]], frames: int = 4, bodies: int = 2) -> np.ndarray:
    """(T, B, J, 2) joints: body 0 holds ``points`` in every frame, other bodies are missing (NaN)."""
    joints = np.full((frames, bodies, len(points), 2), np.nan)
    joints[:, 0] = np.asarray(points, float)
    return joints


def contains(box: np.ndarray, points: np.ndarray) -> bool:
    points = points.reshape(-1, 2)
    points = points[np.isfinite(points).all(1)]
    return bool(((points >= box[:2] - 1e-3) & (points <= box[2:] + 1e-3)).all())


def test_box_is_padded_square_around_all_joints_of_all_frames_and_bodies() -> None:
    joints = joints_around([(900, 400), (1000, 600)])
    joints[2, 1] = [(1100, 500), (1050, 450)]  # a second body in one frame widens the box
    box = clip_box(joints, W, H, pad=0.15, min_size=0)
    assert box.dtype == np.float32 and box.shape == (4,)
    # joints span x 900..1100, y 400..600: side 200, padded 15 % per side -> 260, centred on (1000, 500)
    np.testing.assert_allclose(box, [870, 370, 1130, 630], atol=1e-3)
    assert contains(box, joints)


def test_non_square_joints_grow_the_shorter_side_around_the_centre() -> None:
    box = clip_box(joints_around([(500, 300), (600, 700)]), W, H, pad=0.1, min_size=0)
    side = 400 * 1.2
    np.testing.assert_allclose(box, [550 - side / 2, 500 - side / 2, 550 + side / 2, 500 + side / 2], atol=1e-3)


@pytest.mark.parametrize("pad", [0.0, 0.15, 0.5])
def test_padding_is_configurable(pad: float) -> None:
    box = clip_box(joints_around([(800, 300), (1000, 500)]), W, H, pad=pad, min_size=0)
    assert box[2] - box[0] == pytest.approx(200 * (1 + 2 * pad), abs=1e-3)
    assert box[3] - box[1] == pytest.approx(200 * (1 + 2 * pad), abs=1e-3)


def test_min_size() -> None:
    box = clip_box(joints_around([(960, 540)]), W, H, pad=0.15, min_size=100)
    np.testing.assert_allclose(box, [910, 490, 1010, 590])


def test_box_near_the_edge_is_shifted_inside_and_stays_square() -> None:
    joints = joints_around([(10, 900), (300, 1075)])
    box = clip_box(joints, W, H, pad=0.15, min_size=0)
    side = 290 * 1.3
    np.testing.assert_allclose(box, [0, H - side, side, H], atol=1e-3)
    assert contains(box, joints)


def test_joints_outside_the_frame_are_clipped() -> None:
    joints = joints_around([(-200, 500), (100, 700), (1500, 5000)])
    box = clip_box(joints, W, H, pad=0.0, min_size=0)
    # clipped to x 0..1500, y 500..1080: side 1500 > frame height -> the box spans the frame's height
    np.testing.assert_allclose(box, [0, 0, 1500, H], atol=1e-3)


def test_box_larger_than_the_short_side_is_clamped_to_the_frame() -> None:
    joints = joints_around([(200, 400), (1200, 600)])  # two people apart: side 1300 > frame height
    box = clip_box(joints, W, H, pad=0.15, min_size=0)
    np.testing.assert_allclose(box, [50, 0, 1350, H], atol=1e-3)
    assert contains(box, joints)
    joints = joints_around([(200, 400), (1700, 600)])  # side 1950 > frame width too: the whole frame
    np.testing.assert_allclose(clip_box(joints, W, H, pad=0.15, min_size=0), [0, 0, W, H], atol=1e-3)


def test_nan_bodies_and_joints_are_ignored() -> None:
    joints = joints_around([(900, 400), (1000, 600), (np.nan, np.nan)])
    joints[1, 0, 0] = [np.nan, 3.0]  # half-missing joint: ignored, not treated as y = 3
    assert np.isnan(joints).any()
    np.testing.assert_allclose(clip_box(joints, W, H, pad=0, min_size=0), [850, 400, 1050, 600], atol=1e-3)


def test_no_joint_at_all_gives_the_centre_square() -> None:
    joints = np.full((8, 2, 25, 2), np.nan)
    np.testing.assert_array_equal(clip_box(joints, W, H), [420, 0, 1500, H])
    np.testing.assert_array_equal(clip_box(joints, 640, 480), [80, 0, 560, 480])


@pytest.mark.parametrize("seed", range(5))
def test_random_joints_always_give_a_box_inside_the_frame_holding_them(seed: int) -> None:
    rng = np.random.default_rng(seed)
    centre = rng.uniform([0, 0], [W, H])
    joints = centre + rng.normal(0, 150, (16, 2, 25, 2))
    joints[rng.random((16, 2)) < 0.3] = np.nan
    box = clip_box(joints, W, H, pad=0.15, min_size=64)
    assert 0 <= box[0] < box[2] <= W and 0 <= box[1] < box[3] <= H
    assert contains(box, np.clip(joints, 0, [W, H]))
    if box[2] - box[0] < H - 1e-3 and box[3] - box[1] < H - 1e-3:
        assert box[2] - box[0] == pytest.approx(box[3] - box[1], abs=1e-3)


def test_clip_box_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(T, B, J, 2\)"):
        clip_box(np.zeros((4, 25, 2)), W, H)
    with pytest.raises(ValueError, match="frame size"):
        clip_box(np.zeros((4, 1, 25, 2)), 0, H)


def test_box_to_pixels_rounds_half_up_and_clamps() -> None:
    assert box_to_pixels(np.array([10.4, 10.5, 50.5, 50.49]), 100, 100) == (10, 11, 51, 50)
    assert box_to_pixels(np.array([-3.0, 95.2, 120.0, 130.0]), 100, 100) == (0, 95, 100, 100)
    assert box_to_pixels(np.array([40.2, 40.2, 40.3, 40.3]), 100, 100) == (40, 40, 41, 41)


def gradient_frames(t: int = 3) -> np.ndarray:
    """(T, H, W, 3) frames with R = x mod 256, G = y mod 256, B = 10 * frame index."""
    ys, xs = np.mgrid[0:H, 0:W]
    frame = np.stack([xs % 256, ys % 256, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    frames = np.repeat(frame[None], t, axis=0)
    frames[..., 2] = (10 * np.arange(t))[:, None, None]
    return frames


def test_crop_without_resize_is_the_exact_pixels() -> None:
    frames = gradient_frames()
    box = np.array([100.3, 20.0, 324.3, 244.0], np.float32)  # 224 x 224 after rounding: no resampling
    crops = to_uint8_crops(frames, box)
    assert crops.shape == (3, 224, 224, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops, frames[:, 20:244, 100:324])
    assert crops[2, 5, 7].tolist() == [107, 25, 20]


def test_shrinking_crop_keeps_the_gradient() -> None:
    frames = gradient_frames(2)
    box = np.array([0, 0, 448, 448], np.float32)  # 2x shrink with INTER_AREA: each output pixel = 2x2 mean
    crops = to_uint8_crops(frames, box)
    # output (row 10, col 30) averages x in {60, 61}, y in {20, 21} -> R = 60.5, G = 20.5 (rounded by OpenCV)
    assert crops[1, 10, 30, 0] in (60, 61) and crops[1, 10, 30, 1] in (20, 21) and crops[1, 10, 30, 2] == 10
    np.testing.assert_allclose(crops[0, 0, :100, 0], 2 * np.arange(100) + 0.5, atol=0.5)


def test_growing_crop_interpolates_linearly() -> None:
    frames = gradient_frames(1)
    box = np.array([50, 50, 162, 162], np.float32)  # 112 -> 224: 2x growth with INTER_LINEAR
    crops = to_uint8_crops(frames, box)
    # output col c samples source x = 50 + (c + 0.5) / 2 - 0.5; a linear gradient stays linear
    cols = np.arange(2, 220)
    np.testing.assert_allclose(crops[0, 100, cols, 0], 50 + (cols + 0.5) / 2 - 0.5, atol=1)


def test_crop_and_resize_layout_and_range() -> None:
    frames = np.zeros((5, 120, 160, 3), np.uint8)
    frames[:, :, :, 0] = 255  # pure red
    frames[1] = 0
    out = crop_and_resize(frames, np.array([20, 0, 140, 120], np.float32))
    assert out.shape == (3, 5, 224, 224) and out.dtype == np.float32
    assert out.min() == -1.0 and out.max() == 1.0
    np.testing.assert_array_equal(out[0, 0], 1.0)  # channel 0 is red
    np.testing.assert_array_equal(out[1:, 0], -1.0)
    np.testing.assert_array_equal(out[:, 1], -1.0)  # frame 1 is black


def test_normalize_crops_maps_every_value_exactly() -> None:
    crops = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    out = normalize_crops(crops)
    assert out.shape == (3, 1, 16, 16)
    np.testing.assert_allclose(out[0, 0].ravel(), np.arange(256) / 127.5 - 1, rtol=0, atol=1e-6)
    assert out[0, 0, 0, 0] == -1.0 and out[0, 0, -1, -1] == 1.0 and out.max() <= 1.0


def test_to_uint8_crops_rejects_float_frames() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_uint8_crops(np.zeros((2, 10, 10, 3), np.float32), np.array([0, 0, 5, 5]))


def reference_crop_and_resize(frames: np.ndarray, box: np.ndarray, size: int = 224) -> np.ndarray:
    """The source path's crop as it was written before ``out=`` / ``area_from``: the bits a source cache holds."""
    import cv2

    x0, y0, x1, y1 = box_to_pixels(box, frames.shape[2], frames.shape[1])
    crops = frames[:, y0:y1, x0:x1]
    interpolation = cv2.INTER_AREA if crops.shape[1] >= size and crops.shape[2] >= size else cv2.INTER_LINEAR
    resized = np.stack([cv2.resize(c, (size, size), interpolation=interpolation) for c in crops])
    return (resized.transpose(3, 0, 1, 2).astype(np.float32) / np.float32(127.5) - np.float32(1.0)).astype(np.float32)


@pytest.mark.parametrize("box", [[100.3, 20.0, 700.9, 620.6], [10, 10, 250, 250], [30.2, 40.7, 150.1, 160.6]])
def test_source_crops_are_bit_identical_with_or_without_out(box: list[float]) -> None:
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (4, 640, 720, 3), np.uint8)
    box = np.array(box, np.float32)
    expected = reference_crop_and_resize(frames, box)
    np.testing.assert_array_equal(crop_and_resize(frames, box), expected)
    out = np.full((3, 4, 224, 224), np.nan, np.float32)
    assert crop_and_resize(frames, box, out=out) is out
    np.testing.assert_array_equal(out, expected)
    crops = to_uint8_crops(frames, box)
    assert normalize_crops(crops, out=np.empty((3, 4, 224, 224), np.float32)).tobytes() == expected.tobytes()


def test_area_from_picks_linear_for_a_near_size_shrink_and_area_beyond() -> None:
    import cv2

    rng = np.random.default_rng(6)
    frames = rng.integers(0, 256, (2, 600, 600, 3), np.uint8)
    near, far = np.array([0, 0, 256, 256], np.float32), np.array([0, 0, 500, 500], np.float32)
    linear = np.stack([cv2.resize(f[:256, :256], (224, 224), interpolation=cv2.INTER_LINEAR) for f in frames])
    area = np.stack([cv2.resize(f[:256, :256], (224, 224), interpolation=cv2.INTER_AREA) for f in frames])
    np.testing.assert_array_equal(to_uint8_crops(frames, near, area_from=2.0), linear)  # 1.14x shrink: linear
    np.testing.assert_array_equal(to_uint8_crops(frames, near), area)  # the source path: area for any shrink
    far_area = np.stack([cv2.resize(f[:500, :500], (224, 224), interpolation=cv2.INTER_AREA) for f in frames])
    np.testing.assert_array_equal(to_uint8_crops(frames, far, area_from=2.0), far_area)  # 2.2x: area again


def test_out_of_the_wrong_shape_is_refused() -> None:
    frames = np.zeros((2, 100, 100, 3), np.uint8)
    with pytest.raises(ValueError, match="out must be"):
        to_uint8_crops(frames, np.array([0, 0, 50, 50]), 32, out=np.empty((2, 32, 31, 3), np.uint8))
    with pytest.raises(ValueError, match="out must be"):
        crop_and_resize(frames, np.array([0, 0, 50, 50]), 32, out=np.empty((3, 2, 32, 32), np.float64))
