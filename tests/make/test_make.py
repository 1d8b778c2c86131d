"""The make interface: every CLI option is a make variable (``make -n``), unknown variables are reported,
multi-node torchrun, ``make help`` lists variables, ``make inspect`` and a cache that opens without hdf5plugin."""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import shlex
import subprocess
import sys

import h5py
import numpy as np
import pytest

from pipeline.cache.provenance import make_attrs
from pipeline.datasets import manifest as manifest_cli
from pipeline.tools import export_pyskl as pyskl
from pipeline.tools import inspect_cache
from pipeline.utils import progress
from tasks import cache as cache_cli
from tasks import crops as crops_cli
from tests.conftest import REPO, shared_path
from tests.helpers import build_cache, write_shard
from vpn_head.eval import evaluate
from vpn_head.infer import explain, predict
from vpn_head.train import finetune
from vpn_head.train import head as train

BASE = {"train-head": ["PROTOCOL=cs"], "finetune": ["PROTOCOL=cs"], "manifest": ["DATA_ROOT=/d"],
        "export-pyskl": ["OUT=x.pkl"], "predict": ["RUN=r", "INPUT=v.avi"], "explain": ["RUN=r", "INPUT=v.avi"]}
RENAMED = {("manifest", "out"): "MANIFEST"}
"""Options whose make variable is not the upper-case option name."""
NOT_VARIABLES = {("cache", "resume")}
"""Options a target sets itself (``make resume`` is ``--resume``)."""


def make_n(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def command_of(target: str, *variables: str, base: bool = True) -> str:
    """The python command line ``make -n target variables…`` would run (with the target's ``BASE`` variables)."""
    result = make_n(target, *(BASE.get(target, []) if base else []), *variables)
    assert result.returncode == 0, result.stderr
    (line,) = [l for l in result.stdout.splitlines()
               if " -m " in l and "pip install" not in l and " -m venv" not in l]
    return " ".join(shlex.split(line))


def parser_of(main, monkeypatch) -> argparse.ArgumentParser:
    """The parser a CLI's ``main`` builds (captured at its ``parse_args``)."""
    captured = []

    class Stop(Exception):
        pass

    def capture(self, *args, **kwargs):
        captured.append(self)
        raise Stop

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(Stop):
            main([])
    return captured[0]


@pytest.mark.parametrize("target, main", [("cache", cache_cli.main), ("manifest", manifest_cli.main),
                                          ("train-head", train.main), ("eval", evaluate.main),
                                          ("finetune", finetune.main), ("export-pyskl", pyskl.main),
                                          ("crops", crops_cli.main), ("predict", predict.main),
                                          ("explain", explain.main)])
def test_every_cli_option_is_a_make_variable(target, main, monkeypatch):
    for action in parser_of(main, monkeypatch)._actions:
        if not action.option_strings or action.dest == "help" or (target, action.dest) in NOT_VARIABLES:
            continue
        variable = RENAMED.get((target, action.dest), action.dest.upper())
        if isinstance(action, argparse.BooleanOptionalAction):
            cases = {"1": action.option_strings[0], "0": action.option_strings[1]}
        elif isinstance(action, argparse._StoreTrueAction):
            cases = {"1": action.option_strings[0]}
        elif isinstance(action, argparse._StoreFalseAction):
            cases = {"0": action.option_strings[0]}
        else:
            cases = {"7": " 7"}
        for value, expected in cases.items():
            command = command_of(target, f"{variable}={value}")
            options = action.option_strings if expected == " 7" else [expected]
            wanted = [f"{o}{expected}" if expected == " 7" else o for o in options]
            assert any(f" {w}" in command + " " for w in wanted), (variable, value, command)


def test_pass_through_arguments_and_the_cache_options_of_the_issue():
    command = command_of("cache", "PRECISION=bf16", "DEVICE=cuda:1", "BACKEND=pyav", "DECODE_WORKERS=3",
                         "BATCH_SIZE=8", "T_P=10", "CROP_PAD=0.2", "EXTRACTOR=pixels", "COMPRESSION=gzip",
                         "CACHE_ARGS=--shard-size 9")
    assert ("--t-p 10 --crop-pad 0.2 --backend pyav --precision bf16 --compression gzip --extractor pixels "
            "--decode-workers 3 --batch-size 8 --device cuda:1 --shard-size 9") in command
    assert command_of("eval", "EVAL_ARGS=--x 1").endswith("--x 1")
    assert command_of("train-head", "TRAIN_ARGS=--x 1").endswith("--x 1")


def test_a_variable_the_target_does_not_take_is_reported():
    typo = make_n("cache", "PRECISON=bf16")
    assert typo.returncode == 0 and "does not use PRECISON" in typo.stderr
    other = make_n("train-head", "PROTOCOL=cs", "PRECISION=bf16", "LR=0.1")
    assert "does not use PRECISION:" in other.stderr
    assert "does not use" not in make_n("cache", "PRECISION=bf16").stderr


def test_config_replays_a_run_and_only_given_variables_override_it():
    command = command_of("train-head", "CONFIG=runs/x/config.json", base=False)
    assert command.endswith("-m vpn_head.train.head --config runs/x/config.json")
    assert command_of("train-head", "CONFIG=c.json", "LR=0.2", "EPOCHS=5", base=False).endswith(
        "--config c.json --epochs 5 --lr 0.2")
    finetune_command = command_of("finetune", "CONFIG=c.json", "CACHE=my_c", base=False)
    assert finetune_command.endswith("--config c.json --cache-dir my_c")


def test_finetune_launches_torchrun_on_one_or_many_machines():
    assert command_of("finetune").startswith(".venv/bin/python -m vpn_head.train.finetune")
    assert command_of("finetune", "GPUS=8").startswith(".venv/bin/torchrun --standalone --nproc_per_node 8 -m")
    multi = command_of("finetune", "GPUS=8", "NNODES=4", "RDZV=node0:29400", "RDZV_ID=job7")
    assert multi.startswith(".venv/bin/torchrun --nnodes 4 --rdzv-backend c10d --rdzv-endpoint node0:29400 "
                            "--rdzv-id job7 --nproc_per_node 8 -m vpn_head.train.finetune")
    missing = make_n("finetune", "PROTOCOL=cs", "NNODES=2")
    assert missing.returncode != 0 and "RDZV=host:port is required" in missing.stderr


def test_help_lists_each_targets_variables_with_defaults():
    result = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    text = result.stdout
    assert result.returncode == 0
    cache_block = text.split("\ncache ")[1].split("\nresume ")[0]
    for pair in ("PRECISION=fp32", "BACKEND=opencv", "SHARD_SIZE=200", "BATCH_SIZE=4", "CACHE_ARGS="):
        assert pair in cache_block
    assert "BATCH_SIZE=16" in text.split("\ntrain-head ")[1].split("\neval ")[0]
    assert "NNODES=1" in text.split("\nfinetune ")[1]


@pytest.mark.parametrize("target, main", [("cache", cache_cli.main), ("manifest", manifest_cli.main),
                                          ("train-head", train.main), ("eval", evaluate.main),
                                          ("finetune", finetune.main), ("crops", crops_cli.main),
                                          ("predict", predict.main), ("explain", explain.main)])
def test_help_defaults_are_the_cli_defaults(target, main, monkeypatch):
    """``make help`` states a default beside each variable; where it is a plain value it must be the CLI's."""
    result = subprocess.run(["make", "-s", "--no-print-directory", f"help-vars-{target}"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    shown = dict(pair.split("=", 1) for pair in re.split(r" (?=[A-Z][A-Z0-9_]*=)", " ".join(result.stdout.split())))
    checked = 0
    for action in parser_of(main, monkeypatch)._actions:
        variable = RENAMED.get((target, action.dest), action.dest.upper())
        value = shown.get(variable, "")
        if not re.fullmatch(r"[\w.\-/]+", value) or action.default in (None, "", [], argparse.SUPPRESS):
            continue
        default = int(action.default) if isinstance(action.default, bool) else action.default
        assert value == str(default) or float(value) == default, (variable, value, action.default)
        checked += 1
    assert checked >= 1


# ----------------------------------------------------------------------------------------------------------
# reading caches


def test_inspect_summarises_config_counts_failures_and_shapes(tmp_path):
    attrs = make_attrs({"dataset": "ntu60", "protocol": "cs", "compression": "zstd-1"}, "ab" * 32)
    _, records = build_cache(tmp_path / "ntu60" / "abc", attrs)
    (tmp_path / "ntu60" / "LATEST").write_text("abc\n")
    summary = inspect_cache.summarize(tmp_path / "ntu60")
    assert summary["kind"] == "merged view" and summary["clips"] == 5 and summary["shards"] == 3
    assert summary["provenance"]["i3d_weights_sha256"] == "ab" * 32
    assert summary["failures"]["count"] == 3 and summary["failures"]["by_stage"] == {"decode": 3}
    splits = np.concatenate([r.splits["cs"] for r in records if len(r)])
    assert summary["splits"]["cs"]["train"]["clips"] == int((splits == "train").sum())
    assert sum(c.get("train", 0) + c.get("test", 0) + c.get("", 0) for c in summary["classes"]) == summary["videos"]
    features = summary["datasets"]["features"]
    assert features["filters"] == ["zstd(1)", "fletcher32"] and features["virtual"]
    assert summary["datasets"]["poses"]["shape"] == [5, 2, 3, 25, 20]
    text = inspect_cache.format_summary(summary)
    assert "failures: 3 (decode 3)" in text and "i3d_weights_sha256: " + "ab" * 32 in text
    shard = inspect_cache.summarize(tmp_path / "ntu60" / "abc" / "shard_00000.h5")
    assert shard["kind"] == "shard" and shard["clips"] == 3


def test_make_inspect_runs_on_a_cache_built_by_the_pipeline(tmp_path):
    attrs = make_attrs({"dataset": "ntu60"}, "random-init")
    build_cache(tmp_path / "ntu60" / "abc", attrs, sizes=(2,))
    result = subprocess.run(["make", "--no-print-directory", "-s", "inspect", f"CACHE={tmp_path / 'ntu60'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "merged view, 2 clips of 2 videos" in result.stdout and "datasets (poses: J=25, t_p=20):" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "pipeline.tools.inspect_cache", str(tmp_path / "none")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no cache at")


def test_a_gzip_cache_opens_with_plain_h5py_and_a_zstd_one_needs_the_plugin(tmp_path):
    attrs = make_attrs({"dataset": "ntu60"}, "")
    records = build_cache(tmp_path / "z", attrs, sizes=(2,))[1]
    write_shard(tmp_path / "g.h5", records[0], attrs=attrs, compression="gzip")
    write_shard(tmp_path / "z.h5", records[0], attrs=attrs, compression="zstd-1")
    script = ("import sys, h5py; f = h5py.File(sys.argv[1]); print(float(f['features'][1].astype('f8').sum()));"
              "assert 'hdf5plugin' not in sys.modules")
    env = {**os.environ, "HDF5_PLUGIN_PATH": str(tmp_path / "no-plugins")}
    plain = subprocess.run([sys.executable, "-c", script, str(tmp_path / "g.h5")], capture_output=True, text=True,
                           env=env, timeout=60)
    assert plain.returncode == 0, plain.stderr
    assert float(plain.stdout) == float(records[0].features[1].astype(np.float64).sum())
    zstd = subprocess.run([sys.executable, "-c", script, str(tmp_path / "z.h5")], capture_output=True, text=True,
                          env=env, timeout=60)
    assert zstd.returncode != 0 and "can't open directory" in zstd.stderr  # the error the issue quotes
    with h5py.File(tmp_path / "g.h5") as f:
        assert f["features"].compression == "gzip" and f["features"].compression_opts == 1


# ----------------------------------------------------------------------------------------------------------
# progress where a user waits


def test_validate_and_merge_show_progress(tmp_path, capsys, caplog, monkeypatch):
    """A bar on a terminal; in a log file (pytest's captured stderr is none) plain lines, here one per item."""
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    samples = shared_path("samples", "ntu")
    with monkeypatch.context() as m:
        m.setattr(sys, "stderr", terminal := Terminal())
        manifest_cli.scan("ntu60", samples, validate=True, workers=1)
        build_cache(tmp_path / "a", make_attrs({"dataset": "ntu60"}, ""), sizes=(1, 1))
    shown = terminal.getvalue()
    assert "validate:   0%|          | 0/1" in shown and "merge:   0%|          | 0/2" in shown
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="pipeline.utils.progress"):
        manifest_cli.scan("ntu60", samples, validate=True, workers=1)
        build_cache(tmp_path / "b", make_attrs({"dataset": "ntu60"}, ""), sizes=(1, 1))
    lines = [r.getMessage() for r in caplog.records]
    assert any(re.match(r"validate: (\d+)/\1 skeleton \(100%\)", line) for line in lines), lines
    assert "merge: 2/2 shard (100%)" in " ".join(lines) and "\r" not in capsys.readouterr().err


def test_help_shows_the_head_model_defaults_of_vpn_config():
    """The model options default to ``VPNConfig``'s fields (the CLI leaves them unset): help must name those."""
    from vpn_head.model.config import VPNConfig
    result = subprocess.run(["make", "-s", "--no-print-directory", "help-vars-train-head"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    shown = dict(pair.split("=", 1) for pair in re.split(r" (?=[A-Z][A-Z0-9_]*=)", " ".join(result.stdout.split())))
    config = VPNConfig.for_dataset("ntu60", "cs", variant="vpn")
    assert shown["POSE_BACKBONE"] == config.pose_backbone
    assert shown["COUPLER"] == str(int(config.coupler))
    assert shown["EMBEDDING_LOSS"] == config.embedding_loss
