"""No make variable reaches a shell unquoted (issue 21): values with spaces, ``;``, backticks, ``$(...)`` and quotes
arrive as one argument and run nothing, and a failed step makes ``make`` exit non-zero.

The recipes really run (not ``make -n``), with ``PY`` (and ``VENV``, for torchrun) pointing at a stub that records
its arguments: the shell of each recipe line sees exactly what a user's value would give it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import write_tiny_cache

STUB = """#!/bin/sh
exec {python} -c 'import json, os, sys; open(os.environ["ARGV_LOG"], "a").write(json.dumps(sys.argv[1:]) + "\\n")' "$@"
"""

VALUES = {
    "space": "{tmp}/my data/a b",
    "semicolon": "{tmp}/x; touch {pwned} #",
    "backtick": "{tmp}/x`touch {pwned}`",
    "dollar": "{tmp}/x$$(touch {pwned})",  # make turns $$ into $: the shell would see $(touch …)
    "quote": "{tmp}/it's; touch {pwned}",
}
"""Hostile values, as given on the make command line."""

CASES = [  # target, variable, other variables, the option the value must follow (None: the last argument)
    ("synthetic", "DATA_ROOT", [], "--root"),
    ("manifest", "DATA_ROOT", [], "--data-root"),
    ("manifest", "MANIFEST", ["DATA_ROOT=/d"], "--out"),
    ("cache", "MANIFEST", [], "--manifest"),
    ("cache", "CACHE_DIR", [], "--cache-dir"),
    ("cache", "I3D_WEIGHTS", [], "--i3d-weights"),
    ("train-head", "CACHE", ["PROTOCOL=cs"], "--cache-dir"),
    ("train-head", "RUNS_DIR", ["PROTOCOL=cs"], "--runs-dir"),
    ("eval", "CACHE", [], "--cache-dir"),
    ("eval", "RUNS_DIR", [], "--runs-dir"),
    ("report", "RUN", [], "--run"),
    ("export-pyskl", "OUT", [], "--out"),
    ("finetune", "RDZV", ["PROTOCOL=cs", "NNODES=2"], "--rdzv-endpoint"),
    ("inspect", "CACHE", [], None),
    ("verify", "CACHE", [], None),
]


@pytest.fixture
def stub(tmp_path) -> dict[str, str]:
    """Make variables and environment that run recipes against the argument-recording stub."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "torchrun"):
        path = venv / "bin" / name
        path.write_text(STUB.format(python=sys.executable))
        path.chmod(0o755)
    return {"VENV": str(venv), "PY": str(venv / "bin" / "python"), "STAMP": str(tmp_path / "stamp"),
            "ARGV_LOG": str(tmp_path / "argv.jsonl")}


def run_make(stub: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    log = Path(stub["ARGV_LOG"])
    log.unlink(missing_ok=True)
    overrides = [f"{k}={v}" for k, v in stub.items() if k != "ARGV_LOG"]
    result = subprocess.run(["make", "-s", "--no-print-directory", *args, *overrides], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "ARGV_LOG": stub["ARGV_LOG"]})
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


@pytest.mark.parametrize("kind", list(VALUES))
def test_hostile_values_arrive_as_one_argument_and_run_nothing(kind, stub, tmp_path):
    pwned = tmp_path / "pwned"
    given = VALUES[kind].format(tmp=tmp_path, pwned=pwned)
    expected = given.replace("$$", "$")
    for target, variable, others, option in CASES:
        result, calls = run_make(stub, target, *others, f"{variable}={given}")
        assert result.returncode == 0, f"make {target} {variable}=…: {result.stderr}"
        assert not pwned.exists(), f"make {target} {variable}={given!r} ran a command"
        argv = calls[-1]
        if option is None:
            assert argv[-1] == expected, (target, variable, argv)
        else:
            assert option in argv and argv[argv.index(option) + 1] == expected, (target, variable, argv)


def test_pass_through_arguments_are_quoted_word_by_word(stub, tmp_path):
    pwned = tmp_path / "pwned"
    result, calls = run_make(stub, "cache", f"CACHE_ARGS=--t-p 5;touch {pwned}")
    assert result.returncode == 0 and not pwned.exists()
    assert calls[-1][-3:] == ["--t-p", "5;touch", str(pwned)]
    result, calls = run_make(stub, "train-head", "PROTOCOL=cs", "MODEL=embed_dim=8 gcn_channels=`id`")
    assert result.returncode == 0
    assert calls[-1][calls[-1].index("--model") + 1:][:3] == ["embed_dim=8", "--model", "gcn_channels=`id`"]


def test_clean_demo_removes_exactly_the_folder_with_a_space(tmp_path):
    (tmp_path / "demo data").mkdir()
    (tmp_path / "demo").mkdir()
    (tmp_path / "data").mkdir()
    result = subprocess.run(["make", "-s", "clean-demo", f"DEMO_ROOT={tmp_path / 'demo data'}",
                             f"DEMO_DIR={tmp_path / 'work'}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "demo"]


def test_a_failed_step_fails_make_and_a_path_with_spaces_works(tmp_path):
    """Real runs: the injected command used to run after the failed step and make exited 0."""
    pwned = tmp_path / "pwned"
    bad = subprocess.run(["make", "-s", "--no-print-directory", "manifest", f"DATA_ROOT={tmp_path}/x; touch {pwned} #",
                          f"MANIFEST={tmp_path / 'm.csv'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and not pwned.exists()
    assert "x; touch" in bad.stderr  # the one-line error names the folder as given
    folder = write_tiny_cache(tmp_path / "my cache" / "nucla" / "h", videos={"train": 2, "test": 1})
    good = subprocess.run(["make", "-s", "--no-print-directory", "inspect", f"CACHE={folder.parent}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    assert f"{folder}/cache.h5: merged view" in good.stdout
