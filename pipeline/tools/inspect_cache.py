"""What a cache holds: config, provenance, counts per split and class, failures and dataset shapes.

``python -m pipeline.tools.inspect_cache PATH [--json]`` (``make inspect CACHE=…``), where PATH is a ``cache.h5``, a
shard file, a cache directory, or a dataset folder of a cache root (``cache/ntu60``, whose ``LATEST`` names the
cache built last), looked up by ``pipeline.cache.layout.resolve``. It reads only the per-row metadata and the HDF5
headers, so it is instant on any cache, and it works on every cache that ``pipeline.cache.reader.open_cache`` opens.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.cache.format import open_h5
from pipeline.cache.layout import SHARD_GLOB, CacheError, resolve
from pipeline.cache.reader import CacheReader, open_cache

FAILURE_EXAMPLES = 5
H5_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 32000: "lzf", 32001: "blosc", 32008: "bitshuffle",
              32015: "zstd", 32026: "blosc2"}
"""HDF5 filter ids (the registered ones of https://github.com/HDFGroup/hdf5_plugins) by name; 1-3 are built in,
the others need ``hdf5plugin`` (``lzf`` ships with h5py)."""
SPLIT_ORDER = ("train", "val", "test", "", "all")
"""How split columns are listed; a value outside the contract (a damaged or foreign cache) comes after them."""


def _split_key(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def _filters(ds: h5py.Dataset) -> list[str]:
    """The filter pipeline of a dataset: ``name(level…)`` per filter."""
    plist = ds.id.get_create_plist()
    out = []
    for i in range(plist.get_nfilters()):
        code, _, values, _ = plist.get_filter(i)
        name = H5_FILTERS.get(code, f"filter {code}")
        out.append(f"{name}{tuple(values) if values else ''}".replace(",)", ")"))
    return out


def _source_dataset(f: h5py.File, name: str, folder: Path) -> tuple[h5py.File | None, h5py.Dataset]:
    """The dataset itself, or for a virtual one the first source shard's (where chunks and filters live)."""
    ds = f[name]
    if not ds.is_virtual or not ds.virtual_sources():
        return None, ds
    source = Path(ds.virtual_sources()[0].file_name)
    src = open_h5(source if source.is_absolute() else folder / source)
    return src, src[name]


def _datasets(path: Path) -> dict[str, dict[str, Any]]:
    """shape, dtype, chunks, filters and virtual-or-not of every dataset in the file."""
    out: dict[str, dict[str, Any]] = {}
    with open_h5(path) as f:
        names: list[str] = []
        f.visit(lambda name: names.append(name) if isinstance(f[name], h5py.Dataset) else None)
        for name in sorted(names):
            src, ds = _source_dataset(f, name, path.parent)
            try:
                out[name] = {"shape": list(f[name].shape), "dtype": str(f[name].dtype), "virtual": f[name].is_virtual,
                             "chunks": list(ds.chunks) if ds.chunks else None, "filters": _filters(ds)}
            finally:
                if src is not None:
                    src.close()
    return out


def _split_counts(reader: CacheReader) -> dict[str, dict[str, dict[str, int]]]:
    """protocol -> split -> {"videos", "clips"} (rows outside the protocol under the split name "")."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for protocol in reader.protocols:
        splits = reader.splits(protocol)
        out[protocol] = {split: {"videos": len(set(reader.sample_ids[splits == split])),
                                 "clips": int((splits == split).sum())}
                         for split in sorted(set(splits), key=_split_key)}
    return out


def _class_counts(reader: CacheReader, protocol: str) -> list[dict[str, Any]]:
    """One entry per label present: its action name and videos per split of ``protocol`` (all when "")."""
    first = np.unique(reader.sample_ids, return_index=True)[1]  # one row per video
    labels, actions = reader.labels[first], reader.actions[first]
    splits = reader.splits(protocol)[first] if protocol else np.full(len(first), "all")
    out = []
    for label in sorted(set(labels.tolist())):
        mask = labels == label
        out.append({"label": int(label), "action": str(actions[mask][0]), **Counter(splits[mask].tolist())})
    return out


def summarize(path: str | Path) -> dict[str, Any]:
    """Everything ``main`` prints, as a JSON-ready dict.

    Raises:
        CacheError: not a readable cache (see ``open_cache``).
    """
    path = resolve(path)
    with open_cache(path) as reader:
        config = reader.attrs["config_json"]
        protocol = config.get("protocol", "") if isinstance(config, dict) else ""
        file_path = reader.path
        failures = reader.failures
        summary: dict[str, Any] = {
            "path": str(file_path),
            "kind": "merged view" if reader.is_merged else "shard",
            "config": config,
            "provenance": {"i3d_weights_sha256": reader.attrs["i3d_weights_sha256"],
                           "code_version": reader.attrs["code_version"],
                           "created_utc": reader.attrs["created_utc"],
                           "versions": reader.attrs["versions_json"]},
            "clips": len(reader),
            "videos": len(set(reader.sample_ids)),
            "num_joints": int(reader.num_joints),
            "t_p": int(reader.t_p),
            "splits": _split_counts(reader),
            "classes_protocol": protocol if protocol in reader.protocols else "",
            "failures": {"count": len(failures), "by_stage": dict(Counter(failures["stage"])),
                         "examples": failures.head(FAILURE_EXAMPLES).to_dict("records")},
        }
        summary["classes"] = _class_counts(reader, summary["classes_protocol"])
    shards = sorted(file_path.parent.glob(SHARD_GLOB)) if summary["kind"] == "merged view" else [file_path]
    summary["shards"] = len(shards)
    summary["bytes_on_disk"] = sum(p.stat().st_size for p in {*shards, file_path})
    summary["datasets"] = _datasets(file_path)
    return summary


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def format_summary(s: dict[str, Any]) -> str:
    """The human-readable report of ``summarize``."""
    lines = [f"{s['path']}: {s['kind']}, {s['clips']} clips of {s['videos']} videos, {s['shards']} shard file(s), "
             f"{s['bytes_on_disk'] / 2**20:.1f} MiB on disk", "config:"]
    config = s["config"] if isinstance(s["config"], dict) else {"config_json": s["config"]}
    lines += [f"  {k}: {v}" for k, v in sorted(config.items())]
    prov = s["provenance"]
    lines += ["provenance:", f"  i3d_weights_sha256: {prov['i3d_weights_sha256']}",
              f"  code_version: {prov['code_version']}", f"  created_utc: {prov['created_utc']}",
              "  versions: " + ", ".join(f"{k} {v}" for k, v in sorted(prov["versions"].items()))]
    lines.append("splits (videos / clips):")
    for protocol, splits in s["splits"].items():
        lines.append(f"  {protocol}: " + ", ".join(f"{split or 'not in protocol'} {c['videos']} / {c['clips']}"
                                                    for split, c in splits.items()))
    columns = sorted({k for c in s["classes"] for k in c} - {"label", "action"}, key=_split_key)
    lines.append(f"videos per class{' (' + s['classes_protocol'] + ')' if s['classes_protocol'] else ''}: "
                 f"{len(s['classes'])} classes present")
    header = ["label action", *[c or "none" for c in columns]]
    lines += _table([header, *[[f"{c['label']:>3} {c['action']}", *[str(c.get(k, 0)) for k in columns]]
                              for c in s["classes"]]])
    fail = s["failures"]
    lines.append(f"failures: {fail['count']}" + (" (" + ", ".join(f"{k} {v}" for k, v in fail["by_stage"].items()) + ")"
                                                 if fail["count"] else ""))
    lines += [f"  {f['sample_id']} [{f['stage']}] {f['reason'][:100]}" for f in fail["examples"]]
    if fail["count"] > len(fail["examples"]):
        lines.append(f"  … {fail['count'] - len(fail['examples'])} more in failures.csv")
    lines.append(f"datasets (poses: J={s['num_joints']}, t_p={s['t_p']}):")
    lines += _table([[name, str(tuple(d["shape"])), d["dtype"], "virtual" if d["virtual"] else "",
                      f"chunks {tuple(d['chunks'])}" if d["chunks"] else "", " ".join(d["filters"])]
                     for name, d in s["datasets"].items()])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.inspect_cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="cache.h5, a shard, a cache directory, or a dataset folder with LATEST")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.path)
    except CacheError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
