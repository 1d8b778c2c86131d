"""pipeline/utils/cli.py: options mirrored from a config dataclass, and the one-line error exit."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from pipeline.utils.cli import add_config_options, run_cli


@dataclass(frozen=True)
class _Config:
    lr_step: int = 10
    gamma_m: float = 0.5
    quiet: bool = False


def test_config_options_take_type_default_and_flag_from_the_dataclass():
    parser = argparse.ArgumentParser()
    add_config_options(parser, _Config(), ("lr_step", "gamma_m", "quiet"), flags={"gamma_m": "--gamma"},
                       helps={"quiet": "say less"})
    assert vars(parser.parse_args([])) == {"lr_step": 10, "gamma_m": 0.5, "quiet": False}
    args = parser.parse_args(["--lr-step", "3", "--gamma", "2", "--quiet"])
    assert (args.lr_step, args.gamma_m, args.quiet) == (3, 2.0, True) and isinstance(args.gamma_m, float)
    assert "say less" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--lr-step", "x"])


def test_run_cli_prints_the_result_or_a_one_line_error(capsys):
    assert run_cli(lambda: "done", (ValueError,)) == 0
    assert capsys.readouterr().out == "done\n"

    def fail() -> str:
        raise ValueError("bad input")

    assert run_cli(fail, (ValueError,), status=3) == 3
    assert capsys.readouterr().err == "error: bad input\n"
    with pytest.raises(KeyError):
        run_cli(lambda: {}["x"], (ValueError,))
