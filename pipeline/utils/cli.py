"""What every command line of the project shares: options that mirror a config dataclass, and the exit convention
(a one-line ``error: …`` on stderr and a non-zero status for an expected failure, the result on stdout otherwise)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def add_config_options(parser: argparse.ArgumentParser, defaults: Any, names: Iterable[str],
                       flags: Mapping[str, str] | None = None, helps: Mapping[str, str] | None = None) -> None:
    """Add one option per field of a config dataclass, typed and defaulted from ``defaults``.

    A field ``lr_step`` becomes ``--lr-step`` (or ``flags[name]``) with ``dest="lr_step"``; a bool field becomes a
    ``store_true`` switch. Fields that need their own parsing (tuples, choices) are added by the caller.

    Args:
        parser: the parser to extend.
        defaults: a default instance of the config.
        names: the fields to expose, in ``--help`` order.
        flags: option names that differ from the field name.
        helps: help texts by field name.
    """
    flags, helps = flags or {}, helps or {}
    for name in names:
        default = getattr(defaults, name)
        flag = flags.get(name, "--" + name.replace("_", "-"))
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, action="store_true", help=helps.get(name))
        else:
            parser.add_argument(flag, dest=name, type=type(default), default=default, help=helps.get(name))


def run_cli(work: Callable[[], str], errors: tuple[type[BaseException], ...], status: int = 2) -> int:
    """Run a command's ``work`` and print the result it returns; an error of ``errors`` prints ``error: …`` to
    stderr instead and gives ``status``.

    Returns:
        The process exit status: 0, or ``status``.
    """
    try:
        result = work()
    except errors as error:
        print(f"error: {error}", file=sys.stderr)
        return status
    print(result)
    return 0
