"""The typing eval through ``diffill lsp``: the ghosts a person would see in an editor.

A real ``diffill lsp`` process (stdio, pygls' own language client, a private daemon socket)
gets every keystroke as a ``didChange`` of the whole document and an automatic
``textDocument/inlineCompletion`` after it, as an editor sends them; its first item is the
ghost. So the server's own typed-ahead reuse, drafts from the last ghost, the workspace's
files, the floor, the names check and the syntax guard all act as they do for a user.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from diffill.server.protocol import NOTIFY_STATUS

ROOT = Path(__file__).resolve().parents[1]


class LspCompleter:
    """``(document, cursor) -> ghost`` (an ``workshop.keystrokes.Completer``) answered by a
    ``diffill lsp`` process; used as a context manager (the process and its daemon stop at
    the end). ``workspace``: the folder the editor has open (its files lend drafts).
    ``settings``: the server's settings (``debounceMs`` 0 unless given: the eval waits for
    every answer anyway)."""

    def __init__(self, model: str | None = None, settings: dict | None = None,
                 workspace: Path | None = None, timeout: float = 600.0) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="dfl-typing-"))
        self.options = {"socket": str(self.folder / "d.sock"), "debounceMs": 0,
                        **({"model": model} if model else {}), **(settings or {})}
        self.workspace = workspace
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.client: Any = None
        self.uri: str | None = None
        self.version = 0
        self.sent = ""
        self.seconds: list[float] = []

    def _call(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout)

    def __enter__(self) -> "LspCompleter":
        self.thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        from lsprotocol import types as T
        from pygls.lsp.client import LanguageClient
        self.client = LanguageClient("diffill-typing", "1")

        @self.client.feature(NOTIFY_STATUS)
        def status_note(params: Any) -> None:  # the server's status notes: not needed here
            pass
        await self.client.start_io(sys.executable, "-m", "diffill.server.cli", "lsp",
                                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
        caps = T.ClientCapabilities(text_document=T.TextDocumentClientCapabilities(
            inline_completion=T.InlineCompletionClientCapabilities()))
        await self.client.initialize_async(T.InitializeParams(
            capabilities=caps, initialization_options=self.options,
            root_uri=self.workspace.resolve().as_uri() if self.workspace else None))
        self.client.initialized(T.InitializedParams())

    def begin(self, line) -> None:
        """Make ``line``'s file (an ``workshop.keystrokes.TypedLine``, the line's text taken
        out) the document typed into, closing the last one."""
        self._call(self._open(line.path, line.document))

    async def _open(self, path: str, text: str) -> None:
        from lsprotocol import types as T
        if self.uri is not None:
            self.client.text_document_did_close(T.DidCloseTextDocumentParams(
                T.TextDocumentIdentifier(uri=self.uri)))
        self.uri, self.version, self.sent = Path(path).resolve().as_uri(), 1, text
        self.client.text_document_did_open(T.DidOpenTextDocumentParams(T.TextDocumentItem(
            uri=self.uri, language_id="python", version=1, text=text)))

    def __call__(self, doc: str, cursor: int) -> str | None:
        t0 = time.perf_counter()
        ghost = self._call(self._ask(doc, cursor))
        self.seconds.append(time.perf_counter() - t0)
        return ghost

    async def _ask(self, doc: str, cursor: int) -> str | None:
        from lsprotocol import types as T
        if doc != self.sent:
            self.version += 1
            self.client.text_document_did_change(T.DidChangeTextDocumentParams(
                T.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
                [T.TextDocumentContentChangeWholeDocument(text=doc)]))
            self.sent = doc
        line = doc.count("\n", 0, cursor)
        before = doc[doc.rfind("\n", 0, cursor) + 1:cursor]
        col = len(before.encode("utf-16-le")) // 2  # LSP columns count UTF-16 units
        result = await self.client.text_document_inline_completion_async(
            T.InlineCompletionParams(
                text_document=T.TextDocumentIdentifier(uri=self.uri),
                position=T.Position(line=line, character=col),
                context=T.InlineCompletionContext(
                    trigger_kind=T.InlineCompletionTriggerKind.Automatic)))
        items = result.items if result is not None and not isinstance(result, list) else \
            (result or [])
        text = items[0].insert_text if items else None
        return text if isinstance(text, str) else None

    def status(self) -> dict:
        from lsprotocol import types as T
        return self._call(self.client.workspace_execute_command_async(
            T.ExecuteCommandParams(command="diffill.status", arguments=[])))

    def __exit__(self, *exc: Any) -> None:
        async def stop() -> None:
            await self.client.shutdown_async(None)
            self.client.exit(None)
            await self.client.stop()
        try:
            self._call(stop())
        except Exception:  # noqa: BLE001 - the process may be gone already
            pass
        from diffill.server.daemon_client import DaemonClient
        try:
            DaemonClient(Path(self.options["socket"]), timeout=30).call("shutdown")
        except Exception:  # noqa: BLE001 - no daemon was started
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        shutil.rmtree(self.folder, ignore_errors=True)


class LspTyping:
    """The typing eval's diffill through ``diffill lsp``: one :class:`LspCompleter`, started
    again with another workspace folder when a line's ``root_of`` differs from the last
    line's (None: no workspace). :meth:`close` stops it and sums the daemons' work
    counters."""

    def __init__(self, model: str | None, settings: dict | None = None,
                 root_of=lambda path: None) -> None:
        self.model, self.settings, self.root_of = model, settings, root_of
        self.current: LspCompleter | None = None
        self.root: Path | None = None
        self.seconds: list[float] = []
        self.totals: dict[str, int] = {}

    def _close(self) -> None:
        if self.current is not None:
            for k, v in (self.current.status().get("counters") or {}).items():
                self.totals[k] = self.totals.get(k, 0) + int(v)
            self.seconds += self.current.seconds
            self.current.__exit__(None, None, None)
            self.current = None

    def begin(self, line) -> None:
        root = self.root_of(line.path)
        if self.current is None or root != self.root:
            self._close()
            self.root = root
            self.current = LspCompleter(self.model, self.settings, workspace=root).__enter__()
        self.current.begin(line)

    def __call__(self, doc: str, cursor: int) -> str | None:
        assert self.current is not None, "begin(line) first"
        return self.current(doc, cursor)

    def close(self) -> dict[str, int]:
        """Stop the server; the daemons' counters summed."""
        self._close()
        return self.totals
