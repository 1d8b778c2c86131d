"""Provenance attrs of a cache file: the config, the I3D weights' hash, library and code versions, creation time."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py

from pipeline import __version__
from pipeline.contracts import CACHE_ATTRS


@lru_cache(maxsize=1)
def code_version() -> str:
    """``git describe --always --dirty`` of the repository holding this package, else the package version.

    Runs with ``GIT_OPTIONAL_LOCKS=0`` so that it never writes the index (no lock races with a commit). Asked
    once per process: the code a process runs does not change under it, and asking per shard shows in a build's
    profile (``bench/bench_scale.py``).
    """
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10, check=True,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        return out.stdout.strip() or __version__
    except (OSError, subprocess.SubprocessError):
        return __version__


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of Python, HDF5 and the libraries that write or read the cache (from package metadata).

    Read once per process: package metadata lookups per shard show in a build's profile
    (``bench/bench_scale.py``). Callers get the cached dict and must not modify it.
    """
    versions = {"python": platform.python_version(), "hdf5": h5py.version.hdf5_version}
    for package in ("torch", "numpy", "h5py", "hdf5plugin", "decord", "av", "opencv-python-headless"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def make_attrs(config: Mapping[str, Any] | Any, i3d_weights_sha256: str) -> dict[str, str]:
    """Build the ``CACHE_ATTRS`` of a cache file.

    Args:
        config: the full config (a mapping or a dataclass); stored as sorted JSON (paths become strings).
        i3d_weights_sha256: sha256 of the I3D weights file ("" for random init).

    Returns:
        One string per name in ``CACHE_ATTRS``.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return {
        "config_json": json.dumps(config, sort_keys=True, default=_json_default),
        "i3d_weights_sha256": i3d_weights_sha256,
        "versions_json": json.dumps(library_versions(), sort_keys=True),
        "code_version": code_version(),
        "created_utc": utc_now(),
    }


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (``created_utc``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"config value {value!r} of type {type(value).__name__} is not JSON serialisable")


def check_attrs(attrs: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless ``attrs`` holds every name of ``CACHE_ATTRS`` with valid JSON where due."""
    missing = [name for name in CACHE_ATTRS if name not in attrs]
    if missing:
        raise ValueError(f"cache attrs lack {missing}; build them with make_attrs(config, i3d_weights_sha256)")
    for name in ("config_json", "versions_json"):
        try:
            json.loads(attrs[name])
        except (TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"cache attr {name} is not a JSON string: {err}") from err
