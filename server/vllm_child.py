"""``diffill serve --engine vllm``: vLLM's OpenAI server as the daemon's child process.

The daemon starts it on a free loopback port with a fresh API key (kept 0600 in the daemon's
private folder, handed to vLLM through its environment, never on a command line), waits until it
answers ``/health``, points its engine at it and stops it when the daemon stops. DiffusionGemma
gets the flags of vLLM's recipe for it. The child's output goes to ``vllm.log`` beside the
daemon's socket.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from .errors import ModelUnavailable, UsageError
from .sockets import private_folder

log = logging.getLogger("diffill.vllm")

RECIPE = ("--max-num-seqs", "4", "--generation-config", "vllm",
          "--diffusion-config", '{"canvas_length":256}')
"""vLLM's recipe flags for DiffusionGemma (its model card's serving command)."""
HEALTH_POLL_SECONDS = 1.0
PR_SET_PDEATHSIG = 1
STOP_SECONDS = 30.0
"""How long a stopping child gets before it is killed."""


def recipe_for(model: str) -> list[str]:
    return list(RECIPE) if "diffusiongemma" in model.lower().replace("-", "") else []


def has_vllm(python: str) -> bool:
    """Whether ``python`` can import vLLM (asked without importing it: that takes seconds)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before it runs vLLM: SIGTERM when the daemon's process ends, however it
    ends (Linux's ``PR_SET_PDEATHSIG``; elsewhere nothing)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class VllmChild:
    """One vLLM OpenAI server for the daemon's lifetime."""

    def __init__(self, model: str, folder: Path, *, python: str, extra_args: str = "",
                 start_seconds: float = 900.0) -> None:
        self.model, self.folder, self.python = model, folder, python
        self.extra = shlex.split(extra_args)
        self.start_seconds = start_seconds
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.ready = False
        """It answered ``/health`` once (``wait_ready``)."""
        self.key_file = folder / "vllm-key"
        self.log_path = folder / "vllm.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def spec(self) -> dict[str, Any]:
        """The daemon's model spec for this server."""
        return {"engine": "openai", "url": self.url, "checkpoint": self.model,
                "key_file": str(self.key_file)}

    def command(self) -> list[str]:
        return [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                "--served-model-name", self.model, "--host", "127.0.0.1", "--port",
                str(self.port), *recipe_for(self.model), *self.extra]

    def start(self) -> None:
        if not has_vllm(self.python):
            raise UsageError(
                f"vLLM is not installed for {self.python}: pip install 'diffill[vllm]' on a "
                f"machine with a GPU (or name another interpreter with --vllm-python); or start "
                f"it yourself (python -m vllm.entrypoints.openai.api_server --model "
                f"{self.model} {' '.join(recipe_for(self.model))}) and serve with --engine "
                f"openai --engine-url http://127.0.0.1:8000/v1")
        private_folder(self.folder)
        key = secrets.token_urlsafe(24)
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        self.port = free_port()
        env = dict(os.environ, VLLM_API_KEY=key)
        logf = open(self.log_path, "ab")
        log.info("starting vLLM for %s on %s (log %s)", self.model, self.url, self.log_path)
        # Its own session: stopping it stops its engine and worker processes too. And it dies
        # with the daemon even when the daemon is killed (-9), rather than hold the GPU.
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=logf, env=env, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        logf.close()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Until the server answers ``/health``; :class:`ModelUnavailable` (with the end of its
        log) when it exits first or takes longer than ``start_seconds``."""
        assert self.proc is not None
        started = time.monotonic()
        while not self.healthy():
            if self.proc.poll() is not None:
                raise ModelUnavailable(f"vLLM exited ({self.proc.returncode}) before it was "
                                       f"ready; its log ({self.log_path}) ends: {self.tail()}")
            waited = time.monotonic() - started
            if stopping() or waited > self.start_seconds:
                raise ModelUnavailable(f"vLLM was not ready after {waited:.0f} s; its log "
                                       f"({self.log_path}) ends: {self.tail()}")
            time.sleep(HEALTH_POLL_SECONDS)
        self.ready = True
        log.info("vLLM is ready on %s", self.url)

    def state(self) -> str:
        if self.proc is not None and self.proc.poll() is not None:
            return f"exited ({self.proc.returncode})"
        return "ready" if self.ready else "starting"

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        log.info("stopping vLLM (pid %d)", self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        try:
            self.key_file.unlink()
        except FileNotFoundError:
            pass
