"""``diffill bench --e2e``: the whole path an editor sees, timed from the editor's side.

Starts ``diffill lsp`` over stdio with pygls' own language client, on a private daemon
socket, so the cold start (server, daemon, model load) is part of the figures. Then, on a
real Python file (this repository's ``infill/post.py``):

- **invoked**: completions asked for at random places (trigger Invoked), one at a time;
- **typing**: at random lines, the line is retyped one character every ``--keystroke-ms``,
  each keystroke a ``didChange`` and an automatic request (the previous one cancelled, as
  VS Code does), with one pause half-way through the line (its ghost is awaited, as a
  person reads it before typing on); timed from the last keystroke to the answer of its
  request, which includes the server's debounce: what a person waits for the ghost once they
  pause. The half-way pause is what lets the line's last request reuse the window (prefix
  reuse) or the shown ghost (typed-ahead) of the same place.

Prints a JSON report and a markdown table (``--write FILE`` appends the table to FILE).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from diffill.server.protocol import NOTIFY_STATUS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(json.__file__).parent / "decoder.py"
"""The document typed into: a standard-library module (about 350 lines of real Python), the
same for every commit of diffill on one Python version, so runs compare. (It was
``infill/post.py`` before 2026-11-24: editing that file changed which lines were typed.)"""


def percentile_ms(seconds: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of durations in seconds, in milliseconds to 0.1;
    None when there are none."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000, 1)


async def _run(model: str | None, n: int, lines: int, keystroke_ms: float, seed: int,
               settings: dict | None = None
               ) -> dict[str, Any]:
    from lsprotocol import types as T
    from pygls.lsp.client import LanguageClient

    folder = Path(tempfile.mkdtemp(prefix="dfl-bench-"))
    sock = folder / "d.sock"
    text = SAMPLE.read_text()
    uri = SAMPLE.as_uri()
    options = {"socket": str(sock), **({"model": model} if model else {}), **(settings or {})}
    client = LanguageClient("diffill-bench", "1")
    statuses: list[Any] = []

    @client.feature(NOTIFY_STATUS)
    def status_note(params: Any) -> None:  # the server's status notes: kept, not warned about
        statuses.append(params)
    t0 = time.perf_counter()
    await client.start_io(sys.executable, "-m", "diffill.server.cli", "lsp",
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    caps = T.ClientCapabilities(text_document=T.TextDocumentClientCapabilities(
        inline_completion=T.InlineCompletionClientCapabilities()))
    await client.initialize_async(T.InitializeParams(capabilities=caps,
                                                     initialization_options=options))
    client.initialized(T.InitializedParams())
    t_init = time.perf_counter() - t0
    version = 1
    client.text_document_did_open(T.DidOpenTextDocumentParams(T.TextDocumentItem(
        uri=uri, language_id="python", version=version, text=text)))
    doc_lines = text.splitlines(keepends=True)

    async def ask(line: int, col: int, kind) -> Any:
        return await client.text_document_inline_completion_async(T.InlineCompletionParams(
            text_document=T.TextDocumentIdentifier(uri=uri),
            position=T.Position(line=line, character=col),
            context=T.InlineCompletionContext(trigger_kind=kind)))

    await ask(10, 0, T.InlineCompletionTriggerKind.Invoked)
    t_first = time.perf_counter() - t0
    rng = random.Random(seed)
    invoked, shown = [], 0
    for _ in range(n):
        line = rng.randrange(len(doc_lines))
        col = rng.randrange(len(doc_lines[line].rstrip("\n")) + 1)
        t = time.perf_counter()
        result = await ask(line, col, T.InlineCompletionTriggerKind.Invoked)
        invoked.append(time.perf_counter() - t)
        shown += bool(result and result.items)

    async def daemon_status() -> dict:
        return await client.workspace_execute_command_async(
            T.ExecuteCommandParams(command="diffill.status", arguments=[]))

    before = await daemon_status()
    typing, pauses, typed_keys = [], [], 0
    candidates = [i for i, ln in enumerate(doc_lines) if 12 <= len(ln.strip()) <= 60]
    for line in rng.sample(candidates, min(lines, len(candidates))):
        original = doc_lines[line].rstrip("\n")
        indent = len(original) - len(original.lstrip())
        # Delete the line's code, then type it back.
        version += 1
        client.text_document_did_change(T.DidChangeTextDocumentParams(
            T.VersionedTextDocumentIdentifier(uri=uri, version=version),
            [T.TextDocumentContentChangePartial(
                range=T.Range(T.Position(line, indent), T.Position(line, len(original))),
                text="")]))
        pending, pending_id, earlier = None, None, []
        for i, ch in enumerate(original[indent:]):
            version += 1
            col = indent + i
            client.text_document_did_change(T.DidChangeTextDocumentParams(
                T.VersionedTextDocumentIdentifier(uri=uri, version=version),
                [T.TextDocumentContentChangePartial(
                    range=T.Range(T.Position(line, col), T.Position(line, col)), text=ch)]))
            if pending is not None and not pending.done():
                # As VS Code does: the request of the previous keystroke is cancelled.
                client.protocol.notify(T.CANCEL_REQUEST, T.CancelParams(id=pending_id))
                earlier.append(pending)
            t_key = time.perf_counter()
            pending_id = f"key-{typed_keys}"
            pending = asyncio.ensure_future(client.protocol.send_request_async(
                T.TEXT_DOCUMENT_INLINE_COMPLETION, T.InlineCompletionParams(
                    text_document=T.TextDocumentIdentifier(uri=uri),
                    position=T.Position(line=line, character=col + 1),
                    context=T.InlineCompletionContext(
                        trigger_kind=T.InlineCompletionTriggerKind.Automatic)),
                msg_id=pending_id))
            typed_keys += 1
            if i == len(original[indent:]) // 2:
                # A person pauses half-way (a ghost appears), then types on.
                try:
                    await pending
                    pauses.append(time.perf_counter() - t_key)
                except Exception:  # noqa: BLE001 - a failed request: not timed
                    pass
            await asyncio.sleep(keystroke_ms / 1000)
        try:
            await pending
            typing.append(time.perf_counter() - t_key)
        except Exception:  # noqa: BLE001 - a failed last request: not timed
            pass
        await asyncio.gather(*earlier, return_exceptions=True)  # each got its one answer
    status = await daemon_status()
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    from diffill.server.daemon_client import DaemonClient
    try:
        DaemonClient(sock, timeout=30).call("shutdown")
    except Exception:  # noqa: BLE001
        pass
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "cold_start": {"initialize_ms": round(t_init * 1000), "first_completion_ms":
                       round(t_first * 1000)},
        "invoked": {"n": n, "p50_ms": percentile_ms(invoked, 0.5), "p95_ms": percentile_ms(invoked, 0.95),
                    "shown": shown},
        "typing": {"lines": len(typing), "keystrokes": typed_keys,
                   "keystroke_ms": keystroke_ms,
                   **_work(before, status, typed_keys),
                   "mid_line_pause_p50_ms": percentile_ms(pauses, 0.5),
                   "after_last_key_p50_ms": percentile_ms(typing, 0.5),
                   "after_last_key_p95_ms": percentile_ms(typing, 0.95)},
        "daemon": {"model": (status.get("models") or [{}])[0].get("checkpoint"),
                   "device": (status.get("models") or [{}])[0].get("device"),
                   "dtype": (status.get("models") or [{}])[0].get("dtype"),
                   "counters": status.get("counters"), "typed_ahead": status.get("typedAhead")},
    }


def _work(before: dict, after: dict, keystrokes: int) -> dict:
    """Per keystroke of the typing phase: requests that reached the daemon's model (not
    answered from its result cache) and token positions the model ran."""
    def model_tokens(st: dict) -> int:
        return sum(int(m.get("tokens_run", 0)) for m in st.get("models") or [])

    def ran(st: dict) -> int:
        c = st.get("counters") or {}
        return int(c.get("requests", 0)) - int(c.get("cache_hits", 0))
    keys = max(1, keystrokes)
    def reuses(st: dict) -> int:
        return sum(int(m.get("prefix_reuses", 0)) for m in st.get("models") or [])
    return {"model_calls_per_key": round((ran(after) - ran(before)) / keys, 3),
            "tokens_per_key": round((model_tokens(after) - model_tokens(before)) / keys, 1),
            "model_calls": ran(after) - ran(before),
            "prefix_reuses": reuses(after) - reuses(before)}


def run_e2e(model: str | None, n: int = 40, lines: int = 8, keystroke_ms: float = 120,
            seed: int = 0, write_to: str | None = None, settings: dict | None = None) -> int:
    """``settings``: editor settings (the server's, camelCase) sent at ``initialize``."""
    report = asyncio.run(_run(model, n, lines, keystroke_ms, seed, settings))
    report["machine"] = {"cpu": _cpu_name(), "cores": os.cpu_count(),
                         "load_avg": round(os.getloadavg()[0], 2),
                         "python": platform.python_version()}
    report["date"] = dt.date.today().isoformat()
    print(json.dumps(report, indent=1))
    c, i, t = report["cold_start"], report["invoked"], report["typing"]
    table = (f"\n### End to end (`diffill bench --e2e`), {report['date']}\n\n"
             f"{report['machine']['cpu']}, {report['machine']['cores']} cores, load average "
             f"{report['machine']['load_avg']} at the end; {report['daemon']['model']} on "
             f"{report['daemon']['device']} ({report['daemon']['dtype']}); `diffill lsp` over "
             "stdio driven by pygls' client, a fresh daemon.\nCommand: `diffill "
             + " ".join(sys.argv[1:]) + "`.\n\n"
             "| measure | value |\n| --- | ---: |\n"
             f"| server answers `initialize` | {c['initialize_ms']} ms |\n"
             f"| first completion (daemon start + model load) | {c['first_completion_ms']} ms |\n"
             f"| invoked completion p50 / p95 ({i['n']} places) | {i['p50_ms']} / "
             f"{i['p95_ms']} ms |\n"
             f"| typing: ghost at a pause half-way through the line, p50 | "
             f"{t['mid_line_pause_p50_ms']} ms |\n"
             f"| typing: ghost after the last keystroke p50 / p95 ({t['lines']} lines, "
             f"{t['keystrokes']} keystrokes every {t['keystroke_ms']:.0f} ms, a pause half-way; "
             f"includes the debounce) | {t['after_last_key_p50_ms']} / "
             f"{t['after_last_key_p95_ms']} ms |\n"
             f"| typing: requests that ran the model, per keystroke | "
             f"{t['model_calls_per_key']} ({t['model_calls']}, {t['prefix_reuses']} of them "
             f"reusing the document's window) |\n"
             f"| typing: token positions the model ran, per keystroke | "
             f"{t['tokens_per_key']} |\n")
    print(table)
    if write_to:
        with open(write_to, "a", encoding="utf-8") as f:
            f.write(table)
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


__all__ = ["run_e2e"]
