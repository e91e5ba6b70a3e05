"""``diffill serve --http``: a real daemon process answering the request shapes of the plugins
people already use (llama.vim's ``/infill``, Continue's ``/v1/completions`` with a suffix),
the token and loopback refusals, bad bodies, and a client that hangs up."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from diffill.server.daemon_client import DaemonClient
from test_daemon import HOLD, _poll_status, slow_checkpoint, wait_for
from test_lsp import ROOT, stop_daemon

TOKEN = "test-token-1234"

# llama.vim's /infill request (ggml-org/llama.vim, autoload/llama.vim, llama#fim at a1c8e6e,
# 2026-01-31): the fields it sends and the response fields it asks for and reads back flat.
LLAMA_VIM = {
    "id_slot": 0, "input_prefix": "c1 c2 c3\n", "prompt": "c4 ", "input_suffix": " c8 c9\n",
    "input_extra": [{"text": "c5 c6 c7\n", "filename": "other.txt"}], "n_predict": 8,
    "stop": [], "n_indent": 0, "top_k": 40, "top_p": 0.90,
    "samplers": ["top_k", "top_p", "infill"], "stream": False, "cache_prompt": True,
    "t_max_prompt_ms": 500, "t_max_predict_ms": 1000,
    "response_fields": ["content", "timings/prompt_n", "timings/prompt_ms",
                        "timings/prompt_per_token_ms", "timings/prompt_per_second",
                        "timings/predicted_n", "timings/predicted_ms",
                        "timings/predicted_per_token_ms", "timings/predicted_per_second",
                        "truncated", "tokens_cached"],
}


def serve(model: Path, sock: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "diffill.server.cli", "serve", "--socket",
                             str(sock), "--model", str(model), "--idle-timeout", "120",
                             "--http", "127.0.0.1:0", *flags], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture()
def sock():
    path = Path(tempfile.mkdtemp(prefix="dfh-")) / "d.sock"
    yield path
    stop_daemon(path)


def started(sock: Path) -> tuple[DaemonClient, str]:
    client = wait_for(sock)
    return client, client.call("status")["http"]["url"]


def call(url: str, path: str, body=None, token: str | None = TOKEN, raw: bytes | None = None,
         as_text: bool = False):
    """(status, decoded JSON or text; with ``as_text``, the body as sent) of one request."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="POST" if data else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, body_text = r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        status, body_text = err.code, err.read().decode()
    if as_text:
        return status, body_text
    try:
        return status, json.loads(body_text)
    except ValueError:
        return status, body_text


def daemon_answer(client: DaemonClient, model: Path, text: str, start: int,
                  settings: dict, extra=()) -> dict:
    """The daemon's own answer to the same request over its socket (an editor's path)."""
    return client.call("infill", {"model": {"checkpoint": str(model)}, "settings": settings,
                                  "request": {"text": text, "start": start,
                                              "extra": [list(e) for e in extra]}})


@pytest.mark.slow
def test_llama_vim_and_continue_requests_get_the_daemons_answer(pattern_ckpt, sock):
    serve(pattern_ckpt, sock, "--api-key", TOKEN)
    client, url = started(sock)
    assert call(url, "/health", token=None) == (200, {"status": "ok"})
    status, models = call(url, "/v1/models")
    assert status == 200 and models["data"][0]["id"] == str(pattern_ckpt)

    # llama.vim: the document is prefix + the typed line's start + suffix, the ring chunks
    # are extra context; the answer is what the daemon gives an editor for the same request.
    status, got = call(url, "/infill", LLAMA_VIM)
    assert status == 200, got
    assert set(got) <= set(LLAMA_VIM["response_fields"]) and "content" in got
    text = LLAMA_VIM["input_prefix"] + LLAMA_VIM["prompt"] + LLAMA_VIM["input_suffix"]
    at = len(LLAMA_VIM["input_prefix"] + LLAMA_VIM["prompt"])
    ref = daemon_answer(client, pattern_ckpt, text, at, {"max_tokens": 8},
                        [("other.txt", "c5 c6 c7\n")])
    assert got["content"] == (ref["items"][0]["text"] if ref["items"] else "")
    assert got["timings/predicted_n"] == (ref["items"][0]["tokens"] if ref["items"] else 0)
    # llama.vim takes an answer only when its text matches ^\s*{ and "content"\s*:" (no
    # space after the colon: llama.cpp writes compact JSON).
    raw = call(url, "/infill", LLAMA_VIM, as_text=True)[1]
    assert re.match(r"\s*\{", raw) and re.search(r'"content"\s*:"', raw), raw
    # Its stop strings cut the answer.
    status, cut = call(url, "/infill", dict(LLAMA_VIM, stop=[" "]))
    content = got["content"]
    assert status == 200 and cut["content"] == content.split(" ")[0], (cut, content)
    # Without response_fields: llama.cpp's whole shape.
    status, whole = call(url, "/infill", {k: v for k, v in LLAMA_VIM.items()
                                          if k != "response_fields"})
    assert status == 200 and whole["content"] == got["content"] and "timings" in whole
    # Its warm-up (extra context only, nothing to predict) runs no model.
    before = client.call("status")["counters"].get("requests", 0)
    status, warm = call(url, "/infill", {"input_extra": LLAMA_VIM["input_extra"],
                                         "n_predict": 0, "samplers": []})
    assert status == 200 and warm["content"] == ""
    assert client.call("status")["counters"].get("requests", 0) == before

    # Continue's OpenAI-style FIM: prompt and suffix, streamed as server-sent events.
    body = {"model": "diffill", "prompt": "c1 c2 c3 c4 ", "suffix": " c8 c9\n",
            "max_tokens": 8, "temperature": 0.01, "stop": ["\n"], "stream": True}
    status, events = call(url, "/v1/completions", body)
    assert status == 200 and isinstance(events, str)
    lines = [x[len("data: "):] for x in events.split("\n\n") if x.startswith("data: ")]
    assert lines[-1] == "[DONE]" and len(lines) >= 2
    chunks = [json.loads(x) for x in lines[:-1]]
    assert chunks[0]["object"] == "text_completion" and chunks[0]["model"] == "diffill"
    ref = daemon_answer(client, pattern_ckpt, "c1 c2 c3 c4  c8 c9\n", len("c1 c2 c3 c4 "),
                        {"max_tokens": 8})
    want = ref["items"][0]["text"].split("\n")[0] if ref["items"] else ""
    assert chunks[0]["choices"][0]["text"] == want
    # The same without streaming: one JSON answer with usage.
    status, plain = call(url, "/v1/completions", dict(body, stream=False))
    assert status == 200 and plain["choices"][0]["text"] == want and "usage" in plain
    assert client.call("status")["http"]["requests"] >= 4
    client.close()


@pytest.mark.slow
def test_only_the_token_holder_gets_in_and_bad_bodies_get_clear_errors(pattern_ckpt, sock):
    serve(pattern_ckpt, sock)  # no --api-key: one is generated into the private folder
    client, url = started(sock)
    token_file = sock.parent / "http-token"
    token = token_file.read_text().strip()
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert client.call("status")["http"]["token"] == token
    for given in (None, "wrong", token + "x"):
        status, err = call(url, "/v1/models", token=given)
        assert status == 401 and err["error"]["type"] == "authentication_error"
    assert call(url, "/v1/models", token=token)[0] == 200
    bad = [(b"not json", "not JSON"), (b"[1, 2]", "JSON object"),
           (json.dumps({"input_prefix": 5}).encode(), "input_prefix"),
           (json.dumps({"n_predict": "8"}).encode(), "n_predict"),
           (json.dumps({"input_extra": ["x"]}).encode(), "input_extra")]
    for raw, says in bad:
        status, err = call(url, "/infill", token=token, raw=raw)
        assert status == 400 and says in err["error"]["message"], (raw, err)
    status, err = call(url, "/v1/completions", {"prompt": 3}, token=token)
    assert status == 400 and "prompt" in err["error"]["message"]
    status, err = call(url, "/v1/completions", {"prompt": "x", "n": 9}, token=token)
    assert status == 400 and "n:" in err["error"]["message"]
    status, err = call(url, "/nowhere", token=token)
    assert status == 404 and err["error"]["code"] == 404
    # The daemon is still up and answering.
    assert call(url, "/health", token=None)[0] == 200
    client.close()


def test_a_non_loopback_address_needs_an_explicit_flag(tmp_path):
    sock = Path(tempfile.mkdtemp(prefix="dfh-")) / "d.sock"
    r = subprocess.run([sys.executable, "-m", "diffill.server.cli", "serve", "--socket",
                        str(sock), "--no-preload", "--http", "0.0.0.0:0"], cwd=ROOT,
                       capture_output=True, timeout=120)
    assert r.returncode != 0 and b"--http-allow-remote" in r.stderr
    assert not sock.exists()


@pytest.mark.slow
def test_a_client_that_hangs_up_cancels_its_request(sock, tmp_path):
    model = slow_checkpoint(tmp_path)
    serve(model, sock, "--api-key", TOKEN)
    client, url = started(sock)
    host, port = url[len("http://"):].rsplit(":", 1)
    # A fill far longer than the test waits (diffill's own settings, in the body's "diffill"
    # object): the connection closes while the worker runs it.
    body = json.dumps({"input_prefix": "def f(x):\n" * 40, "prompt": "    return ",
                       "input_suffix": "\n", "diffill": HOLD}).encode()
    conn = socket.create_connection((host, int(port)))
    conn.sendall(b"POST /infill HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    _poll_status(sock, lambda st: st["state"] == "busy" and st["queued"] == 0)
    conn.close()
    st = _poll_status(sock, lambda st: st["counters"].get("cancelled", 0) == 1)
    assert st["counters"].get("completed", 0) == 0
    # The next request is answered.
    status, got = call(url, "/infill", {"input_prefix": "x = ", "n_predict": 4})
    assert status == 200 and "content" in got
    client.close()
