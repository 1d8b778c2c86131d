"""Manifests: scan a raw dataset folder, pair each video with its skeleton and write the protocol splits.

``python -m pipeline.datasets.manifest --dataset ntu60 --data-root DIR [--out CSV] [--validate] [--missing-list TXT]``

The scan never stops on bad input: a file whose name does not parse is skipped and counted; a sample whose
video or skeleton is missing, empty, not a regular file, outside DATA_ROOT, named in bytes that are not UTF-8
or (with ``--validate``) malformed stays in the manifest with a ``problem`` saying why, so later stages skip it
and record it in ``failures.csv``. Nothing is dropped silently: symlinked folders are followed (each real folder
once, so a loop ends), and folders that cannot be read, symlinked folders that leave DATA_ROOT and names whose
suffix has an unexpected case are counted and listed in the summary.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import pickle
import stat
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

import pandas as pd

from pipeline.contracts import MANIFEST_COLUMNS, PROBLEM_COLUMN, PROTOCOL_VALUES
from pipeline.datasets import bounds as input_bounds
from pipeline.datasets import pose_pickle
from pipeline.datasets.files import SampleFiles, ScanReport, printable, real_path, relative
from pipeline.datasets.registry import DATASETS, DatasetSpec, get_dataset
from pipeline.utils.fileio import atomic_path, atomic_write_json
from pipeline.utils.progress import show_progress

log = logging.getLogger(__name__)


def protocol_columns(spec: DatasetSpec) -> list[str]:
    return list(spec.protocols)


def manifest_columns(spec: DatasetSpec) -> list[str]:
    """Column order of a manifest of ``spec``: the contract columns, the protocols, ``problem``."""
    return [*MANIFEST_COLUMNS, *spec.extra_columns, *protocol_columns(spec), PROBLEM_COLUMN]


def _file_problem(path: Path | None, what: str, root: Path) -> str:
    if path is None:
        return f"{what} missing"
    if printable(str(path)) != str(path):
        return f"{what} path is not valid UTF-8 (written escaped; rename the file)"
    real = real_path(path)
    if real is None:
        return f"{what} is a symlink loop"
    if not real.is_relative_to(root):
        return f"{what} resolves to {printable(str(real))}, outside DATA_ROOT"
    try:
        info = path.stat()
    except OSError as err:
        return f"{what} cannot be read ({err.strerror})"
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return f"{what} is not a regular file (a named pipe, device or socket)"
    if stat.S_ISREG(info.st_mode) and info.st_size == 0:
        return f"{what} is an empty file"
    return ""


def _row(spec: DatasetSpec, sample_id: str, files: SampleFiles, root: Path, problems: list[str]) -> dict:
    """The manifest row of one sample: what its id says, its files' paths and every problem found."""
    info = spec.parse_sample_id(sample_id)
    video, skeleton = files.get("video"), files.get("skeleton")
    label = spec.classes.index(info.action) if info.action in spec.classes else -1
    if label < 0:
        problems.append(f"action {info.action!r} is not one of the {len(spec.classes)} {spec.name} classes")
    problems.extend(p for p in (_file_problem(video, "video", root), _file_problem(skeleton, "skeleton", root)) if p)
    return {"sample_id": sample_id, "dataset": spec.name, "video_path": relative(video, root),
            "skeleton_path": relative(skeleton, root), "label": label, "action": info.action,
            "subject": info.subject, "view": info.view, **info.columns, **info.splits,
            PROBLEM_COLUMN: "; ".join(problems)}


def validate_skeleton(dataset: str, path: Path) -> str:
    """Fully parse one skeleton with the dataset's reader; return '' when usable, otherwise the problem (never
    raises: any exception of any reader on any file becomes that file's problem)."""
    spec = get_dataset(dataset)
    try:
        clip = spec.read_skeleton(path, spec.frame_size)
        problem = input_bounds.clip_problem(clip, spec)
    except (ValueError, OSError) as err:
        return f"malformed skeleton: {err}"
    except Exception as err:  # a reader bug must cost one row, not the scan
        log.exception("validating %s", printable(str(path)))
        return f"unreadable skeleton: {type(err).__name__}: {err}"
    return f"skeleton: {problem}" if problem else ""


def _validate(df: pd.DataFrame, root: Path, workers: int) -> None:
    todo = df.index[(df[PROBLEM_COLUMN] == "") & (df["skeleton_path"] != "")]
    paths = [root / p for p in df.loc[todo, "skeleton_path"]]
    dataset = df["dataset"].iloc[0]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(validate_skeleton, [dataset] * len(paths), paths, chunksize=32)
        problems = list(show_progress(results, "validate", total=len(paths), unit="skeleton"))
    df.loc[todo, PROBLEM_COLUMN] = problems


def scan(dataset: str, data_root: str | Path, *, validate: bool = False, missing_list: str | Path | None = None,
         workers: int = 2) -> tuple[pd.DataFrame, ScanReport]:
    """Scan ``data_root`` recursively and build the manifest of ``dataset``.

    Args:
        dataset: a registry name (``ntu60``, ``ntu120``, ``smarthome``, ``nucla``); its spec's scanner finds the
            samples and its id parser gives each row's fields and splits.
        data_root: the user's dataset folder; manifest paths are relative to it.
        validate: fully parse every skeleton (slower) and mark malformed or body-less ones.
        missing_list: the dataset's official missing-skeleton list (NTU); listed samples get a ``problem``.
        workers: processes used by ``validate``.

    Raises:
        FileNotFoundError: when ``data_root`` is not a folder.
    """
    spec = get_dataset(dataset)
    root = real_path(Path(data_root))
    if root is None or not root.is_dir():
        raise FileNotFoundError(f"DATA_ROOT {data_root} is not a folder")
    report = ScanReport()
    found = spec.find_samples(root, report)
    missing = spec.read_missing_list(missing_list) if missing_list and spec.read_missing_list else set()
    listed = ["listed in the official missing-skeleton list"]
    rows = [_row(spec, key, found[key], root, list(listed) if key in missing else []) for key in sorted(found)]
    df = pd.DataFrame(rows, columns=manifest_columns(spec))
    df["label"] = df["label"].astype("int64")
    if validate and len(df):
        _validate(df, root, workers)
    for note in report.duplicates:
        log.warning("duplicate: %s", note)
    return df, report


def write_manifest(df: pd.DataFrame, path: str | Path, data_root: str | Path | None = None) -> None:
    """Write a manifest CSV atomically (``fileio.atomic_path``).

    With ``data_root``, a side file ``<name>.json`` records the absolute folder the CSV's paths are relative to,
    so later stages need no ``DATA_ROOT``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    if data_root is not None:
        atomic_write_json(path.with_suffix(".json"), {"data_root": str(Path(data_root).resolve()), "rows": len(df)})


def pose_file_path(manifest: str | Path) -> Path:
    """Where ``--poses`` puts the poses converted from a pyskl pickle: ``<manifest>.poses.h5`` beside it."""
    return Path(manifest).with_suffix(".poses.h5")


def inside_root(data_root: str | Path, relative: str) -> Path:
    """``data_root / relative``, refused when it would leave DATA_ROOT.

    Raises:
        ValueError: an empty, absolute or ``..`` path, one that resolves (through a symlink) outside the root, or a
            symlink loop.
    """
    root = Path(data_root)
    rel = PurePosixPath(relative)
    if not relative or rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"path {relative!r} is empty, absolute or uses '..'; manifest paths stay inside DATA_ROOT")
    path = root / rel
    real = real_path(path)
    if real is None:
        raise ValueError(f"path {relative!r} is a symlink loop")
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


def _decode_utf8(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"manifest {path}: line {line}: bytes that are not UTF-8 "
                         f"({data[err.start:err.start + 4]!r}); manifests are written in UTF-8") from None


def _row_problem(spec: DatasetSpec, row: dict[str, str]) -> str:
    """Why one manifest row contradicts its dataset, or ''."""
    label = row["label"].strip()
    if not (label.isascii() and label.lstrip("-").isdigit()):
        return f"label {label[:40]!r} is not an integer"
    value = int(label)
    if not -1 <= value < len(spec.classes):
        return f"label {value} is outside [0, {len(spec.classes)}) ({spec.name} has {len(spec.classes)} classes)"
    if value == -1 and not row[PROBLEM_COLUMN]:
        return "label -1 (no class) on a row without a problem"
    if value >= 0 and row["action"] != spec.classes[value]:
        return (f"action {row['action'][:60]!r} is not class {value} of {spec.name} "
                f"({spec.classes[value]!r})" + ("" if row["action"] in spec.classes else ": an unknown action"))
    try:
        info = spec.parse_sample_id(row["sample_id"])
    except ValueError as err:
        return f"sample_id is not a {spec.name} id: {err}"
    if info.action != row["action"]:
        return f"sample_id {row['sample_id']!r} is of action {info.action!r}, the row says {row['action']!r}"
    for protocol, official in info.splits.items():  # an edited official split would train on test clips
        if protocol in row and row[protocol] != official:
            return (f"column {protocol!r} says {row[protocol]!r}, but the official {spec.name} {protocol} split of "
                    f"{row['sample_id']!r} is {official!r}; put a split of your own in a column of its own name "
                    "(docs/datasets.md)")
    return ""


def check_rows(df: pd.DataFrame, path: Path, spec: DatasetSpec) -> None:
    """Refuse a manifest whose content contradicts its dataset: another dataset's rows, duplicated sample ids,
    labels that are not integers or out of range, actions that are not the label's class, ids of another form,
    an official protocol column (``cs``, ``cv``, ...) whose value is not the one the sample id gives.

    Raises:
        ValueError: one line naming the file, the line (the header is line 1) and what is wrong.
    """
    lines = df.index + 2
    for line, dataset in zip(lines, df["dataset"]):
        if dataset != spec.name:
            raise ValueError(f"manifest {path}: line {line}: dataset {dataset[:40]!r}, but line 2 says {spec.name!r}")
    duplicated = df["sample_id"].duplicated(keep="first")
    if duplicated.any():
        i = int(duplicated.to_numpy().argmax())
        sample_id = df["sample_id"].iloc[i]
        first = int((df["sample_id"] == sample_id).to_numpy().argmax())
        raise ValueError(f"manifest {path}: line {lines[i]}: sample_id {sample_id!r} is already on line {lines[first]}")
    for line, row in zip(lines, df.to_dict("records")):
        problem = _row_problem(spec, row)
        if problem:
            raise ValueError(f"manifest {path}: line {line}: {problem}")


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and check a manifest against the contract and its dataset (``check_rows``).

    Raises:
        FileNotFoundError: missing file. ValueError: bytes that are not UTF-8, missing columns, bad protocol values,
            an unknown dataset, or rows that contradict the dataset (one line naming the file and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist (run `make manifest` first)")
    text = _decode_utf8(path, path.read_bytes())
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"manifest {path}: not a CSV table ({str(err).strip()})") from None
    missing = [c for c in (*MANIFEST_COLUMNS, PROBLEM_COLUMN) if c not in df.columns]
    if missing:
        raise ValueError(f"manifest {path} lacks columns {missing}")
    if df.empty:
        return df
    try:
        spec = get_dataset(df["dataset"].iloc[0])
    except ValueError as err:
        raise ValueError(f"manifest {path}: line 2: {err}") from None
    for protocol in protocol_columns(spec):
        if protocol not in df.columns:
            raise ValueError(f"manifest {path} lacks protocol column {protocol!r}")
        bad = set(df[protocol]) - set(PROTOCOL_VALUES)
        if bad:
            raise ValueError(f"manifest {path}: column {protocol!r} holds {sorted(bad)}, expected train/val/test/empty")
    check_rows(df, path, spec)
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
    parser.add_argument("--dataset", required=True, help=" | ".join(DATASETS))
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
            df = pose_pickle.attach_poses(df, args.poses, pose_file_path(args.out or f"manifests/{args.dataset}.csv"))
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
