"""Subcommands of the editor side: ``lsp``, ``serve`` (the daemon) and ``status``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .daemon_client import DaemonClient, other_build
from .errors import EXIT_DAEMON, EXIT_OK, DaemonUnavailable, UsageError
from .options import add_model_options, model_spec
from .protocol import socket_path
from .sockets import private_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lsp", help="language server over stdio (editors start this)")
    p.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP instead (debugging)")
    p.set_defaults(func=cmd_lsp)

    s = sub.add_parser("serve", help="the per-machine daemon that keeps the model loaded")
    s.add_argument("--socket", help="unix socket path (default: per user)")
    s.add_argument("--idle-timeout", type=float, default=None,
                   help="exit after this many seconds without requests (default 1800; "
                        "never with --http)")
    s.add_argument("--keep-models", type=int, default=1, help="models kept loaded at once")
    s.add_argument("--stop", action="store_true", help="ask a running daemon to exit")
    s.add_argument("--no-preload", action="store_true",
                   help="load the model on the first request instead of at start")
    s.add_argument("--autostarted", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--http", metavar="HOST:PORT",
                   help="also answer llama.cpp's /infill and OpenAI's /v1/completions (with "
                        "suffix) for other editors' plugins, e.g. 127.0.0.1:8012")
    s.add_argument("--api-key", help="the bearer token HTTP clients send (default: one "
                                     "generated once and kept; `diffill status` shows it)")
    s.add_argument("--http-allow-remote", action="store_true",
                   help="allow --http on an address other than loopback")
    add_model_options(s, engines=("local", "openai", "vllm"))
    v = s.add_argument_group("vllm (--engine vllm)")
    v.add_argument("--vllm-python", metavar="PYTHON",
                   help="the interpreter whose vLLM runs the server (default: this one)")
    v.add_argument("--vllm-args", metavar="ARGS", default="",
                   help="more flags for vLLM's server, one string (e.g. \"--max-model-len "
                        "8192 --gpu-memory-utilization 0.8\")")
    v.add_argument("--vllm-start-timeout", type=float, default=900.0, metavar="SECONDS",
                   help="how long vLLM may take to be ready (downloads and compiles "
                        "included; default 900)")
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("status", help="model, device, memory and counters of the daemon")
    t.add_argument("--socket", help="unix socket path (default: per user)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_status)


def cmd_lsp(args: argparse.Namespace) -> int:
    from .lsp import run  # pygls and lsprotocol: only for the editor server
    return run(args.tcp)


def cmd_serve(args: argparse.Namespace) -> int:
    # The daemon's own imports (its HTTP front end's aiohttp among them): only here, so the
    # other commands (the editor server, a CLI fill) do not pay for them.
    from .daemon import AlreadyRunning, run_daemon
    from .http_front import check_bind, load_token, parse_address
    from .vllm_child import VllmChild
    path = socket_path(args.socket)
    if args.stop:
        client = DaemonClient(path, timeout=10)
        client.call("shutdown")
        client.close()
        print(f"diffill daemon on {path} is stopping", file=sys.stderr)
        return EXIT_OK
    if not args.verbose:  # a service says where it listens, what it loads and why it stops
        logging.getLogger("diffill").setLevel(logging.INFO)
    preload = None if args.no_preload else model_spec(args)
    child = None
    if args.engine == "vllm":
        if not args.model:
            raise UsageError("--engine vllm needs --model: the hub id or folder vLLM serves")
        child = VllmChild(args.model, path.parent, python=args.vllm_python or sys.executable,
                          extra_args=args.vllm_args, start_seconds=args.vllm_start_timeout)
    http = None
    if args.http:
        host, port = parse_address(args.http)
        check_bind(host, args.http_allow_remote)
        private_folder(path.parent)
        http = (host, port, load_token(path.parent, args.api_key))
    idle = args.idle_timeout if args.idle_timeout is not None else \
        float("inf") if http or child else 1800.0  # a server for plugins, or vLLM's, stays up
    try:
        return run_daemon(path, idle_timeout=idle, preload=preload,
                          keep_models=args.keep_models, autostarted=args.autostarted, http=http,
                          child=child)
    except AlreadyRunning as exc:
        print(f"diffill: {exc}", file=sys.stderr)
        return EXIT_OK


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_status(args: argparse.Namespace) -> int:
    path = socket_path(args.socket)
    try:
        client = DaemonClient(path, timeout=10)
    except DaemonUnavailable:
        print(f"diffill: no daemon running on {path}", file=sys.stderr)
        return EXIT_DAEMON
    why = other_build(client.call("hello", {"name": "status"}))
    st = client.call("status")
    client.close()
    if why is not None:
        print(f"diffill: {why}", file=sys.stderr)
    if args.json:
        print(json.dumps(st, indent=1))
        return EXIT_OK
    print(f"daemon   pid {st['pid']}, up {st['uptime_s']:.0f}s, {st['state']}, socket "
          f"{st['socket']}")
    if not st["models"]:
        print("model    none loaded yet")
    for m in st["models"]:
        if m.get("engine") == "openai":
            latency = f", last answer {m['latency_ms']:.0f} ms" if m.get("latency_ms") else ""
            print(f"model    {m['checkpoint']} on {m['url']} ({m['family']} model, "
                  f"OpenAI-compatible server{latency})")
            continue
        print(f"model    {m['checkpoint']} ({m['family']}, {m['parameters'] / 1e6:.1f}M "
              f"parameters, {_size(m['memory_bytes'])})")
        n = m.get("threads")
        threads = f", up to {n} CPU thread{'s' if n != 1 else ''}" if n and \
            m["device"] == "cpu" else ""
        print(f"device   {m['device']} {m['dtype']}{threads}; loaded in "
              f"{m['load_seconds']:.2f}s")
    print(f"memory   process {_size(st['rss_bytes'])}"
          + (f", cuda {_size(st['cuda_bytes'])}" if st.get("cuda_bytes") is not None else ""))
    c = st["counters"]
    print(f"requests {c.get('requests', 0)} ({c.get('completed', 0)} completed, "
          f"{c.get('cancelled', 0)} cancelled, {c.get('failed', 0)} failed, "
          f"{c.get('batched_requests', 0)} batched); model loads {st['loads']}; "
          f"clients {st['clients']}")
    if st.get("http"):
        print(f"http     {st['http']['url']} (/infill, /v1/completions), "
              f"{st['http']['requests']} requests; token {st['http']['token']}")
    if st.get("vllm"):
        v = st["vllm"]
        print(f"vllm     pid {v['pid']} on {v['url']}, {v['state']}; "
              f"log {v['log']}")
    if st.get("last_error"):
        print(f"last error {st['last_error']}")
    return EXIT_OK
