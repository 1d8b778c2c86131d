"""Manifests: scan a raw dataset folder, pair each video with its skeleton and write the protocol splits.

``python -m pipeline.manifest --dataset ntu60 --data-root DIR [--out CSV] [--validate] [--missing-list TXT]``

The scan never stops on bad input: a file whose name does not parse is skipped and counted; a sample whose
video or skeleton is missing, empty, not a regular file, outside DATA_ROOT, named in bytes that are not UTF-8
or (with ``--validate``) malformed stays in the manifest with a ``problem`` saying why, so later stages skip it
and record it in ``failures.csv``. Nothing is dropped silently: symlinked folders are followed (each real folder
once, so a loop ends), and folders that cannot be read, symlinked folders that leave DATA_ROOT and names whose
suffix has an unexpected case are counted and listed in the summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import stat
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import ntu, nucla, smarthome
from pipeline.contracts import MANIFEST_COLUMNS, MAX_BODIES, PROBLEM_COLUMN, PROTOCOL_VALUES
from pipeline.datasets import DatasetSpec, get_dataset

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".webm")


@dataclass
class ScanReport:
    """What a scan saw besides the samples: unparseable names, files outside the dataset, duplicates, folders
    it could not read or did not follow, and names in an unexpected case (all as escaped, printable text)."""

    unparsed: list[str] = field(default_factory=list)
    outside_dataset: int = 0
    duplicates: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    not_followed: list[str] = field(default_factory=list)
    wrong_case: list[str] = field(default_factory=list)


def protocol_columns(spec: DatasetSpec) -> list[str]:
    return list(spec.protocols)


def manifest_columns(spec: DatasetSpec) -> list[str]:
    """Column order of a manifest of ``spec``: the contract columns, the protocols, ``problem``."""
    extra = ["setup"] if spec.name.startswith("ntu") else []
    return [*MANIFEST_COLUMNS, *extra, *protocol_columns(spec), PROBLEM_COLUMN]


def _walk(root: Path, report: ScanReport):
    """Every file under ``root`` (sorted), following symlinked folders that stay inside it, each real folder once."""
    seen: set[tuple[int, int]] = set()

    def unreadable(err: OSError) -> None:
        report.unreadable.append(f"{_printable(_rel(Path(err.filename), root))} ({err.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        here = Path(dirpath)
        try:
            info = os.stat(here)
        except OSError:
            dirnames[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:  # reached again through a symlink: a loop or a second link
            report.not_followed.append(f"{_printable(_rel(here, root))} (a folder already scanned: symlink loop?)")
            dirnames[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        keep = []
        for name in sorted(dirnames):
            sub = here / name
            if sub.is_symlink() and not sub.resolve().is_relative_to(root):
                report.not_followed.append(f"{_printable(_rel(sub, root))} -> {_printable(str(sub.resolve()))} "
                                           "(outside DATA_ROOT)")
                continue
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            yield here / name


def _printable(text: str) -> str:
    """``text`` with bytes that are not UTF-8 (as os gives them: surrogate escapes) written as ``\\xNN``."""
    return os.fsencode(text).decode("utf-8", errors="backslashreplace")


def _rel(path: Path | None, root: Path) -> str:
    return "" if path is None else _printable(path.relative_to(root).as_posix())


def _file_problem(path: Path | None, what: str, root: Path) -> str:
    if path is None:
        return f"{what} missing"
    if _printable(str(path)) != str(path):
        return f"{what} path is not valid UTF-8 (written escaped; rename the file)"
    if not path.resolve().is_relative_to(root):
        return f"{what} resolves to {_printable(str(path.resolve()))}, outside DATA_ROOT"
    try:
        info = path.stat()
    except OSError as err:
        return f"{what} cannot be read ({err.strerror})"
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return f"{what} is not a regular file (a named pipe, device or socket)"
    if stat.S_ISREG(info.st_mode) and info.st_size == 0:
        return f"{what} is an empty file"
    return ""


def _row(spec: DatasetSpec, sample_id: str, video: Path | None, skeleton: Path | None, root: Path, *,
         action: str, subject: int, view: int, splits: dict[str, str], problems: list[str], **extra) -> dict:
    label = spec.classes.index(action) if action in spec.classes else -1
    if label < 0:
        problems.append(f"action {action!r} is not one of the {len(spec.classes)} {spec.name} classes")
    problems.extend(p for p in (_file_problem(video, "video", root), _file_problem(skeleton, "skeleton", root)) if p)
    return {"sample_id": sample_id, "dataset": spec.name, "video_path": _rel(video, root),
            "skeleton_path": _rel(skeleton, root), "label": label, "action": action, "subject": subject,
            "view": view, **extra, **splits, PROBLEM_COLUMN: "; ".join(problems)}


def _pair(found: dict[str, dict[str, Path]], key: str, kind: str, path: Path, report: ScanReport) -> None:
    slot = found.setdefault(key, {})
    if kind in slot:
        report.duplicates.append(_duplicate_note(key, kind, slot[kind], path))
        return
    slot[kind] = path


def _duplicate_note(key: str, kind: str, kept: Path, dropped: Path) -> str:
    return f"{key}: second {kind} {dropped} ignored (kept {kept})"


def _scan_ntu(spec: DatasetSpec, root: Path, report: ScanReport, missing: set[str]) -> list[dict]:
    found: dict[str, dict[str, Path]] = {}
    for path in _walk(root, report):
        is_video = path.suffix.lower() in VIDEO_SUFFIXES
        if not is_video and path.suffix.lower() == ".skeleton" and path.suffix != ".skeleton":
            report.wrong_case.append(_rel(path, root))
        if not (is_video or path.suffix == ".skeleton"):
            continue
        try:
            sid = ntu.parse_sample_id(path.name)
        except ValueError:
            report.unparsed.append(_rel(path, root))
            continue
        if not ntu.in_dataset(sid, spec.name):
            report.outside_dataset += 1
            continue
        _pair(found, str(sid), "video" if is_video else "skeleton", path, report)
    rows = []
    for key in sorted(found):
        sid = ntu.parse_sample_id(key)
        problems = ["listed in the official missing-skeleton list"] if key in missing else []
        rows.append(_row(spec, key, found[key].get("video"), found[key].get("skeleton"), root,
                         action=spec.classes[sid.action - 1], subject=sid.subject, view=sid.camera,
                         splits=ntu.ntu_splits(sid, spec.name), problems=problems, setup=sid.setup))
    return rows


def _scan_smarthome(spec: DatasetSpec, root: Path, report: ScanReport) -> list[dict]:
    found: dict[str, dict[str, Path]] = {}
    for path in _walk(root, report):
        suffix = path.suffix.lower()
        if suffix not in VIDEO_SUFFIXES and suffix != ".json":
            continue
        try:
            clip = smarthome.parse_clip_name(path.name)
        except ValueError:
            report.unparsed.append(_rel(path, root))
            continue
        _pair(found, clip.sample_id, "video" if suffix in VIDEO_SUFFIXES else "skeleton", path, report)
    rows = []
    for key in sorted(found):
        clip = smarthome.parse_clip_name(key)
        rows.append(_row(spec, key, found[key].get("video"), found[key].get("skeleton"), root,
                         action=clip.activity, subject=clip.subject, view=clip.camera,
                         splits=smarthome.smarthome_splits(clip), problems=[]))
    return rows


def _scan_nucla(spec: DatasetSpec, root: Path, report: ScanReport) -> list[dict]:
    found: dict[str, dict[str, Path]] = {}
    raw_folders: set[Path] = set()
    for path in _walk(root, report):
        if path.suffix.lower() == ".json" and path.suffix != ".json":
            report.wrong_case.append(_rel(path, root))
        if path.suffix == ".json":
            try:
                sample = nucla.parse_sample_name(path.stem)
            except ValueError:
                report.unparsed.append(_rel(path, root))
                continue
            _pair(found, sample.sample_id, "skeleton", path, report)
        elif path.name.endswith(("_rgb.jpg", "skeletons.txt")):
            raw_folders.add(path.parent)
    for folder in sorted(raw_folders):
        view_dir = folder.parent.name
        try:
            view = int(view_dir.removeprefix("view_")) if view_dir.startswith("view_") else None
            sample = nucla.parse_sample_name(folder.name, view=view)
        except ValueError:
            report.unparsed.append(_rel(folder, root))
            continue
        slot = found.setdefault(sample.sample_id, {})
        if any(folder.glob("*_rgb.jpg")):
            slot["video"] = folder
        slot.setdefault("skeleton", folder)
    rows = []
    for key in sorted(found):
        sample = nucla.parse_sample_name(key)
        rows.append(_row(spec, key, found[key].get("video"), found[key].get("skeleton"), root,
                         action=spec.classes[sample.label], subject=sample.subject, view=sample.view,
                         splits=nucla.nucla_splits(sample), problems=[]))
    return rows


def validate_skeleton(dataset: str, path: Path) -> str:
    """Fully parse one skeleton; return '' when usable, otherwise the problem (never raises: any exception of
    any reader on any file becomes that file's problem)."""
    try:
        if dataset.startswith("ntu"):
            seq = ntu.read_skeleton(path, max_bodies=MAX_BODIES)
            ok = seq.num_frames > 0 and bool(seq.frames_with_bodies().any())
        elif dataset == "smarthome":
            ok = bool(np.isfinite(smarthome.read_lcrnet_json(path).pose2d).any())
        elif path.is_dir():
            ok = bool(np.isfinite(nucla.read_raw_sample(path)[0]).any())
        else:
            ok = bool(len(nucla.read_sqe_json(path)))
    except (ValueError, OSError) as err:
        return f"malformed skeleton: {err}"
    except Exception as err:  # a reader bug must cost one row, not the scan
        log.exception("validating %s", _printable(str(path)))
        return f"unreadable skeleton: {type(err).__name__}: {err}"
    return "" if ok else "skeleton has no body in any frame"


def _validate(df: pd.DataFrame, root: Path, workers: int) -> None:
    todo = df.index[(df[PROBLEM_COLUMN] == "") & (df["skeleton_path"] != "")]
    paths = [root / p for p in df.loc[todo, "skeleton_path"]]
    dataset = df["dataset"].iloc[0]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        problems = list(tqdm(pool.map(validate_skeleton, [dataset] * len(paths), paths, chunksize=32),
                             total=len(paths), desc="validate", unit="skeleton", dynamic_ncols=True))
    df.loc[todo, PROBLEM_COLUMN] = problems


def scan(dataset: str, data_root: str | Path, *, validate: bool = False, missing_list: str | Path | None = None,
         workers: int = 2) -> tuple[pd.DataFrame, ScanReport]:
    """Scan ``data_root`` recursively and build the manifest of ``dataset``.

    Args:
        dataset: ``ntu60``, ``ntu120``, ``smarthome`` or ``nucla``.
        data_root: the user's dataset folder; manifest paths are relative to it.
        validate: fully parse every skeleton (slower) and mark malformed or body-less ones.
        missing_list: an official NTU missing-skeleton list; listed samples get a ``problem``.
        workers: processes used by ``validate``.

    Raises:
        FileNotFoundError: when ``data_root`` is not a folder.
    """
    spec = get_dataset(dataset)
    root = Path(data_root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"DATA_ROOT {data_root} is not a folder")
    report = ScanReport()
    if dataset.startswith("ntu"):
        missing = ntu.read_missing_list(missing_list) if missing_list else set()
        rows = _scan_ntu(spec, root, report, missing)
    elif dataset == "smarthome":
        rows = _scan_smarthome(spec, root, report)
    else:
        rows = _scan_nucla(spec, root, report)
    df = pd.DataFrame(rows, columns=manifest_columns(spec))
    df["label"] = df["label"].astype("int64")
    if validate and len(df):
        _validate(df, root, workers)
    for note in report.duplicates:
        log.warning("duplicate: %s", note)
    return df, report


def write_manifest(df: pd.DataFrame, path: str | Path, data_root: str | Path | None = None) -> None:
    """Write a manifest CSV atomically (tmp file + rename).

    With ``data_root``, a side file ``<name>.json`` records the absolute folder the CSV's paths are relative to,
    so later stages need no ``DATA_ROOT``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if data_root is not None:
        side = {"data_root": str(Path(data_root).resolve()), "rows": len(df)}
        path.with_suffix(".json").write_text(json.dumps(side, indent=2) + "\n")


def pose_file_path(manifest: str | Path) -> Path:
    """Where ``--poses`` puts the poses converted from a pyskl pickle: ``<manifest>.poses.h5`` beside it."""
    return Path(manifest).with_suffix(".poses.h5")


def inside_root(data_root: str | Path, relative: str) -> Path:
    """``data_root / relative``, refused when it would leave DATA_ROOT.

    Raises:
        ValueError: an empty, absolute or ``..`` path, or one that resolves (through a symlink) outside the root.
    """
    root = Path(data_root)
    rel = PurePosixPath(relative)
    if not relative or rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"path {relative!r} is empty, absolute or uses '..'; manifest paths stay inside DATA_ROOT")
    path = root / rel
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise ValueError(f"path {relative!r} resolves to {real}, outside DATA_ROOT {root.resolve()} (a symlink?)")
    return path


def read_manifest_root(path: str | Path) -> Path:
    """The DATA_ROOT recorded beside a manifest by ``write_manifest``.

    Raises:
        FileNotFoundError: no side file (pass DATA_ROOT= explicitly).
    """
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        raise FileNotFoundError(f"{side} does not exist: pass DATA_ROOT= (the folder {path}'s paths are relative to)")
    return Path(json.loads(side.read_text())["data_root"])


def resolve_data_root(manifest: str | Path, data_root: str | Path | None = None) -> Path:
    """The folder ``manifest``'s paths are relative to: ``data_root`` when given, else the manifest's side file.

    Raises:
        FileNotFoundError: neither is there (pass DATA_ROOT= explicitly).
    """
    return Path(data_root) if data_root else read_manifest_root(manifest)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and check a manifest against the contract.

    Raises:
        FileNotFoundError: missing file. ValueError: missing columns or bad protocol values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist (run `make manifest` first)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in (*MANIFEST_COLUMNS, PROBLEM_COLUMN) if c not in df.columns]
    if missing:
        raise ValueError(f"manifest {path} lacks columns {missing}")
    if df.empty:
        return df
    spec = get_dataset(df["dataset"].iloc[0])
    for protocol in protocol_columns(spec):
        if protocol not in df.columns:
            raise ValueError(f"manifest {path} lacks protocol column {protocol!r}")
        bad = set(df[protocol]) - set(PROTOCOL_VALUES)
        if bad:
            raise ValueError(f"manifest {path}: column {protocol!r} holds {sorted(bad)}, expected train/val/test/empty")
    df["label"] = df["label"].astype("int64")
    return df


def summarize(df: pd.DataFrame, report: ScanReport | None = None) -> str:
    """A human-readable summary: samples per split per protocol, per class, problems, skipped names."""
    if df.empty:
        return "manifest is empty: no samples found"
    spec = get_dataset(df["dataset"].iloc[0])
    ok = df[df[PROBLEM_COLUMN] == ""]
    lines = [f"{spec.name}: {len(df)} samples, {len(ok)} usable, {len(df) - len(ok)} with a problem"]
    for protocol in protocol_columns(spec):
        counts = Counter(ok[protocol])
        parts = ", ".join(f"{s} {counts.get(s, 0)}" for s in ("train", "val", "test") if counts.get(s, 0) or s != "val")
        lines.append(f"  {protocol}: {parts}" + (f", not in protocol {counts['']}" if counts.get("") else ""))
    per_class = ok.groupby("action").size()
    if len(per_class):
        lines.append(f"  classes present: {len(per_class)}/{len(spec.classes)}; samples per class min "
                     f"{per_class.min()} / median {int(per_class.median())} / max {per_class.max()}")
    else:
        lines.append("  no usable sample")
    absent = [c for c in spec.classes if c not in per_class.index]
    if absent and len(absent) <= 10:
        lines.append(f"  classes absent: {', '.join(absent)}")
    problems = Counter(p.split(":")[0] for p in df[PROBLEM_COLUMN] if p)
    for problem, n in problems.most_common():
        lines.append(f"  problem: {problem}: {n}")
    if report is not None:
        if report.unparsed:
            lines.append(f"  skipped {len(report.unparsed)} files whose names do not parse "
                         f"(e.g. {report.unparsed[0]})")
        if report.outside_dataset:
            lines.append(f"  skipped {report.outside_dataset} files outside {spec.name} (setup/action range)")
        if report.duplicates:
            lines.append(f"  ignored {len(report.duplicates)} duplicate files")
        for items, what in ((report.unreadable, "folders could not be read"),
                            (report.not_followed, "symlinked folders not followed"),
                            (report.wrong_case, "files skipped: suffix in an unexpected case")):
            if items:
                lines.append(f"  {len(items)} {what}: {', '.join(items[:5])}" + (", ..." if len(items) > 5 else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="ntu60 | ntu120 | smarthome | nucla")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--out", help="manifest CSV (default manifests/<dataset>.csv)")
    parser.add_argument("--validate", action="store_true", help="fully parse every skeleton")
    parser.add_argument("--missing-list", help="official NTU missing-skeleton list to mark")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--poses", help="a pyskl/mmaction2 annotation pickle to take the 3D poses from, matched by "
                                        "sample id (loaded with a restricted unpickler)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        df, report = scan(args.dataset, args.data_root, validate=args.validate, missing_list=args.missing_list,
                          workers=args.workers)
        if args.poses:
            from pipeline import pyskl  # pyskl reads manifests: imported here, not at the top, to avoid a cycle

            df = pyskl.attach_poses(df, args.poses, pose_file_path(args.out or f"manifests/{args.dataset}.csv"))
    except (ValueError, FileNotFoundError, pickle.UnpicklingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or f"manifests/{args.dataset}.csv")
    write_manifest(df, out, data_root=args.data_root)
    print(summarize(df, report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
