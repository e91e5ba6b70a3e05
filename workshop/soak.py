"""``make soak``: the robustness scenarios of ``test_robustness.py`` at length, with figures.

    python workshop/soak.py [--model CKPT] [--messages 10000] [--clients 4] [--requests 200]

1. fuzz: ``--messages`` hostile messages (broken frames, wrong types, out-of-order requests)
   over two editor sessions; every request must get exactly one answer and no process may
   exit;
2. load: the completion p50/p95 of one client alone, then ``--clients`` clients x
   ``--requests`` completions each, 30% cancelled, while 60-line rewrites run back to back;
3. faults: the daemon killed (-9) between requests, its socket removed, a bad checkpoint
   asked for, an editor killed mid-request; the first request after each must be answered.

Prints one JSON object (the figures in ``docs/reliability.md``) and exits 1 if any target
was missed. Uses a private daemon socket and the bundled model unless ``--model`` says
otherwise; nothing outside a temp folder is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffill.workshop.bench_e2e import percentile_ms
from diffill.workshop.lsp_client import ROOT, Wire, fuzz_messages, now

URI = "file:///soak/m.py"
SAMPLE = (ROOT / "infill" / "post.py").read_text()  # real Python, hundreds of lines
REWRITE_DOC = "def total(b):\n" + "".join(f"    a{i % 7} += b * {i % 10}\n" for i in range(60))
"""60 lines, about 1 KB: the rewrite the issue's load scenario runs."""


def options(model: str, sock: Path, **extra) -> dict:
    return {"model": model, "socket": str(sock), "debounceMs": 0, **extra}


def inline_params(uri: str, line: int, character: int) -> dict:
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1}}


async def status(w: Wire) -> dict:
    reply = await w.call("workspace/executeCommand", {"command": "diffill.status"})
    if "result" not in reply:
        raise AssertionError(f"status failed: {reply}")
    return reply["result"]


async def fuzz(model: str, sock: Path, folder: Path, n: int) -> dict:
    rng = random.Random(2026)
    wires = [await Wire.start(folder / f"fuzz-{i}.log") for i in range(2)]
    for w in wires:
        await w.initialize(options(model, sock, maxTokens=8, ensemble=1))
        w.open(URI, SAMPLE)
    owed: list[tuple[Wire, object]] = []
    sent = 0
    for i in range(0, n, 500):
        w = wires[(i // 500) % 2]
        for data, mid in fuzz_messages(rng, URI, first_id=100_000 + i, n=min(500, n - i)):
            w.send_raw(data)
            sent += 1
            if mid is not None:
                owed.append((w, mid))
        await w.answer(w.ask("textDocument/codeAction", {
            "textDocument": {"uri": URI}, "context": {"diagnostics": []},
            "range": {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 0}}}))
    lost = 0
    for w, mid in owed:
        try:
            await w.answer(mid)
        except AssertionError:
            lost += 1
    codes = collections.Counter()
    # Only ids sent once can be held to one answer (a fuzzed message may reuse any id).
    twice = sum(len(w.answers.get(mid, ())) > 1 for w, mid in owed)
    for w in wires:
        for replies in w.answers.values():
            for r in replies:
                codes[str(r["error"]["code"]) if "error" in r else "result"] += 1
    crashes = sum(w.proc.returncode is not None for w in wires)
    tracebacks = sum(w.log().count("Traceback") for w in wires)
    for w in wires:
        await w.close()
    return {"messages_sent": sent, "requests": len(owed), "answered": len(owed) - lost,
            "unanswered": lost, "answered_twice": twice, "crashes": crashes,
            "tracebacks_in_log": tracebacks, "replies_by_code": dict(codes)}


async def completion_latencies(w: Wire, uri: str, count: int, rng: random.Random,
                               cancel_rate: float = 0.0, think: float = 0.0
                               ) -> tuple[list[float], int, int]:
    """Send ``count`` completions one after another (the next ``think`` seconds after the
    last was answered), each at a random place; returns (seconds of the answered ones,
    cancelled, failed)."""
    lines = SAMPLE.splitlines()
    times, cancelled, failed = [], 0, 0
    for _ in range(count):
        line = rng.randrange(len(lines))
        col = rng.randrange(len(lines[line]) + 1)
        t0 = now()
        mid = w.ask("textDocument/inlineCompletion", inline_params(uri, line, col))
        if rng.random() < cancel_rate:
            w.notify("$/cancelRequest", {"id": mid})
        reply = await w.answer(mid)
        if "result" in reply:
            times.append(now() - t0)
        elif reply["error"]["code"] == -32800:
            cancelled += 1
        else:
            failed += 1
        if think:
            await asyncio.sleep(think)
    return times, cancelled, failed


async def load(model: str, sock: Path, folder: Path, clients: int, requests: int,
               think: float) -> dict:
    rng = random.Random(7)
    solo = await Wire.start(folder / "solo.log")
    await solo.initialize(options(model, sock))
    solo.open(URI, SAMPLE)
    await completion_latencies(solo, URI, 5, rng)  # warm
    idle, _, _ = await completion_latencies(solo, URI, 60, rng)
    await solo.close()

    wires = [await Wire.start(folder / f"load-{i}.log") for i in range(clients + 1)]
    for i, w in enumerate(wires):
        await w.initialize(options(model, sock))
        w.open(f"file:///soak/w{i}.py", SAMPLE)
    writer = wires[-1]
    writer.open("file:///soak/rewrite.py", REWRITE_DOC)
    stop = asyncio.Event()
    rewrites = collections.Counter()

    async def rewrite_forever() -> None:
        while not stop.is_set():
            reply = await writer.call("workspace/executeCommand", {
                "command": "diffill.rewriteSelection", "arguments": [
                    "file:///soak/rewrite.py", {"start": {"line": 1, "character": 0},
                                                "end": {"line": 61, "character": 0}}, 1]})
            rewrites["answered"] += 1
            # (This client applies nothing, so the document stays as it was.)
            rewrites["result" if "result" in reply else str(reply["error"]["code"])] += 1

    rewriter = asyncio.ensure_future(rewrite_forever())
    t0 = now()
    results = await asyncio.gather(*[
        completion_latencies(w, f"file:///soak/w{i}.py", requests, random.Random(i), 0.3, think)
        for i, w in enumerate(wires[:-1])])
    wall = now() - t0
    stop.set()
    await rewriter
    busy = [t for times, _, _ in results for t in times]
    daemon = await status(wires[0])
    for w in wires:
        await w.close()
    idle_p95, busy_p95 = percentile_ms(idle, 0.95), percentile_ms(busy, 0.95)
    return {"idle": {"n": len(idle), "p50_ms": percentile_ms(idle, 0.5), "p95_ms": idle_p95},
            "loaded": {"clients": clients, "requests_each": requests, "think_ms": think * 1000,
                       "answered": len(busy),
                       "cancelled": sum(c for _, c, _ in results),
                       "failed": sum(f for _, _, f in results),
                       "p50_ms": percentile_ms(busy, 0.5), "p95_ms": busy_p95,
                       "wall_s": round(wall, 1)},
            "p95_ratio": round(busy_p95 / idle_p95, 2) if idle_p95 and busy_p95 else None,
            "rewrites": dict(rewrites),
            "daemon_counters": daemon["counters"], "daemon_loads": daemon["loads"]}


async def faults(model: str, sock: Path, folder: Path) -> dict:
    out = {}
    w = await Wire.start(folder / "faults.log")
    await w.initialize(options(model, sock, maxTokens=8))
    w.open(URI, SAMPLE)

    async def works(client: Wire = w) -> bool:
        reply = await client.call("textDocument/inlineCompletion", inline_params(URI, 10, 0))
        return "result" in reply

    await works()
    pid = (await status(w))["pid"]
    os.kill(pid, signal.SIGKILL)
    out["daemon_killed"] = await works()
    pid = (await status(w))["pid"]
    sock.unlink()
    other = await Wire.start(folder / "faults-2.log")
    await other.initialize(options(model, sock, maxTokens=8))
    other.open(URI, SAMPLE)
    out["socket_removed"] = await works(other)
    out["old_daemon_exited"] = False
    for _ in range(120):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            out["old_daemon_exited"] = True
            break
        await asyncio.sleep(0.5)
    bad = folder / "bad-ckpt"
    bad.mkdir()
    (bad / "config.json").write_text("{ not json")
    other.notify("workspace/didChangeConfiguration", {"settings": {"diffill": {"model": str(bad)}}})
    failed = await other.call("textDocument/inlineCompletion", inline_params(URI, 12, 0))
    other.notify("workspace/didChangeConfiguration", {"settings": {"diffill": {"model": model}}})
    st = await status(other)
    out["bad_checkpoint"] = "error" in failed and await works(other) and \
        (await status(other))["loads"] == st["loads"]
    # An editor that vanishes mid-request: the daemon serves the next one.
    victim = await Wire.start(folder / "faults-3.log")
    await victim.initialize(options(model, sock, maxTokens=64))
    victim.open(URI, SAMPLE)
    victim.ask("textDocument/inlineCompletion", inline_params(URI, 20, 0))
    victim.proc.kill()
    await victim.proc.wait()
    out["client_vanished"] = await works(other)
    await w.close()
    await other.close()
    return out


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "model" / "checkpoints" / "diffill-small"))
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--think-ms", type=float, default=0.0,
                    help="pause of each client between an answer and its next request (0: "
                         "as fast as answers come, the machine saturated)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="dfl-soak-"))
    sock = folder / "d.sock"
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor()
                    or platform.machine(), "cpus": os.cpu_count(),
                    "load_avg_at_start": os.getloadavg()[0], "model": args.model}
    try:
        t0 = now()
        report["fuzz"] = await fuzz(args.model, sock, folder, args.messages)
        print(json.dumps(report["fuzz"]), file=sys.stderr)
        report["load"] = await load(args.model, sock, folder, args.clients, args.requests,
                                    args.think_ms / 1000)
        print(json.dumps(report["load"]), file=sys.stderr)
        report["faults"] = await faults(args.model, sock, folder)
        report["seconds"] = round(now() - t0)
    finally:
        subprocess.run([sys.executable, "-m", "diffill.server.cli", "serve", "--stop", "--socket",
                        str(sock)], cwd=ROOT, capture_output=True)
    f, ld = report["fuzz"], report["load"]
    report["targets_met"] = {
        "fuzz: 0 crashes, 0 unanswered, 0 answered twice":
            f["crashes"] == 0 and f["unanswered"] == 0 and f["answered_twice"] == 0,
        "load: every completion answered": ld["loaded"]["failed"] == 0,
        "load: p95 within 2x idle": ld["p95_ratio"] is not None and ld["p95_ratio"] <= 2.0,
        "faults: all recovered": all(report["faults"].values()),
    }
    print(json.dumps(report, indent=1))
    return 0 if all(report["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
