"""``diffill serve --http HOST:PORT``: the completion plugins people already use, answered by
the daemon. llama.cpp's ``POST /infill`` (llama.vim, llama.vscode) and OpenAI's legacy
``POST /v1/completions`` with ``prompt`` and ``suffix`` (Continue, minuet-ai.nvim, Tabby), plus
``GET /health`` and ``GET /v1/models``.

Each HTTP request becomes a daemon job like an editor's (same queue, caps, floors and
post-processing), so HTTP clients and editors share the model fairly; a client that hangs up
cancels its job at the next denoising step. Loopback only unless the owner allows a remote
address in so many words, and a bearer token on every request but ``/health``: any local user
can reach a TCP port, so the token is what lets in the owner alone.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import os
import secrets
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from diffill.infill.api import MAX_MASKS, InfillRequest, InfillSettings
from diffill.infill.remote import is_loopback
from diffill.infill.wire import request_to_wire, settings_to_wire

from .errors import UnsafeSocket, UsageError


class JobQueue(Protocol):
    """What the front end needs of the daemon (``server.daemon.Daemon``): its queue."""
    preload: dict[str, Any] | None
    started: float
    scheduler: Any

    @property
    def stopping(self) -> bool: ...

    def enqueue(self, client: Any, mid: int, method: str, params: dict[str, Any]) -> None: ...


TOKEN_FILE = "http-token"
"""The generated bearer token, beside the daemon's socket in the user's private folder."""
MAX_BODY = 8 * 1024 * 1024
"""Largest request body read (a document and its extra context)."""
MAX_CHOICES = 4
ERROR_STATUS = {"BadInput": 400, "UsageError": 400, "ModelUnavailable": 503,
                "DaemonUnavailable": 503, "RequestCancelled": 503}
"""The HTTP status of a daemon error, by its kind (``server/errors.py``); others are 500."""


def _json(body: Any, status: int = 200) -> web.Response:
    """A JSON response, compact as llama.cpp writes it (llama.vim checks its answer with a
    pattern that wants ``"content":"`` with no space)."""
    return web.json_response(body, status=status, dumps=_compact)


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _error(status: int, message: str, kind: str) -> web.Response:
    """The JSON error both llama.cpp and OpenAI answer with."""
    return _json({"error": {"message": message, "type": kind, "code": status}}, status=status)


def parse_address(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port)."""
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--http takes HOST:PORT (127.0.0.1:8012), got {spec!r}")
    return host.strip("[]"), int(port)


def load_token(folder: Path, given: str | None) -> str:
    """The bearer token: ``given`` (``--api-key``), else the one generated into ``folder`` (the
    daemon's private folder; created 0600 on first use and kept across restarts, so a plugin's
    setting stays valid). A token file that is not this user's regular file is refused."""
    if given:
        return given
    path = folder / TOKEN_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token
    except OSError as exc:  # a symlink (ELOOP) or unreadable
        raise UnsafeSocket(f"{path}: not a token file diffill may use ({exc.strerror})") from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise UnsafeSocket(f"{path}: not a private file of this user's; remove it")
        token = f.read().strip()
    if not token:
        raise UnsafeSocket(f"{path} is empty; remove it and a new token is made")
    return token


class HttpError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


class _Caller:
    """The daemon's view of one HTTP request: a client with one job, whose answer resolves a
    future on the event loop (``send`` is called there)."""

    ids = itertools.count(1)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.id = f"http-{next(self.ids)}"
        self.name = "http"
        self.jobs: dict[Any, Any] = {}
        self.closed = False
        self.answer: asyncio.Future = loop.create_future()

    def send(self, obj: dict) -> None:
        if "progress" in obj or self.answer.done():
            return
        self.answer.set_result(obj)


def _field(body: dict, name: str, kind: type | tuple, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)) \
            or not isinstance(value, kind):
        raise HttpError(400, f"{name}: expected {getattr(kind, '__name__', kind)}, "
                             f"got {type(value).__name__}")
    return value


def _max_tokens(value: int | None) -> int | None:
    """A client's token budget as diffill's ``max_tokens`` (None: the default; capped)."""
    if value is None or value < 0:
        return None
    return max(1, min(int(value), MAX_MASKS))


def _flatten(answer: dict, fields: list[str]) -> dict:
    """llama.cpp's ``response_fields``: each requested path (``timings/prompt_n``) as a flat
    key, as llama.cpp answers them and llama.vim reads them."""
    out: dict[str, Any] = {}
    for path in fields:
        value: Any = answer
        for part in str(path).split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            out[str(path)] = value
    return out


class HttpFront:
    def __init__(self, daemon: JobQueue, host: str, port: int, token: str) -> None:
        self.daemon, self.host, self.port, self.token = daemon, host, port, token
        self.runner: web.AppRunner | None = None
        self.requests = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/infill", self.infill)
        app.router.add_post("/v1/completions", self.completions)
        # A client that hangs up cancels its handler, and with it its job.
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]  # the port bound, when asked for port 0

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            if request.path != "/health":
                given = request.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                    raise HttpError(401, "a bearer token is required (diffill status shows it)",
                                    "authentication_error")
            return await handler(request)
        except HttpError as exc:
            return _error(exc.status, str(exc), exc.kind)
        except web.HTTPException as exc:  # aiohttp's own: unknown path, wrong method
            return _error(exc.status, exc.reason,
                          "not_found" if exc.status == 404 else "invalid_request_error")

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    def model_name(self) -> str:
        spec = self.daemon.preload or {}
        return str(spec.get("checkpoint") or "diffill-small")

    async def models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [
            {"id": self.model_name(), "object": "model", "owned_by": "diffill",
             "created": int(self.daemon.started)}]})

    async def _body(self, request: web.Request) -> dict:
        try:
            body = await request.json(loads=json.loads)
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise HttpError(400, "the body is a JSON object")
        return body

    async def _run(self, request: InfillRequest, settings: InfillSettings, body: dict) -> dict:
        """One job through the daemon's queue; the result as the wire has it. The body's
        ``diffill`` object, when given, sets engine settings in diffill's own names (those
        of ``diffill infill --help``, with underscores), over the ones its fields map to; the
        daemon decodes them as it decodes an editor's (a bad one is its 400)."""
        if self.daemon.stopping:
            raise HttpError(503, "the daemon is stopping", "server_error")
        own = _field(body, "diffill", dict, {})
        self.requests += 1
        caller = _Caller(asyncio.get_running_loop())
        params = {"request": request_to_wire(request),
                  "settings": {**settings_to_wire(settings), **own},
                  "model": self.daemon.preload or {}}
        self.daemon.enqueue(caller, 1, "infill", params)
        try:
            answer = await caller.answer
        except asyncio.CancelledError:
            job = caller.jobs.get(1)
            if job is not None:
                self.daemon.scheduler.cancel(job, "the HTTP client hung up")
            raise
        if "error" in answer:
            err = answer["error"]
            status = ERROR_STATUS.get(str(err.get("kind")), 500)
            raise HttpError(status, str(err.get("message")),
                            "invalid_request_error" if status == 400 else "server_error")
        return answer["result"]

    async def infill(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        prefix = _field(body, "input_prefix", str, "")
        typed = _field(body, "prompt", str, "")
        suffix = _field(body, "input_suffix", str, "")
        extra = []
        for chunk in _field(body, "input_extra", list, []):
            if not isinstance(chunk, dict) or not isinstance(chunk.get("text", ""), str):
                raise HttpError(400, "input_extra: a list of {\"text\", \"filename\"} objects")
            extra.append((str(chunk.get("filename") or "extra"), chunk.get("text") or ""))
        n_predict = _field(body, "n_predict", int)
        fields = _field(body, "response_fields", list, [])
        stop = _stop(body)
        t0 = time.perf_counter()
        if n_predict == 0:  # llama.vim's warm-up: its extra context, nothing to predict
            result = {"items": [], "forward_passes": 0}
        else:
            req = InfillRequest(prefix + typed + suffix, len(prefix + typed),
                                extra=tuple(extra))
            result = await self._run(req, _settings(_max_tokens(n_predict)), body)
        ms = (time.perf_counter() - t0) * 1000
        best = result["items"][0] if result["items"] else None
        n = best["tokens"] if best else 0
        content = _cut(best["text"], stop)[0] if best else ""
        answer = {"content": content, "stop": True,
                  "tokens_predicted": n, "tokens_cached": 0, "truncated": False,
                  "timings": {"prompt_n": 0, "prompt_ms": 0.0, "prompt_per_token_ms": 0.0,
                              "prompt_per_second": 0.0, "predicted_n": n,
                              "predicted_ms": round(ms, 3),
                              "predicted_per_token_ms": round(ms / n, 3) if n else 0.0,
                              "predicted_per_second": round(n / ms * 1000, 3) if n and ms
                              else 0.0, "truncated": False}}
        return _json(_flatten(answer, fields) if fields else answer)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        prompt, suffix, n = _completion_fields(body)
        stop = _stop(body)
        stream = _field(body, "stream", bool, False)
        # Asked while the person types, as a ghost is: the floors apply (an empty choice).
        settings = _settings(_max_tokens(_field(body, "max_tokens", int)),
                             ensemble=max(InfillSettings().ensemble, n))
        result = await self._run(InfillRequest(prompt + suffix, len(prompt)), settings, body)
        items = result["items"][:n]
        choices = _choices(items, stop)
        made = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion",
                "created": int(time.time()),
                "model": _field(body, "model", str) or self.model_name()}
        if not stream:
            tokens = sum(item["tokens"] for item in items)
            return _json({**made, "choices": choices, "usage": {
                "prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}})
        # Server-sent events: each choice whole in one event (diffill's answer settles all
        # at once; a ghost shown growing would be one that can still change), then [DONE].
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        for choice in choices:
            await response.write(f"data: {_compact({**made, 'choices': [choice]})}\n\n"
                                 .encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _settings(max_tokens: int | None, **changes: Any) -> InfillSettings:
    """Engine settings for a request: the defaults, the client's token budget when it gave
    one, and ``changes``."""
    if max_tokens is not None:
        changes["max_tokens"] = max_tokens
    return replace(InfillSettings(), **changes)


def _stop(body: dict) -> list[str]:
    """A request's stop strings (``stop``: one string or a list of them), checked."""
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(x, str) for x in stop):
        raise HttpError(400, "stop: a string or a list of strings")
    return stop


def _cut(text: str, stop: list[str]) -> tuple[str, bool]:
    """``text`` cut at its stop strings, and whether one cut it."""
    cut = False
    for s in stop:
        at = text.find(s) if s else -1
        if at >= 0:
            text, cut = text[:at], True
    return text, cut


def _completion_fields(body: dict) -> tuple[str, str, int]:
    """``/v1/completions``' prompt, suffix and choice count, checked."""
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise HttpError(400, "prompt: expected a string (one prompt per request)")
    n = _field(body, "n", int, 1)
    if not 1 <= n <= MAX_CHOICES:
        raise HttpError(400, f"n: from 1 to {MAX_CHOICES}")
    return prompt, _field(body, "suffix", str, ""), n


def _choices(items: list[dict], stop: list[str]) -> list[dict]:
    """The OpenAI choices of a result's items, each cut at its first stop string."""
    choices = []
    for i, item in enumerate(items):
        text, cut = _cut(item["text"], stop)
        choices.append({"text": text, "index": i, "logprobs": None,
                        "finish_reason": "stop" if cut or item["terminated"] else "length"})
    return choices or [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]


def check_bind(host: str, allow_remote: bool) -> None:
    if not is_loopback(host) and not allow_remote:
        raise UsageError(f"--http {host}: not a loopback address; anyone who can reach it "
                         "could try the token. Add --http-allow-remote to mean it")
