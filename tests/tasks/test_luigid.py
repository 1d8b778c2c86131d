"""``make luigid`` (issue 21): listens on 127.0.0.1 unless LUIGID_ADDRESS says otherwise, and never unpickles a
state file someone else could have written."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tasks import luigid
from tests.conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) of the sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_make_luigid_listens_on_localhost_only_with_its_state_in_a_private_folder(tmp_path):
    port = _free_port()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    proc = subprocess.Popen(["make", "-s", "--no-print-directory", "luigid", f"PORT={port}",
                             f"CACHE_DIR={tmp_path / 'cache'}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "luigid did not start"
            time.sleep(0.2)
        assert _listening(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0 and [::]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    state_dir = tmp_path / "state" / "vpn-pipeline" / "luigid"
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert not (tmp_path / "cache").exists()


def test_other_addresses_are_explicit():
    result = subprocess.run(["make", "-n", "--no-print-directory", "luigid", "LUIGID_ADDRESS=0.0.0.0"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--address '0.0.0.0'" in result.stdout
    assert luigid.luigid_argv("127.0.0.1", 8082, Path("/s"))[:2] == ["--address", "127.0.0.1"]


def _state(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "luigid"
    folder.mkdir(mode=0o700)
    state = folder / luigid.STATE_NAME
    state.write_bytes(b"not a pickle that will be loaded")
    state.chmod(0o600)
    return folder, state


def test_a_private_state_folder_and_file_are_accepted(tmp_path):
    folder, state = _state(tmp_path)
    assert luigid.prepare_state_dir(folder) == state
    assert luigid.prepare_state_dir(tmp_path / "new" / "luigid") == tmp_path / "new" / "luigid" / luigid.STATE_NAME


@pytest.mark.parametrize("unsafe", ["group-writable folder", "world-writable file", "another user's file",
                                    "symlinked file", "shared folder"])
def test_a_state_someone_else_could_write_is_refused(unsafe, tmp_path, capsys):
    folder, state = _state(tmp_path)
    if unsafe == "group-writable folder":
        folder.chmod(0o770)
    elif unsafe == "world-writable file":
        state.chmod(0o666)
    elif unsafe == "another user's file":
        if os.getuid() != 0:
            pytest.skip("chown to another user needs root")
        os.chown(state, 12345, 12345)
    elif unsafe == "symlinked file":
        state.unlink()
        (tmp_path / "elsewhere.pickle").write_bytes(b"x")
        state.symlink_to(tmp_path / "elsewhere.pickle")
    else:
        folder = tmp_path / "shared"
        folder.mkdir()
        folder.chmod(0o1777)  # as /tmp or a group project folder
    with pytest.raises(luigid.UnsafeStateError, match="refusing|writable by group or others"):
        luigid.prepare_state_dir(folder)
    assert luigid.main(["--state-dir", str(folder), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: luigid state") and "\n" not in err
