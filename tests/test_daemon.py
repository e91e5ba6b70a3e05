"""The daemon shared by several LSP processes: one model load, fair batching, cancellation,
and recovery after it dies."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import helpers
from diffill.server.daemon_client import DaemonClient, spawn_daemon
from test_lsp import ROOT, inline, open_doc, options, session, status, stop_daemon


@pytest.fixture()
def sock():
    path = Path(tempfile.mkdtemp(prefix="dfl-")) / "d.sock"
    yield path
    stop_daemon(path)


def wait_for(path: Path, timeout=60) -> DaemonClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return DaemonClient(path, timeout=60)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.slow
async def test_two_editor_processes_share_one_model_load(pattern_ckpt, sock):
    async with session(options(pattern_ckpt, sock)) as a, \
            session(options(pattern_ckpt, sock)) as b:
        open_doc(a)
        open_doc(b)
        ra, rb = await asyncio.gather(inline(a, 0, 15), inline(b, 0, 15))
        assert ra.items[0].insert_text == rb.items[0].insert_text == "c5 c6 c7"
        st = await status(b)
        assert st["loads"] == 1
        c = st["counters"]  # the second may be answered from the first's cached result
        assert c["requests"] >= 2 and c["completed"] + c.get("cache_hits", 0) >= 2
    # A restarted editor finds the model already loaded.
    async with session(options(pattern_ckpt, sock)) as c:
        open_doc(c)
        await inline(c, 0, 15)
        assert (await status(c))["loads"] == 1


def test_socket_is_private_and_a_second_daemon_backs_off(pattern_ckpt, sock):
    spawn_daemon(sock, idle_timeout=60)
    client = wait_for(sock)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    pid = client.call("hello")["pid"]
    second = spawn_daemon(sock, idle_timeout=60)
    assert second.wait(60) == 0  # it found the lock held and left
    assert client.call("hello")["pid"] == pid
    # The loser neither truncated nor rewrote the holder's lock file.
    assert Path(f"{sock}.lock").read_text() == str(pid)
    client.close()


def slow_checkpoint(tmp: Path) -> Path:
    """A random model big enough that a 128-step fill takes a while on a CPU."""
    folder, _ = helpers.save_checkpoint(tmp / "slow", "qwen2", hidden=128, layers=4,
                                        config_updates=helpers.diffill_config())
    return folder


@pytest.fixture()
def slow_daemon(sock, tmp_path):
    """A daemon with the slow model loaded: (client, infill params builder)."""
    model = slow_checkpoint(tmp_path)
    spawn_daemon(sock, idle_timeout=60)
    client = wait_for(sock)
    client.call("load", {"model": {"checkpoint": str(model)}})

    def params(request: dict, settings: dict) -> dict:
        return {"document": "file:///a.py", "model": {"checkpoint": str(model)},
                "request": request, "settings": settings}
    yield client, params
    client.close()


HOLD = {"lengths": [512], "schedule": "fixed", "steps": 1024}
"""Settings of a request far longer than any test waits for: it is cancelled or superseded."""


def running(path: Path, requests: int = 1) -> dict:
    """Status once the daemon's worker has taken its ``requests``-th request."""
    return _poll_status(path, lambda st: st["counters"].get("requests") == requests and
                        st["queued"] == 0 and st["state"] == "busy")


@pytest.mark.slow
def test_cancel_stops_a_running_request_and_the_next_one_works(slow_daemon, sock):
    client, make = slow_daemon
    params = make({"text": "def f(x):\n    return x\n" * 20, "start": 10}, HOLD)
    client.send("infill", params, mid=99)
    running(sock)
    client.send("cancel", {"id": 99})
    reply = client.read()
    assert reply["id"] == 99
    assert reply.get("error", {}).get("kind") == "RequestCancelled", reply
    st = client.call("status")
    assert st["counters"]["cancelled"] == 1 and st["counters"].get("completed", 0) == 0
    quick = dict(params, settings={"lengths": [4]})
    result = client.call("infill", quick)
    assert result["forward_passes"] >= 1


@pytest.mark.slow
def test_a_newer_request_for_the_same_document_supersedes_the_older(slow_daemon, sock):
    client, make = slow_daemon
    params = make({"text": "x = 1\n" * 50, "start": 4}, HOLD)
    client.send("infill", params, mid=1)
    running(sock)
    client.send("infill", dict(params, settings={"lengths": [4]}), mid=2)
    first = client.read()
    assert first["id"] == 1 and "superseded" in first["error"]["message"]
    second = client.read()
    assert second["id"] == 2 and "result" in second


@pytest.mark.slow
async def test_a_request_whose_daemon_is_killed_is_answered_by_a_fresh_one(pattern_ckpt, sock,
                                                                          tmp_path):
    model = slow_checkpoint(tmp_path)
    opts = options(model, sock, maxTokens=128, ensemble=1, schedule="fixed", steps=128)
    async with session(opts) as client:
        open_doc(client, "def f(x):\n    return x\n" * 10, uri="file:///work/a.py")
        pid = (await status(client))["pid"]
        task = asyncio.ensure_future(inline(client, 1, 4, uri="file:///work/a.py"))
        for _ in range(6000):  # until the daemon has the request (an event, not a clock)
            if (await status(client))["counters"].get("requests"):
                break
            await asyncio.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        # The server asks again on a fresh daemon, which loads the model again.
        result = await asyncio.wait_for(task, 300)
        assert result is not None and len(result.items) == 1
        st = await status(client)
        assert st["pid"] != pid and st["loads"] == 1
        pid = st["pid"]
        os.kill(pid, signal.SIGKILL)  # between two requests: the next one does not fail
        result = await inline(client, 1, 4, uri="file:///work/a.py")
        assert result is not None and len(result.items) == 1
        assert (await status(client))["pid"] != pid


@pytest.mark.slow
def test_cli_infill_goes_through_a_running_daemon(pattern_ckpt, sock):
    from test_cli import diffill
    spawn_daemon(sock, idle_timeout=60)
    client = wait_for(sock)
    client.call("load", {"model": {"checkpoint": str(pattern_ckpt)}})
    doc = "c0 c1 c2 c3 c4 <|fill|> c8 c9 c10\n"
    r = diffill("infill", "-", "--lengths", "8", "--socket", str(sock), stdin=doc.encode(),
                model=pattern_ckpt)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == "c5 c6 c7\n"
    st = client.call("status")
    assert st["counters"]["completed"] == 1 and st["loads"] == 1
    # `diffill status` for people: the model, its device and how many CPU threads it may use.
    r = diffill("status", "--socket", str(sock))
    text = r.stdout.decode()
    assert r.returncode == 0 and pattern_ckpt.name in text, text
    n = st["models"][0]["threads"]
    assert f"device   cpu float32, up to {n} CPU thread" in text, text
    # The daemon's resident memory holds at least its model's weights (and torch beside them).
    assert st["rss_bytes"] > st["models"][0]["memory_bytes"] > 0
    # Answered by the daemon, the CLI never imports torch (it starts in a fraction of the time).
    probe = ("import sys; from diffill.server.cli import main; "
             f"rc = main(['infill', '-', '--lengths', '8', '--socket', {str(sock)!r}, "
             f"'--model', {str(pattern_ckpt)!r}]); "
             "print('torch' in sys.modules, 'transformers' in sys.modules, rc, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", probe], input=doc.encode(), capture_output=True,
                       cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=300)
    assert r.stdout.decode() == "c5 c6 c7\n", r.stderr.decode()
    assert r.stderr.decode().strip().splitlines()[-1] == "False False 0"
    r = diffill("infill", "-", "--lengths", "8", "--socket", str(sock), "--no-daemon",
                stdin=doc.encode(), model=pattern_ckpt)
    assert r.stdout.decode() == "c5 c6 c7\n"
    counters = client.call("status")["counters"]
    assert counters["completed"] == 1 and counters["cache_hits"] == 1  # the probe's: cached
    # ... and --no-daemon ran in-process: the daemon saw nothing more.
    assert counters["requests"] == 2
    client.close()


@pytest.mark.slow
def test_ghost_text_is_served_between_the_steps_of_a_running_rewrite(slow_daemon, sock):
    client, make = slow_daemon
    text = "x = 1\n" * 50
    client.send("infill", make({"text": text, "start": 4, "end": 5, "action": "rewrite"},
                               {"lengths": [512], "schedule": "fixed", "steps": 1024}), mid=1)
    running(sock)
    # Another window's completion and this document's own: neither waits for the rewrite,
    # and neither cancels it.
    other = DaemonClient(sock, timeout=600)
    other.send("infill", make({"text": "y = 2\n", "start": 4}, {"lengths": [4]}), mid=7)
    client.send("infill", make({"text": text, "start": 10}, {"lengths": [4]}), mid=2)
    assert "result" in other.read()
    first = client.read()
    assert first["id"] == 2 and "result" in first, first  # before the rewrite's answer
    st = client.call("status")
    assert st["counters"]["served_between_steps"] == 2 and st["state"] == "busy"
    client.send("cancel", {"id": 1})
    assert client.read()["error"]["kind"] == "RequestCancelled"
    other.close()


@pytest.mark.slow
def test_a_failed_load_keeps_the_working_model_serving(pattern_ckpt, sock, tmp_path):
    import shutil

    from diffill.server.errors import ModelUnavailable
    spawn_daemon(sock, idle_timeout=120)
    client = wait_for(sock)
    client.call("load", {"model": {"checkpoint": str(pattern_ckpt)}})
    bad_json = tmp_path / "bad-json"
    shutil.copytree(pattern_ckpt, bad_json)
    (bad_json / "config.json").write_text("{ not json")
    truncated = tmp_path / "truncated"
    shutil.copytree(pattern_ckpt, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    for bad in (tmp_path / "deleted", bad_json, truncated):
        with pytest.raises(ModelUnavailable):
            client.call("load", {"model": {"checkpoint": str(bad)}})
    st = client.call("status")
    assert st["loads"] == 1 and st["models"][0]["checkpoint"] == str(pattern_ckpt)
    result = client.call("infill", {"document": "file:///c.txt",
                                    "model": {"checkpoint": str(pattern_ckpt)},
                                    "request": {"text": "c0 c1 c2 c3 c4  c8 c9 c10", "start": 15},
                                    "settings": {"max_tokens": 8, "ensemble": 1}})
    assert result["items"][0]["text"] == "c5 c6 c7"
    assert client.call("status")["loads"] == 1
    client.close()


def _poll_status(path: Path, done, limit: int = 6000) -> dict:
    """Status until ``done(status)`` holds (an event the daemon reports, not a clock)."""
    probe = DaemonClient(path, timeout=60)
    try:
        for _ in range(limit):
            st = probe.call("status")
            if done(st):
                return st
            time.sleep(0.01)
        raise AssertionError(f"the daemon never reached the state: {st}")
    finally:
        probe.close()


@pytest.mark.slow
def test_compatible_requests_of_different_clients_run_as_one_batch(slow_daemon, sock):
    client, make = slow_daemon
    # Hold the worker with a request far longer than the test needs (it is cancelled).
    client.send("infill", make({"text": "x = 1\n" * 20, "start": 4},
                               {"lengths": [512], "schedule": "fixed", "steps": 1024}), mid=1)
    _poll_status(sock, lambda st: st["counters"].get("requests") == 1 and st["queued"] == 0)
    others = [DaemonClient(sock, timeout=120) for _ in range(2)]
    for i, other in enumerate(others):
        other.send("infill", make({"text": f"y = {i}\n" * 5, "start": 4},
                                  {"max_tokens": 8, "ensemble": 2}), mid=10 + i)
    _poll_status(sock, lambda st: st["queued"] == 2)
    client.send("cancel", {"id": 1})
    assert client.read()["error"]["kind"] == "RequestCancelled"
    for other in others:
        reply = other.read()
        assert "result" in reply, reply
        other.close()
    st = client.call("status")
    counters = st["counters"]
    assert counters["batches"] >= 1 and counters["batched_requests"] >= 2, counters
    # Run together, each tried one mask count instead of its ensemble of two (shed_load).
    assert st["models"][0]["shed"] == 2, st["models"]


def test_an_idle_daemon_exits_and_removes_its_socket(sock):
    proc = spawn_daemon(sock, idle_timeout=1)
    wait_for(sock).close()
    assert proc.wait(120) == 0
    assert not sock.exists()


@pytest.mark.slow
def test_a_repeated_completion_is_answered_from_the_cache_until_a_model_loads(pattern_ckpt,
                                                                             sock):
    spawn_daemon(sock, idle_timeout=120)
    client = wait_for(sock)
    model = {"checkpoint": str(pattern_ckpt)}

    def ask(text: str, **settings) -> dict:
        return client.call("infill", {"document": "file:///c.txt", "model": model,
                                      "request": {"text": text, "start": 15},
                                      "settings": {"max_tokens": 8, "ensemble": 1, **settings}})

    line = "c0 c1 c2 c3 c4  c8 c9 c10"
    first = ask(line)
    again = ask(line)  # typed a character and deleted it: the same request
    assert first["cached"] is False and again["cached"] is True
    assert (again["forward_passes"], again["seconds"]) == (0, 0)
    assert dict(again, forward_passes=first["forward_passes"], seconds=first["seconds"],
                cached=False) == first
    ask(line.replace("c10", "c11"))  # another text: the model runs
    ask(line, temperature=0.7)
    ask(line, temperature=0.7)  # sampled without a seed: never from the cache
    st = client.call("status")
    assert st["counters"]["cache_hits"] == 1 and st["counters"]["completed"] == 4
    assert st["cached_results"] == 2
    client.call("load", {"model": {"checkpoint": str(pattern_ckpt), "dtype": "float32"}})
    assert client.call("status")["cached_results"] == 0  # a load may change every answer
    assert ask(line)["cached"] is False
    client.close()


def test_malformed_daemon_lines_get_an_error_reply_and_the_connection_stays(sock):
    spawn_daemon(sock, idle_timeout=120)
    client = wait_for(sock)
    bad = [b"not json", b"[1, 2]", b'{"id": [1], "method": "status"}',
           b'{"id": 3, "method": 7}', b'{"id": 4, "method": "status", "params": [1]}',
           b'{"method": "cancel", "params": [5]}', b'{"id": 6, "method": "infill", "params": {}}',
           b'{"id": 7, "method": "infill", "params": {"request": {}, "settings": [1]}}',
           b'{"method": "infill", "params": {"request": {"text": "x", "start": 0}}}']
    for line in bad:
        client.sock.sendall(line + b"\n")
    replies = [client.read() for _ in bad]
    assert all(r["error"]["kind"] == "UsageError" for r in replies), replies
    assert [r["id"] for r in replies] == [None, None, None, 3, 4, None, 6, 7, None]
    assert client.call("hello")["pid"] > 0  # the same connection still works
    client.close()


@pytest.mark.slow
def test_consecutive_completions_of_a_document_reuse_its_window(slow_daemon):
    """A document's next completion runs only the window positions after the ones it shares
    with the last (dual cache); another document does not get its keys and values."""
    client, make = slow_daemon
    text = "def f(x):\n    return x\n" * 12
    dual = {"cache": "dual", "lengths": [4]}
    client.call("infill", make({"text": text, "start": len(text) - 3}, dual))
    client.call("infill", make({"text": text, "start": len(text) - 2}, dual))
    assert client.call("status")["models"][0]["prefix_reuses"] == 1
    other = dict(make({"text": text, "start": len(text) - 1}, dual), document="file:///b.py")
    client.call("infill", other)
    assert client.call("status")["models"][0]["prefix_reuses"] == 1


def _other_checkout(tmp: Path) -> Path:
    """The code of this checkout with one comment changed, laid out as an installed
    ``diffill`` package on its own path: another build of diffill."""
    import shutil
    other = tmp / "other"
    for package in ("server", "infill", "model"):
        shutil.copytree(ROOT / package, other / "diffill" / package,
                        ignore=lambda d, names: [n for n in names if n in ("checkpoints",
                                                                           "__pycache__")])
    # A regular package, so that PYTHONPATH wins over this checkout's editable install.
    (other / "diffill" / "__init__.py").write_text("")
    with open(other / "diffill" / "server" / "__init__.py", "a") as f:
        f.write("# another build\n")
    return other


def _serve_from(folder: Path, sock: Path, *flags: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(folder), HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "diffill.server.cli", "serve", "--socket", str(sock),
                             "--no-preload", *flags], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_a_daemon_of_other_code_is_refused_or_when_idle_and_autostarted_replaced(
        tmp_path, sock):
    """A daemon started from another checkout is never used: one a person started is
    refused with both builds named (the CLI then runs in-process, ``status`` says so); one a
    client started for itself and idle is shut down and replaced by this build's."""
    from diffill.server.daemon_client import AsyncDaemonClient
    from diffill.server.errors import DaemonUnavailable
    from diffill.server.protocol import build_id
    other = _other_checkout(tmp_path)
    by_hand = _serve_from(other, sock)
    client = wait_for(sock)
    theirs = client.call("hello", {"name": "test"})
    client.close()
    assert theirs["build"] != build_id() and not theirs["autostarted"]

    async def connect() -> dict:
        c = AsyncDaemonClient(sock, name="test")
        try:
            await c.ensure()
            return await c.request("status", {})
        finally:
            await c.close()
    with pytest.raises(DaemonUnavailable) as err:
        asyncio.run(connect())
    assert theirs["build"] in str(err.value) and build_id() in str(err.value)
    assert "diffill serve --stop" in str(err.value) and by_hand.poll() is None
    st = subprocess.run([sys.executable, "-m", "diffill.server.cli", "status", "--socket", str(sock)],
                        cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert st.returncode == 0 and "runs other code" in st.stderr
    stop_daemon(sock)
    assert by_hand.wait(120) == 0

    autostarted = _serve_from(other, sock, "--autostarted")
    wait_for(sock).close()
    mine = asyncio.run(connect())
    assert mine["build"] == build_id() and mine["pid"] != autostarted.pid
    assert autostarted.wait(120) == 0
