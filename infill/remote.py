"""An engine whose model runs on an OpenAI-compatible server (vLLM serving DiffusionGemma).

The request is the fill-in-the-middle chat task of ``infill.chat``, sent to
``/v1/chat/completions`` with the model's turn already opened (vLLM's
``continue_final_message``), streamed (SSE); the answers are read, cut and cleaned as the
in-process chat engine reads its own, and ranked, floored and withheld by
:class:`~infill.base.EngineBase`. What diffill adds stays on this side; only the model's work
moves to the server.

The HTTP runs on an event loop of the engine's own (a thread, aiohttp): the daemon's worker
waits for a batch's answers while polling each request's cancel flag, and cancelling closes that
request's stream (vLLM aborts a request whose client hung up). Free of torch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from .api import Cancelled, Completion, InfillRequest, InfillResult, InfillSettings, Submission
from .base import EngineBase
from .chat import FENCE, CharMeasure, ChatTask, answer_code, chat_task, completion
from .text import InputError

ENV_KEY = "DIFFILL_ENGINE_API_KEY"
"""Where the engine's API key is read when no key file is named (the daemon's environment)."""
DIFFUSION_FIELDS = frozenset({"model", "messages", "add_generation_prompt",
                              "continue_final_message", "max_tokens", "n", "stream",
                              "stream_options", "stop"})
"""All a request to a diffusion model carries: vLLM answers 400 to a ``temperature`` other
than 1.0 and to ``seed``, ``min_p`` or ``logit_bias`` for its diffusion models."""
POLL_SECONDS = 0.05
"""How often the waiting worker polls the cancel flags (and serves between a rewrite's
chunks what the daemon has waiting)."""
TEMPLATE_TOKENS = 64
"""Tokens a chat template adds around the turns (role markers, the system preamble), counted
when a prompt is fitted to the server's context."""
CONTEXT_OVER = re.compile(r"maximum context length.*?(?:contains at least (\d+) input tokens|"
                          r"\((\d+) in the messages)", re.S)
"""vLLM's refusal of a prompt over its context, with its count of the prompt (the wording of
0.32, and of earlier versions)."""
CHARS_PER_ANSWER_TOKEN = 32
"""An answer longer than its token budget at this many characters a token is overlong: the
stream is closed and the answer cut there."""


class EngineError(Exception):
    """The engine's server did not answer as it should (down, refusing, stalled, garbled)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(url: str, allow_plain_http: bool = False) -> str:
    """The server's ``/v1`` base from what a user wrote (``http://box:8000`` or ``.../v1``).
    Plain ``http://`` to a host other than loopback sends documents and the key in clear text:
    refused unless ``allow_plain_http``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"engine url {url!r}: give http(s)://HOST[:PORT][/v1]")
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not allow_plain_http:
        raise InputError(f"engine url {url}: plain http to {parts.hostname} sends your code and "
                         "the API key unencrypted; use https, or allow it in so many words "
                         "(engineAllowPlainHttp / --engine-allow-plain-http)")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def read_key(key_file: str | None) -> str | None:
    """The API key: the first line of ``key_file`` when named, else ``$DIFFILL_ENGINE_API_KEY``
    (never an editor setting: settings travel and get shared, keys should not)."""
    if key_file:
        path = Path(key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise EngineError(f"cannot read the engine's API key file {path}: "
                              f"{exc.strerror}") from None
        return key[0].strip() if key else None
    return os.environ.get(ENV_KEY) or None


def is_diffusion(model_id: str) -> bool:
    """Whether a served model is one of vLLM's diffusion models (DiffusionGemma and its FP8 and
    NVFP4 quantisations), which take only :data:`DIFFUSION_FIELDS`."""
    return "diffusion" in model_id.lower()


@dataclass(frozen=True)
class RemoteSpec:
    url: str
    """The server's ``/v1`` base (:func:`base_url`)."""
    model: str | None = None
    """The served model's id; None: the server's first."""
    key_file: str | None = None
    stall_seconds: float = 30.0
    """A stream with nothing new for this long is stalled: the request fails."""
    connect_seconds: float = 10.0


@dataclass
class RemoteModel:
    """What the daemon's status shows of a model on a server."""

    spec: RemoteSpec
    id: str
    max_model_len: int | None = None
    load_seconds: float = 0.0
    last_latency_ms: float | None = None
    """The server's time for the last request, from sending it to its last byte."""
    tokenizer: Any = None  # on the server

    refused_sampling: bool = False
    """The server refused sampling fields as it does for its diffusion models."""

    @property
    def diffusion(self) -> bool:
        return self.refused_sampling or is_diffusion(self.id)

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": self.id, "family": "diffusion" if self.diffusion else "chat",
                "engine": "openai", "url": self.spec.url, "device": "server",
                "dtype": "server's", "parameters": None, "max_model_len": self.max_model_len,
                "load_seconds": round(self.load_seconds, 3),
                "latency_ms": None if self.last_latency_ms is None else
                round(self.last_latency_ms, 1)}

    def memory_bytes(self) -> int:
        return 0


def turns(task: ChatTask, model: RemoteModel) -> dict[str, Any]:
    """The task as chat messages whose last, the model's turn, is continued, not answered."""
    return {"model": model.id,
            "messages": [{"role": "user", "content": task.user},
                         {"role": "assistant", "content": task.opened}],
            "add_generation_prompt": False, "continue_final_message": True}


def request_body(task: ChatTask, settings: InfillSettings, model: RemoteModel,
                 rows: int) -> dict[str, Any]:
    """The ``/v1/chat/completions`` body of a task: the user turn, the model's turn opened
    with the fence and the line's start (continued, not answered), ``max_tokens`` from the
    mode, ``n`` answers, streamed, with the prompt's token count at the end (which teaches the
    engine the server's tokenizer), the closing fence as the stop. A diffusion model gets
    nothing else
    (:data:`DIFFUSION_FIELDS`); another model the sampler's temperature (0: greedy, and then one
    answer, which more would only repeat), top-p and seed, and token log-probabilities, which
    score its answers."""
    body: dict[str, Any] = {
        **turns(task, model),
        "max_tokens": task.budget, "n": rows, "stream": True,
        "stream_options": {"include_usage": True}, "stop": [FENCE]}
    if not model.diffusion:
        sampler = settings.sampler
        if sampler.temperature == 0:
            body["n"] = 1
        body["temperature"] = sampler.temperature
        body["logprobs"] = True
        if sampler.top_p < 1.0:
            body["top_p"] = sampler.top_p
        if sampler.seed is not None:
            body["seed"] = sampler.seed
    return body


@dataclass
class Answer:
    """The choices of one streamed answer as they arrived."""

    texts: list[str]
    finish: list[str | None]
    probs: list[list[float]]
    overlong: bool = False


@dataclass
class _Stream:
    """What :meth:`OpenAIEngine._ask` reads a stream into, choice by choice."""

    rows: int
    texts: list[list[str]] = field(init=False)
    finish: list[str | None] = field(init=False)
    probs: list[list[float]] = field(init=False)
    sizes: list[int] = field(init=False)
    """Characters of each choice so far."""
    chunks: int = 0
    prompt_tokens: int = 0
    """The server's count of the prompt (its last chunk's ``usage``), 0 when it sent none."""

    def __post_init__(self) -> None:
        self.texts = [[] for _ in range(self.rows)]
        self.finish = [None] * self.rows
        self.probs = [[] for _ in range(self.rows)]
        self.sizes = [0] * self.rows

    def add(self, chunk: Any, where: str) -> None:
        """One ``data:`` payload (decoded JSON) of the stream."""
        if not isinstance(chunk, dict):
            raise EngineError(f"malformed stream from {where}: a chunk is not a JSON object")
        if "error" in chunk:
            raise EngineError(f"the server at {where} failed mid-answer: "
                              f"{_message(chunk['error'])}")
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise EngineError(f"malformed stream from {where}: a chunk without choices")
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            self.prompt_tokens = usage["prompt_tokens"]
        self.chunks += 1
        for choice in choices:
            self._choice(choice, where)

    def _choice(self, choice: Any, where: str) -> None:
        """One choice's delta of a chunk: its text, log-probabilities and finish reason."""
        index = choice.get("index", 0) if isinstance(choice, dict) else None
        if not isinstance(index, int) or not 0 <= index < self.rows:
            raise EngineError(f"malformed stream from {where}: choice {index!r} of {self.rows}")
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        if text is not None and not isinstance(text, str):
            raise EngineError(f"malformed stream from {where}: content is not text")
        if text:
            self.texts[index].append(text)
            self.sizes[index] += len(text)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            self.probs[index].extend(
                math.exp(t["logprob"]) for t in logprobs["content"]
                if isinstance(t, dict) and isinstance(t.get("logprob"), (int, float)))
        if choice.get("finish_reason"):
            self.finish[index] = str(choice["finish_reason"])

    def answer(self, overlong: bool = False) -> Answer:
        return Answer(["".join(t) for t in self.texts], list(self.finish), self.probs,
                      overlong)


def _message(error: Any) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message"}}``, vLLM's
    ``{"object": "error", "message"}``), or the body itself, shortened."""
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
        if isinstance(inner, str):
            return inner[:500]
    return str(error)[:500]


class _Loop:
    """An asyncio loop on a thread of its own, for the engine's HTTP."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="diffill-engine-http",
                                       daemon=True)
        self.thread.start()

    def submit(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class OpenAIEngine(EngineBase[RemoteModel]):
    """Completions and rewrites (with or without an instruction) by a chat model on an
    OpenAI-compatible server; refine needs a mask model in this process."""

    def __init__(self, model: RemoteModel, settings: InfillSettings = InfillSettings()) -> None:
        super().__init__(model, settings)
        self.measure = CharMeasure()
        self._key = read_key(model.spec.key_file)
        self._http = _Loop()
        self._session: aiohttp.ClientSession | None = None
        self._counted = False
        """Whether a prompt was counted by the server's ``/tokenize`` (once, on the first
        request to a server with a known context length)."""

    # ------------------------------------------------------------ connecting

    @classmethod
    def connect(cls, spec: RemoteSpec, settings: InfillSettings = InfillSettings()
                ) -> OpenAIEngine:
        """An engine for ``spec``'s server, once it answered ``/models`` with the model asked
        for (or, when none is named, with any)."""
        t0 = time.perf_counter()
        engine = cls(RemoteModel(spec, spec.model or ""), settings)
        try:
            served = [m for m in engine._http.submit(engine._models()).result()
                      if isinstance(m, dict) and isinstance(m.get("id"), str)]
            ids = [m["id"] for m in served]
            if not ids:
                raise EngineError(f"the server at {spec.url} serves no model")
            if spec.model is None:
                chosen = served[0]
            elif spec.model in ids:
                chosen = served[ids.index(spec.model)]
            else:
                raise EngineError(f"the server at {spec.url} does not serve {spec.model!r}; it "
                                  f"serves {', '.join(ids)}")
        except BaseException:
            engine.close()
            raise
        engine.model.id = chosen["id"]
        length = chosen.get("max_model_len")
        engine.model.max_model_len = length if isinstance(length, int) else None
        engine.model.load_seconds = time.perf_counter() - t0
        return engine

    def close(self) -> None:
        async def shut() -> None:
            if self._session is not None:
                await self._session.close()
        try:
            self._http.submit(shut()).result(5)
        except Exception:  # noqa: BLE001 - closing: nothing left to tell
            pass
        self._http.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(**self._session_kwargs())
        return self._session

    async def _models(self) -> list[Any]:
        async with self._open("GET", "/models") as response:
            try:
                body = await response.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                raise EngineError(f"{self.model.spec.url}/models did not answer JSON; is it an "
                                  "OpenAI-compatible server's /v1?") from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise EngineError(f"{self.model.spec.url}/models answered without a model list")
        return data

    def _session_kwargs(self) -> dict[str, Any]:
        spec = self.model.spec
        return {"headers": {"Authorization": f"Bearer {self._key}"} if self._key else {},
                "timeout": aiohttp.ClientTimeout(total=None, connect=spec.connect_seconds,
                                                 sock_read=spec.stall_seconds)}

    @contextlib.asynccontextmanager
    async def _open(self, method: str, path: str, body: dict | None = None, root: bool = False):
        """A request to the server (``path`` under its ``/v1``, or under its root) whose answer
        is checked before it is read: the response, or :class:`EngineError` (``InputError``
        for a request the server refused as malformed). A connection kept alive from before
        that the server dropped (it restarted) is tried once more on a new one."""
        where = self.model.spec.url
        url = (where[:-len("/v1")] if root and where.endswith("/v1") else where) + path
        async with contextlib.AsyncExitStack() as stack:
            session = self._client()
            for attempt in (1, 2):
                try:
                    response = await session.request(method, url, json=body,
                                                     allow_redirects=False)
                    break
                except aiohttp.ClientConnectorError as exc:
                    raise EngineError(f"no server answers at {where} "
                                      f"({exc.os_error.strerror or exc}); is it running?"
                                      ) from None
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    if attempt == 2:
                        raise EngineError(f"the server at {where} failed: {exc}") from None
                    session = await stack.enter_async_context(aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(force_close=True),
                        **self._session_kwargs()))
                except (aiohttp.ServerTimeoutError, asyncio.TimeoutError):
                    raise EngineError(f"the server at {where} did not answer in "
                                      f"{self.model.spec.stall_seconds:.0f} s") from None
                except aiohttp.ClientError as exc:
                    raise EngineError(f"the server at {where} failed: {exc}") from None
            stack.callback(response.release)
            if response.status >= 300:
                raise await _refusal(response, where)
            yield response

    # ------------------------------------------------------------ answering

    def min_confidence(self, settings: InfillSettings, mode: str) -> float:
        return settings.min_confidence if settings.min_confidence is not None else 0.0

    def run_batch(self, submissions: Sequence[Submission], settings: InfillSettings,
                  contended: bool = False) -> list[InfillResult | BaseException]:
        """The batch's requests sent at once (the server batches them), answers awaited while
        each request's cancel flag is polled; a cancelled one's stream is closed."""
        rows = settings.ensemble  # answers per request; one when others wait and shed_load
        if rows > 1 and contended and settings.shed_load:
            rows = 1
            self.shed += len(submissions)
        started = time.perf_counter()
        out: list[InfillResult | BaseException | None] = [None] * len(submissions)
        pending: dict[concurrent.futures.Future, int] = {}
        for i, sub in enumerate(submissions):
            try:
                task = self._task(sub.request, settings)
            except Exception as exc:  # that request's own answer
                out[i] = exc
                continue
            pending[self._http.submit(self._ask(task, settings, rows, sub))] = i
        while pending:
            done, _ = concurrent.futures.wait(list(pending), timeout=POLL_SECONDS,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                try:
                    out[i] = self._result(submissions[i].request, *fut.result(), settings,
                                          started)
                except Exception as exc:  # noqa: BLE001 - reported to that request alone
                    out[i] = exc
            for fut, i in list(pending.items()):
                cancel = submissions[i].cancel
                if cancel is not None and cancel():
                    fut.cancel()  # closes the stream: the server stops working on it
                    pending.pop(fut)
                    out[i] = Cancelled()
        return [r if r is not None else Cancelled() for r in out]

    def _task(self, req: InfillRequest, settings: InfillSettings) -> ChatTask:
        """The request's chat task, its context cut (by a quarter at a time) until the turn
        and the answer's budget fit the server's ``max_model_len`` by the measure's count."""
        action = self._validate(req)
        task = chat_task(req, action, settings, self.measure)
        limit = self.model.max_model_len
        for _ in range(8):
            if not limit or self.measure.count(task.text) + task.budget + \
                    TEMPLATE_TOKENS <= limit:
                break
            b = settings.budget
            settings = replace(settings, budget=replace(
                b, prefix_tokens=b.prefix_tokens * 3 // 4, suffix_tokens=b.suffix_tokens * 3 // 4,
                extra_tokens=b.extra_tokens * 3 // 4))
            task = chat_task(req, action, settings, self.measure)
        return task

    async def _ask(self, task: ChatTask, settings: InfillSettings, rows: int,
                   sub: Submission) -> tuple[ChatTask, Answer]:
        """One request's task and answer. Asked again once, and remembered, when the server
        refuses sampling fields as it does for a diffusion model (one served under a name that
        does not say so), or counts the prompt over its context (the measure learns the count
        and the context is cut again)."""
        if not self._counted and self.model.max_model_len:
            self._counted = True  # once: later prompts are counted by their answers' usage
            if await self._count(task):
                task = self._task(sub.request, settings)
        try:
            return task, await self._stream(request_body(task, settings, self.model, rows), task,
                                            sub)
        except InputError as exc:
            over = CONTEXT_OVER.search(str(exc))
            if over is not None:
                if not await self._count(task):  # vLLM's own count is only "at least"
                    self.measure.observe(len(task.text), int(over.group(1) or over.group(2)))
                    self.measure.chars_per_token *= 0.7
                task = self._task(sub.request, settings)
            elif "diffusion model" in str(exc) and not self.model.diffusion:
                self.model.refused_sampling = True
            else:
                raise
            return task, await self._stream(request_body(task, settings, self.model, rows), task,
                                            sub)

    async def _count(self, task: ChatTask) -> bool:
        """Teach the measure the server's count of this task's prompt, from vLLM's
        ``/tokenize``; False where the server has none."""
        try:
            async with self._open("POST", "/tokenize", turns(task, self.model),
                                  root=True) as response:
                count = (await response.json(content_type=None)).get("count")
        except (EngineError, InputError, ValueError, AttributeError, aiohttp.ClientError):
            return False
        if not isinstance(count, int) or count <= 0:
            return False
        self.measure.observe(len(task.text), count)
        return True

    async def _stream(self, body: dict[str, Any], task: ChatTask, sub: Submission) -> Answer:
        """Send one request, read its stream, feed the previews."""
        t0 = time.perf_counter()
        stream = _Stream(body["n"])
        cap = task.budget * CHARS_PER_ANSWER_TOKEN
        every = max(1, task.budget // 16)
        shown, since = "", 0
        where = self.model.spec.url
        async with self._open("POST", "/chat/completions", body) as response:
            try:
                async for payload in _events(response, where):
                    stream.add(payload, where)
                    if max(stream.sizes) > cap:
                        return stream.answer(overlong=True)
                    since += 1
                    if sub.preview is not None and since >= every:
                        text = answer_code(task, sub.request, "".join(stream.texts[0]))[0]
                        if text != shown:
                            shown, since = text, 0
                            sub.preview(text, min(1.0, stream.chunks / max(1, task.budget)))
            except (aiohttp.ServerTimeoutError, asyncio.TimeoutError):
                raise EngineError(f"the server at {where} stalled: nothing for "
                                  f"{self.model.spec.stall_seconds:.0f} s mid-answer") from None
            except aiohttp.ClientPayloadError as exc:
                raise EngineError(f"the server at {where} broke off its answer ({exc})") from None
            except aiohttp.ClientError as exc:
                raise EngineError(f"the server at {where} failed mid-answer: {exc}") from None
        self.model.last_latency_ms = (time.perf_counter() - t0) * 1000
        if stream.prompt_tokens:  # the server's count of this prompt teaches the measure
            self.measure.observe(len(task.text), stream.prompt_tokens)
        return stream.answer()

    def _result(self, req: InfillRequest, task: ChatTask, answer: Answer,
                settings: InfillSettings, started: float) -> InfillResult:
        """The answers as ranked candidates. Scored by their tokens' mean probability where
        the server sent log-probabilities, else by how many of the answers agree with each."""
        codes = [answer_code(task, req, raw) for raw in answer.texts]
        plain = [code for code, _ in codes]
        items: list[Completion] = []
        seen: set[str] = set()
        for row, (code, fenced) in enumerate(codes):
            if not code.strip() or code in seen:
                continue
            seen.add(code)
            probs = answer.probs[row]
            score = sum(probs) / len(probs) if probs else plain.count(code) / len(plain)
            ended = fenced or (answer.finish[row] == "stop" and not answer.overlong)
            items.append(completion(req, code, score, self.measure.count(code), ended))
        return self.result(req, task.mode, items, settings, 0, started)


async def _refusal(response: aiohttp.ClientResponse, where: str) -> Exception:
    """The error for a response that is not a success, with the server's own message."""
    try:
        text = await response.text()
        detail = _message(json.loads(text))
    except (ValueError, UnicodeDecodeError, aiohttp.ClientError):
        detail = f"HTTP {response.status}"
    status = response.status
    if status in (401, 403):
        return EngineError(f"the server at {where} refused the API key ({status}: {detail}); "
                           f"give the engine's key in ${ENV_KEY} or a key file")
    if status in (400, 413, 422):
        return InputError(f"the server at {where} refused the request ({status}): {detail}")
    if status == 404:
        return EngineError(f"the server at {where} answered 404 ({detail}); is the url its "
                           "OpenAI-compatible /v1, and the model one it serves?")
    if 300 <= status < 400:
        return EngineError(f"the server at {where} redirects ({status}) to "
                           f"{response.headers.get('Location')}; set the url to where it "
                           "points (diffill does not follow it with your code and key)")
    return EngineError(f"the server at {where} answered {status}: {detail}")


async def _events(response: aiohttp.ClientResponse, where: str):
    """The JSON payloads of a server-sent event stream, up to ``[DONE]`` (or its end)."""
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
            continue
        if line or not data:  # comments, event names, ids; or a blank line between events
            if line and not line.startswith((":", "event:", "id:", "retry:")):
                raise EngineError(f"malformed stream from {where}: {line[:80]!r}")
            continue
        payload, data = "\n".join(data), []
        if payload == "[DONE]":
            return
        try:
            yield json.loads(payload)
        except ValueError:
            raise EngineError(f"malformed stream from {where}: {payload[:80]!r} is not "
                              "JSON") from None
    if data and data != ["[DONE]"]:  # a last event without its blank line
        try:
            yield json.loads("\n".join(data))
        except ValueError:
            raise EngineError(f"malformed stream from {where}: the stream ended mid-event"
                              ) from None


def spec_from(raw: dict[str, Any]) -> RemoteSpec:
    """A :class:`RemoteSpec` from a model spec's engine fields (``url``, ``checkpoint`` as the
    served model's id, ``key_file``, ``allow_plain_http``)."""
    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise InputError("engine openai needs its server's url (engineUrl / --engine-url)")
    return RemoteSpec(base_url(url, bool(raw.get("allow_plain_http"))),
                      model=raw.get("checkpoint") or None, key_file=raw.get("key_file") or None)

