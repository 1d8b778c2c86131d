"""Video reading behind one small interface (pytorchvideo style), with the backend chosen by name.

Backends (``BACKENDS``):

* ``opencv``: ``cv2.VideoCapture`` (FFmpeg). Decodes forward from the start; frames that are not wanted are
  only ``grab()``-ed (decoded, never colour-converted) and decoding stops after the last wanted frame.
* ``pyav``: PyAV, same forward strategy; only wanted frames are converted to RGB.
* ``decord``: ``decord.VideoReader.get_batch`` on the wanted frames.
* ``frames``: a folder of still images, one per frame (N-UCLA ``frame_<N>_..._rgb.jpg``), ordered by the integer N.

``DEFAULT_BACKEND`` (``pipeline.defaults``) is the fastest one-thread backend on the real 1080p NTU samples
(``bench/bench_decode.py``; the numbers are in the README's "Measured performance" section).
Which frames a clip reads is ``pipeline.video.sampling.sample_frame_indices``.

Frame counts in container metadata can be wrong, and a truncated file still opens. ``num_frames`` is the count the
container reports. Asking for a frame at or past the real decodable end raises ``FrameCountError`` (a
``DecodeError``) that says how many frames could be decoded. ``read_clip`` treats it like any decode failure.
``read_sampled_clips`` re-samples with the real count when at most ``max_missing_fraction`` of the reported frames
are missing (wrong metadata), and otherwise raises (a truncated file).
"""

from __future__ import annotations

import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import av
import cv2
import decord
import numpy as np

from pipeline.datasets.bounds import frame_size_problem
from pipeline.defaults import DEFAULT_BACKEND, DEFAULT_FALLBACK
from pipeline.i3d.spec import CLIP_FRAMES
from pipeline.utils.fileio import is_transient
from pipeline.video.sampling import sample_frame_indices

logger = logging.getLogger(__name__)

FRAME_FOLDER_PATTERN = r"^frame_(\d+)_(?:.*_)?rgb\.(?:jpe?g|png)$"
"""N-UCLA RGB frame names (``frame_<N>_tc_<timecode>_rgb.jpg``); group 1 is the frame number."""
FRAME_FOLDER_FPS = 30.0
"""Frame rate reported for image folders, which carry none (N-UCLA was captured at about 30 fps)."""


def backends_for(path: str | Path, backend: str = DEFAULT_BACKEND,
                 fallback: Sequence[str] = DEFAULT_FALLBACK) -> tuple[str, ...]:
    """The backends to try for ``path``, in order: ``("frames",)`` for a frame folder, else ``backend`` then
    the ``fallback`` backends that differ from it."""
    if Path(path).is_dir():
        return ("frames",)
    return (backend, *(name for name in fallback if name != backend))


T = TypeVar("T")


class DecodeError(Exception):
    """A video could not be read; the message names the file and the reason.

    Attributes:
        path: The file (or folder) that failed.
        reason: Why, in words.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class FrameCountError(DecodeError):
    """A requested frame lies past the last decodable frame (truncated file or wrong frame count in metadata).

    Attributes:
        reported: Frame count the container reports (``VideoReader.num_frames``).
        decodable: Frames that could actually be decoded.
        requested: The largest requested frame index.
    """

    def __init__(self, path: str | Path, reported: int, decodable: int, requested: int) -> None:
        self.reported = reported
        self.decodable = decodable
        self.requested = requested
        super().__init__(
            path,
            f"only {decodable} of the {reported} frames the container reports could be decoded, but frame "
            f"{requested} was requested (truncated file or wrong frame count in its metadata)",
        )


def _check_path(path: Path, expect_dir: bool = False) -> None:
    """Raise a clear DecodeError for a missing path, a zero-byte file, or a file/folder of the wrong kind."""
    if not path.exists():
        raise DecodeError(path, "file not found")
    if expect_dir and not path.is_dir():
        raise DecodeError(path, "not a folder of frame images (the 'frames' backend reads folders)")
    if not expect_dir:
        if path.is_dir():
            raise DecodeError(path, "is a folder, not a video file (use backend='frames' for image folders)")
        if path.stat().st_size == 0:
            raise DecodeError(path, "empty file (0 bytes)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _reason(err: BaseException) -> str:
    """An error's reason without the file name (which the enclosing DecodeError already names)."""
    return err.reason if isinstance(err, DecodeError) else f"{type(err).__name__}: {_first_line(err)}"


def _check_indices(indices: np.ndarray) -> np.ndarray:
    """Return ``indices`` as an array after checking it is 1-D, integer and non-negative."""
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"frame indices must be a 1-D integer array, got {indices.dtype} {indices.shape}")
    if indices.size and indices.min() < 0:
        raise ValueError(f"frame indices must be non-negative, got {indices.min()}")
    return indices


class VideoReader(ABC):
    """Random access to the frames of one video, as RGB uint8.

    Attributes:
        path: The video file (or frame folder).
        num_frames: Frame count reported by the container (may exceed what is decodable; see module doc).
        fps: Frames per second.
        width: Frame width in pixels.
        height: Frame height in pixels.
    """

    path: Path
    num_frames: int
    fps: float
    width: int
    height: int

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        """Decode the requested frames, in the requested order (repeats allowed).

        Args:
            indices: 1-D integer frame indices in ``[0, num_frames)``, any order.

        Returns:
            uint8 array ``(len(indices), height, width, 3)``, RGB.

        Raises:
            ValueError: ``indices`` is not 1-D, integer and non-negative.
            IndexError: An index is ``>= num_frames``.
            FrameCountError: A requested frame lies past the last decodable frame.
            DecodeError: Decoding failed for another reason.
        """
        indices = _check_indices(indices)
        if indices.size and indices.max() >= self.num_frames:
            raise IndexError(
                f"{self.path}: frame indices must lie in [0, {self.num_frames}), got "
                f"[{indices.min()}, {indices.max()}]"
            )
        if problem := frame_size_problem(self.width, self.height):  # the header's size, before any allocation
            raise DecodeError(self.path, problem)
        out = np.empty((len(indices), self.height, self.width, 3), np.uint8)  # (N, H, W, 3)
        wanted, inverse = np.unique(indices, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        slots = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(wanted)))[:-1])
        self._decode_into(wanted, slots, out)
        return out

    @abstractmethod
    def _decode_into(self, wanted: np.ndarray, slots: list[np.ndarray], out: np.ndarray) -> None:
        """Decode sorted unique frames ``wanted``; frame ``wanted[k]`` goes to rows ``slots[k]`` of ``out``."""

    def _check_size(self, frame: np.ndarray, index: int) -> None:
        if frame.shape[:2] != (self.height, self.width):
            raise DecodeError(
                self.path, f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, expected {self.width}x{self.height}"
            )

    def close(self) -> None:
        """Release the decoder (idempotent)."""

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, num_frames={self.num_frames}, fps={self.fps:g}, "
            f"{self.width}x{self.height})"
        )


def _reported_frame_count(container: av.container.InputContainer, fps: float) -> int:
    """Frame count from a PyAV container's metadata, or duration x fps where it has none (e.g. Matroska)."""
    frames = container.streams.video[0].frames
    if frames <= 0 and container.duration and fps:
        frames = round(container.duration / av.time_base * fps)
    return int(frames)


class OpenCVReader(VideoReader):
    """``cv2.VideoCapture`` (FFmpeg) reader: forward decode, ``grab()`` for skipped frames.

    Args:
        path: Video file.
        threads: FFmpeg decoder threads (0 = OpenCV's default).
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        self.threads = threads
        _check_path(self.path)
        self._cap = self._open()
        self.num_frames = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if self.num_frames <= 0 or self.width <= 0 or self.height <= 0:
            self.close()
            raise DecodeError(self.path, f"OpenCV found no video frames (frame count {self.num_frames})")

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, self.threads])
        if not cap.isOpened():
            raise DecodeError(self.path, "OpenCV could not open it as a video (not a video file or unknown codec)")
        self._next = 0  # index of the frame the next grab() returns
        return cap

    def _decode_into(self, wanted: np.ndarray, slots: list[np.ndarray], out: np.ndarray) -> None:
        if len(wanted) == 0:
            return
        if self._cap is None:
            raise DecodeError(self.path, "reader is closed")
        if wanted[0] < self._next:  # cannot go back: reopen rather than trust a seek
            self._cap.release()
            self._cap = self._open()
        for index, rows in zip(wanted.tolist(), slots):
            while self._next <= index:
                if not self._cap.grab():
                    raise FrameCountError(self.path, self.num_frames, self._next, int(wanted[-1]))
                self._next += 1
            ok, frame = self._cap.retrieve()
            if not ok:
                raise DecodeError(self.path, f"OpenCV could not retrieve frame {index}")
            self._check_size(frame, index)
            cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=out[rows[0]])
            out[rows[1:]] = out[rows[0]]

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class PyAVReader(VideoReader):
    """PyAV reader: forward decode; only wanted frames are converted to RGB.

    Args:
        path: Video file.
        threads: Decoder threads; 1 disables FFmpeg threading, 0 lets FFmpeg choose (frame threading).
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        self.threads = threads
        _check_path(self.path)
        self._container = None
        self._open()
        stream = self._stream
        self.fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        self.width = stream.codec_context.width
        self.height = stream.codec_context.height
        self.num_frames = _reported_frame_count(self._container, self.fps)
        if self.num_frames <= 0 or self.width <= 0 or self.height <= 0:
            self.close()
            raise DecodeError(self.path, f"PyAV found no video frames (frame count {self.num_frames})")

    def _open(self) -> None:
        try:
            self._container = av.open(str(self.path))
        except av.FFmpegError as err:
            raise DecodeError(self.path, f"PyAV could not open it ({err})") from err
        if not self._container.streams.video:
            self.close()
            raise DecodeError(self.path, "no video stream")
        self._stream = self._container.streams.video[0]
        if self.threads == 1:
            self._stream.thread_type = "NONE"
        else:
            self._stream.thread_type = "AUTO"
            self._stream.thread_count = self.threads
        self._frames = self._container.decode(self._stream)
        self._next = 0

    def _decode_into(self, wanted: np.ndarray, slots: list[np.ndarray], out: np.ndarray) -> None:
        if len(wanted) == 0:
            return
        if self._container is None:
            raise DecodeError(self.path, "reader is closed")
        if wanted[0] < self._next:
            self.close()
            self._open()
        for index, rows in zip(wanted.tolist(), slots):
            frame = None
            while self._next <= index:
                try:
                    frame = next(self._frames)
                except StopIteration:
                    raise FrameCountError(self.path, self.num_frames, self._next, int(wanted[-1])) from None
                except av.FFmpegError as err:
                    raise DecodeError(self.path, f"PyAV failed to decode frame {self._next} ({err})") from err
                self._next += 1
            rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3)
            self._check_size(rgb, index)
            out[rows] = rgb

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class DecordReader(VideoReader):
    """decord reader: ``get_batch`` on the wanted frames.

    decord indexes the packets it finds, so for a truncated file its own length is the decodable count;
    ``num_frames`` is still the container's reported count (read with PyAV), so all backends agree on it.

    Args:
        path: Video file.
        threads: decord decoder threads (0 = decord's default).
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        _check_path(self.path)
        try:
            self._vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=threads)
        except Exception as err:  # decord raises RuntimeError or DECORDError
            raise DecodeError(self.path, f"decord could not open it ({_first_line(err)})") from err
        self._decodable = len(self._vr)
        self.fps = float(self._vr.get_avg_fps())
        try:
            with av.open(str(self.path)) as container:
                codec = container.streams.video[0].codec_context
                self.width, self.height = codec.width, codec.height
                reported = _reported_frame_count(container, self.fps)
        except (av.FFmpegError, IndexError) as err:
            self.close()
            raise DecodeError(self.path, f"could not read the video stream's metadata ({err})") from err
        self.num_frames = max(reported, self._decodable)
        if self._decodable <= 0 or self.width <= 0 or self.height <= 0:
            self.close()
            raise DecodeError(self.path, "decord found no video frames")

    def _decode_into(self, wanted: np.ndarray, slots: list[np.ndarray], out: np.ndarray) -> None:
        if len(wanted) == 0:
            return
        if self._vr is None:
            raise DecodeError(self.path, "reader is closed")
        if wanted[-1] >= self._decodable:
            raise FrameCountError(self.path, self.num_frames, self._decodable, int(wanted[-1]))
        try:
            batch = self._vr.get_batch(wanted.tolist()).asnumpy()  # (len(wanted), H, W, 3) RGB
        except Exception as err:  # decord raises RuntimeError or DECORDError
            raise DecodeError(self.path, f"decord failed to decode ({_first_line(err)})") from err
        self._check_size(batch[0], int(wanted[0]))
        for frame, rows in zip(batch, slots):
            out[rows] = frame

    def close(self) -> None:
        self._vr = None


class FrameFolderReader(VideoReader):
    """A folder of frame images (N-UCLA), ordered by the integer frame number in each name.

    Other files in the folder (N-UCLA also keeps depth maps and skeleton text there) are ignored. Frame ``i`` is
    the ``i``-th image in numeric order, whatever the numbers themselves are (they need not start at 0).

    Args:
        path: The folder.
        threads: Unused (images are decoded one by one); accepted so every backend opens the same way.
        pattern: Regex matched (case-insensitively) against file names; group 1 is the frame number.
        fps: Frame rate to report (image folders carry none).
    """

    def __init__(
        self, path: str | Path, threads: int = 1, pattern: str = FRAME_FOLDER_PATTERN, fps: float = FRAME_FOLDER_FPS
    ) -> None:
        self.path = Path(path)
        _check_path(self.path, expect_dir=True)
        regex = re.compile(pattern, re.IGNORECASE)
        numbered = [(int(m.group(1)), f) for f in self.path.iterdir() if (m := regex.match(f.name))]
        numbered.sort()
        numbers = [n for n, _ in numbered]
        if len(set(numbers)) != len(numbers):
            raise DecodeError(self.path, "two frame images carry the same frame number")
        self._files = [f for _, f in numbered]
        if not self._files:
            raise DecodeError(self.path, f"no frame images matching {pattern!r}")
        self.num_frames = len(self._files)
        self.fps = fps
        first = self._read(0)
        self.height, self.width = first.shape[:2]

    def _read(self, index: int) -> np.ndarray:
        file = self._files[index]
        bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DecodeError(self.path, f"frame image {file.name} is unreadable (empty or not an image)")
        return bgr

    def _decode_into(self, wanted: np.ndarray, slots: list[np.ndarray], out: np.ndarray) -> None:
        for index, rows in zip(wanted.tolist(), slots):
            bgr = self._read(index)
            self._check_size(bgr, index)
            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=out[rows[0]])
            out[rows[1:]] = out[rows[0]]


BACKENDS: dict[str, Callable[..., VideoReader]] = {
    "opencv": OpenCVReader,
    "pyav": PyAVReader,
    "decord": DecordReader,
    "frames": FrameFolderReader,
}
"""Backend name -> reader factory ``(path, threads=...) -> VideoReader``. Tests may register extra ones."""


def _backend(name: str) -> Callable[..., VideoReader]:
    if name not in BACKENDS:
        raise ValueError(f"unknown video backend {name!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[name]


def open_video(
    path: str | Path,
    backend: str = DEFAULT_BACKEND,
    fallback: tuple[str, ...] = DEFAULT_FALLBACK,
    threads: int = 1,
) -> VideoReader:
    """Open a video with the named backend, trying the fallback backends in order if it cannot be opened.

    Args:
        path: Video file, or frame folder for the ``frames`` backend.
        backend: First backend to try (a key of ``BACKENDS``).
        fallback: Backends tried next, in order, when opening fails.
        threads: Decoder threads per reader (1 for one-process-per-core pipelines; 0 = the library's default).

    Returns:
        An open reader; use it as a context manager or call ``close()``.

    Raises:
        ValueError: An unknown backend name.
        DecodeError: No backend could open the file (the message lists each backend's reason).
    """
    names = (backend, *(name for name in fallback if name != backend))
    factories = [_backend(name) for name in names]
    reasons = []
    for name, factory in zip(names, factories):
        try:
            return factory(path, threads=threads)
        except Exception as err:  # any backend failure moves on to the next backend
            if passing_fault(err):
                raise  # a passing fault (memory, disk, interrupted I/O) is no verdict on the file
            logger.warning("video backend %s could not open %s: %s", name, path, err)
            reasons.append(f"{name}: {_reason(err)}")
    raise DecodeError(path, "no backend could open it: " + "; ".join(reasons))


def passing_fault(error: BaseException) -> bool:
    """A fault of the machine while reading a video (``fileio.is_transient``), not of the file: never a fallback to
    another backend, never a decode failure. FFmpeg's own errors carry an errno too (``EIO`` for some damaged
    streams), so they count only as memory errors."""
    if isinstance(error, av.FFmpegError) and not isinstance(error, MemoryError):
        return False
    return is_transient(error)


def _first_success(
    path: str | Path, backends: Sequence[str], read: Callable[[VideoReader], T], threads: int
) -> tuple[T, str]:
    """Run ``read`` on a reader of each backend in turn; return the first result and the backend's name."""
    if not backends:
        raise ValueError("backends must name at least one backend")
    factories = [_backend(name) for name in backends]
    errors: list[Exception] = []
    for name, factory in zip(backends, factories):
        try:
            with factory(path, threads=threads) as reader:
                return read(reader), name
        except Exception as err:  # a failing backend (DecodeError or a library error) falls back to the next
            if passing_fault(err):
                raise  # a passing fault (memory, disk, interrupted I/O) is no verdict on the file
            logger.warning("video backend %s failed on %s: %s", name, path, err)
            errors.append(err)
    if len(errors) == 1 and isinstance(errors[0], DecodeError):
        raise errors[0]
    reasons = "; ".join(f"{name}: {_reason(err)}" for name, err in zip(backends, errors))
    raise DecodeError(path, f"every backend failed: {reasons}")


def read_clip(
    path: str | Path,
    indices: np.ndarray,
    backends: Sequence[str] = (DEFAULT_BACKEND, *DEFAULT_FALLBACK),
    threads: int = 1,
) -> tuple[np.ndarray, str]:
    """Read the given frames, trying backends in order and falling back when one fails.

    Args:
        path: Video file (or frame folder with ``backends=("frames",)``).
        indices: 1-D frame indices, any order, repeats allowed.
        backends: Backend names, primary first.
        threads: Decoder threads per reader.

    Returns:
        ``(frames, backend_used)``: uint8 ``(len(indices), H, W, 3)`` RGB, and the backend that read them.

    Raises:
        ValueError: Indices not 1-D, integer and non-negative, or an unknown backend name.
        DecodeError: Every backend failed (a single backend's own error is re-raised as is).
    """
    indices = _check_indices(indices)
    return _first_success(path, backends, lambda reader: reader.get_frames(indices), threads)


@dataclass(frozen=True)
class SampledClips:
    """Frames of the clips sampled from one video.

    Attributes:
        frames: uint8 ``(K, clip_len, H, W, 3)`` RGB.
        indices: ``(K, clip_len)`` frame indices that were read.
        backend: Backend that read them.
        num_frames: Frame count the indices were sampled from (the decodable count when metadata was wrong).
    """

    frames: np.ndarray
    indices: np.ndarray
    backend: str
    num_frames: int


def read_sampled_clips(
    path: str | Path,
    clip_len: int = CLIP_FRAMES,
    clips_per_video: int = 1,
    backends: Sequence[str] = (DEFAULT_BACKEND, *DEFAULT_FALLBACK),
    jitter: np.random.Generator | None = None,
    max_missing_fraction: float = 0.05,
    threads: int = 1,
) -> SampledClips:
    """Sample clips with ``sample_frame_indices`` over a video's frames and read them, with backend fallback.

    When the reported frame count is too high (``FrameCountError``) but no more than ``max_missing_fraction`` of
    it is missing, the clips are re-sampled over the frames that do decode; a larger shortfall means a truncated
    file and raises.

    Args:
        path: Video file (or frame folder with ``backends=("frames",)``).
        clip_len: Frames per clip.
        clips_per_video: Clips per video K.
        backends: Backend names, primary first.
        jitter: Optional generator for training-time jitter (see ``sample_frame_indices``).
        max_missing_fraction: Largest tolerated share of reported frames that do not decode.
        threads: Decoder threads per reader.

    Returns:
        The clips, their indices, the backend used and the frame count sampled from.

    Raises:
        DecodeError: Every backend failed (a truncated file fails with ``FrameCountError`` in every backend).
    """

    def sample_and_read(reader: VideoReader) -> tuple[np.ndarray, np.ndarray, int]:
        num_frames = reader.num_frames
        indices = sample_frame_indices(num_frames, clip_len, clips_per_video, jitter)  # (K, clip_len)
        try:
            frames = reader.get_frames(indices.ravel())  # (K * clip_len, H, W, 3)
        except FrameCountError as err:
            if err.decodable == 0 or err.decodable < math.ceil((1 - max_missing_fraction) * err.reported):
                raise
            logger.warning("%s; re-sampling over the %d decodable frames", err, err.decodable)
            num_frames = err.decodable
            indices = sample_frame_indices(num_frames, clip_len, clips_per_video, jitter)
            frames = reader.get_frames(indices.ravel())
        frames = frames.reshape(*indices.shape, *frames.shape[1:])  # (K, clip_len, H, W, 3)
        return frames, indices, num_frames

    (frames, indices, num_frames), backend = _first_success(path, backends, sample_and_read, threads)
    return SampledClips(frames, indices, backend, num_frames)
