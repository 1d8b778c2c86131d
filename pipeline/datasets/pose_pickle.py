"""Poses from a user's pyskl / mmaction2 annotation pickle: loaded safely, converted once, read back per sample.

``make manifest … POSES=x.pkl`` (``python -m pipeline.datasets.manifest … --poses x.pkl``) reads such a pickle
(``attach_poses``) and converts the poses of the manifest's samples, matched by ``sample_id`` == ``frame_dir``, into
``<manifest>.poses.h5`` beside the manifest; the cache then takes each sample's 3D poses from there
(``read_pose_file``) instead of the skeleton file. The person box of the crop still comes from the skeleton file, as
3D joints carry no image coordinates. ``pipeline/tools/export_pyskl.py`` writes such pickles.

A pickle can run code when it is loaded, so a user's file is read with ``RestrictedUnpickler``: only builtin
containers and scalars and numpy arrays/dtypes/scalars can be built; anything else is refused. A tiny pickle can
also ask for gigabytes: a length prefix larger than the file (``BINBYTES8`` of 2**32) or a call such as
``bytes(2**32)``, ``list(range(2**32))`` or ``numpy.ndarray((2**32,))``. Every length prefix is checked against
the file before loading (``pickletools.genops``), and the allowed callables build only from values already in the
pickle (containers from containers, bytes from bytes or a string, arrays from their own stored buffer), so memory
stays bounded by the file's size.
"""

from __future__ import annotations

import _compat_pickle
import io
import logging
import os
import pickle
import pickletools
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from pipeline.contracts import MAX_BODIES, PROBLEM_COLUMN
from pipeline.datasets.bounds import pose_problem
from pipeline.datasets.registry import DatasetSpec, get_dataset
from pipeline.utils.fileio import atomic_path, file_sha256

log = logging.getLogger(__name__)

POSES_PATH = "poses_path"
POSES_SHA256 = "poses_sha256"
"""Manifest columns of a pose source: the absolute path of the pose file converted from the pickle, and the pickle's
sha256 (so the manifest's hash, and with it the cache's folder name, changes when the poses do)."""
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    *(("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex",
                                      "str", "bytes", "bytearray", "bool", "slice", "range")),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    *((module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})
"""Every global a pose pickle may name: what numpy 1 and 2 pickle arrays with (``_frombuffer`` for protocol 5,
``_codecs.encode`` for the bytes of protocol 2; an object array's items are unpickled by this same filter)."""


_CONTAINERS = (list, tuple, dict, set, frozenset)
_TEXT = (str, bytes, bytearray)


def _refusal(module: str, name: str, args: tuple) -> pickle.UnpicklingError:
    shown = ", ".join(type(a).__name__ if isinstance(a, (*_CONTAINERS, *_TEXT)) else repr(a)[:40] for a in args)
    return pickle.UnpicklingError(f"refused {module}.{name}({shown}): it could allocate without bound; a pose "
                                  "pickle builds values only from data it holds")


class _NdarrayType:
    """What ``numpy.ndarray`` unpickles to: a name for ``_reconstruct``, never called (``ndarray(shape)`` allocates)."""

    def __new__(cls, *args: Any) -> None:
        raise _refusal("numpy", "ndarray", args)


def _from_materialised(args: tuple) -> bool:
    """Containers (and text) built from values already unpickled: ``list(range(2**32))`` is refused."""
    return not args or (len(args) == 1 and isinstance(args[0], (*_CONTAINERS, *_TEXT)))


def _bytes_args(args: tuple) -> bool:
    """``bytes()``, ``bytes(b)``, ``bytes([ints])``, ``bytes(text, encoding)``; ``bytes(2**32)`` is refused."""
    return (not args or (len(args) == 1 and isinstance(args[0], (*_TEXT, list, tuple)))
            or (len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], str)))


def _reconstruct_args(args: tuple) -> bool:
    """numpy pickles ``_reconstruct(ndarray, (0,), b'b')`` then sets the stored state: an empty shell only."""
    return (len(args) == 3 and args[0] in (_NdarrayType, np.ndarray) and isinstance(args[1], tuple)
            and all(isinstance(n, int) for n in args[1]) and 0 in args[1])


def _str_args(args: tuple) -> bool:
    """``str`` of text only: the repr of a list holding 1000 references to a list holding 1000 ... is a bomb."""
    return all(isinstance(a, _TEXT) for a in args)


_ARGUMENT_CHECKS: dict[str, Callable[[tuple], bool]] = {
    **dict.fromkeys(("list", "tuple", "dict", "set", "frozenset", "OrderedDict"), _from_materialised),
    "str": _str_args,
    "bytes": _bytes_args, "bytearray": _bytes_args, "_reconstruct": _reconstruct_args,
    "encode": lambda args: len(args) == 2 and all(isinstance(a, str) for a in args),
}
"""Allowed globals whose calls could allocate without bound, with what their arguments may be."""


def _guarded(module: str, name: str, build: Callable[..., Any]) -> Callable[..., Any]:
    check = _ARGUMENT_CHECKS[name]

    def call(*args: Any) -> Any:
        if not check(args):
            raise _refusal(module, name, args)
        if name == "_reconstruct":
            args = (np.ndarray, *args[1:])
        return build(*args)

    return call


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only builtin containers/scalars and numpy arrays (no code runs on load), from data
    the pickle holds (no call allocates more than the file's size)."""

    def find_class(self, module: str, name: str) -> Any:
        # protocol 2 names Python 2's modules (__builtin__.xrange): map them as pickle's own find_class does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name),
                                                       (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a pose pickle may hold only builtin "
                                         "containers and scalars and numpy arrays")
        if (module, name) == ("numpy", "ndarray"):
            return _NdarrayType
        found = super().find_class(module, name)
        return _guarded(module, name, found) if name in _ARGUMENT_CHECKS else found


def _check_lengths(data: bytes, path: str | Path) -> None:
    """Walk the opcodes once: a length prefix beyond the file's end (which ``pickle.Unpickler`` would allocate
    before reading) is refused."""
    try:
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
    except ValueError as err:
        raise pickle.UnpicklingError(f"{path}: not a readable pose pickle ({err})") from None


def restricted_load(path: str | Path) -> Any:
    """Unpickle ``path`` with ``RestrictedUnpickler``.

    Raises:
        pickle.UnpicklingError: the file names anything else than the allowed types, calls one in a way that could
            allocate without bound, declares more data than it holds, or is not a pickle.
    """
    data = Path(path).read_bytes()
    _check_lengths(data, path)
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, MemoryError,
            OverflowError, RecursionError) as err:
        raise pickle.UnpicklingError(f"{path}: not a readable pose pickle ({type(err).__name__}: {err})") from err


def read_annotations(path: str | Path) -> dict[str, dict[str, Any]]:
    """The annotations of a pyskl/mmaction2 pickle by ``frame_dir``, checked.

    Accepts the dict format (``{"split": …, "annotations": [...]}``) and the older bare list of annotations.

    Raises:
        ValueError: the structure is not pyskl's (message names the first bad entry).
        pickle.UnpicklingError: see ``restricted_load``.
    """
    data = restricted_load(path)
    annotations = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(annotations, list):
        raise ValueError(f"{path}: expected a dict with an 'annotations' list (or a list), got {type(data).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "frame_dir" not in ann or "keypoint" not in ann:
            raise ValueError(f"{path}: annotation {i} is not a dict with frame_dir and keypoint")
        keypoint = ann["keypoint"]
        if not isinstance(keypoint, np.ndarray) or keypoint.ndim != 4:
            raise ValueError(f"{path}: {ann['frame_dir']}: keypoint must be an (M, T, V, C) array, got "
                             f"{getattr(keypoint, 'shape', type(keypoint).__name__)}")
        out[str(ann["frame_dir"])] = ann
    return out


def keypoints_to_joints(keypoint: np.ndarray, num_joints: int) -> np.ndarray:
    """pyskl (M, T, V, 3) keypoints -> (T, 2, V, 3) float32 joints, NaN where a body is absent (all zero or all
    NaN).

    Raises:
        ValueError: not 3D joints, V differs from the dataset's joint count, no frame or no body, values that are
            not real numbers (object, complex, bool dtype), or a body with NaN/inf in some joints of a frame only.
    """
    m, t, v, c = keypoint.shape
    if c != 3 or v != num_joints:
        raise ValueError(f"keypoint is (M={m}, T={t}, V={v}, C={c}); the pose source needs 3D joints (C=3) with "
                         f"V={num_joints} joints of this dataset")
    if keypoint.dtype.kind not in "fiu":
        raise ValueError(f"keypoint dtype is {keypoint.dtype}, not real numbers (float or integer)")
    if m == 0 or t == 0:
        raise ValueError(f"keypoint is (M={m}, T={t}, V={v}, C={c}): no body or no frame")
    joints = np.full((t, MAX_BODIES, v, 3), np.nan, dtype=np.float32)
    with np.errstate(over="ignore"):  # beyond float32 becomes inf: refused just below
        kept = np.asarray(keypoint[:MAX_BODIES], dtype=np.float32).transpose(1, 0, 2, 3)  # (T, M', V, 3)
    joints[:, :kept.shape[1]] = kept
    finite = np.isfinite(joints).all(axis=3)  # (T, 2, V)
    partial = finite.any(axis=2) & ~finite.all(axis=2)  # (T, 2)
    if partial.any():
        frame, body = (int(i[0]) for i in np.nonzero(partial))
        raise ValueError(f"keypoint of body {body} in frame {frame} is NaN/inf (or beyond float32) in "
                         f"{int((~finite[frame, body]).sum())} of its {v} joints only")
    absent = ~np.any(joints != 0, axis=(2, 3)) | ~finite.all(axis=2)  # (T, 2)
    joints[absent] = np.nan
    return joints


def write_pose_file(annotations: Mapping[str, Mapping[str, Any]], sample_ids: Iterable[str], spec: DatasetSpec,
                    out: str | Path, source_sha256: str) -> dict[str, str]:
    """Convert the annotations of ``sample_ids`` into the pose file the cache reads (``read_pose_file``).

    The file holds ``joints`` float32 (sum of T, 2, J, 3), NaN where a body is absent, with ``sample_ids`` and
    ``offsets`` (start, stop) per sample, and the source pickle's sha256 as an attr; it is written atomically.
    A decode worker then reads one sample's rows instead of loading the whole pickle.

    Returns:
        sample id -> why it has no poses (not in the pickle, keypoints that are not this dataset's 3D joints, or
        poses ``input_bounds.pose_problem`` refuses: no body, all at the origin, beyond ``spec.pose_bound``).
    """
    problems: dict[str, str] = {}
    ids, blocks = [], []
    for sample_id in sample_ids:
        if sample_id not in annotations:
            problems[sample_id] = "no poses in the pose pickle"
            continue
        try:
            joints = keypoints_to_joints(annotations[sample_id]["keypoint"], spec.num_joints)
        except ValueError as err:
            problems[sample_id] = f"poses in the pose pickle: {err}"
            continue
        problem = pose_problem(joints, spec)
        if problem:
            problems[sample_id] = f"poses in the pose pickle: {problem}"
            continue
        blocks.append(joints)
        ids.append(sample_id)
    stops = np.cumsum([len(b) for b in blocks], dtype=np.int64)
    joints = np.concatenate(blocks) if blocks else np.zeros((0, MAX_BODIES, spec.num_joints, 3))  # (sum T, 2, J, 3)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["source_sha256"] = source_sha256
        f.create_dataset("joints", data=joints, dtype=np.float32)
        f.create_dataset("sample_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("offsets", data=np.stack([stops - [len(b) for b in blocks], stops], axis=1).reshape(-1, 2))
    return problems


@lru_cache(maxsize=2)
def _pose_index(path: str, source_sha256: str, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """sample id -> (start, stop) rows of a pose file, once per process and file version; checks that it is the
    manifest's version."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("source_sha256") != source_sha256:
            raise ValueError(f"{path} was rewritten from another pose pickle since the manifest was written; "
                             "rerun `make manifest … POSES=`")
        return {s: (int(a), int(b)) for s, (a, b) in zip(f["sample_ids"].asstr()[()], f["offsets"][()])}


def read_pose_file(path: str, source_sha256: str, sample_id: str) -> np.ndarray:
    """The (T, 2, J, 3) joints of ``sample_id`` from a pose file (NaN where a body is absent).

    Raises:
        KeyError: no poses for ``sample_id``. ValueError: the file is not the manifest's version.
    """
    start, stop = _pose_index(path, source_sha256, os.stat(path).st_mtime_ns)[sample_id]
    with h5py.File(path, "r") as f:
        return f["joints"][start:stop]


def attach_poses(df: pd.DataFrame, pickle_path: str | Path, pose_file: str | Path) -> pd.DataFrame:
    """Take the manifest's 3D poses from a pyskl pickle, matched by ``sample_id`` == ``frame_dir``.

    The poses are converted once into ``pose_file`` (``write_pose_file``) and every row points at it; a row
    without usable poses in the pickle gets a ``problem``.

    Raises:
        ValueError, pickle.UnpicklingError: see ``read_annotations``.
    """
    pickle_path = Path(pickle_path)
    annotations = read_annotations(pickle_path)
    sha = file_sha256(pickle_path)
    df = df.copy()
    if df.empty:
        raise ValueError(f"{pickle_path}: the manifest has no samples to take poses for")
    problems = write_pose_file(annotations, df["sample_id"], get_dataset(df["dataset"].iloc[0]), pose_file, sha)
    df[POSES_PATH] = str(Path(pose_file).resolve())
    df[POSES_SHA256] = sha
    df[PROBLEM_COLUMN] = ["; ".join(p for p in (problem, problems.get(s, "")) if p)
                          for s, problem in zip(df["sample_id"], df[PROBLEM_COLUMN])]
    log.info("%s: poses for %d of %d samples (%d frame_dirs of the pickle match no sample) written to %s",
             pickle_path.name, len(df) - len(problems), len(df), len(set(annotations) - set(df["sample_id"])),
             pose_file)
    return df
