"""Talking to the daemon: an asyncio client for the LSP server (which starts the daemon when
absent and restarts it when it died) and a blocking one for the CLI."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .errors import DaemonUnavailable, RequestCancelled, UnsafeSocket, from_kind
from .protocol import build_id, spec_flags
from .sockets import check_peer, own_paths, private_folder

log = logging.getLogger("diffill.client")

RETRIES = 2
"""Times a request is asked again after losing its connection to the daemon."""
START_TIMEOUT = 60.0
"""Seconds to wait for a freshly started daemon to listen (it imports torch first)."""


def spawn_daemon(path: Path, idle_timeout: float, preload: dict[str, Any] | None = None
                 ) -> subprocess.Popen:
    """Start ``diffill serve`` detached from this process (its own session, its own log)."""
    private_folder(path.parent)
    own_paths(path)
    log_path = path.parent / (path.name + ".log")
    cmd = [sys.executable, "-m", "diffill.server.cli", "-v", "serve", "--socket", str(path),
           "--idle-timeout", str(int(idle_timeout)), "--autostarted"]
    if preload is None:
        # Started on demand: the client's own "load" or "infill" names the model to load;
        # preloading the default would load a model nobody asked for.
        cmd.append("--no-preload")
    cmd += spec_flags(preload or {})
    logf = open(log_path, "ab")
    # The child imports diffill as this process did (the same installed build); its cwd is
    # the runtime folder so that nothing it resolves depends on where the client ran.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                            start_new_session=True, cwd=path.parent)
    logf.close()
    # Reap it when it exits (an exited child left unwaited stays a zombie until we exit).
    threading.Thread(target=proc.wait, name="diffill-reaper", daemon=True).start()
    log.info("started diffill daemon (pid %d) on %s; log %s", proc.pid, path, log_path)
    return proc


def other_build(hello: dict[str, Any]) -> str | None:
    """None when the daemon that said ``hello`` runs this code; else what to tell the user:
    both builds and how to stop the daemon."""
    theirs = hello.get("build") or f"{hello.get('version', '?')} (from before builds were named)"
    if theirs == build_id():
        return None
    where = f" from {hello['root']}" if hello.get("root") else ""
    return (f"the diffill daemon (pid {hello.get('pid')}) runs other code: {theirs}{where}, "
            f"and this is {build_id()}; stop it with `diffill serve --stop` (it also exits "
            f"after its idle timeout)")


class ConnectionLost(DaemonUnavailable):
    """The connection to the daemon broke before the answer came (the daemon died or is
    dying); asking again on a new connection is safe, fills have no side effects."""


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = (path.parent / (path.name + ".log")).read_text(errors="replace")
    except OSError:
        return ""
    tail = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(tail)


class AsyncDaemonClient:
    """One connection per LSP process; requests are multiplexed by id."""

    def __init__(self, path: Path, *, idle_timeout: float = 1800, name: str = "lsp",
                 autostart: bool = True) -> None:
        self.path = path
        self.idle_timeout = idle_timeout
        self.name = name
        self.autostart = autostart
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.progress: dict[int, Callable[[dict[str, Any]], None]] = {}
        """Per request id: called with each progress line the daemon sends before the answer."""
        self.ids = itertools.count(1)
        self.reader_task: asyncio.Task | None = None
        self.connect_lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def _open(self) -> bool:
        """Connect when a daemon of this user listens; raises UnsafeSocket for a folder or a
        peer that is not this user's (nothing is sent there)."""
        if not os.path.lexists(self.path.parent):
            return False
        private_folder(self.path.parent)
        try:
            self.reader, self.writer = await asyncio.open_unix_connection(
                str(self.path), limit=64 * 1024 * 1024)
        except (FileNotFoundError, ConnectionRefusedError, OSError):
            return False
        try:
            check_peer(self.writer.get_extra_info("socket"), "daemon")
        except UnsafeSocket:
            self.writer.close()
            self.reader = self.writer = None
            raise
        return True

    async def ensure(self) -> None:
        """Connect, starting the daemon if nobody listens on the socket. A daemon running
        other code (another checkout, an older install) is replaced when a client started it
        and it is idle; otherwise the connection is refused with a message saying so."""
        async with self.connect_lock:
            for attempt in range(2):
                if self.connected:
                    return
                await self._open_or_start()
                self.reader_task = asyncio.create_task(self._read_loop())
                hello = await self._call("hello", {"name": self.name})
                why = other_build(hello)
                if why is None:
                    return
                if attempt or not (self.autostart and hello.get("autostarted") and
                                   not hello.get("busy")):
                    self._lost(why)
                    raise DaemonUnavailable(why)
                log.warning("replacing the idle diffill daemon %s on %s with %s",
                            hello.get("build") or hello.get("version"), self.path, build_id())
                await self._call("shutdown", {})
                self._lost("replaced by a daemon of this build")
                deadline = time.monotonic() + START_TIMEOUT
                while os.path.lexists(self.path) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)  # it removes its socket as it exits

    async def _open_or_start(self) -> None:
        if await self._open():
            return
        if not self.autostart:
            raise DaemonUnavailable(f"no diffill daemon listens on {self.path}")
        proc = spawn_daemon(self.path, self.idle_timeout)
        deadline = time.monotonic() + START_TIMEOUT
        while not await self._open():
            if proc.poll() is not None and not self.path.exists():
                # It exited: either it failed, or another one won the lock; retry once.
                if await self._open():
                    break
                raise DaemonUnavailable("the diffill daemon did not start: "
                                        + (_log_tail(self.path) or f"exit {proc.returncode}"))
            if time.monotonic() > deadline:
                raise DaemonUnavailable(f"the diffill daemon did not listen on "
                                        f"{self.path} within {START_TIMEOUT:.0f}s")
            await asyncio.sleep(0.1)

    async def _read_loop(self) -> None:
        reader, writer = self.reader, self.writer
        assert reader is not None
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                msg = json.loads(line)
                if "progress" in msg:
                    handler = self.progress.get(msg.get("id"))
                    if handler is not None:
                        try:
                            handler(msg["progress"])
                        except Exception:  # noqa: BLE001 - a preview must not end the stream
                            log.exception("progress handler failed")
                    continue
                fut = self.pending.pop(msg.get("id"), None)
                if fut is None or fut.done():
                    continue
                if "error" in msg:
                    err = msg["error"]
                    fut.set_exception(from_kind(err.get("kind", ""), err.get("message", "")))
                else:
                    fut.set_result(msg.get("result"))
        except (ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            if self.writer is writer:  # not a newer connection's business
                self._lost("the diffill daemon stopped during the request; it is restarted "
                           "on the next one")

    def _lost(self, why: str) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001
                pass
        self.writer = self.reader = None
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(why))

    async def _call(self, method: str, params: dict[str, Any],
                    on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
        if not self.connected:
            raise ConnectionLost("not connected to the diffill daemon")
        assert self.writer is not None
        mid = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[mid] = fut
        if on_progress is not None:
            self.progress[mid] = on_progress
            fut.add_done_callback(lambda _f, mid=mid: self.progress.pop(mid, None))
        self.writer.write((json.dumps({"id": mid, "method": method, "params": params})
                           + "\n").encode())
        try:
            await self.writer.drain()
            return await fut
        except asyncio.CancelledError:
            # The caller gave up (LSP $/cancelRequest): tell the daemon to stop denoising.
            self.pending.pop(mid, None)
            self.progress.pop(mid, None)
            if self.connected:
                try:
                    self.writer.write((json.dumps({"method": "cancel", "params": {"id": mid}})
                                       + "\n").encode())
                except Exception:  # noqa: BLE001
                    pass
            raise
        except ConnectionError as exc:
            self._lost(f"lost the diffill daemon: {exc}")
            raise ConnectionLost(str(exc)) from None

    async def request(self, method: str, params: dict[str, Any],
                      on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """A call, asked again on a new connection (the daemon restarted if need be) when the
        connection was lost before the answer: a daemon killed between two requests, or one
        still dying that accepted the connection, must not fail the request. A daemon that
        cannot be started is not retried (that error is already the answer)."""
        for attempt in range(RETRIES + 1):
            try:
                await self.ensure()
                return await self._call(method, params, on_progress)
            except ConnectionLost as exc:
                if attempt == RETRIES:
                    raise
                log.info("%s; asking a fresh daemon", exc)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.reader_task is not None:
            self.reader_task.cancel()
        if self.writer is not None:
            self.writer.close()
        self.writer = None


class DaemonClient:
    """Blocking client for the CLI (``diffill status``, ``diffill infill`` via a daemon)."""

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            if os.path.lexists(path.parent):
                private_folder(path.parent)
            self.sock.connect(str(path))
            check_peer(self.sock, "daemon")
        except UnsafeSocket:
            self.sock.close()
            raise
        except (FileNotFoundError, ConnectionRefusedError, OSError) as exc:
            self.sock.close()
            raise DaemonUnavailable(f"no diffill daemon listens on {path}") from exc
        self.file = self.sock.makefile("rb")
        self.ids = itertools.count(1)

    def send(self, method: str, params: dict[str, Any] | None = None,
             mid: int | None = None) -> None:
        """Write one message without waiting (a notification when ``mid`` is None)."""
        msg: dict[str, Any] = {"method": method, "params": params or {}}
        if mid is not None:
            msg["id"] = mid
        self.sock.sendall((json.dumps(msg) + "\n").encode())

    def read(self) -> dict[str, Any]:
        """The next message from the daemon."""
        line = self.file.readline()
        if not line:
            raise DaemonUnavailable("the diffill daemon closed the connection")
        return json.loads(line)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        mid = next(self.ids)
        self.send(method, params, mid)
        while True:
            msg = self.read()
            if msg.get("id") != mid or "progress" in msg:
                continue
            if "error" in msg:
                err = msg["error"]
                raise from_kind(err.get("kind", ""), err.get("message", ""))
            return msg.get("result")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


__all__ = ["AsyncDaemonClient", "DaemonClient", "DaemonUnavailable", "RequestCancelled",
           "spawn_daemon"]
