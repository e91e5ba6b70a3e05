"""The daemon's trust boundary: a socket folder only its user can write, paths that are
diffill's own, and peers that run as the same user. Each attack from the hostile-input run is
refused, and nothing is sent or overwritten."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from diffill.server import sockets
from diffill.server.daemon import prepare_socket
from diffill.server.daemon_client import AsyncDaemonClient, DaemonClient
from diffill.server.errors import UnsafeSocket

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def short_tmp():
    # Unix socket paths are short (108 bytes).
    d = Path(tempfile.mkdtemp(prefix="dfs-"))
    yield d
    subprocess.run(["rm", "-rf", str(d)])


def listening(path: Path) -> socket.socket:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.setblocking(False)
    return srv


def nobody_connected(srv: socket.socket) -> bool:
    try:
        conn, _ = srv.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def test_a_world_writable_socket_folder_is_refused_and_nothing_is_sent(short_tmp):
    folder = short_tmp / "diffill-1000"
    folder.mkdir()
    os.chmod(folder, 0o777)  # what another user would have pre-created in /tmp
    srv = listening(folder / "daemon.sock")
    with pytest.raises(UnsafeSocket, match="writable by others"):
        DaemonClient(folder / "daemon.sock")
    client = AsyncDaemonClient(folder / "daemon.sock", autostart=True)
    with pytest.raises(UnsafeSocket):
        asyncio.run(client.ensure())
    assert nobody_connected(srv)
    with pytest.raises(UnsafeSocket):
        prepare_socket(folder / "daemon.sock")
    srv.close()


def test_a_socket_folder_that_is_a_symlink_is_refused(short_tmp):
    real = short_tmp / "real"
    real.mkdir(mode=0o700)
    link = short_tmp / "link"
    link.symlink_to(real)
    with pytest.raises(UnsafeSocket, match="symlink"):
        prepare_socket(link / "daemon.sock")


def test_a_folder_created_for_the_socket_is_private(short_tmp):
    old = os.umask(0o022)
    try:
        lock = prepare_socket(short_tmp / "new" / "daemon.sock")
    finally:
        os.umask(old)
    lock.release()
    assert (short_tmp / "new").stat().st_mode & 0o777 == 0o700


def test_a_daemon_run_by_another_user_is_refused(short_tmp, monkeypatch):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sockets.check_peer(a, "daemon")  # same user: fine
    real = os.getuid()
    monkeypatch.setattr(sockets.os, "getuid", lambda: real + 1)
    with pytest.raises(UnsafeSocket, match=f"uid {real}, not as you"):
        sockets.check_peer(a, "daemon")
    a.close()
    b.close()


@pytest.mark.parametrize("victim", ["socket", "lock"])
def test_the_socket_setting_never_overwrites_a_users_file(short_tmp, victim):
    folder = short_tmp / "home"
    folder.mkdir(mode=0o700)
    target = folder / "notes.txt"
    precious = "my notes\n"
    if victim == "socket":
        target.write_text(precious)
        hit = target
    else:
        hit = Path(f"{target}.lock")
        hit.write_text(precious)
    r = subprocess.run([sys.executable, "-m", "diffill.server.cli", "serve", "--socket", str(target),
                        "--no-preload"], cwd=ROOT, capture_output=True, timeout=120,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode != 0
    assert b"refusing to touch" in r.stderr
    assert hit.read_text() == precious
    left = sorted(p.name for p in folder.iterdir())
    assert left == [hit.name]  # no .log, no .lock, no socket beside it


def test_the_default_socket_is_in_a_private_runtime_folder(short_tmp, monkeypatch):
    from diffill.server import protocol
    monkeypatch.delenv(protocol.ENV_SOCKET, raising=False)
    runtime = short_tmp / "xdg"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    path = protocol.default_socket()
    assert path == runtime / "diffill" / "daemon.sock"
    assert path.parent.stat().st_mode & 0o777 == 0o700
    # A runtime folder that others can write is not used (the XDG spec wants it 0700).
    shared = short_tmp / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
    assert not str(protocol.default_socket()).startswith(str(shared))


@pytest.mark.skipif(Path(f"/run/user/{os.geteuid()}").is_dir(),
                    reason="this machine has a per-user /run folder, used before the temp dir")
def test_a_planted_temp_runtime_folder_is_refused(short_tmp, monkeypatch):
    from diffill.server import protocol
    monkeypatch.delenv(protocol.ENV_SOCKET, raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(short_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    elsewhere = short_tmp / "theirs"
    elsewhere.mkdir(mode=0o777)
    (short_tmp / f"runtime-{os.geteuid()}").symlink_to(elsewhere)
    with pytest.raises(UnsafeSocket, match="no private folder"):
        protocol.default_socket()
    assert list(elsewhere.iterdir()) == []
    (short_tmp / f"runtime-{os.geteuid()}").unlink()
    path = protocol.default_socket()  # gone: created private
    assert path.parent.parent == short_tmp / f"runtime-{os.geteuid()}"
    assert path.parent.parent.stat().st_mode & 0o777 == 0o700
