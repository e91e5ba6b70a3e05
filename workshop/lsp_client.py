"""A plain JSON-RPC client of ``diffill lsp`` over stdio, and a fuzzer of LSP messages.

Not pygls: a test must be able to send anything at all (broken frames, wrong types, messages
out of order), and to see every answer, however many come back for an id. Used by
``test_robustness.py`` with small counts and by ``soak.py`` (``make soak``) with large ones.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ANSWER_LIMIT = float(os.environ.get("DIFFILL_TEST_ANSWER_LIMIT", 600))
"""Seconds after which a missing answer is reported as a hang (a bound, never a timing
assertion: answers on a busy machine are slow, not absent)."""


def frame(obj: Any) -> bytes:
    body = json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


class Wire:
    """One ``diffill lsp`` process and everything it said."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.answers: dict[Any, list[dict]] = collections.defaultdict(list)
        self.notes: list[dict] = []
        self.edits: list[dict] = []
        self.changed = asyncio.Condition()
        self.ids = itertools.count(1)
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, stderr_path: Path, env: dict[str, str] | None = None) -> "Wire":
        full = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
                    **(env or {}))
        with open(stderr_path, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "diffill.server.cli", "lsp", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=err, env=full, cwd=ROOT,
                limit=256 * 2**20)
        return cls(proc, stderr_path)

    async def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            length = None
            while True:
                line = await out.readline()
                if not line:
                    return
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                elif line in (b"\r\n", b"\n") and length is not None:
                    break
            msg = json.loads(await out.readexactly(length))
            if "method" in msg and "id" in msg:  # the server asks the client something
                if msg["method"] == "workspace/applyEdit":
                    self.edits.append(msg["params"])
                    result: Any = {"applied": True}
                else:
                    result = None
                self.send({"jsonrpc": "2.0", "id": msg["id"], "result": result})
            elif "method" in msg:
                self.notes.append(msg)
            else:
                self.answers[msg.get("id")].append(msg)
            async with self.changed:
                self.changed.notify_all()

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)

    def send(self, obj: Any) -> None:
        self.send_raw(frame(obj))

    def notify(self, method: str, params: Any) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def ask(self, method: str, params: Any = None, mid: Any = None) -> Any:
        """Send a request; returns its id (await :meth:`answer` for the reply)."""
        mid = next(self.ids) if mid is None else mid
        msg = {"jsonrpc": "2.0", "id": mid, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return mid

    async def until(self, done, what: str) -> None:
        """Wait until ``done()`` holds, woken by each message the server sends."""
        async def wait() -> None:
            async with self.changed:
                await self.changed.wait_for(done)
        try:
            await asyncio.wait_for(wait(), ANSWER_LIMIT)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {what} within {ANSWER_LIMIT:.0f}s (the server hangs); "
                                 f"log tail: {self.log()[-2000:]}") from None

    async def answer(self, mid: Any) -> dict:
        await self.until(lambda: self.answers.get(mid) or self.proc.returncode is not None,
                         f"answer to request {mid!r}")
        if not self.answers.get(mid):
            raise AssertionError(f"the server exited ({self.proc.returncode}) before answering "
                                 f"{mid!r}: {self.log()[-2000:]}")
        return self.answers[mid][0]

    async def call(self, method: str, params: Any = None) -> dict:
        return await self.answer(self.ask(method, params))

    async def initialize(self, options: dict, caps: dict | None = None) -> dict:
        caps = caps if caps is not None else {
            "textDocument": {"inlineCompletion": {}, "synchronization": {}},
            "workspace": {"applyEdit": True, "workspaceEdit": {"documentChanges": True}}}
        # No workspace folder: the workspace's files would be read for drafts.
        reply = await self.call("initialize", {"processId": None, "rootUri": None,
                                               "capabilities": caps,
                                               "initializationOptions": options})
        self.notify("initialized", {})
        return reply

    def open(self, uri: str, text: str, version: int = 1, language: str = "python") -> None:
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": language, "version": version, "text": text}})

    async def close(self) -> int:
        """shutdown, exit; the exit code."""
        if self.proc.returncode is None:
            try:
                await self.call("shutdown")
                self.notify("exit", None)
            except (AssertionError, ConnectionError):
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.reader.cancel()
        return self.proc.returncode

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")


# ---------------------------------------------------------------------------- fuzzing

ODD_VALUES = [None, -1, 0, 2**31, 2**64, 1e308, -0.5, True, "", "x", "\ud800", "é" * 3, [],
              [1, 2], {}, {"a": 1}, "file:///nope.py", "Content-Length: 5\r\n\r\n"]


def _mutate(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` with one field (at any depth) replaced, removed or retyped."""
    if isinstance(value, dict) and value and depth < 6 and rng.random() < 0.8:
        out = dict(value)
        key = rng.choice(list(out))
        roll = rng.random()
        if roll < 0.15:
            del out[key]
        elif roll < 0.25:
            out[rng.choice(["extra", "id", "method", "params", key + "x"])] = rng.choice(ODD_VALUES)
        else:
            out[key] = _mutate(rng, out[key], depth + 1)
        return out
    if isinstance(value, list) and value and depth < 6 and rng.random() < 0.8:
        out = list(value)
        i = rng.randrange(len(out))
        out[i] = _mutate(rng, out[i], depth + 1)
        return out
    return rng.choice(ODD_VALUES + [value])


def fuzz_messages(rng: random.Random, uri: str, first_id: int, n: int):
    """``n`` messages as (bytes, id of a well-framed request or None). Never ``exit`` or
    ``shutdown`` (they end the session) and never a setting that names a socket or a model
    (they would reach beyond the test's daemon)."""
    pos = {"line": 0, "character": 3}
    rng_ = {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 0}}
    td = {"uri": uri}
    requests = [
        ("textDocument/inlineCompletion", {"textDocument": td, "position": pos,
                                           "context": {"triggerKind": 1}}),
        ("textDocument/completion", {"textDocument": td, "position": pos}),
        ("textDocument/codeAction", {"textDocument": td, "range": rng_,
                                     "context": {"diagnostics": []}}),
        ("workspace/executeCommand", {"command": "diffill.rewriteSelection",
                                      "arguments": [uri, rng_, 1]}),
        ("workspace/executeCommand", {"command": "diffill.refineSelection",
                                      "arguments": [uri, rng_]}),
        ("textDocument/hover", {"textDocument": td, "position": pos}),
        ("initialize", {"processId": None, "rootUri": None, "capabilities": {}}),
        ("diffill/unknown", {"a": 1}),
    ]
    notes = [
        ("textDocument/didChange", {"textDocument": {"uri": uri, "version": 99},
                                    "contentChanges": [{"range": rng_, "text": "y = 2\n"}]}),
        ("textDocument/didOpen", {"textDocument": {"uri": uri + "x", "languageId": "python",
                                                   "version": 1, "text": "z = 3\n"}}),
        ("textDocument/didClose", {"textDocument": {"uri": uri + "x"}}),
        ("workspace/didChangeConfiguration", {"settings": {"diffill": {
            "maxTokens": 8, "debounceMs": 0, "ensemble": 1}}}),
        ("$/cancelRequest", {"id": first_id}),
        ("$/setTrace", {"value": "off"}),
    ]
    out = []
    for i in range(n):
        mid: Any = first_id + i if rng.random() < 0.8 else f"s{first_id + i}"
        roll = rng.random()
        if roll < 0.55:
            method, params = rng.choice(requests)
            msg = {"jsonrpc": "2.0", "id": mid, "method": method, "params": params}
            if rng.random() < 0.8:
                msg = _mutate(rng, msg)
            # The id decides whether an answer is owed: keep it valid when it is a request.
            if isinstance(msg, dict) and "method" in msg and msg.get("id") == mid:
                if msg.get("method") in ("exit", "shutdown"):
                    msg["method"] = "diffill/unknown"
                if msg.get("method") == "workspace/didChangeConfiguration":
                    continue
                out.append((frame(msg), mid))
            else:
                out.append((frame(msg), None))
        elif roll < 0.85:
            method, params = rng.choice(notes)
            msg = _mutate(rng, {"jsonrpc": "2.0", "method": method, "params": params})
            if isinstance(msg, dict):
                msg.pop("id", None)  # a notification; one with an id is a request
                if msg.get("method") in ("exit", "shutdown"):
                    msg["method"] = "$/setTrace"
                settings = (msg.get("params") or {}) if isinstance(msg.get("params"), dict) \
                    else {}
                if "socket" in json.dumps(settings) or "model" in json.dumps(settings):
                    continue
            out.append((frame(msg), None))
        else:
            out.append((broken_frame(rng, mid), None))
    return out


def broken_frame(rng: random.Random, mid: Any) -> bytes:
    body = json.dumps({"jsonrpc": "2.0", "id": f"broken-{mid}", "method": "textDocument/hover",
                       "params": {}}).encode()
    kind = rng.randrange(9)
    if kind == 0:
        return b"Content-Length: %d\r\n\r\n%s" % (len(body) - 7, body)  # short
    if kind == 1:
        return b"Content-Length: -%d\r\n\r\n%s" % (len(body), body)
    if kind == 2:
        return b"Content-Length: lots\r\n\r\n" + body
    if kind == 3:
        return b"Content-Length: 100000000000000000000\r\n\r\n" + body
    if kind == 4:
        return body  # no header
    if kind == 5:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 6:
        bad = body[:-2] + b"\xff\xfe}"  # not UTF-8
        return b"Content-Length: %d\r\n\r\n%s" % (len(bad), bad)
    if kind == 7:
        return b"X-Nonsense\r\n\r\n"
    return b"Content-Length: 3\r\n\r\n[1,"


def now() -> float:
    return time.perf_counter()
