"""``diffill lsp``: the language server an editor starts (stdio, or TCP for debugging).

Thin by design: it holds document snapshots and settings, turns LSP positions into character
offsets, and asks the per-machine daemon for fills. It imports no torch, so it starts at once;
the model lives in the daemon (``server/daemon.py``). Every edit goes to the client as a
``workspace/applyEdit``: the server never writes a file.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lsprotocol import types
from lsprotocol.converters import get_converter
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path
from pygls.workspace.position_codec import PositionCodec

from diffill.infill import drafts as drafting
from diffill.infill.api import Completion, InfillRequest, InfillResult
from diffill.infill.context import related_snippet
from diffill.infill.text import (PositionError, line_bounds, line_starts, passed_over,
                                 past_line_end, position_of, typed_through)
from diffill.infill.wire import request_to_wire, result_from_wire, settings_to_wire

from . import protocol
from . import workspace as W
from .daemon_client import AsyncDaemonClient
from .errors import (REQUEST_FAILED, BadInput, DiffillError, ModelUnavailable,
                     RequestCancelled, UsageError)
from .jsonrpc import DiffillProtocol, serve_stdio, serve_tcp, structure_problem

log = logging.getLogger("diffill.lsp")

FULL_TEXT_LIMIT = 1_000_000
"""Documents up to this size go to the daemon whole (syntax checks need the whole file);
larger ones as a slice around the cursor."""
SLICE_CHARS = 64_000
NEIGHBOURS = 3
"""Other open documents that lend a stretch of extra context to a request."""
QUERY_CHARS = 1_500
"""How far back from the cursor the lines that choose each neighbour's stretch reach."""
NEIGHBOUR_CHARS = 200_000
"""Larger documents lend no extra context: choosing their stretch would hold up the request
(about 8 ms at this size, 50 ms at 1.2 MB)."""
CONVERTER = get_converter()


TYPE_AHEAD_CHARS = 50
"""Typed characters that may be matched against a shown suggestion (Tabby forwards 50)."""


class RequestFailed(JsonRpcException):
    CODE = REQUEST_FAILED


@dataclass
class LastGhost:
    """The suggestions last shown for a document and the text around the cursor then."""

    before: str
    after: str
    texts: list[str]

    def forward(self, text: str, cursor: int) -> list[str] | None:
        """The rest of each suggestion when the user has since typed through its first word
        (``infill.text.typed_through``), or nothing (the same request again), and changed
        nothing else; None otherwise: inside a suggestion's first word the next request asks
        the model again, with the letters typed since."""
        typed = self._typed(text, cursor)
        if typed is None or len(typed) > TYPE_AHEAD_CHARS:
            return None
        rest = [t[len(typed):] for t in self.texts
                if len(t) > len(typed) and (not typed or typed_through(typed, t))]
        return rest or None

    def passed(self, text: str, cursor: int) -> set[str]:
        """The rests of the suggestions the user has typed into without taking them, still
        inside their first word (``infill.text.passed_over``): not offered again."""
        typed = self._typed(text, cursor)
        if typed is None:
            return set()
        return {r for t in self.texts if (r := passed_over(typed, t)) is not None}

    def _typed(self, text: str, cursor: int) -> str | None:
        """What the user has typed since at the cursor, nothing else changed; else None."""
        if cursor < len(self.before) or text[cursor:] != self.after or \
                not text.startswith(self.before):
            return None
        return text[len(self.before):cursor]


class Typing:
    """A document's keystroke rhythm, for the adaptive debounce: wait 1.5 times the user's
    usual pause between changes (the median of the last 16, pauses over 2 s left out), within
    100-400 ms. A fast typist is asked between words, not between letters; a slow one does not
    wait for a fixed delay tuned for someone else."""

    FLOOR, CEILING, DEFAULT, PAUSE = 0.1, 0.4, 0.15, 2.0

    def __init__(self) -> None:
        self.last: float | None = None
        self.gaps: collections.deque[float] = collections.deque(maxlen=16)

    def changed(self, now: float) -> None:
        if self.last is not None and 0 <= now - self.last <= self.PAUSE:
            self.gaps.append(now - self.last)
        self.last = now

    def debounce(self) -> float:
        """Seconds to wait before an automatic request."""
        if len(self.gaps) < 3:
            return self.DEFAULT
        return min(self.CEILING, max(self.FLOOR, 1.5 * statistics.median(self.gaps)))


@dataclass
class State:
    settings: protocol.Settings = field(default_factory=protocol.Settings)
    daemon: AsyncDaemonClient | None = None
    inline_supported: bool = True
    versioned_edits: bool = False
    annotated_edits: bool = False
    """The client takes change annotations (and so can ask the user to confirm an edit)."""
    reported: set[str] = field(default_factory=set)
    last_latency_ms: float | None = None
    last_withheld: int = 0
    """Completions the last answered request held back while showing none: why an editor
    showed nothing."""
    last_withheld_by: dict[str, int] = field(default_factory=dict)
    """The same, by the check that held each back (``syntax``, ``unknown name``, ``floor``)."""
    model_info: dict[str, Any] = field(default_factory=dict)
    load_task: asyncio.Task | None = None
    """Held only so the event loop's weak reference is not the task's last one."""
    shown: dict[str, LastGhost] = field(default_factory=dict)
    """Per document: what was last suggested, for typed-ahead reuse."""
    typed_ahead: int = 0
    """Requests answered from a shown suggestion, with no model call."""
    typing: dict[str, Typing] = field(default_factory=dict)
    """Per document: its keystroke rhythm (the adaptive debounce)."""
    recent: dict[str, None] = field(default_factory=dict)
    """Documents by when they were last opened or changed, most recent last (extra context)."""
    libraries: dict[str, drafting.Library] = field(default_factory=dict)
    """Per kind of file (``.py``): the workspace's files read for drafts."""
    reading: dict[str, asyncio.Future] = field(default_factory=dict)
    """Per kind: the library being read in a thread (the last one is used meanwhile)."""
    stale: set[str] = field(default_factory=set)
    """Kinds whose library a save has made old: read again on the next request."""


def client_offset(codec: PositionCodec, text: str, pos: types.Position) -> int:
    """Character offset of a client's position, its column in the negotiated encoding."""
    # pygls's codec clamps a column past the line's end; diffill refuses it, so the bounds are
    # checked here and the codec only counts units.
    begin, content = line_bounds(text, pos.line)
    if pos.character > codec.client_num_units(content):
        raise past_line_end(pos.line, pos.character, len(content))
    column = codec.position_from_client_units(
        [content], types.Position(line=0, character=pos.character)).character
    return begin + column


def client_position(codec: PositionCodec, text: str, offset: int) -> types.Position:
    """A character offset as a client's position, its column in the negotiated encoding."""
    starts = line_starts(text)
    line, column = position_of(text, offset, starts=starts)
    _, content = line_bounds(text, line, starts)
    return types.Position(line=line, character=codec.client_num_units(content[:column]))


class DiffillServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__(protocol.SERVER_NAME, protocol.VERSION, protocol_cls=DiffillProtocol)
        self.state = State()

    # ------------------------------------------------------------ helpers

    def document(self, uri: str):
        if uri not in self.workspace.text_documents:
            raise JsonRpcInvalidParams(f"document {uri} is not open")
        return self.workspace.get_text_document(uri)

    def offset(self, text: str, pos: types.Position) -> int:
        try:
            return client_offset(self.workspace.position_codec, text, pos)
        except PositionError as exc:
            raise JsonRpcInvalidParams(str(exc)) from None

    def position(self, text: str, offset: int) -> types.Position:
        return client_position(self.workspace.position_codec, text, offset)

    def report_once(self, message: str, *, show: bool = False) -> None:
        """Log a failure; show it to the user once, not on every keystroke."""
        self.window_log_message(types.LogMessageParams(type=types.MessageType.Error,
                                                       message=f"diffill: {message}"))
        if show and message not in self.state.reported:
            self.state.reported.add(message)
            self.window_show_message(types.ShowMessageParams(type=types.MessageType.Error,
                                                             message=f"diffill: {message}"))

    def notify_status(self, state: str, error: str | None = None) -> None:
        info = self.state.model_info
        self.protocol.notify(protocol.NOTIFY_STATUS, {
            "state": state, "model": info.get("checkpoint"), "device": info.get("device"),
            "dtype": info.get("dtype"), "lastLatencyMs": self.state.last_latency_ms,
            "withheld": self.state.last_withheld, "withheldBy": self.state.last_withheld_by,
            "error": error})

    def daemon(self) -> AsyncDaemonClient:
        settings = self.state.settings
        path = protocol.socket_path(settings.socket)
        d = self.state.daemon
        if d is None or d.path != path:
            d = AsyncDaemonClient(path, idle_timeout=settings.idleTimeout, name=f"lsp-{id(self)}")
            self.state.daemon = d
        return d

    async def ask(self, method: str, params: dict[str, Any],
                  on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """A daemon call with its failures turned into LSP errors (and logged)."""
        try:
            return await self.daemon().request(method, params, on_progress)
        except asyncio.CancelledError:
            raise
        except (BadInput, UsageError) as exc:
            raise JsonRpcInvalidParams(str(exc)) from None
        except RequestCancelled as exc:
            raise JsonRpcException(code=types.LSPErrorCodes.RequestCancelled,
                                   message=str(exc)) from None
        except DiffillError as exc:  # model, daemon or internal trouble
            self.report_once(str(exc), show=isinstance(exc, ModelUnavailable))
            self.notify_status("error", str(exc))
            raise RequestFailed(str(exc)) from None

    def apply_settings(self, raw: Any) -> protocol.Settings:
        """Take the client's settings over the current ones; report each invalid entry once.
        Returns the settings that were in force before."""
        old = self.state.settings
        self.state.settings, problems = protocol.parse_settings(raw, base=old)
        for p in problems:
            self.report_once(f"settings: {p}", show=True)
        return old

    def neighbours(self, uri: str, language: str, text: str, cursor: int) -> list[list[str]]:
        """Extra context: from each of the other open documents of the same language, most
        recently touched first (at most ``NEIGHBOURS``), the stretch that shares the most names
        with the lines before the cursor, as ``[name, text]``; the most recent comes last,
        nearest the prefix, where a budget that cuts the extra context keeps it."""
        if self.state.settings.extraTokens <= 0:
            return []
        query = text[text.rfind("\n", 0, max(0, cursor - QUERY_CHARS)) + 1:cursor]
        out: list[list[str]] = []
        for doc in self.other_documents(uri, language):
            if len(out) == NEIGHBOURS:
                break
            snippet = related_snippet(doc.source, query)
            if snippet.strip():
                out.append([Path(doc.path).name if doc.path else doc.uri, snippet])
        return out[::-1]

    def other_documents(self, uri: str, language: str):
        """The other open documents of ``language`` up to ``NEIGHBOUR_CHARS``, most recently
        opened or changed first (larger ones would hold the request up)."""
        for other in reversed(self.state.recent):
            if other == uri or other not in self.workspace.text_documents:
                continue
            doc = self.workspace.get_text_document(other)
            if doc.language_id == language and len(doc.source) <= NEIGHBOUR_CHARS:
                yield doc

    def drafts_elsewhere(self, uri: str, language: str, path: str | None, text: str,
                         cursor: int) -> list[drafting.Found]:
        """Drafts for the cursor's line from beyond the document (the daemon adds the
        document's own): the line as the last ghost shown here would have made it, the
        other open documents of the language (most recently touched first), then the
        workspace's files of the document's kind. From each, the typed tail found there and
        what followed it, and the partial word's completions."""
        line_start = text.rfind("\n", 0, cursor) + 1
        others = [doc.source for doc, _ in zip(self.other_documents(uri, language),
                                               range(NEIGHBOURS))]
        shown = self.state.shown.get(uri)
        if shown is not None and len(shown.before) >= line_start and \
                shown.before.rfind("\n") + 1 == line_start and \
                text.startswith(shown.before[:line_start]):
            # Typed past where the ghost went wrong, its rest may still be right further on.
            others = [shown.before[line_start:] + t for t in shown.texts[:1]] + others
        library = self.library(path)
        if not others and library is None:
            return []
        return drafting.line_drafts(text, cursor, others, library, path)

    def drafts_for(self, uri: str, doc: Any, text: str, cursor: int, wanted: bool
                   ) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """A request's ``drafts`` and ``draft_support`` (:meth:`drafts_elsewhere`)."""
        return drafting.request_fields(
            self.drafts_elsewhere(uri, doc.language_id, doc.path, text, cursor) if wanted
            else [])

    def workspace_roots(self) -> list[Path]:
        roots = [self.workspace.root_path] if self.workspace.root_path else []
        for folder in self.workspace.folders.values():
            if folder.uri.startswith("file:"):
                roots.append(to_fs_path(folder.uri))
        return [Path(r) for r in dict.fromkeys(r for r in roots if r)]

    def library(self, path: str | None) -> drafting.Library | None:
        """The workspace's files of ``path``'s kind, once read; the first request of a kind
        (or the first after a save) has them read in a thread and goes on without (or with
        the last reading)."""
        kind = W.kind_of(path)
        most = self.state.settings.workspaceFiles
        if kind is None or most <= 0:
            return None
        st = self.state
        if (kind not in st.libraries or kind in st.stale) and kind not in st.reading:
            st.stale.discard(kind)
            roots = self.workspace_roots()
            if not roots:
                return None
            future = asyncio.ensure_future(asyncio.to_thread(W.build_library, roots, kind, most))
            st.reading[kind] = future

            def done(f: asyncio.Future, kind: str = kind) -> None:
                st.reading.pop(kind, None)
                if f.cancelled():
                    return
                if f.exception() is not None:
                    self.report_once(f"workspace files not read: {f.exception()}")
                elif self.state.settings.workspaceFiles > 0:
                    st.libraries[kind] = f.result()
                    log.info("workspace: %d %s files read for drafts", len(f.result()), kind)
            future.add_done_callback(done)
        return st.libraries.get(kind)

    def slice_for(self, text: str, start: int, end: int) -> tuple[str, int]:
        """The text to send and its offset in the document."""
        if len(text) <= FULL_TEXT_LIMIT:
            return text, 0
        lo = max(0, start - SLICE_CHARS)
        hi = min(len(text), end + SLICE_CHARS // 2)
        return text[lo:hi], lo

    def previewer(self, uri: str, at: types.Position) -> Callable[[dict[str, Any]], None]:
        """Forwards the daemon's progress lines of one completion as ``$/diffill/preview``."""
        where = {"textDocument": {"uri": uri},
                 "position": {"line": at.line, "character": at.character}}

        def send(progress: dict[str, Any]) -> None:
            self.protocol.notify(protocol.NOTIFY_PREVIEW,
                                 {**where, "text": progress.get("text", ""),
                                  "done": progress.get("done", 0.0)})
        return send

    async def run_infill(self, uri: str, start: int, end: int | None, action: str,
                         instruction: str | None = None,
                         preview_at: types.Position | None = None,
                         automatic: bool = False) -> InfillResult:
        doc = self.document(uri)
        text = doc.source
        piece, base = self.slice_for(text, start, end if end is not None else start)
        settings = self.state.settings
        drafts, support = self.drafts_for(uri, doc, text, start,
                                          action == "complete" and settings.drafts)
        request = InfillRequest(
            piece, start - base, None if end is None else end - base, action,
            doc.language_id, doc.path,
            tuple((name, chunk) for name, chunk in self.neighbours(uri, doc.language_id, text,
                                                                   start)),
            instruction, drafts, support)
        t0 = time.perf_counter()
        params = {"document": uri, "request": request_to_wire(request),
                  "model": settings.model_spec(),
                  "settings": settings_to_wire(settings.infill_settings(automatic))}
        on_progress = None
        if preview_at is not None and settings.preview:
            params["preview"] = True
            on_progress = self.previewer(uri, preview_at)
        result = result_from_wire(await self.ask("infill", params, on_progress))
        self.state.last_latency_ms = round((time.perf_counter() - t0) * 1000, 1)
        self.state.last_withheld = 0 if result.items else result.withheld
        self.state.last_withheld_by = {} if result.items else dict(result.withheld_by)
        for item in result.items:  # offsets in the slice sent -> in the document
            item.start += base
            item.end += base
        self.notify_status("ready")
        return result


# ---------------------------------------------------------------- handlers


def initialize(ls: DiffillServer, params: types.InitializeParams) -> None:
    ls.apply_settings(params.initialization_options)
    caps = params.capabilities
    td = caps.text_document if caps else None
    ls.state.inline_supported = bool(td and td.inline_completion is not None)
    ws = caps.workspace if caps else None
    ls.state.versioned_edits = bool(ws and ws.workspace_edit and
                                    ws.workspace_edit.document_changes)
    ls.state.annotated_edits = bool(ls.state.versioned_edits and
                                    ws.workspace_edit.change_annotation_support is not None)


def initialized(ls: DiffillServer, params: types.InitializedParams) -> None:
    ls.state.load_task = asyncio.ensure_future(load_model(ls))


def did_change_configuration(ls: DiffillServer,
                             params: types.DidChangeConfigurationParams) -> None:
    old = ls.apply_settings(params.settings)
    settings = ls.state.settings
    if settings.workspaceFiles != old.workspaceFiles:
        ls.state.libraries.clear()  # read again, to the new bound, when next asked
    if settings.model_spec() != old.model_spec() or settings.socket != old.socket:
        ls.state.shown.clear()  # another model's suggestions are not this one's
        ls.state.load_task = asyncio.ensure_future(load_model(ls))


def did_open(ls: DiffillServer, params: types.DidOpenTextDocumentParams) -> None:
    remember(ls.state.recent, params.text_document.uri, None)


def did_save(ls: DiffillServer, params: types.DidSaveTextDocumentParams) -> None:
    kind = W.kind_of(to_fs_path(params.text_document.uri))
    if kind in ls.state.libraries:
        ls.state.stale.add(kind)


def did_change(ls: DiffillServer, params: types.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    remember(ls.state.recent, uri, None)
    remember(ls.state.typing, uri, ls.state.typing.get(uri) or Typing()).changed(
        time.monotonic())


async def inline_completion(ls: DiffillServer, params: types.InlineCompletionParams
                            ) -> types.InlineCompletionList | None:
    doc = ls.document(params.text_document.uri)
    if not ls.state.settings.enabled_for(doc.language_id):
        return None
    version = doc.version
    automatic = params.context.trigger_kind == types.InlineCompletionTriggerKind.Automatic
    if automatic and not await paused(ls, doc.uri, version):
        return None  # the user kept typing; a newer request follows
    text = doc.source
    cursor = ls.offset(text, params.position)
    pos = ls.position(text, cursor)
    shown = ls.state.shown.get(doc.uri)
    rest = shown.forward(text, cursor) if shown is not None else None
    if rest is not None:
        # The user typed what the suggestion says: offer the rest, no model call.
        ls.state.typed_ahead += 1
        return types.InlineCompletionList(items=[
            types.InlineCompletionItem(insert_text=t, range=types.Range(start=pos, end=pos))
            for t in rest])
    result = await ls.run_infill(doc.uri, cursor, None, "complete", preview_at=pos,
                                 automatic=automatic)
    if ls.document(doc.uri).version != version:
        return None  # the buffer changed while the model worked: this fill is stale
    texts = [it.text for it in result.items]
    # An explicit ask gets what the model says, passed over or not.
    passed = shown.passed(text, cursor) if shown is not None and automatic else set()
    texts = ghosts_to_show(ls, doc.uri, text, cursor, texts, passed)
    items = [types.InlineCompletionItem(insert_text=t, range=types.Range(start=pos, end=pos))
             for t in texts]
    return types.InlineCompletionList(items=items)


async def paused(ls: DiffillServer, uri: str, version: int) -> bool:
    """Wait the debounce (the setting, else the typist's own rhythm); whether the document
    is still at ``version`` after it."""
    fixed = ls.state.settings.debounceMs
    typing = ls.state.typing.get(uri)
    await asyncio.sleep(fixed / 1000 if fixed is not None else
                        (typing.debounce() if typing else Typing.DEFAULT))
    return ls.document(uri).version == version


def ghosts_to_show(ls: DiffillServer, uri: str, text: str, cursor: int, texts: list[str],
                   passed: set[str]) -> list[str]:
    """The ghosts to show, and the :class:`LastGhost` remembered for the next keystrokes:
    what the user just typed past (``passed``) is not shown again, and stays one their next
    keys are compared with."""
    if passed and any(t in passed for t in texts):
        texts = [t for t in texts if t not in passed]
        if texts:
            remember(ls.state.shown, uri,
                     LastGhost(text[:cursor], text[cursor:], texts + sorted(passed)))
    elif texts:
        remember(ls.state.shown, uri, LastGhost(text[:cursor], text[cursor:], texts))
    else:
        ls.state.shown.pop(uri, None)
    return texts


async def completion(ls: DiffillServer, params: types.CompletionParams
                     ) -> types.CompletionList | None:
    mode = ls.state.settings.completionFallback
    if mode == "never" or (mode == "auto" and ls.state.inline_supported):
        return None
    doc = ls.document(params.text_document.uri)
    if not ls.state.settings.enabled_for(doc.language_id):
        return None
    text = doc.source
    cursor = ls.offset(text, params.position)
    result = await ls.run_infill(doc.uri, cursor, None, "complete")
    if result.best is None:
        return types.CompletionList(is_incomplete=True, items=[])
    best = result.best.text
    pos = ls.position(text, cursor)
    label = best.strip().splitlines()[0][:60] if best.strip() else best
    item = types.CompletionItem(label=label, kind=types.CompletionItemKind.Text,
                                detail="diffill", insert_text=best,
                                text_edit=types.TextEdit(range=types.Range(pos, pos),
                                                         new_text=best),
                                sort_text="0", preselect=True)
    return types.CompletionList(is_incomplete=True, items=[item])


def code_action(ls: DiffillServer, params: types.CodeActionParams
                ) -> list[types.CodeAction] | None:
    r = params.range
    if (r.start.line, r.start.character) == (r.end.line, r.end.character):
        return None
    doc = ls.document(params.text_document.uri)
    args = [doc.uri, r, doc.version]
    return [types.CodeAction(title=title, kind=types.CodeActionKind.RefactorRewrite,
                             command=types.Command(title=title, command=cmd, arguments=args))
            for title, cmd in (("Rewrite selection (diffill)", protocol.CMD_REWRITE),
                               ("Refine selection (diffill)", protocol.CMD_REFINE))]


def rewrite_args(args: list[Any]) -> tuple[str, types.Range, int | None, str | None]:
    """A rewrite command's ``[uri, range, version?, instruction?]``, checked."""
    try:
        if not 2 <= len(args) <= 4:
            raise ValueError(f"{len(args)} arguments")
        uri, rng = args[0], args[1]
        version = args[2] if len(args) > 2 else None
        instruction = args[3] if len(args) > 3 else None
        rng = rng if isinstance(rng, types.Range) else CONVERTER.structure(rng, types.Range)
        if not isinstance(uri, str) or not (version is None or isinstance(version, int)) \
                or not (instruction is None or isinstance(instruction, str)):
            raise TypeError("uri and instruction are strings, version an integer")
    except Exception as exc:  # noqa: BLE001 - whatever the arguments were, they are wrong
        raise JsonRpcInvalidParams(f"expected [uri, range, version?, instruction?]: "
                                   f"{structure_problem(exc)}") from None
    return uri, rng, version, instruction


def rewrite_edit(ls: DiffillServer, uri: str, version: int, text: str, best: Completion,
                 label: str) -> tuple[types.WorkspaceEdit, bool]:
    """The workspace edit of a rewrite's best candidate, and whether the client is asked to
    show it for review first."""
    edit_range = types.Range(start=ls.position(text, best.start),
                             end=ls.position(text, best.end))
    review = ls.state.annotated_edits and ls.state.settings.reviewEdits
    if review:
        # The client shows the change and applies it only if the user accepts it (VS Code:
        # its refactor preview; the Neovim plugin: a diff in a floating window).
        edit: types.TextEdit = types.AnnotatedTextEdit(
            range=edit_range, new_text=best.text, annotation_id=protocol.REVIEW_ANNOTATION)
        notes = {protocol.REVIEW_ANNOTATION: types.ChangeAnnotation(
            label=label, needs_confirmation=True,
            description=f"model score {best.score:.2f}" +
            ("" if best.parses is not False else "; the result does not parse"))}
    else:
        edit, notes = types.TextEdit(range=edit_range, new_text=best.text), None
    if ls.state.versioned_edits:
        return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(
            text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri,
                                                                        version=version),
            edits=[edit])], change_annotations=notes), bool(review)
    return types.WorkspaceEdit(changes={uri: [edit]}), bool(review)


async def rewrite(ls: DiffillServer, args: list[Any], action: str) -> dict[str, Any]:
    uri, rng, version, instruction = rewrite_args(args)
    doc = ls.document(uri)
    if version is not None and doc.version != version:
        raise RequestFailed("the document changed since the action was offered")
    text, version = doc.source, doc.version
    start, end = ls.offset(text, rng.start), ls.offset(text, rng.end)
    if end <= start:
        raise JsonRpcInvalidParams("the selection is empty")
    result = await ls.run_infill(uri, start, end, action, instruction or None)
    if ls.document(uri).version != version:
        raise RequestFailed("the document changed while the model worked; nothing applied")
    best = result.best
    if best is None:
        return {"applied": False, "reason": "the model proposed nothing"}
    label = "diffill: rewrite selection" if action == "rewrite" else "diffill: refine selection"
    wedit, review = rewrite_edit(ls, uri, version, text, best, label)
    # Written now, in this step of the request's task: a cancel that came in before it
    # has already stopped the task at its last await (a task sending it later could
    # send an edit for a request already cancelled).
    sent = asyncio.wrap_future(ls.workspace_apply_edit(
        types.ApplyWorkspaceEditParams(edit=wedit, label=label)))
    try:
        reply = await asyncio.shield(sent)
    except asyncio.CancelledError:
        # Cancelled after the edit went out: the answer says what the client did with it.
        reply = await sent
    answer = {"applied": bool(reply.applied), "text": best.text, "reviewed": review,
              "remasked": result.remasked}
    if not reply.applied and reply.failure_reason:
        answer["reason"] = reply.failure_reason
    return answer


async def rewrite_selection(ls: DiffillServer, *args: Any) -> dict[str, Any]:
    return await rewrite(ls, _args(args), "rewrite")


async def refine_selection(ls: DiffillServer, *args: Any) -> dict[str, Any]:
    return await rewrite(ls, _args(args), "refine")


async def status(ls: DiffillServer, *args: Any) -> dict[str, Any]:
    st = await ls.ask("status", {})
    st["lastLatencyMs"] = ls.state.last_latency_ms
    st["withheld"] = ls.state.last_withheld
    st["withheldBy"] = ls.state.last_withheld_by
    st["typedAhead"] = ls.state.typed_ahead
    st["workspaceFiles"] = {kind: len(lib) for kind, lib in ls.state.libraries.items()}
    return st


async def shutdown(ls: DiffillServer, params: None) -> None:
    if ls.state.daemon is not None:
        await ls.state.daemon.close()


def create_server() -> DiffillServer:
    """The one place every LSP feature and command is registered (the handlers are the
    module's functions above)."""
    server = DiffillServer()
    server.feature(types.INITIALIZE)(initialize)
    server.feature(types.INITIALIZED)(initialized)
    server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)(did_change_configuration)
    server.feature(types.TEXT_DOCUMENT_DID_OPEN)(did_open)
    server.feature(types.TEXT_DOCUMENT_DID_SAVE)(did_save)
    server.feature(types.TEXT_DOCUMENT_DID_CHANGE)(did_change)
    server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION,
                   types.InlineCompletionOptions())(inline_completion)
    server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())(completion)
    server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
        code_action_kinds=[types.CodeActionKind.RefactorRewrite]))(code_action)
    server.command(protocol.CMD_REWRITE)(rewrite_selection)
    server.command(protocol.CMD_REFINE)(refine_selection)
    server.command(protocol.CMD_STATUS)(status)
    server.feature(types.SHUTDOWN)(shutdown)
    return server


def remember(table: dict[str, Any], uri: str, value: Any, limit: int = 64) -> Any:
    """Keep ``value`` for a document as its most recent entry; the documents least recently
    touched (closed ones, in time) age out beyond ``limit``. Returns ``value``."""
    table.pop(uri, None)
    table[uri] = value
    while len(table) > limit:
        table.pop(next(iter(table)))
    return value


def _args(args: tuple[Any, ...]) -> list[Any]:
    """pygls passes command arguments either spread or as one list."""
    if len(args) == 1 and isinstance(args[0], list):
        return args[0]
    return list(args)


async def load_model(ls: DiffillServer) -> None:
    """Connect to (or start) the daemon and have the model loaded, with work-done progress."""
    token = f"diffill-load-{time.monotonic_ns()}"
    caps = ls.client_capabilities
    progress = bool(caps and caps.window and caps.window.work_done_progress)
    if progress:
        try:
            await ls.work_done_progress.create_async(token)
            ls.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                title="diffill", message="loading the model", cancellable=False))
        except Exception:  # noqa: BLE001 - a client may refuse progress
            progress = False
    ls.notify_status("loading")
    try:
        info = await ls.daemon().request("load", {"model": ls.state.settings.model_spec()})
        ls.state.model_info = info
        ls.notify_status("ready")
        message = f"{info.get('checkpoint')} on {info.get('device')}"
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported, the server stays up
        message = f"model not loaded: {exc}"
        ls.report_once(message, show=True)
        ls.notify_status("error", str(exc))
    if progress:
        ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))


def run(tcp: str | None = None) -> int:
    server = create_server()
    if tcp:
        host, _, port = tcp.rpartition(":")
        serve_tcp(server, host or "127.0.0.1", int(port))
    else:
        serve_stdio(server)
    return 0
