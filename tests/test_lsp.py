"""End to end: ``diffill lsp`` as a subprocess, driven over stdio by pytest-lsp's client, with
its daemon on a private socket, and the counting model whose fills are known."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import ClientServerConfig

from diffill.server import protocol

ROOT = Path(__file__).resolve().parents[1]
URI = "file:///work/count.txt"
LINE = "c0 c1 c2 c3 c4  c8 c9 c10"  # the gap after "c4 " holds c5 c6 c7
CAPS = types.ClientCapabilities(
    text_document=types.TextDocumentClientCapabilities(
        inline_completion=types.InlineCompletionClientCapabilities(),
        synchronization=types.TextDocumentSyncClientCapabilities()),
    workspace=types.WorkspaceClientCapabilities(
        apply_edit=True, workspace_edit=types.WorkspaceEditClientCapabilities(
            document_changes=True)),
    window=types.WindowClientCapabilities(work_done_progress=True))


def stop_daemon(sock: Path) -> None:
    subprocess.run([sys.executable, "-m", "diffill.server.cli", "serve", "--stop", "--socket", str(sock)],
                   cwd=ROOT, capture_output=True, timeout=120)


@pytest.fixture()
def sock(tmp_path_factory):
    # Unix socket paths are short (108 bytes): keep it in a short temp folder.
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="dfl-"))
    path = d / "d.sock"
    yield path
    stop_daemon(path)


@contextlib.asynccontextmanager
async def session(options: dict, caps: types.ClientCapabilities = CAPS, root: Path | None = None):
    """A real ``diffill lsp`` process as a client sees it; ``root``: the workspace folder (by
    default none, so no test reads this machine's files for drafts)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    config = ClientServerConfig(server_command=[sys.executable, "-m", "diffill.server.cli", "lsp"],
                                server_env=env)
    client = await config.start()
    client.edits = []
    client.accept = True  # what the "user" answers when asked to confirm an edit

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def apply_edit(params: types.ApplyWorkspaceEditParams):
        client.edits.append(params)
        if client.accept:
            return types.ApplyWorkspaceEditResult(applied=True)
        return types.ApplyWorkspaceEditResult(applied=False, failure_reason="rejected")

    client.status_notes = []
    client.previews = []

    @client.feature(protocol.NOTIFY_STATUS)
    def status_note(params):
        client.status_notes.append(params)

    @client.feature(protocol.NOTIFY_PREVIEW)
    def preview_note(params):
        client.previews.append(params)

    result = await client.initialize_session(types.InitializeParams(
        capabilities=caps, initialization_options=options,
        root_uri=root.as_uri() if root is not None else None))
    client.init_result = result
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown_session(), 20)
        with contextlib.suppress(Exception):
            await client.stop()


def options(model: Path, sock: Path, **extra) -> dict:
    return {"model": str(model), "socket": str(sock), "maxTokens": 8, "ensemble": 1,
            "debounceMs": 0, **extra}


def open_doc(client, text: str = LINE, uri: str = URI, version: int = 1) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id="plaintext", version=version,
                                             text=text)))


async def inline(client, line: int, character: int, uri: str = URI,
                 trigger=types.InlineCompletionTriggerKind.Invoked):
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=trigger)))


def code_action_fields(action) -> dict:
    """A code action as plain fields.

    lsprotocol 2025.0.0's client-side hook structures any object with a ``command`` key as a
    ``Command``, so a ``CodeAction`` (whose ``command`` is an object) arrives with that object
    stringified into ``Command.command``; real clients tell them apart by the key's type.
    """
    import ast
    if isinstance(action, types.Command) and action.command.startswith("{"):
        return {"title": action.title, "command": ast.literal_eval(action.command)}
    return {"title": action.title, "kind": action.kind,
            "command": {"command": action.command.command,
                        "arguments": action.command.arguments}}


async def status(client) -> dict:
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=protocol.CMD_STATUS, arguments=[]))


@pytest.mark.slow
async def test_inline_completion_fills_the_gap_and_follows_incremental_edits(pattern_ckpt, sock):
    async with session(options(pattern_ckpt, sock)) as client:
        caps = client.init_result.capabilities
        assert caps.inline_completion_provider is not None  # advertised (value may be {})
        assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
        open_doc(client)
        result = await inline(client, 0, 15)
        assert [i.insert_text for i in result.items][:1] == ["c5 c6 c7"]
        item = result.items[0]
        assert item.range == types.Range(start=types.Position(0, 15), end=types.Position(0, 15))
        # Incremental edit: "c4 " becomes "c4 c5 " -> the gap now holds c6 c7.
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=types.Position(0, 12), end=types.Position(0, 15)),
                text="c4 c5 ")]))
        result = await inline(client, 0, 18)
        assert result.items[0].insert_text == "c6 c7"
        # The model loaded once, with progress reported, and the status names it.
        st = await status(client)
        assert st["loads"] == 1 and st["models"][0]["checkpoint"] == str(pattern_ckpt)
        # Sent before each answer on the same stream, so it has arrived by now.
        assert any(getattr(n, "state", None) == "ready" for n in client.status_notes), \
            client.status_notes
        assert client.progress_reports, "work-done progress while the model loads"


@pytest.mark.slow
async def test_code_actions_apply_an_edit_covering_exactly_the_selection(pattern_ckpt, sock):
    text = "c0 c1 c2 c3 c4 c5 c9 c7 c8 c9 c10"  # c9 at the 7th slot is wrong
    async with session(options(pattern_ckpt, sock)) as client:
        open_doc(client, text)
        sel = types.Range(start=types.Position(0, 15), end=types.Position(0, 23))
        actions = await client.text_document_code_action_async(types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=URI), range=sel,
            context=types.CodeActionContext(diagnostics=[])))
        commands = {a["command"]["command"]: a for a in map(code_action_fields, actions)}
        assert set(commands) == {protocol.CMD_REWRITE, protocol.CMD_REFINE}
        for cmd in (protocol.CMD_REWRITE, protocol.CMD_REFINE):
            reply = await client.workspace_execute_command_async(types.ExecuteCommandParams(
                command=cmd, arguments=commands[cmd]["command"]["arguments"]))
            assert reply["applied"] is True
            edit = client.edits[-1].edit
            (change,) = edit.document_changes
            assert change.text_document.uri == URI and change.text_document.version == 1
            (text_edit,) = change.edits
            assert text_edit.range == sel
        # Refine re-masked the wrong token and put the right one back.
        assert reply["remasked"] and text_edit.new_text == "c5 c6 c7"
        # An instruction travels to the engine; a mask model says it cannot follow one, and
        # an instruction that is not a string is the client's error.
        for extra, expected in (("count up", "cannot follow an instruction"),
                                (5, "instruction")):
            with pytest.raises(JsonRpcException, match=expected):
                await client.workspace_execute_command_async(types.ExecuteCommandParams(
                    command=protocol.CMD_REWRITE, arguments=[URI, sel, 1, extra]))
        # No action without a selection.
        empty = await client.text_document_code_action_async(types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=URI),
            range=types.Range(start=types.Position(0, 3), end=types.Position(0, 3)),
            context=types.CodeActionContext(diagnostics=[])))
        assert not empty


@pytest.mark.slow
async def test_cancellation_returns_request_cancelled_and_the_next_request_works(pattern_ckpt,
                                                                                 sock):
    async with session(options(pattern_ckpt, sock, debounceMs=2000)) as client:
        open_doc(client)
        msg_id = str(uuid.uuid4())
        fut = asyncio.ensure_future(client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=URI),
                position=types.Position(0, 15),
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Automatic)), msg_id=msg_id))
        await status(client)  # answered after the server took the request (messages keep order)
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
        with pytest.raises(JsonRpcException) as info:
            await fut
        assert info.value.code == types.LSPErrorCodes.RequestCancelled
        result = await inline(client, 0, 15)  # invoked: no debounce
        assert result.items[0].insert_text == "c5 c6 c7"


@pytest.mark.slow
async def test_bad_requests_get_errors_and_the_server_stays_up(pattern_ckpt, sock, tmp_path):
    async with session(options(pattern_ckpt, sock)) as client:
        open_doc(client)
        with pytest.raises(JsonRpcException) as info:
            await inline(client, 5, 0)
        assert info.value.code == types.ErrorCodes.InvalidParams
        assert "past the end" in info.value.message
        with pytest.raises(JsonRpcException) as info:
            await inline(client, 0, 99)
        assert info.value.code == types.ErrorCodes.InvalidParams
        with pytest.raises(JsonRpcException, match="not open"):
            await inline(client, 0, 0, uri="file:///work/unknown.py")
        # A broken model path: an error answer, a logged message, and the server goes on.
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"diffill": {"model": str(tmp_path / "missing-model")}}))
        with pytest.raises(JsonRpcException) as info:
            await inline(client, 0, 15)
        assert info.value.code == types.LSPErrorCodes.RequestFailed
        assert "missing-model" in info.value.message
        # Logged and shown before the answer was sent: no waiting needed.
        assert any("missing-model" in m.message for m in client.log_messages)
        assert any("missing-model" in m.message for m in client.messages)  # shown once
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"diffill": {"model": str(pattern_ckpt)}}))
        result = await inline(client, 0, 15)
        assert result.items[0].insert_text == "c5 c6 c7"


@pytest.mark.slow
async def test_positions_count_in_the_encoding_the_client_negotiated(pattern_ckpt, sock):
    """A client that speaks UTF-8 offsets gets UTF-8: the end of a line with 'é' and '𝄞' is at
    its byte length, which a UTF-16 client's end would be past."""
    tail = "# é𝄞"
    text = f"{LINE}\n{tail}\n"
    for kind, end in ((types.PositionEncodingKind.Utf8, len(tail.encode())),
                      (types.PositionEncodingKind.Utf16, len(tail.encode("utf-16-le")) // 2)):
        caps = types.ClientCapabilities(
            text_document=CAPS.text_document, workspace=CAPS.workspace, window=CAPS.window,
            general=types.GeneralClientCapabilities(position_encodings=[kind]))
        async with session(options(pattern_ckpt, sock), caps=caps) as client:
            assert client.init_result.capabilities.position_encoding == kind
            open_doc(client, text)
            await inline(client, 1, end)  # the line's end: answered
            with pytest.raises(JsonRpcException) as info:
                await inline(client, 1, end + 1)
            assert info.value.code == types.ErrorCodes.InvalidParams
            assert "past the end of line 2" in info.value.message
    assert len(tail.encode()) > len(tail.encode("utf-16-le")) // 2 + 1


@pytest.mark.slow
async def test_a_line_asked_for_while_typing_tries_one_mask_count(pattern_ckpt, sock):
    async with session(options(pattern_ckpt, sock, ensemble=2)) as client:
        # Three documents, so no answer comes from an earlier one (typed-ahead, the cache).
        for k in range(3):
            open_doc(client, uri=f"file:///work/d{k}.txt")
        await inline(client, 0, 15, uri="file:///work/d0.txt")  # invoked: the ensemble
        assert (await status(client))["models"][0]["quick"] == 0
        automatic = types.InlineCompletionTriggerKind.Automatic
        await inline(client, 0, 15, uri="file:///work/d1.txt", trigger=automatic)
        assert (await status(client))["models"][0]["quick"] == 1
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"diffill": {"fastTyping": False}}))
        await inline(client, 0, 12, uri="file:///work/d2.txt", trigger=automatic)
        assert (await status(client))["models"][0]["quick"] == 1


@pytest.mark.slow
async def test_other_open_documents_of_the_language_lend_context(pattern_ckpt, sock):
    """extraTokens: each request carries a stretch of the other open documents of its language
    (the model runs more positions for it); an open document of another language, a closed
    or a huge one lends nothing, and 0 turns it off. Each ask is on a fresh document, so no
    answer comes from a cache."""
    async with session(options(pattern_ckpt, sock, extraTokens=512)) as client:
        async def positions_run(uri: str) -> int:
            st = await status(client)
            before = st["models"][0]["tokens_run"] if st.get("models") else 0
            open_doc(client, uri=uri)
            await inline(client, 0, 15, uri=uri)
            return (await status(client))["models"][0]["tokens_run"] - before

        alone = await positions_run("file:///work/a0.txt")
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri="file:///work/other.py",
                                                 language_id="python", version=1,
                                                 text="c1 c2 c3 c4 c5 c6 c7\n" * 20)))
        client.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri="file:///work/a0.txt")))
        assert await positions_run("file:///work/a1.txt") == alone  # other.py is not text
        assert await positions_run("file:///work/a2.txt") > alone  # a1 lends its line
        for uri in ("file:///work/a1.txt", "file:///work/a2.txt"):
            client.text_document_did_close(types.DidCloseTextDocumentParams(
                text_document=types.TextDocumentIdentifier(uri=uri)))
        open_doc(client, "c1 c2 c3 c4 c5 c6 c7\n" * 11_000, uri="file:///work/big.txt")
        assert await positions_run("file:///work/a3.txt") == alone  # too big to search
        open_doc(client, uri="file:///work/a4.txt")
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"diffill": {"extraTokens": 0}}))
        assert await positions_run("file:///work/a5.txt") == alone


@pytest.mark.slow
async def test_other_open_documents_of_the_language_lend_drafts(pattern_ckpt, sock):
    """The typed line's tail found in another open document of the language, and what
    followed it there, goes to the daemon as a draft, which the model verifies (more
    positions run for its rows) and shows; drafts off, it is not sent."""
    line = "c0 c1 c2 c3 c4 \nc8 c9 c10\n"
    async with session(options(pattern_ckpt, sock, minConfidence=0.0)) as client:
        async def ask(uri: str) -> tuple[int, str]:
            st = await status(client)
            before = st["models"][0]["tokens_run"] if st.get("models") else 0
            open_doc(client, line, uri=uri)
            result = await inline(client, 0, 15, uri=uri)
            ran = (await status(client))["models"][0]["tokens_run"] - before
            return ran, result.items[0].insert_text if result.items else ""

        alone, text = await ask("file:///work/b0.txt")
        open_doc(client, "c3 c4 c5 c6 c7\n", uri="file:///work/lender.txt")
        drafted, drafted_text = await ask("file:///work/b1.txt")
        assert drafted > alone and drafted_text.split()[:3] == ["c5", "c6", "c7"]
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"diffill": {"drafts": False}}))
        assert (await ask("file:///work/b2.txt"))[0] == alone


@pytest.mark.slow
async def test_the_workspaces_files_lend_drafts_and_a_save_has_them_read_again(
        pattern_ckpt, sock, tmp_path):
    """The workspace's files of the document's kind are read in the background (status
    counts them) and lend drafts like an open document; hidden and vendored folders and other
    kinds are not read; a save has them read again; ``workspaceFiles: 0`` reads none."""
    root = tmp_path / "ws"
    for folder in ("pkg", ".git", "node_modules"):
        (root / folder).mkdir(parents=True)
    (root / "pkg" / "lender.txt").write_text("c3 c4 c5 c6 c7\n")
    for unread in (".git/hidden.txt", "node_modules/vendored.txt", "other.md"):
        (root / unread).write_text("c3 c4 c5 c6 c7\n")
    line = "c0 c1 c2 c3 c4 \nc8 c9 c10\n"
    async with session(options(pattern_ckpt, sock, minConfidence=0.0), root=root) as client:
        async def ask(name: str) -> tuple[int, str]:
            st = await status(client)
            before = st["models"][0]["tokens_run"] if st.get("models") else 0
            uri = (root / name).as_uri()
            open_doc(client, line, uri=uri)
            result = await inline(client, 0, 15, uri=uri)
            ran = (await status(client))["models"][0]["tokens_run"] - before
            return ran, result.items[0].insert_text if result.items else ""

        async def files_read(count: int) -> None:
            # The reading runs in a thread: wait for its count (the status polled, no clock).
            while (await status(client))["workspaceFiles"].get(".txt") != count:
                await asyncio.sleep(0.05)

        alone, _ = await ask("d0.txt")  # the first request of the kind starts the reading
        await asyncio.wait_for(files_read(1), 300)
        drafted, text = await ask("d1.txt")
        assert drafted > alone and text.split()[:3] == ["c5", "c6", "c7"]

        (root / "pkg" / "new.txt").write_text("c1 c2\n")
        client.text_document_did_save(types.DidSaveTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=(root / "d1.txt").as_uri())))
        await ask("d2.txt")  # starts the second reading
        await asyncio.wait_for(files_read(2), 300)

        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"diffill": {"workspaceFiles": 0}}))
        assert (await status(client))["workspaceFiles"] == {}
        assert (await ask("d3.txt"))[0] == alone


@pytest.mark.slow
async def test_the_last_ghosts_rest_is_a_draft_once_typing_rejoins_it(pattern_ckpt, sock):
    """Typed past a word where the ghost was wrong, the line rejoins the ghost: its rest
    after the rejoined tail goes to the daemon as a draft (verified: more positions run than
    for the same text asked with no ghost shown before)."""
    line = "c0 c1 c2 c3 c4 \nc8 c9 c10\n"
    typed = "c0 c1 c2 c3 c4 c9 c6 \nc8 c9 c10\n"
    async with session(options(pattern_ckpt, sock, minConfidence=0.0)) as client:
        async def ran(uri: str) -> int:
            st = await status(client)
            before = st["models"][0]["tokens_run"] if st.get("models") else 0
            await inline(client, 0, 21, uri=uri)
            return (await status(client))["models"][0]["tokens_run"] - before

        open_doc(client, typed, uri="file:///work/fresh.txt")
        fresh = await ran("file:///work/fresh.txt")
        client.text_document_did_close(types.DidCloseTextDocumentParams(  # it would lend drafts
            text_document=types.TextDocumentIdentifier(uri="file:///work/fresh.txt")))
        open_doc(client, line, uri=URI)
        ghost = (await inline(client, 0, 15)).items[0].insert_text
        assert ghost.startswith("c5 c6 c7")
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=types.Position(0, 15), end=types.Position(0, 15)),
                text="c9 c6 ")]))
        assert await ran(URI) > fresh


@pytest.mark.slow
async def test_invalid_settings_are_reported_and_replaced_by_defaults(pattern_ckpt, sock):
    async with session(options(pattern_ckpt, sock, schedule="bogus", threshold=5, ensemble=0,
                               nonsense=1)) as client:
        shown = " ".join(m.message for m in client.messages)
        for name in ("schedule", "threshold", "ensemble", "nonsense"):
            assert name in shown
        open_doc(client)
        result = await inline(client, 0, 15)
        assert result.items[0].insert_text.startswith("c5 c6 c7")


async def test_disabled_language_gets_no_completion(pattern_ckpt, sock):
    async with session(options(pattern_ckpt, sock, enable={"*": True, "plaintext": False})
                       ) as client:
        open_doc(client)
        assert await inline(client, 0, 15) is None


@pytest.mark.slow
async def test_completion_fallback_for_clients_without_inline_completion(pattern_ckpt, sock):
    caps = types.ClientCapabilities(
        text_document=types.TextDocumentClientCapabilities(
            completion=types.CompletionClientCapabilities()),
        workspace=types.WorkspaceClientCapabilities(apply_edit=True))
    async with session(options(pattern_ckpt, sock), caps=caps) as client:
        open_doc(client)
        result = await client.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=URI),
            position=types.Position(0, 15)))
        (item,) = result.items
        assert item.text_edit.new_text == "c5 c6 c7"
        assert item.text_edit.range.start == types.Position(0, 15)


@pytest.mark.slow
async def test_min_confidence_hides_unsure_ghosts_and_follows_configuration(pattern_ckpt, sock):
    # The counting model fills this gap with c5 c6 c7 at a score of about 0.92.
    # The floor is for ghosts that appear by themselves (automatic requests).
    automatic = types.InlineCompletionTriggerKind.Automatic
    async with session(options(pattern_ckpt, sock, minConfidence=0.99)) as client:
        open_doc(client)
        result = await inline(client, 0, 15, trigger=automatic)
        assert result is None or not result.items
        # The status says why nothing was shown (editors show "unsure"), and which check.
        st = await status(client)
        assert st["withheld"] >= 1 and st["withheldBy"] == {"floor": st["withheld"]}
        assert getattr(client.status_notes[-1], "withheld", 0) >= 1
        # Asked for (Alt+\, :DiffillSuggest), the best candidate comes back all the same.
        open_doc(client, uri="file:///work/asked.txt")
        asked = await inline(client, 0, 15, uri="file:///work/asked.txt")
        assert asked.items[0].insert_text == "c5 c6 c7"
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"diffill": {"minConfidence": 0}}))
        result = await inline(client, 0, 15, trigger=automatic)  # after the notification
        assert result.items[0].insert_text == "c5 c6 c7"
        assert (await status(client))["withheld"] == 0


@pytest.mark.slow
async def test_a_ghost_typed_through_is_reused_and_one_typed_into_is_asked_again(
        pattern_ckpt, sock):
    async with session(options(pattern_ckpt, sock)) as client:
        def type_in(uri: str, version: int, col: int, typed: str) -> None:
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[types.TextDocumentContentChangePartial(
                    range=types.Range(start=types.Position(0, col), end=types.Position(0, col)),
                    text=typed)]))

        async def counts() -> tuple[int, int]:
            st = await status(client)
            return st["typedAhead"], st["counters"]["requests"]

        open_doc(client)
        assert (await inline(client, 0, 15)).items[0].insert_text == "c5 c6 c7"
        _, requests = await counts()
        # Typed through its first word: the rest is shown again with no model call.
        type_in(URI, 2, 15, "c5 ")
        assert (await inline(client, 0, 18)).items[0].insert_text == "c6 c7"
        assert await counts() == (1, requests)
        # Typing something else asks the model again.
        type_in(URI, 3, 18, "c9 ")
        await inline(client, 0, 21)
        assert await counts() == (1, requests + 1)
        # Typed into its first word instead of taking it ("c" of "c5"): asked again (and what
        # it answers, were it the rest passed over, is left out: LastGhost.passed).
        other = "file:///work/other.txt"
        open_doc(client, uri=other)
        assert (await inline(client, 0, 15, uri=other)).items[0].insert_text == "c5 c6 c7"
        type_in(other, 2, 15, "c")
        await inline(client, 0, 16, uri=other)
        assert await counts() == (1, requests + 3)


@pytest.mark.slow
async def test_previews_stream_the_committed_tokens_before_the_answer(pattern_ckpt, sock):
    # One token a pass (fixed schedule, 3 passes for a gap of 3): the preview grows c5, c5 c6.
    async with session(options(pattern_ckpt, sock, preview=True, schedule="fixed",
                               maxTokens=3, steps=3)) as client:
        open_doc(client)
        result = await inline(client, 0, 15)
        assert result.items[0].insert_text == "c5 c6 c7"
        # Notifications are written before the answer on the same stream.
        notes = client.previews
        assert notes and all(getattr(n, "position", None) is not None for n in notes), notes
        texts = [n.text for n in notes]
        assert all("c5 c6 c7".startswith(t) for t in texts), texts
        assert texts[-1] == "c5 c6 c7" and notes[-1].done == 1.0
        dones = [n.done for n in notes]
        assert dones == sorted(dones) and len(set(texts)) == len(texts)
        assert notes[0].textDocument.uri == URI
        assert (notes[0].position.line, notes[0].position.character) == (0, 15)
        st = await status(client)
        assert st["counters"]["previews"] == len(notes)
    # Off by default: a request the daemon really runs (not one from its result cache)
    # sends none.
    async with session(options(pattern_ckpt, sock, schedule="fixed", maxTokens=3,
                               steps=3)) as client:
        open_doc(client, "c1 c2 c3 c4 c5  c9 c10 c11")
        assert (await inline(client, 0, 15)).items[0].insert_text == "c6 c7 c8"
        st = await status(client)
        assert st["counters"]["completed"] == 2 and st["counters"]["previews"] == len(notes)
        assert client.previews == []


REVIEW_CAPS = types.ClientCapabilities(
    text_document=CAPS.text_document, window=CAPS.window,
    workspace=types.WorkspaceClientCapabilities(
        apply_edit=True, workspace_edit=types.WorkspaceEditClientCapabilities(
            document_changes=True,
            change_annotation_support=types.ChangeAnnotationsSupportOptions(
                groups_on_label=True))))


@pytest.mark.slow
async def test_rewrites_ask_for_confirmation_where_the_client_can_show_one(pattern_ckpt, sock):
    text = "c0 c1 c2 c3 c4 c5 c9 c7 c8 c9 c10"
    sel = types.Range(start=types.Position(0, 15), end=types.Position(0, 23))
    args = [URI, sel, 1]
    async with session(options(pattern_ckpt, sock), REVIEW_CAPS) as client:
        open_doc(client, text)
        reply = await client.workspace_execute_command_async(types.ExecuteCommandParams(
            command=protocol.CMD_REFINE, arguments=args))
        assert reply["applied"] is True and reply["reviewed"] is True
        edit = client.edits[-1].edit
        note = edit.change_annotations[protocol.REVIEW_ANNOTATION]
        assert note.needs_confirmation is True and note.label == "diffill: refine selection"
        (text_edit,) = edit.document_changes[0].edits
        assert isinstance(text_edit, types.AnnotatedTextEdit)
        assert text_edit.annotation_id == protocol.REVIEW_ANNOTATION and text_edit.range == sel
        # The user rejects it: nothing is applied, and the answer says why.
        client.accept = False
        reply = await client.workspace_execute_command_async(types.ExecuteCommandParams(
            command=protocol.CMD_REWRITE, arguments=args))
        assert reply["applied"] is False and reply["reason"] == "rejected"
    # reviewEdits off: a plain edit, applied at once.
    async with session(options(pattern_ckpt, sock, reviewEdits=False), REVIEW_CAPS) as client:
        open_doc(client, text)
        reply = await client.workspace_execute_command_async(types.ExecuteCommandParams(
            command=protocol.CMD_REFINE, arguments=args))
        assert reply["applied"] is True and reply["reviewed"] is False
        edit = client.edits[-1].edit
        assert not edit.change_annotations
        assert not isinstance(edit.document_changes[0].edits[0], types.AnnotatedTextEdit)
