"""``make luigid``: Luigi's central scheduler, on 127.0.0.1 unless told otherwise, with its state in a private folder.

``python -m tasks.luigid [--address 127.0.0.1] [--port 8082] [--state-dir DIR]``

Two things about a plain ``luigid`` are unsafe on a shared machine, and this wrapper changes both:

* It listens on every interface (0.0.0.0 and [::]) when ``--address`` is not given, so anyone who reaches the port
  can see and schedule tasks. Here the default is ``127.0.0.1``; to serve other machines pass the interface
  explicitly (``LUIGID_ADDRESS=0.0.0.0`` or the node's address) on a network you trust.
* At start it unpickles its state file: whoever can write that file runs code as the scheduler's user. A state
  file in a shared folder (the old default was ``CACHE_DIR/luigid/state.pickle``, typically on NFS) is therefore
  never used. The state lives in a per-user folder (default ``$XDG_STATE_HOME/vpn-pipeline/luigid``, else
  ``~/.local/state/vpn-pipeline/luigid``) created with mode 0700; the scheduler refuses to start, with one line,
  when that folder or the state file is not this user's, is writable by group or others, or is a symlink.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
from pathlib import Path

from luigi.cmdline import luigid

log = logging.getLogger("tasks.luigid")

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8082
STATE_NAME = "state.pickle"


class UnsafeStateError(Exception):
    """The scheduler's state folder or file could be written by someone else."""


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/vpn-pipeline/luigid``, else ``~/.local/state/vpn-pipeline/luigid``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vpn-pipeline" / "luigid"


def _check_private(path: Path, kind: str) -> None:
    """Raise ``UnsafeStateError`` unless ``path`` is a ``kind`` (not a symlink) owned by this user and writable by
    no one else."""
    info = path.lstat()
    is_kind = stat.S_ISDIR(info.st_mode) if kind == "folder" else stat.S_ISREG(info.st_mode)
    if not is_kind:
        raise UnsafeStateError(f"luigid state {kind} {path} is not a plain {kind} (a symlink?); refusing to use it")
    if info.st_uid != os.getuid():
        raise UnsafeStateError(f"luigid state {kind} {path} belongs to uid {info.st_uid}, not to you "
                               f"(uid {os.getuid()}): luigid unpickles it at start; refusing to use it")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeStateError(f"luigid state {kind} {path} is writable by group or others "
                               f"(mode {stat.filemode(info.st_mode)}): luigid unpickles its state at start; "
                               f"`chmod go-w {path}` or use another LUIGID_DIR")


def prepare_state_dir(state_dir: Path) -> Path:
    """Create ``state_dir`` (mode 0700) when missing, check it and its state file; return the state file's path.

    Raises:
        UnsafeStateError: the folder or the state file is not this user's, is group/world-writable, or is not a
            plain folder/file.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(state_dir, "folder")
    state = state_dir / STATE_NAME
    if state.exists() or state.is_symlink():
        _check_private(state, "file")
    return state


def luigid_argv(address: str, port: int, state_dir: Path) -> list[str]:
    """The arguments of Luigi's ``luigid`` for this scheduler (logs beside the state)."""
    return ["--address", address, "--port", str(port), "--logdir", str(state_dir),
            "--state-path", str(state_dir / STATE_NAME)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.luigid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help="interface to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every one)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="private folder of the state pickle and logs (default: see above)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state_dir = args.state_dir or default_state_dir()
    try:
        prepare_state_dir(state_dir)
    except (UnsafeStateError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.address not in (DEFAULT_ADDRESS, "localhost", "::1"):
        log.warning("luigid listens on %s: every machine that reaches port %d can see and schedule tasks",
                    args.address, args.port)
    log.info("luigid on %s:%d, state in %s", args.address, args.port, state_dir)
    luigid(luigid_argv(args.address, args.port, state_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
