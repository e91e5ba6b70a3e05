"""``diffill serve``: one resident model per machine, shared by every editor window.

Listens on a unix socket (0600, in a 0700 folder; no TCP). Connections speak line-delimited
JSON (``server/protocol.py``). An asyncio loop does the I/O; one worker thread owns the models
and runs requests, so GPU work is serialised. The queue is fair across clients (round robin),
requests that fit together (same model, same settings) run as one batch, a newer request for
the same document supersedes the older one, and a cancelled request stops at the next
denoising step. The daemon exits after ``idle_timeout`` seconds without requests.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from filelock import FileLock, Timeout

from diffill.infill.api import DocumentKey, Submission
from diffill.infill.wire import (request_from_wire, result_to_wire, settings_from_wire,
                                 settings_to_wire)

from .errors import RequestCancelled, UnsafeSocket, UsageError, describe
from .protocol import VERSION, build_id, is_message_id
from .scheduler import DaemonJob, Scheduler
from .sockets import check_peer, own_paths, private_folder

# torch, the models and the engines are imported by the worker when it first loads a model: the
# daemon answers hello and status (and a client's first connection) without waiting for them.
if TYPE_CHECKING:
    from diffill.infill.engines import InfillEngine

    from .http_front import HttpFront
    from .vllm_child import VllmChild

log = logging.getLogger("diffill.daemon")

WATCH_SECONDS = 2.0
"""How often the daemon checks that its socket file is still its own."""
LOCK_WAIT_SECONDS = 3 * WATCH_SECONDS
"""How long a new daemon waits for the lock of one whose socket is gone (it notices within
WATCH_SECONDS and exits)."""
MAX_LINE = 64 * 1024 * 1024


class Client:
    """One connection (one LSP process, or one CLI call)."""

    counter = 0

    def __init__(self, writer: asyncio.StreamWriter, name: str) -> None:
        Client.counter += 1
        self.id = Client.counter
        self.name = name
        self.writer = writer
        self.jobs: dict[int, DaemonJob] = {}
        self.closed = False

    def send(self, obj: dict) -> None:
        if self.closed:
            return
        try:
            self.writer.write((json.dumps(obj) + "\n").encode())
        except (ConnectionError, RuntimeError):
            self.closed = True


class ResultCache:
    """Recent completion results by request (the document's text, the cursor, model and
    settings): typing a character and deleting it, or asking again after a reconnect, costs
    no forward pass. Least recently used entries go first; entries expire after ``ttl``
    seconds, and all of them when a model is (re)loaded. Sampled fills (temperature above 0
    with no seed) are never cached: asking again should give another."""

    def __init__(self, size: int = 100, ttl: float = 300.0) -> None:
        self.size, self.ttl = size, ttl
        self.entries: collections.OrderedDict[str, tuple[float, dict]] = \
            collections.OrderedDict()
        self.lock = threading.Lock()  # filled by the worker, read by the event loop

    def key(self, job: "DaemonJob") -> str | None:
        sampler, req = job.settings.sampler, job.request
        if sampler.temperature and sampler.seed is None or req is None:
            return None
        digest = hashlib.sha1()
        for part in (job.model_key, settings_to_wire(job.settings), req.start, req.end,
                     req.language, req.path, req.extra, req.drafts, req.text):
            digest.update(json.dumps(part, default=str, sort_keys=True)
                          .encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
        return digest.hexdigest()

    def get(self, key: str | None) -> dict | None:
        if key is None:
            return None
        with self.lock:
            entry = self.entries.get(key)
            if entry is None or time.monotonic() - entry[0] > self.ttl:
                self.entries.pop(key, None)
                return None
            self.entries.move_to_end(key)
            return entry[1]

    def put(self, key: str, result: dict) -> None:
        with self.lock:
            self.entries[key] = (time.monotonic(), result)
            self.entries.move_to_end(key)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


ENGINE_FIELDS = {"local": ("checkpoint", "device", "dtype", "family"),
                 "openai": ("url", "checkpoint", "key_file", "allow_plain_http")}
"""The engines a model spec may name, and the fields each reads."""


class Registry:
    """Loaded engines by their model spec (:meth:`key`); the most recent ``keep`` stay."""

    def __init__(self, keep: int = 1) -> None:
        self.keep = keep
        self.engines: collections.OrderedDict[tuple, InfillEngine] = collections.OrderedDict()
        self.loads = 0
        self.load_seconds = 0.0
        self.on_load = lambda: None
        """Called after every load (the daemon drops its cached results)."""

    @staticmethod
    def key(spec: dict[str, Any] | None) -> tuple:
        """A model spec as a registry key: (name, value) pairs of the fields its engine reads
        (``local``: checkpoint, device, dtype, family; ``openai``: url, checkpoint as the
        served model's id, key_file, allow_plain_http), unset ones as None."""
        spec = spec or {}
        engine = spec.get("engine") or "local"
        names = ENGINE_FIELDS.get(engine, ())
        return (("engine", engine),) + tuple((name, spec.get(name) or None) for name in names)

    def get(self, key: tuple) -> InfillEngine:
        if key in self.engines:
            self.engines.move_to_end(key)
            return self.engines[key]
        spec = dict(key)
        if spec["engine"] not in ENGINE_FIELDS:
            raise UsageError(f"unknown engine {spec['engine']!r}; one of "
                             f"{', '.join(ENGINE_FIELDS)}")
        t0 = time.perf_counter()
        if spec["engine"] == "openai":
            from diffill.infill.remote import OpenAIEngine, spec_from  # aiohttp, no torch
            # A server that does not answer fails here, before anything is unloaded.
            engine = OpenAIEngine.connect(spec_from(spec))
            self._evict()
            return self._keep(key, engine, t0)
        from diffill.model.loader import check_checkpoint
        check_checkpoint(spec["checkpoint"])  # a bad checkpoint fails before any unload
        evicted = self._evict()
        try:
            return self._keep(key, self._load(spec), t0)
        except Exception:
            if evicted:  # failed late (memory, mismatched weights): serve the last one again
                try:
                    self._keep(evicted[-1], self._load(dict(evicted[-1])), time.perf_counter())
                except Exception:  # noqa: BLE001 - the original error is the one to report
                    log.exception("could not load the previous model back")
            raise

    def close(self) -> None:
        """Let every engine go (the daemon is stopping)."""
        while self.engines:
            self.engines.popitem()[1].close()

    def _evict(self) -> list[tuple]:
        """Make room for one more engine: the least recently used go (closed, their device
        memory freed). Returns their keys."""
        evicted = []
        while len(self.engines) >= self.keep:
            old_key, old = self.engines.popitem(last=False)
            evicted.append(old_key)
            old.close()
            del old
            _free_device_memory()
        return evicted

    @staticmethod
    def _load(spec: dict[str, Any]) -> InfillEngine:
        """The engine of a checkpoint loaded in this process."""
        from diffill.infill import make_engine
        from diffill.model import load_model
        return make_engine(load_model(spec["checkpoint"], device=spec["device"],
                                      dtype=spec["dtype"], family=spec["family"]))

    def _keep(self, key: tuple, engine: InfillEngine, started: float) -> InfillEngine:
        """Count a new engine (its load or connection time), log it and keep it."""
        self.load_seconds += time.perf_counter() - started
        self.loads += 1
        self.on_load()
        info = engine.model.describe()
        log.info("model loaded: %s on %s as %s in %.2fs", info["checkpoint"], info["device"],
                 info["dtype"], info["load_seconds"])
        self.engines[key] = engine
        return engine


def _free_device_memory() -> None:
    torch = sys.modules.get("torch")  # not loaded (an engine on a server): nothing to free
    if torch is None:
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass


def checked(msg: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    """A message's id, method and params, or :class:`BadMessage` saying what is wrong."""
    mid, method, params = msg.get("id"), msg.get("method"), msg.get("params") or {}
    if mid is not None and not is_message_id(mid):
        raise BadMessage("a message id is a number or a string")
    if not isinstance(method, str):
        raise BadMessage("a message names its method as a string")
    if not isinstance(params, dict):
        raise BadMessage(f"{method}: params are a JSON object")
    if method in ("infill", "load") and mid is None:
        raise BadMessage(f"{method} is a request: give it an id")
    if method == "infill" and not isinstance(params.get("request"), dict):
        raise BadMessage("infill: params.request is a JSON object")
    if not isinstance(params.get("document") or "", str):
        raise BadMessage(f"{method}: params.document is a string (the document's URI)")
    if not isinstance(params.get("model") or {}, dict) or \
            not isinstance(params.get("settings") or {}, dict):
        raise BadMessage(f"{method}: params.model and params.settings are JSON objects")
    return mid, method, params


class Daemon:
    def __init__(self, socket_path: Path, *, idle_timeout: float = 1800, keep_models: int = 1,
                 preload: dict[str, Any] | None = None, autostarted: bool = False,
                 http: tuple[str, int, str] | None = None,
                 child: VllmChild | None = None) -> None:
        self.socket_path = socket_path
        self.idle_timeout = idle_timeout
        self.registry = Registry(keep_models)
        self.cache = ResultCache()
        self.registry.on_load = self.cache.clear
        self.preload = preload
        self.autostarted = autostarted
        """Started by a client for itself (not by a person's ``diffill serve``): a client of
        other code may replace it while it is idle."""
        self.started = time.time()
        self.last_activity = time.monotonic()
        self.clients: list[Client] = []
        self.scheduler = Scheduler(on_cancelled=self._reply_cancelled)
        self.running: list[DaemonJob] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.done = asyncio.Event()
        self.counters = collections.Counter()
        self.last_error: str | None = None
        self.state = "idle"
        self.worker_thread: threading.Thread | None = None
        self.socket_id: tuple[int, int] | None = None
        self.yielding = False
        self.child = child
        """``diffill serve --engine vllm``'s server, which the preload waits for."""
        self.http: HttpFront | None = None
        """``diffill serve --http``'s front end: plugins' HTTP requests as daemon jobs."""
        if http:
            from .http_front import HttpFront as Front  # aiohttp: only for a daemon with --http
            self.http = Front(self, *http)

    @property
    def stopping(self) -> bool:
        return self.scheduler.stopping

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        models = []
        for engine in self.registry.engines.values():
            info = engine.model.describe()
            info["memory_bytes"] = engine.model.memory_bytes()
            info["prefix_reuses"] = engine.prefix_reuses
            info["shed"] = engine.shed
            info["quick"] = engine.quick
            models.append(info)
        return {"pid": os.getpid(), "version": VERSION, "socket": str(self.socket_path),
                "build": build_id(), "autostarted": self.autostarted,
                "uptime_s": round(time.time() - self.started, 1), "state": self.state,
                "models": models, "loads": self.registry.loads,
                "load_seconds": round(self.registry.load_seconds, 3),
                "rss_bytes": _rss_bytes(), "cuda_bytes": _cuda_bytes(),
                "clients": len(self.clients), "queued": self.scheduler.queued(),
                "idle_timeout_s": self.idle_timeout, "counters": dict(self.counters),
                "cached_results": len(self.cache.entries),
                "http": {"url": self.http.url, "token": self.http.token,
                         "requests": self.http.requests} if self.http else None,
                "vllm": {"pid": self.child.proc.pid if self.child.proc else None,
                         "url": self.child.url, "log": str(self.child.log_path),
                         "state": self.child.state()} if self.child else None,
                "last_error": self.last_error}

    # ------------------------------------------------------------ connections

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            check_peer(writer.get_extra_info("socket"), "client")
        except UnsafeSocket as exc:
            log.warning("%s", exc)
            writer.close()
            return
        client = Client(writer, "client")
        self.clients.append(client)
        self.counters["connections"] += 1
        try:
            while not self.stopping:
                line = await reader.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                    if not isinstance(msg, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    client.send({"id": None, "error": {"kind": "UsageError",
                                                       "message": f"bad message: {exc}"}})
                    continue
                try:
                    self.dispatch(client, msg)
                except BadMessage as exc:
                    mid = msg.get("id")
                    client.send({"id": mid if is_message_id(mid) else None,
                                 "error": {"kind": "UsageError", "message": str(exc)}})
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            client.closed = True
            self.clients.remove(client)
            # A client that vanished wants none of its requests any more.
            for job in list(client.jobs.values()):
                self.scheduler.cancel(job, "client disconnected")
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    def dispatch(self, client: Client, msg: dict[str, Any]) -> None:
        mid, method, params = checked(msg)
        if method == "cancel":
            job = client.jobs.get(params.get("id"))
            if job is not None:
                self.scheduler.cancel(job, "cancelled by the client")
        elif method == "hello":
            client.name = str(params.get("name", "client"))
            client.send({"id": mid, "result": self.hello()})
        elif method == "status":
            client.send({"id": mid, "result": self.status()})
        elif method == "shutdown":
            client.send({"id": mid, "result": {"stopping": True}})
            self.request_stop("asked to shut down")
        elif method in ("infill", "load"):
            self.enqueue(client, mid, method, params)
        else:
            client.send({"id": mid, "error": {"kind": "UsageError",
                                              "message": f"unknown method {method!r}"}})

    def hello(self) -> dict[str, Any]:
        """What a client needs to decide whether this daemon is one it may use, or replace."""
        busy = len(self.clients) > 1 or bool(self.running) or self.scheduler.waiting()
        return {"pid": os.getpid(), "version": VERSION, "build": build_id(),
                "root": str(Path(__file__).resolve().parents[1]),
                "autostarted": self.autostarted, "busy": busy}

    def model_key(self, spec: dict[str, Any] | None) -> tuple:
        """The registry key of a request's model spec; one that names nothing (an editor left
        at its defaults) gets the model this daemon was started with (``diffill serve
        --model``, ``--engine``), else the bundled one."""
        key = Registry.key(spec)
        if self.preload is not None and key == Registry.key(None):
            return Registry.key(self.preload)
        return key

    def enqueue(self, client: Client, mid: int, method: str, params: dict[str, Any]) -> None:
        self.last_activity = time.monotonic()
        document = params.get("document") if method == "infill" else None
        job = DaemonJob(mid, client, method, self.model_key(params.get("model")),
                        document=DocumentKey(client.id, document) if document is not None
                        else None)
        self.counters["requests" if method == "infill" else "load_requests"] += 1
        if method == "infill":
            try:  # decoded once, here: the queue holds typed requests
                job.request = request_from_wire(params.get("request"))
                job.settings = settings_from_wire(params.get("settings"))
                job.preview = params.get("preview") is True
            except Exception as exc:  # noqa: BLE001 - whatever it was, it gets its answer
                self._reply_error(job, exc)
                return
        if job.interactive:
            job.cache_key = self.cache.key(job)
            hit = self.cache.get(job.cache_key)
            if hit is not None:  # the same request lately (backspace, a reconnect): no model
                self.counters["cache_hits"] += 1
                self.scheduler.supersede(job)
                # This answer's own cost: no pass, no model time (not the first answer's).
                client.send({"id": mid, "result": dict(hit, cached=True, forward_passes=0,
                                                       seconds=0.0)})
                return
            self.counters["cache_misses"] += 1
        client.jobs[mid] = job
        self.scheduler.add(job)

    # ------------------------------------------------------------ worker

    def _between_steps(self, job: DaemonJob) -> bool:
        """Polled by a long job (a rewrite, a refine) before each denoising step: first run one
        batch of the completions that came in meanwhile, on this thread and the same model, so
        ghost text waits at most one step of a rewrite, never all of it; then say whether the
        job was cancelled. One batch per step: a stream of completions slows a rewrite down
        but never stops it."""
        if not self.yielding and threading.current_thread() is self.worker_thread:
            self.yielding = True
            running, state = self.running, self.state
            try:
                batch = self.scheduler.take_completions(job.model_key)
                if batch:
                    self.counters["served_between_steps"] += len(batch)
                    self.running = running + batch
                    self._run(batch)
            finally:
                self.running, self.state, self.yielding = running, state, False
        return job.cancelled.is_set()

    def worker(self) -> None:
        if self.preload is not None:
            try:
                self.state = "loading"
                if self.child is not None:
                    self.child.wait_ready(lambda: self.stopping)
                self.registry.get(Registry.key(self.preload))
            except Exception as exc:  # reported to requests, the daemon stays up
                self.last_error = str(describe(exc).message)
                log.error("preload failed: %s", self.last_error)
            finally:
                self.state = "idle"
        while True:
            batch = self.scheduler.take_batch()
            if not batch:
                return
            self.running = batch
            try:
                self._run(batch)
            finally:
                self.running = []
                self.last_activity = time.monotonic()

    def _run(self, batch: list[DaemonJob]) -> None:
        first = batch[0]
        try:
            self.state = "loading" if first.model_key not in self.registry.engines else "busy"
            engine = self.registry.get(first.model_key)
            self.state = "busy"
        except Exception as exc:
            for job in batch:
                self._reply_error(job, exc)
            return
        finally:
            if self.state == "loading":
                self.state = "idle"
        if first.method == "load":
            for job in batch:
                self._reply(job, {"result": engine.model.describe()})
            self.state = "idle"
            return
        if len(batch) > 1:
            self.counters["batches"] += 1
            self.counters["batched_requests"] += len(batch)
        # Others waiting: behind this batch, or a rewrite paused for it.
        contended = len(batch) > 1 or self.yielding or self.scheduler.waiting()
        try:
            results = engine.run_batch([self._submission(job, engine) for job in batch],
                                       first.settings, contended=contended)
        except Exception as exc:  # e.g. out of memory: every job of the batch fails
            _free_device_memory()
            results = [exc] * len(batch)
        for job, res in zip(batch, results):
            self._answer(job, res)
        self.state = "idle"

    def _submission(self, job: DaemonJob, engine: InfillEngine) -> Submission:
        """A job as the engine takes it: its request, the cancel poll (which serves waiting
        completions between a long job's steps, where the engine allows), the preview sink."""
        assert job.request is not None
        poll = job.cancelled.is_set if job.interactive or not engine.serves_between_steps \
            else (lambda: self._between_steps(job))
        preview = self._previewer(job) if job.interactive and job.preview else None
        return Submission(job.request, poll, preview, job.document if job.interactive else None)

    def _answer(self, job: DaemonJob, res: Any) -> None:
        """Reply to ``job`` with its result or its error, and count it."""
        if isinstance(res, BaseException):
            if job.cancelled.is_set():
                self._reply_cancelled(job)
            else:
                self._reply_error(job, res)
            return
        self.counters["completed"] += 1
        # Work against what it showed: tokens per pass, as the typing eval reports.
        self.counters["forward_passes"] += res.forward_passes
        self.counters["tokens_shown"] += res.best.tokens if res.best else 0
        wire = result_to_wire(res)
        if job.cache_key is not None:
            self.cache.put(job.cache_key, wire)
        self._reply(job, {"result": wire})

    # ------------------------------------------------------------ replies (any thread)

    def _reply(self, job: DaemonJob, body: dict[str, Any]) -> None:
        def send() -> None:
            job.client.jobs.pop(job.id, None)
            self.scheduler.answered(job)
            job.client.send({"id": job.id, **body})
        assert self.loop is not None
        self.loop.call_soon_threadsafe(send)

    def _previewer(self, job: DaemonJob):
        """Sends a completion's text committed so far to its client, as ``{"id", "progress":
        {"text", "done"}}`` lines before the answer (the client asked with ``preview``)."""
        def send_progress(text: str, done: float) -> None:
            self.counters["previews"] += 1
            body = {"id": job.id, "progress": {"text": text, "done": round(done, 3)}}
            assert self.loop is not None
            self.loop.call_soon_threadsafe(job.client.send, body)
        return send_progress

    def _reply_error(self, job: DaemonJob, exc: BaseException) -> None:
        info = describe(exc)
        if info.kind != "RequestCancelled":
            self.counters["failed"] += 1
            self.last_error = info.message
            log.warning("request %s failed: %s", job.id, info.message)
        self._reply(job, {"error": {"kind": info.kind, "message": info.message}})

    def _reply_cancelled(self, job: DaemonJob) -> None:
        self.counters["cancelled"] += 1
        self._reply_error(job, RequestCancelled(job.why))

    # ------------------------------------------------------------ lifetime

    def request_stop(self, why: str) -> None:
        log.info("stopping: %s", why)
        self.scheduler.stop(self.running)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.done.set)

    async def idle_watch(self) -> None:
        """Stop when idle too long, or when the socket file is no longer this daemon's (removed
        or replaced): nobody can reach it any more, and it holds the lock a new one needs."""
        while not self.stopping:
            await asyncio.sleep(min(WATCH_SECONDS, max(0.5, self.idle_timeout / 4)))
            if not self.own_socket():
                self.request_stop(f"{self.socket_path} was removed or replaced")
                break
            busy = self.running or self.scheduler.waiting()
            if not busy and time.monotonic() - self.last_activity > self.idle_timeout:
                self.request_stop(f"idle for {self.idle_timeout:.0f}s")

    def own_socket(self) -> bool:
        try:
            st = os.lstat(self.socket_path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.socket_id

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.loop.add_signal_handler(sig, self.request_stop, f"signal {sig.name}")
            except (NotImplementedError, RuntimeError):
                pass
        server = await asyncio.start_unix_server(self.handle, path=str(self.socket_path),
                                                 limit=MAX_LINE)
        os.chmod(self.socket_path, 0o600)
        st = os.lstat(self.socket_path)
        self.socket_id = (st.st_dev, st.st_ino)
        log.info("diffill daemon %s listening on %s (pid %d)", build_id(), self.socket_path,
                 os.getpid())
        if self.http is not None:
            await self.http.start()
            log.info("HTTP: %s (/infill, /v1/completions; bearer token: diffill status)",
                     self.http.url)
        worker = threading.Thread(target=self.worker, name="diffill-worker", daemon=True)
        self.worker_thread = worker
        worker.start()
        watch = asyncio.create_task(self.idle_watch())
        await self.done.wait()
        watch.cancel()
        server.close()
        if self.http is not None:
            await self.http.stop()
        for c in list(self.clients):
            try:
                c.writer.close()
            except Exception:  # noqa: BLE001
                pass
        await asyncio.to_thread(worker.join, 10)
        self.registry.close()


def _rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def _cuda_bytes() -> int | None:
    torch = sys.modules.get("torch")  # not loaded: no model of this process holds memory
    if torch is None:
        return None
    try:
        return int(torch.cuda.memory_allocated()) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        return None


class AlreadyRunning(RuntimeError):
    pass


class BadMessage(ValueError):
    """A line that is JSON but not a message this daemon understands."""


def prepare_socket(path: Path) -> FileLock:
    """Create the socket's folder (0700), take the daemon lock, clear a stale socket.

    Returns the held lock (``filelock``: an ``flock`` that a losing contender neither
    truncates nor follows through a symlink), held for the daemon's lifetime; raises
    AlreadyRunning when another daemon holds it.
    """
    private_folder(path.parent)
    own_paths(path)
    lock = FileLock(f"{path}.lock", mode=0o600)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            lock.acquire(timeout=0.1)
            break
        except Timeout:
            # A holder whose socket is gone is exiting (its watchdog): wait for it.
            if path.exists() or time.monotonic() > deadline:
                raise AlreadyRunning(f"a diffill daemon already serves {path}") from None
    if path.exists() or path.is_symlink():
        path.unlink()
    # The pid marks the file as diffill's (own_paths refuses a lock file holding other text).
    with open(lock.lock_file, "w") as f:
        f.write(str(os.getpid()))
    return lock


def run_daemon(path: Path, *, idle_timeout: float, preload: dict[str, Any] | None,
               keep_models: int = 1, autostarted: bool = False,
               http: tuple[str, int, str] | None = None, child: VllmChild | None = None) -> int:
    """Serve until stopped. With ``child`` (``--engine vllm``), its server is started once the
    lock is held and is the daemon's model (``preload``), and stops with the daemon."""
    lock = prepare_socket(path)
    old_umask = os.umask(0o077)
    try:
        if child is not None:
            child.start()
            preload = child.spec()
        daemon = Daemon(path, idle_timeout=idle_timeout, keep_models=keep_models,
                        preload=preload, autostarted=autostarted, http=http, child=child)
        asyncio.run(daemon.serve())
    finally:
        if child is not None:
            child.stop()
        os.umask(old_umask)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        lock.release()
    return 0
