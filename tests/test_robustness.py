"""Hostile input, load and faults against ``diffill lsp`` and its daemon, driven by a plain
JSON-RPC client (``wire.py``) that can send anything. Every request gets exactly one answer,
the server never exits on input, and each fault is recovered by the first request after it.
Counts are small here; ``make soak`` runs the same scenarios at length."""

from __future__ import annotations

import asyncio
import json
import os
import random
import tempfile
from pathlib import Path

import pytest

from diffill.server import protocol
from diffill.workshop.lsp_client import Wire, frame, fuzz_messages

URI = "file:///work/m.py"
TEXT = "def add(a, b):\n    return a + b\n\n\nvalue = add(1, 2)\n"
PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS = -32700, -32600, -32602


@pytest.fixture()
def sock():
    from test_lsp import stop_daemon
    path = Path(tempfile.mkdtemp(prefix="dfl-")) / "d.sock"
    yield path
    stop_daemon(path)


def opts(model: Path, sock: Path, **extra) -> dict:
    return {"model": str(model), "socket": str(sock), "maxTokens": 8, "ensemble": 1,
            "debounceMs": 0, **extra}


async def started(tmp_path: Path, options: dict | None = None) -> Wire:
    wire = await Wire.start(tmp_path / f"lsp-{random.randrange(10**9)}.log")
    if options is not None:
        reply = await wire.initialize(options)
        assert "result" in reply, reply
    return wire


def code_action(wire: Wire, mid=None):
    """A cheap request the server answers itself (no daemon)."""
    return wire.ask("textDocument/codeAction", {
        "textDocument": {"uri": URI}, "context": {"diagnostics": []},
        "range": {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 0}}},
        mid=mid)


BAD_FRAMES = {
    "short length": lambda body: b"Content-Length: %d\r\n\r\n%s" % (len(body) - 9, body),
    "long length": lambda body: b"Content-Length: %d\r\n\r\n%s" % (len(body) + 3, body),
    "negative length": lambda body: b"Content-Length: -%d\r\n\r\n%s" % (len(body), body),
    "length not a number": lambda body: b"Content-Length: ten\r\n\r\n" + body,
    "20-digit length": lambda body: b"Content-Length: 100000000000000000000\r\n\r\n" + body,
    "no header": lambda body: body,
    "garbage": lambda body: b"\x00\xff garbage \r\n more: garbage\n",
    "8 KB line": lambda body: b"x" * 9000,
}


async def test_the_reader_resynchronises_after_every_kind_of_bad_frame(pattern_ckpt, sock, tmp_path):
    wire = await started(tmp_path, opts(pattern_ckpt, sock))
    wire.open(URI, TEXT)
    for n, (name, bad) in enumerate(BAD_FRAMES.items()):
        body = json.dumps({"jsonrpc": "2.0", "id": f"bad-{n}", "method": "textDocument/hover",
                           "params": {}}).encode()
        wire.send_raw(bad(body))
        reply = await wire.answer(code_action(wire, mid=1000 + n))
        assert "result" in reply, (name, reply)
        assert len(wire.answers.get(f"bad-{n}", [])) <= 1, name
    # Header spellings some clients use are accepted as they are.
    body = json.dumps({"jsonrpc": "2.0", "id": 77, "method": "textDocument/codeAction",
                       "params": {"textDocument": {"uri": URI}, "context": {"diagnostics": []},
                                  "range": {"start": {"line": 0, "character": 0},
                                            "end": {"line": 0, "character": 3}}}}).encode()
    wire.send_raw(b"content-length:%d\n\n%s" % (len(body), body))
    assert "result" in await wire.answer(77)
    assert await wire.close() == 0


async def test_unreadable_frames_are_answered_with_a_null_id_and_the_server_goes_on(
        pattern_ckpt, sock, tmp_path):
    """A short frame, an empty one (Content-Length: 0) and one nested deeper than the parser
    goes: each gets its error with ``id: null`` (JSON-RPC 2.0: an id that could not be read
    is null, never guessed), and the session goes on."""
    wire = await started(tmp_path, opts(pattern_ckpt, sock))
    body = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "textDocument/hover",
                       "params": {"textDocument": {"uri": URI}}}).encode()
    wire.send_raw(b"Content-Length: %d\r\n\r\n%s" % (len(body) - 3, body))
    wire.send_raw(b"Content-Length: 0\r\n\r\n")
    deep = b'{"jsonrpc": "2.0", "id": 6, "method": "x", "params": ' + b"[" * 100_000 + \
        b"]" * 100_000 + b"}"
    wire.send_raw(b"Content-Length: %d\r\n\r\n%s" % (len(deep), deep))
    await wire.until(lambda: len(wire.answers.get(None, [])) >= 3, "three id-less errors")
    codes = sorted(a["error"]["code"] for a in wire.answers[None])
    assert codes == [PARSE_ERROR, PARSE_ERROR, INVALID_REQUEST]
    wire.open(URI, TEXT)
    assert "result" in await wire.answer(code_action(wire))
    assert 5 not in wire.answers and 6 not in wire.answers
    assert await wire.close() == 0


async def test_malformed_requests_get_the_error_the_spec_names(pattern_ckpt, sock, tmp_path):
    wire = await started(tmp_path, opts(pattern_ckpt, sock))
    wire.open(URI, TEXT)
    pos = {"textDocument": {"uri": URI}, "context": {"triggerKind": 1}}
    cases = [
        ({"position": {"line": -1, "character": 0}, **pos}, INVALID_PARAMS, "line"),
        ({"position": {"line": "one", "character": 0}, **pos}, INVALID_PARAMS, "line"),
        ({"textDocument": {"uri": URI}}, INVALID_PARAMS, "position"),
    ]
    for params, code, word in cases:
        reply = await wire.call("textDocument/inlineCompletion", params)
        assert reply["error"]["code"] == code and word in reply["error"]["message"], reply
    reply = await wire.call("textDocument/inlineCompletion", [1, 2])  # params as a list
    assert reply["error"]["code"] == INVALID_PARAMS
    wire.send({"jsonrpc": "1.0", "id": 31, "method": "textDocument/hover", "params": {}})
    assert (await wire.answer(31))["error"]["code"] == INVALID_REQUEST
    wire.send({"jsonrpc": "2.0", "id": 32, "method": 7})
    assert (await wire.answer(32))["error"]["code"] == INVALID_REQUEST
    wire.send({"jsonrpc": "2.0", "id": [1], "method": "textDocument/hover"})
    wire.send([{"jsonrpc": "2.0", "id": 33, "method": "textDocument/hover"}])  # a batch
    wire.send_raw(b"Content-Length: 9\r\n\r\n{not json")
    await wire.until(lambda: len(wire.answers.get(None, [])) >= 3, "three id-less errors")
    codes = sorted(a["error"]["code"] for a in wire.answers[None])
    assert codes == [PARSE_ERROR, INVALID_REQUEST, INVALID_REQUEST]
    bad_utf8 = b'{"jsonrpc": "2.0", "id": 34, "method": "textDocument/hover", "x": "\xff"}'
    wire.send_raw(b"Content-Length: %d\r\n\r\n%s" % (len(bad_utf8), bad_utf8))
    await wire.until(lambda: len(wire.answers.get(None, [])) >= 4, "the bad UTF-8's error")
    assert wire.answers[None][-1]["error"]["code"] == PARSE_ERROR and 34 not in wire.answers
    assert "Traceback" not in wire.log()
    assert await wire.close() == 0


async def test_bad_command_arguments_are_invalid_params_not_internal_errors(pattern_ckpt, sock, tmp_path):
    wire = await started(tmp_path, opts(pattern_ckpt, sock))
    wire.open(URI, TEXT)
    good_range = {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 0}}
    for args in ([URI, None], [], [5, good_range], [URI, {"start": {"line": -1}}],
                 [URI, good_range, "v1"], None, [URI, good_range, 1, 2, 3, {"deep": [None]}]):
        for command in (protocol.CMD_REWRITE, protocol.CMD_REFINE):
            params = {"command": command}
            if args is not None:
                params["arguments"] = args
            reply = await wire.call("workspace/executeCommand", params)
            assert reply["error"]["code"] == INVALID_PARAMS, (args, reply)
    reply = await wire.call("workspace/executeCommand", {"command": "diffill.nope"})
    assert reply["error"]["code"] == INVALID_PARAMS
    log = wire.log()
    assert "Traceback" not in log and "-32603" not in log
    assert await wire.close() == 0


async def test_lifecycle_errors_second_initialize_and_requests_after_shutdown(pattern_ckpt, sock,
                                                                            tmp_path):
    wire = await started(tmp_path)
    early = await wire.answer(code_action(wire))
    assert early["error"]["code"] == -32002  # ServerNotInitialized
    await wire.initialize(opts(pattern_ckpt, sock))
    wire.open(URI, TEXT)
    again = await wire.call("initialize", {"processId": None, "rootUri": None,
                                           "capabilities": {}})
    assert again["error"]["code"] == INVALID_REQUEST
    assert "result" in await wire.answer(code_action(wire))  # the document was kept
    down = await wire.call("shutdown")
    assert down["result"] is None and "error" not in down
    after = await wire.answer(code_action(wire))
    assert after["error"]["code"] == INVALID_REQUEST
    wire.notify("exit", None)
    assert await wire.proc.wait() == 0


@pytest.mark.slow
async def test_a_lone_surrogate_in_a_document_is_a_clear_error(pattern_ckpt, sock, tmp_path):
    wire = await started(tmp_path, opts(pattern_ckpt, sock))
    # JSON may carry "\ud800" (a UTF-16 half): valid JSON, not text.
    wire.send_raw(frame({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {
        "textDocument": {"uri": URI, "languageId": "python", "version": 1,
                         "text": "x = '\ud800'\ny = 1\n"}}}))
    reply = await wire.call("textDocument/inlineCompletion", {
        "textDocument": {"uri": URI}, "position": {"line": 1, "character": 4},
        "context": {"triggerKind": 1}})
    assert reply["error"]["code"] == INVALID_PARAMS
    assert "surrogate" in reply["error"]["message"] and "line 1" in reply["error"]["message"]
    assert await wire.close() == 0


@pytest.mark.slow
async def test_fuzzed_messages_each_get_at_most_one_answer_and_requests_exactly_one(
        pattern_ckpt, sock, tmp_path):
    wire = await started(tmp_path, opts(pattern_ckpt, sock))
    wire.open(URI, TEXT)
    rng = random.Random(1234)
    owed = []
    for data, mid in fuzz_messages(rng, URI, first_id=10_000, n=600):
        wire.send_raw(data)
        if mid is not None:
            owed.append(mid)
    for mid in owed:
        await wire.answer(mid)
    final = await wire.answer(code_action(wire))
    assert "result" in final
    assert wire.proc.returncode is None  # alive
    # Each id sent once gets one answer (a fuzzed message may reuse an id; those can't).
    assert not [mid for mid in owed if len(wire.answers[mid]) > 1]
    assert len(owed) > 150  # enough requests among the 600 messages to mean something
    assert await wire.close() == 0


@pytest.mark.slow
async def test_cancelled_rewrite_stops_in_the_daemon_and_never_applies(sock, tmp_path):
    from test_daemon import slow_checkpoint
    model = slow_checkpoint(tmp_path)
    wire = await started(tmp_path, opts(model, sock, schedule="fixed", steps=1024))
    text = "x = 1\n" * 100  # 500 tokens: hundreds of forward passes of the slow model
    wire.open(URI, text)

    async def counters() -> dict:
        reply = await wire.call("workspace/executeCommand", {"command": protocol.CMD_STATUS})
        return reply["result"]["counters"]

    rng = {"start": {"line": 0, "character": 0}, "end": {"line": 100, "character": 0}}
    mid = wire.ask("workspace/executeCommand", {"command": protocol.CMD_REWRITE,
                                                "arguments": [URI, rng, 1]})
    while not (await counters()).get("requests"):  # until the daemon works on it
        await asyncio.sleep(0.01)
    wire.notify("$/cancelRequest", {"id": mid})
    reply = await wire.answer(mid)
    assert reply["error"]["code"] == -32800, reply
    while not (await counters()).get("cancelled"):  # the daemon stopped denoising
        await asyncio.sleep(0.01)
    assert (await counters()).get("completed", 0) == 0
    assert wire.edits == []
    assert await wire.close() == 0


@pytest.mark.slow
async def test_a_new_window_works_after_the_daemon_socket_was_removed(pattern_ckpt, sock,
                                                                      tmp_path):
    first = await started(tmp_path, opts(pattern_ckpt, sock))
    first.open(URI, TEXT)
    st = (await first.call("workspace/executeCommand", {"command": protocol.CMD_STATUS}))["result"]
    pid = st["pid"]
    sock.unlink()  # e.g. a tmp cleaner
    second = await started(tmp_path, opts(pattern_ckpt, sock))
    second.open(URI, TEXT)
    reply = await second.call("textDocument/inlineCompletion", {
        "textDocument": {"uri": URI}, "position": {"line": 4, "character": 8},
        "context": {"triggerKind": 1}})
    assert "result" in reply, reply
    st = (await second.call("workspace/executeCommand", {"command": protocol.CMD_STATUS}))["result"]
    assert st["pid"] != pid
    await first.close()
    await second.close()
    with pytest.raises(ProcessLookupError):  # the unreachable daemon exited by itself
        for _ in range(600):
            os.kill(pid, 0)
            await asyncio.sleep(0.5)


@pytest.mark.slow
async def test_load_with_cancellations_and_a_rewrite_running_answers_everything(
        pattern_ckpt, sock, tmp_path):
    text = "".join(f"c{i} " for i in range(12)) + "\n"
    long_text = "".join(f"c{i % 40} " for i in range(60 * 8)).replace("c7 ", "c7\n")
    wires = [await started(tmp_path, opts(pattern_ckpt, sock)) for _ in range(3)]
    for w in wires:
        w.open("file:///work/c.txt", text, language="plaintext")
    wires[0].open("file:///work/long.txt", long_text, language="plaintext")
    lines = long_text.count("\n")
    rewrite = wires[0].ask("workspace/executeCommand", {"command": protocol.CMD_REWRITE, "arguments": [
        "file:///work/long.txt", {"start": {"line": 0, "character": 0},
                                  "end": {"line": min(lines, 60), "character": 0}}, 1]})
    rng = random.Random(7)
    owed = []
    for round_ in range(15):
        for w in wires:
            mid = w.ask("textDocument/inlineCompletion", {
                "textDocument": {"uri": "file:///work/c.txt"},
                "position": {"line": 0, "character": rng.randrange(0, len(text) - 1)},
                "context": {"triggerKind": 1}})
            owed.append((w, mid))
            if rng.random() < 0.3:
                w.notify("$/cancelRequest", {"id": mid})
    for w, mid in owed:
        reply = await w.answer(mid)
        assert "result" in reply or reply["error"]["code"] in (-32800,), reply
    assert len((await wires[0].answer(rewrite))) > 0
    for w in wires:
        assert not [k for k, v in w.answers.items() if k is not None and len(v) > 1]
        assert await w.close() == 0
