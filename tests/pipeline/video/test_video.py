"""pipeline.video.reader: lossless synthetic videos with known pixels, sampling, fallback, bad inputs, real NTU files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.video import reader as video
from pipeline.video.reader import (
    BACKENDS,
    DecodeError,
    FrameCountError,
    OpenCVReader,
    open_video,
    read_clip,
    read_sampled_clips,
    sample_frame_indices,
)
from tests.conftest import shared_path

VIDEO_BACKENDS = ("opencv", "pyav", "decord")
N_FRAMES, WIDTH, HEIGHT, FPS = 40, 64, 48, 30.0


def frame_rgb(index: int) -> np.ndarray:
    """The known content of synthetic frame ``index``: a constant colour whose channels all encode the index."""
    return np.full((HEIGHT, WIDTH, 3), (3 * index, 255 - 3 * index, (7 * index) % 256), np.uint8)


def write_ffv1(path: Path, n_frames: int = N_FRAMES) -> Path:
    """Write a lossless FFV1 video whose frame i is ``frame_rgb(i)``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened(), "this OpenCV build cannot write FFV1"
    for index in range(n_frames):
        writer.write(cv2.cvtColor(frame_rgb(index), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def expected(indices: np.ndarray) -> np.ndarray:
    return np.stack([frame_rgb(int(i)) for i in indices])


@pytest.fixture(scope="module", params=[".avi", ".mkv"])
def lossless_video(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ffv1(tmp_path_factory.mktemp("video") / f"ffv1{request.param}")


@pytest.fixture(scope="module")
def lossless_avi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ffv1(tmp_path_factory.mktemp("video") / "ffv1.avi")


def write_frame_folder(folder: Path, numbers: list[int], ext: str) -> Path:
    """N-UCLA-style folder: ``frame_<N>_tc_<tc>_rgb.<ext>``, frame k (in numeric order) = ``frame_rgb(k)``."""
    folder.mkdir()
    for k, number in enumerate(sorted(numbers)):
        bgr = cv2.cvtColor(frame_rgb(k), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / f"frame_{number}_tc_{1000 + 33 * number}_rgb.{ext}"), bgr)
        cv2.imwrite(str(folder / f"frame_{number}_tc_{1000 + 33 * number}_depth.png"), np.zeros((4, 4), np.uint8))
        (folder / f"frame_{number}_tc_{1000 + 33 * number}_skeletons.txt").write_text("1\n")
    return folder


# --- lossless synthetic videos: exact frames, every backend ------------------------------------------------------


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
def test_metadata_of_lossless_video(lossless_video: Path, backend: str) -> None:
    with open_video(lossless_video, backend, fallback=()) as reader:
        assert (reader.num_frames, reader.width, reader.height) == (N_FRAMES, WIDTH, HEIGHT)
        assert reader.fps == pytest.approx(FPS)


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
def test_get_frames_returns_exactly_the_requested_frames(lossless_video: Path, backend: str) -> None:
    indices = np.array([5, 0, 39, 5, 17, 17, 38, 1])  # unordered, with repeats, first and last frame
    with open_video(lossless_video, backend, fallback=()) as reader:
        frames = reader.get_frames(indices)
    assert frames.dtype == np.uint8 and frames.shape == (len(indices), HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(frames, expected(indices))


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
def test_reader_serves_several_calls_including_going_back(lossless_avi: Path, backend: str) -> None:
    with open_video(lossless_avi, backend, fallback=()) as reader:
        for indices in ([10, 12], [13, 30], [2, 3], np.arange(N_FRAMES)):
            np.testing.assert_array_equal(reader.get_frames(np.array(indices)), expected(indices))


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
def test_get_frames_rejects_bad_indices(lossless_avi: Path, backend: str) -> None:
    with open_video(lossless_avi, backend, fallback=()) as reader:
        with pytest.raises(IndexError, match=r"\[0, 40\)"):
            reader.get_frames(np.array([0, N_FRAMES]))
        with pytest.raises(ValueError, match="non-negative"):
            reader.get_frames(np.array([-1, 3]))
        with pytest.raises(ValueError, match="1-D integer"):
            reader.get_frames(np.array([[0, 1]]))
        with pytest.raises(ValueError, match="1-D integer"):
            reader.get_frames(np.array([0.0, 1.0]))
        assert reader.get_frames(np.array([], np.int64)).shape == (0, HEIGHT, WIDTH, 3)


def test_read_clip_on_lossless_video(lossless_video: Path) -> None:
    indices = sample_frame_indices(N_FRAMES, clip_len=64)[0]
    frames, backend = read_clip(lossless_video, indices)
    assert backend == video.DEFAULT_BACKEND
    np.testing.assert_array_equal(frames, expected(indices))


def test_unknown_backend_is_a_value_error(lossless_avi: Path) -> None:
    with pytest.raises(ValueError, match="unknown video backend 'ffmpeg-cli'"):
        open_video(lossless_avi, "ffmpeg-cli")
    with pytest.raises(ValueError, match="unknown video backend"):
        read_clip(lossless_avi, np.arange(3), backends=("opencv", "nope"))


# --- image folders (N-UCLA) ---------------------------------------------------------------------------------------


def test_frame_folder_png_is_exact_and_sorted_by_frame_number(tmp_path: Path) -> None:
    numbers = [3, 10, 2, 100, 25, 7]  # lexicographic order differs from numeric order
    folder = write_frame_folder(tmp_path / "a01_s01_e00_v01", numbers, "png")
    with open_video(folder, "frames", fallback=()) as reader:
        assert (reader.num_frames, reader.width, reader.height) == (len(numbers), WIDTH, HEIGHT)
        indices = np.array([5, 0, 2, 2, 1])
        np.testing.assert_array_equal(reader.get_frames(indices), expected(indices))


def test_frame_folder_jpeg_within_tolerance(tmp_path: Path) -> None:
    folder = write_frame_folder(tmp_path / "clip", list(range(12)), "jpg")
    frames, backend = read_clip(folder, np.arange(12), backends=("frames",))
    assert backend == "frames"
    np.testing.assert_allclose(frames.astype(int), expected(np.arange(12)).astype(int), atol=2)


def test_frame_folder_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DecodeError, match="no frame images"):
        open_video(tmp_path / "empty", "frames", fallback=())
    folder = write_frame_folder(tmp_path / "broken", [0, 1, 2], "jpg")
    (folder / "frame_1_tc_1033_rgb.jpg").write_bytes(b"")
    with open_video(folder, "frames", fallback=()) as reader:
        with pytest.raises(DecodeError, match=r"frame_1_tc_1033_rgb\.jpg is unreadable"):
            reader.get_frames(np.array([0, 1]))
    folder = write_frame_folder(tmp_path / "dup", [0, 1], "png")
    cv2.imwrite(str(folder / "frame_01_tc_9_rgb.png"), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    with pytest.raises(DecodeError, match="same frame number"):
        open_video(folder, "frames", fallback=())


# --- sampling ------------------------------------------------------------------------------------------------------


def round_half_up_ratio(numerator: np.ndarray, denominator: int) -> np.ndarray:
    """Integer round-half-up of numerator / denominator (an exact reference for the float sampling)."""
    return (2 * numerator + denominator) // (2 * denominator)


def test_sampling_100_frames_one_clip() -> None:
    indices = sample_frame_indices(100)
    i = np.arange(64)
    assert indices.shape == (1, 64) and indices.dtype == np.int64
    np.testing.assert_array_equal(indices[0], round_half_up_ratio(99 * i, 63))
    assert indices[0, [0, 1, 2, 32, 62, 63]].tolist() == [0, 2, 3, 50, 97, 99]
    assert len(np.unique(indices)) == 64


def test_sampling_64_frames_is_every_frame() -> None:
    np.testing.assert_array_equal(sample_frame_indices(64), np.arange(64)[None])


def test_sampling_10_frames_repeats_evenly() -> None:
    expected_indices = np.repeat(np.arange(10), [4, 7, 7, 7, 7, 7, 7, 7, 7, 4])
    np.testing.assert_array_equal(sample_frame_indices(10)[0], expected_indices)
    np.testing.assert_array_equal(sample_frame_indices(1)[0], np.zeros(64, int))


def test_sampling_three_windows() -> None:
    # 100 frames < 3 x 64: three overlapping windows of 64 consecutive frames, starts evenly spaced 0, 18, 36.
    np.testing.assert_array_equal(
        sample_frame_indices(100, clips_per_video=3), np.stack([np.arange(s, s + 64) for s in (0, 18, 36)])
    )
    # 300 frames: three consecutive segments of 100 frames, each sampled like a 100-frame video.
    within = round_half_up_ratio(99 * np.arange(64), 63)
    np.testing.assert_array_equal(
        sample_frame_indices(300, clips_per_video=3), np.stack([s + within for s in (0, 100, 200)])
    )
    # 30 frames < 64: every window is the whole video.
    np.testing.assert_array_equal(sample_frame_indices(30, clips_per_video=3), np.repeat(sample_frame_indices(30), 3, 0))


def test_sampling_clip_len_and_bad_arguments() -> None:
    np.testing.assert_array_equal(sample_frame_indices(9, clip_len=5)[0], [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(sample_frame_indices(6, clip_len=3)[0], [0, 3, 5])  # 2.5 rounds half up
    for bad in ((0,), (10, 0), (10, 64, 0)):
        with pytest.raises(ValueError, match="positive"):
            sample_frame_indices(*bad)


def test_sampling_jitter_stays_in_cells_and_is_reproducible() -> None:
    plain = sample_frame_indices(300, clips_per_video=2)
    jittered = sample_frame_indices(300, clips_per_video=2, jitter=np.random.default_rng(0))
    again = sample_frame_indices(300, clips_per_video=2, jitter=np.random.default_rng(0))
    np.testing.assert_array_equal(jittered, again)
    assert not np.array_equal(jittered, plain)
    step = 149 / 63
    assert np.abs(jittered - plain).max() <= np.ceil(step / 2)
    assert (np.diff(jittered, axis=1) >= 0).all()
    assert jittered[0].min() >= 0 and jittered[0].max() <= 149 and jittered[1].min() >= 150
    assert jittered.max() <= 299
    # With one frame per cell there is nothing to jitter.
    np.testing.assert_array_equal(sample_frame_indices(64, jitter=np.random.default_rng(1)), np.arange(64)[None])


# --- fallback ------------------------------------------------------------------------------------------------------


class FailingReader(OpenCVReader):
    """Opens like OpenCV, then fails to decode."""

    def _decode_into(self, wanted: np.ndarray, slots: list[np.ndarray], out: np.ndarray) -> None:
        raise RuntimeError("synthetic decoder crash")


def refuse_to_open(path: Path, threads: int = 1) -> OpenCVReader:
    raise RuntimeError("synthetic open failure")


@pytest.mark.parametrize("broken", [FailingReader, refuse_to_open])
def test_read_clip_falls_back_and_warns(
    lossless_avi: Path, broken: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(BACKENDS, "broken", broken)
    indices = np.array([4, 8, 15, 16, 23])
    with caplog.at_level(logging.WARNING, logger="pipeline.video.reader"):
        frames, backend = read_clip(lossless_avi, indices, backends=("broken", "pyav"))
    assert backend == "pyav"
    np.testing.assert_array_equal(frames, expected(indices))
    assert any("broken" in r.getMessage() and "synthetic" in r.getMessage() for r in caplog.records)


def test_open_video_falls_back(lossless_avi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "broken", refuse_to_open)
    with open_video(lossless_avi, "broken", fallback=("decord",)) as reader:
        assert isinstance(reader, video.DecordReader)
    with pytest.raises(DecodeError, match="no backend could open it: broken: RuntimeError: synthetic open failure"):
        open_video(lossless_avi, "broken", fallback=())


def test_read_clip_when_every_backend_fails(lossless_avi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "broken", FailingReader)
    monkeypatch.setitem(BACKENDS, "broken2", refuse_to_open)
    with pytest.raises(DecodeError, match="every backend failed: broken: .*crash; broken2: .*open failure") as info:
        read_clip(lossless_avi, np.arange(3), backends=("broken", "broken2"))
    assert str(lossless_avi) in str(info.value)


# --- wrong frame counts --------------------------------------------------------------------------------------------


def overcounting(extra: int) -> type[OpenCVReader]:
    """An OpenCV reader whose metadata claims ``extra`` frames more than the file holds."""

    class Overcounting(OpenCVReader):
        def __init__(self, path: Path, threads: int = 1) -> None:
            super().__init__(path, threads)
            self.num_frames += extra

    return Overcounting


def test_small_frame_count_error_is_resampled(lossless_avi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "over2", overcounting(2))  # 2 of 42 missing: within 5 %
    clips = read_sampled_clips(lossless_avi, clips_per_video=2, backends=("over2",))
    assert clips.num_frames == N_FRAMES and clips.backend == "over2"
    np.testing.assert_array_equal(clips.indices, sample_frame_indices(N_FRAMES, clips_per_video=2))
    assert clips.frames.shape == (2, 64, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(clips.frames[1], expected(clips.indices[1]))


def test_large_frame_count_error_raises(lossless_avi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "over10", overcounting(10))
    with pytest.raises(FrameCountError, match="only 40 of the 50 frames") as info:
        read_sampled_clips(lossless_avi, backends=("over10",))
    assert (info.value.decodable, info.value.reported, info.value.requested) == (40, 50, 49)


# --- bad inputs: every backend and read_clip give DecodeError naming the file -----------------------------------------


def truncate(source: Path, target: Path, keep: int) -> Path:
    target.write_bytes(source.read_bytes()[:keep])
    return target


def bad_input(kind: str, tmp_path: Path) -> tuple[Path, str, int]:
    """A bad file of the given kind, the reason its DecodeError must mention, and its reported frame count."""
    path = tmp_path / f"{kind}.avi"
    if kind == "zero_byte":
        path.write_bytes(b"")
        return path, "empty file", 0
    if kind == "text":
        path.write_text("this is a text file, renamed .avi\n" * 50)
        return path, "could not open", 0
    if kind == "missing":
        return path, "not found", 0
    if kind == "truncated_ffv1":
        source = write_ffv1(tmp_path / "whole.avi")
        return truncate(source, path, source.stat().st_size // 2), "(could be decoded|failed to decode)", N_FRAMES
    # A real NTU DIVX file cut after about 12 of its 76 frames.
    source = shared_path("samples", "ntu", "S004C002P003R001A055_rgb.avi")
    return truncate(source, path, 600_000), "could be decoded", 76


BAD_KINDS = ("zero_byte", "text", "missing", "truncated_ffv1", "truncated_ntu")


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_fails_clearly_in_every_backend(kind: str, tmp_path: Path) -> None:
    path, reason, reported = bad_input(kind, tmp_path)
    for backend in (*VIDEO_BACKENDS, "frames"):
        with pytest.raises(DecodeError, match=reason if backend != "frames" else "not found|not a folder") as info:
            with open_video(path, backend, fallback=()) as reader:
                reader.get_frames(sample_frame_indices(reader.num_frames)[0])
        assert str(path) in str(info.value), backend
    with pytest.raises(DecodeError, match=reason) as info:
        read_clip(path, sample_frame_indices(max(reported, 1))[0])
    assert str(path) in str(info.value)


def test_truncated_real_video_is_not_resampled(tmp_path: Path) -> None:
    path, _, _ = bad_input("truncated_ntu", tmp_path)
    with pytest.raises(DecodeError, match="every backend failed: opencv: only \\d+ of the 76 frames"):
        read_sampled_clips(path)


def test_folder_given_to_a_video_backend(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="backend='frames'"):
        open_video(tmp_path, "opencv", fallback=())


# --- real NTU samples ----------------------------------------------------------------------------------------------


def ntu_videos() -> dict[str, dict]:
    facts = json.loads(shared_path("samples", "golden_facts.json").read_text())["files"]
    return {name: fact for name, fact in facts.items() if name.startswith("ntu/") and name.endswith(".avi")}


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
def test_real_ntu_videos_match_golden_facts(backend: str) -> None:
    videos = ntu_videos()
    assert len(videos) == 5
    for name, fact in videos.items():
        with open_video(shared_path("samples", name), backend, fallback=()) as reader:
            assert reader.num_frames == fact["frame_count_decoded"], name
            assert (reader.width, reader.height) == (fact["width"], fact["height"]), name
            assert reader.fps == pytest.approx(fact["fps"], abs=1e-3), name
            first = reader.get_frames(np.array([0]))[0]
        mean_bgr = first.reshape(-1, 3).mean(axis=0)[::-1]
        np.testing.assert_allclose(mean_bgr, fact["first_frame_mean_bgr_opencv"], atol=3, err_msg=f"{name} {backend}")


@pytest.mark.slow
def test_real_ntu_backends_agree_on_a_uniform_sample() -> None:
    path = shared_path("samples", "ntu", "ntu_sample.avi")
    indices = sample_frame_indices(72, clip_len=8)[0]
    reference, _ = read_clip(path, indices, backends=("opencv",))
    assert reference.shape == (8, 1080, 1920, 3)
    assert np.abs(np.diff(reference.astype(np.int16), axis=0)).mean() > 0.1  # distinct frames, not one repeated
    for backend in ("pyav", "decord"):
        frames, used = read_clip(path, indices, backends=(backend,))
        assert used == backend
        assert np.abs(frames.astype(np.int16) - reference).mean() < 1.0, backend


def test_backends_for_a_file_and_a_frame_folder(tmp_path):
    from pipeline.video.reader import backends_for
    assert backends_for(tmp_path) == ("frames",)
    assert backends_for(tmp_path / "v.avi", "pyav", ("pyav", "decord")) == ("pyav", "decord")
    assert backends_for(tmp_path / "v.avi") == ("opencv", "pyav", "decord")
