"""Command-line pieces both trainers share: run names, ``--model KEY=VALUE``, ``--config`` replay, common options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipeline.utils.cli import add_config_options
from vpn_head.engine.config import EVAL_SPLITS, TRAIN_READINGS
from vpn_head.model.config import READINGS

SIMPLE_FIELDS: tuple[str, ...] = (
    "epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_step", "lr_gamma", "val_fraction", "seed",
    "num_workers", "device", "runs_dir",
)
"""Shared config fields whose option is ``--<field-name>``, typed and defaulted from the config."""


def parse_override(text: str) -> tuple[str, Any]:
    """argparse type of ``--model KEY=VALUE``: the value as JSON when it parses, else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_reading_argument(parser: argparse.ArgumentParser) -> None:
    """``--reading paper|official`` (``READING=``): a preset of ``VPNConfig`` and trainer values (docs/readings.md)."""
    parser.add_argument("--reading", choices=sorted(READINGS), default=None,
                        help="paper: the paper's text; official: the authors' Keras code (docs/readings.md); "
                             "default: this project's defaults. --model and the trainer options override single fields")


def apply_reading(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Make the trainer values of the ``--reading`` in ``argv`` the parser's defaults, so options given win."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--reading", choices=sorted(READINGS), default=None)
    reading = pre.parse_known_args(argv)[0].reading
    if reading:
        parser.set_defaults(**TRAIN_READINGS[reading])


def reading_model(reading: str | None, model: list[tuple[str, Any]] | dict[str, Any]) -> dict[str, Any]:
    """The ``VPNConfig`` overrides of ``reading`` (none: {}) with the ``--model`` pairs on top."""
    return {**(READINGS[reading] if reading else {}), **dict(model)}


def add_common_arguments(parser: argparse.ArgumentParser, defaults: Any, model_help: str) -> None:
    """The options of the fields both trainers' configs share, with ``defaults`` (a config) as defaults."""
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--protocol", required=True)
    parser.add_argument("--model", action="append", default=[], type=parse_override, metavar="KEY=VALUE",
                        help=model_help)
    add_reading_argument(parser)
    add_config_options(parser, defaults, SIMPLE_FIELDS, helps={
        "batch_size": "clips per optimizer step",
        "val_fraction": "share of training subjects carved out as val_carved"})
    parser.add_argument("--eval-split", default=defaults.eval_split, choices=EVAL_SPLITS,
                        help="split that chooses best.pt (auto: val, else val_carved from train by subject)")
    parser.add_argument("--no-deterministic", dest="deterministic", action="store_false")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision, bf16 where supported (default: on for CUDA)")


def parse_args_with_config(parser: argparse.ArgumentParser, argv: list[str] | None, section: str,
                           renames: dict[str, str], nested: tuple[str, ...] = ()) -> argparse.Namespace:
    """Parse ``argv``; with ``--config runs/<name>/config.json`` a recorded run's values become the defaults, so
    the options given on the command line override the file. The file's values are taken as they are written,
    not converted: the config's ``validate`` (``vpn_head.engine.config.check_types``) refuses a value of the wrong
    type (``"amp": "false"``) in one line.

    Args:
        parser: the command's parser (``--config`` is added to it).
        argv: the command line.
        section: the key of the run config in ``config.json`` (``train``, ``finetune``).
        renames: config field -> option dest where they differ (``run_name`` -> ``run``).
        nested: config fields holding a dict of further options (``augment``).
    """
    parser.add_argument("--config", help="a run's config.json: repeat that experiment (options given here win)")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    path = pre.parse_known_args(argv)[0].config
    if path:
        try:
            recorded = json.loads(Path(path).read_text())[section]
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"--config {path}: not a {section} run's config.json ({type(error).__name__}: {error})")
        if not isinstance(recorded, dict):
            parser.error(f"--config {path}: its {section!r} entry is a {type(recorded).__name__}, not an object")
        bad = [key for key in ("model", *nested) if key in recorded and not isinstance(recorded[key], dict)]
        if bad:
            parser.error(f"--config {path}: field(s) {bad} must be objects of KEY: VALUE")
        defaults: dict[str, Any] = {}
        for key, value in recorded.items():
            if key in nested:
                defaults.update(value)
            else:
                defaults[renames.get(key, key)] = list(value.items()) if key == "model" else value
        actions = {action.dest: action for action in parser._actions}
        unknown = sorted(set(defaults) - set(actions))
        if unknown:
            parser.error(f"--config {path}: fields {unknown} have no option here (a config of another version?)")
        strings = sorted(f"{dest}={value!r}" for dest, value in defaults.items()
                         if isinstance(value, str) and actions[dest].type in (int, float))
        if strings:  # argparse would convert a string default: the file's values are taken as they are typed
            parser.error(f"--config {path}: {', '.join(strings)} must be numbers, not strings")
        parser.set_defaults(**defaults)
        for dest in defaults:
            actions[dest].required = False
    apply_reading(parser, argv)
    return parser.parse_args(argv)
