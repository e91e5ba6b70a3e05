"""Trust boundary of the daemon's socket: a folder only its user can write, a path that is
diffill's own, and a peer that runs as the same user.

ssh-agent's rules: refuse a folder that is not yours rather than repair it, and check who is
at the other end of the socket (``SO_PEERCRED``) instead of trusting file modes alone.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path

from .errors import UnsafeSocket


def private_folder(folder: Path) -> None:
    """Create ``folder`` (0700) or verify that it is safe to put a socket in: a real
    directory (not a symlink), owned by this user, writable by nobody else."""
    try:
        folder.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafeSocket(f"{folder} is not a directory of its own (a symlink or a file); "
                           "refusing to use it for the diffill socket")
    if info.st_uid != os.getuid():
        raise UnsafeSocket(f"{folder} belongs to uid {info.st_uid}, not to you "
                           f"(uid {os.getuid()}); refusing to use it for the diffill socket. "
                           "Remove it or set the socket setting to a folder of your own")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeSocket(f"{folder} is writable by others (mode "
                           f"{stat.S_IMODE(info.st_mode):o}); refusing to use it for the "
                           f"diffill socket. Run chmod 700 {folder} or remove it")


def own_paths(path: Path) -> None:
    """Refuse a socket path (or its ``.lock``/``.log`` beside it) that is something else: a
    setting must never make diffill replace or truncate a user's file."""
    checks = ((path, stat.S_ISSOCK, "a socket"),
              (Path(f"{path}.lock"), stat.S_ISREG, "a lock file"),
              (Path(f"{path}.log"), stat.S_ISREG, "a log file"))
    for p, kind_ok, kind in checks:
        try:
            info = os.lstat(p)
        except FileNotFoundError:
            continue
        if not kind_ok(info.st_mode) or info.st_uid != os.getuid():
            raise UnsafeSocket(f"{p} exists and is not diffill's {kind}; refusing to touch it "
                               "(choose another socket path)")
    lock = Path(f"{path}.lock")
    if lock.is_file():
        text = lock.read_text(errors="replace").strip()
        if text and not text.isdigit():
            raise UnsafeSocket(f"{lock} exists and is not diffill's lock file (it holds other "
                               "text); refusing to touch it (choose another socket path)")


def peer_uid(sock: socket.socket) -> int | None:
    """The user id of the process at the other end of a unix socket, where the platform
    tells it (Linux ``SO_PEERCRED``); None elsewhere."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def check_peer(sock: socket.socket, what: str) -> None:
    """Refuse a peer that runs as another user."""
    uid = peer_uid(sock)
    if uid is not None and uid != os.getuid():
        raise UnsafeSocket(f"the {what} on this socket runs as uid {uid}, not as you "
                           f"(uid {os.getuid()}); refusing to talk to it")
