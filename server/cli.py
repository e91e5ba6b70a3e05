"""``diffill``: the command line. Subcommands import the heavy parts (torch) only when they run.

    diffill infill FILE --at LINE:COL            complete at a position (1-based)
    diffill infill FILE --select L:C-L:C --rewrite|--refine [--instruction TEXT]
    diffill infill FILE|-                         fill the <|fill|> marker (stdin with -)
    diffill infill --jsonl IN                     one JSON result per request line
    diffill lsp | serve | status                  editor server, daemon, daemon status
    diffill demo                                  infill a sample with the bundled model
    diffill train | corpus | eval | bench         developer tools (``diffill.workshop``)

Output is the completion on stdout; errors are one line on stderr with a non-zero exit code
(see ``server/errors.py``), never a traceback unless DIFFILL_DEBUG=1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from diffill.infill.wire import request_to_wire, result_from_wire, settings_to_wire

from . import lsp_commands
from .daemon_client import DaemonClient, other_build
from .errors import EXIT_OK, BadInput, DaemonUnavailable, UnsafeSocket, UsageError, classify
from .options import (WORKSHOP, add_model_options, add_sampler_options, apply, base_parser,
                      build_request, command_of, load_engine, model_spec, read_input,
                      result_json, run, settings_from_args)
from .protocol import socket_path

log = logging.getLogger("diffill")


# ---------------------------------------------------------------- infill

def cmd_infill(args: argparse.Namespace) -> int:
    # Asked for by a person or a script: the best candidate comes back with its score, under
    # the calibrated floor too (an explicit --min-confidence still filters).
    settings = replace(settings_from_args(args), explicit=True)
    if args.jsonl:
        return run_jsonl(args, settings)
    if args.refine and args.rewrite:
        raise UsageError("give --rewrite or --refine, not both")
    if (args.refine or args.rewrite) and not args.select:
        raise UsageError("--rewrite and --refine need --select L:C-L:C")
    text, name = read_input(args.file)
    action = "refine" if args.refine else "rewrite" if args.rewrite else None
    if args.instruction and not args.rewrite:
        raise UsageError("--instruction goes with --rewrite")
    req, clean = build_request(text, name, at=args.at, select=args.select, action=action,
                               language=args.language, instruction=args.instruction)
    with make_backend(args) as backend:
        result = backend.run(req, settings)
    best = result.best
    if args.json:
        print(json.dumps(result_json(result, clean, candidates=args.candidates)))
        return EXIT_OK if best is not None else 1
    if best is None:
        print(f"diffill: the model proposed no completion{withheld_why(result)}",
              file=sys.stderr)
        return 1
    if args.full:
        sys.stdout.write(apply(clean, best))
    else:
        sys.stdout.write(best.text + "\n")
    if args.stats:
        print(f"diffill: {result.mode}, {result.forward_passes} forward passes, "
              f"{result.seconds * 1000:.0f} ms", file=sys.stderr)
    return EXIT_OK


WITHHELD_WORDS = {"floor": "scored under --min-confidence",
                  "unknown name": "naming something defined nowhere",
                  "syntax": "that would break code that parses"}


def withheld_why(result) -> str:
    """Why nothing was shown, by check: `` (2 scored under --min-confidence, 1 that would
    break code that parses)``; empty when nothing was withheld."""
    parts = [f"{n} {WITHHELD_WORDS.get(k, k)}" for k, n in sorted(result.withheld_by.items())]
    return f" it would show ({', '.join(parts)})" if parts else ""


def iter_jsonl(stream) -> Iterable[tuple[int, dict | Exception]]:
    for n, raw in enumerate(stream, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("a request must be a JSON object")
            yield n, obj
        except ValueError as exc:
            yield n, BadInput(f"line {n}: not a JSON request ({exc})")


def run_jsonl(args: argparse.Namespace, settings) -> int:
    """Batch mode: one request per input line, one result per output line, in order.

    A request is ``{"id", "text" | "file", "at" | "select", "action", "language",
    "instruction"}``; without ``at``/``select`` the text must hold the marker. A bad request
    gets an ``error`` line and the batch goes on; the exit code is non-zero if any request
    failed.
    """
    path = args.jsonl
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        p = Path(path)
        if not p.is_file():
            raise BadInput(f"{path}: no such file")
        lines = p.read_text(encoding="utf-8").splitlines()
    backend = make_backend(args)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    failures = 0
    try:
        progress = tqdm(list(iter_jsonl(lines)), desc="infill", unit="req", file=sys.stderr,
                        disable=args.quiet)
        for n, item in progress:
            rid = item.get("id", n) if isinstance(item, dict) else n
            try:
                if isinstance(item, Exception):
                    raise item
                if "text" in item:
                    text, name = str(item["text"]), item.get("path") or "stdin"
                elif "file" in item:
                    text, name = read_input(str(item["file"]))
                else:
                    raise BadInput(f"line {n}: a request needs 'text' or 'file'")
                req, clean = build_request(text, name, at=item.get("at"),
                                           select=item.get("select"), action=item.get("action"),
                                           language=item.get("language") or args.language,
                                           instruction=item.get("instruction"))
                result = backend.run(req, settings)
                record = result_json(result, clean, rid, args.candidates)
            except Exception as exc:  # one bad request must not end the batch
                err = classify(exc)
                failures += 1
                record = {"id": rid, "error": {"kind": type(err).__name__, "message": str(err)}}
            out.write(json.dumps(record) + "\n")
            out.flush()
    finally:
        backend.close()
        if out is not sys.stdout:
            out.close()
    return 0 if failures == 0 else 1


def make_backend(args: argparse.Namespace) -> Backend:
    """The running daemon when one listens (it already holds the model), else in-process.

    A CLI call never starts a daemon: scripted runs should not leave a process behind.
    """
    if not getattr(args, "no_daemon", True):
        try:
            client = DaemonClient(socket_path(args.socket))
            why = other_build(client.call("hello", {"name": "cli"}))
            if why is None:
                return DaemonBackend(client, args)
            client.close()
            print(f"diffill: warning: {why}; running in this process", file=sys.stderr)
        except UnsafeSocket as exc:
            print(f"diffill: warning: {exc}; running in this process", file=sys.stderr)
        except DaemonUnavailable:
            pass
    return InProcessBackend(args)


class Backend:
    """Where a CLI call's requests run; closed (a context manager) when the call is done."""

    def run(self, req, settings):
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DaemonBackend(Backend):
    """Requests through the daemon: the same engine, without loading the model here."""

    def __init__(self, client, args: argparse.Namespace) -> None:
        self.client = client
        self.model = model_spec(args)
        log.info("using the diffill daemon on %s", client.path)

    def run(self, req, settings):
        r = self.client.call("infill", {"request": request_to_wire(req), "model": self.model,
                                        "settings": settings_to_wire(settings)})
        return result_from_wire(r)

    def close(self) -> None:
        self.client.close()


class InProcessBackend(Backend):
    def __init__(self, args: argparse.Namespace) -> None:
        self.engine = load_engine(args)

    def run(self, req, settings):
        return self.engine.run(req, settings)

    def close(self) -> None:
        self.engine.close()  # an engine on a server: its connections


# ---------------------------------------------------------------- demo

SAMPLES = Path(__file__).resolve().parent / "samples"


def cmd_demo(args: argparse.Namespace) -> int:
    """``diffill demo``: the bundled model infills a sample file and says how it went."""
    text, name = read_input(args.file)
    req, clean = build_request(text, name, language="python")
    t0 = time.perf_counter()
    engine = load_engine(args)
    t_load = time.perf_counter() - t0
    settings = settings_from_args(args)
    # The demo shows the model's answer even when an editor would withhold it, and says so.
    result = engine.run(req, replace(settings, min_confidence=0.0, hide_unknown_names=False))
    floor = engine.min_confidence(settings, result.mode)
    model = engine.model.describe()
    print(f"# diffill demo: {Path(name).name} with {Path(model['checkpoint']).name} "
          f"({model['parameters'] / 1e6:.1f}M parameters) on {model['device']}")
    print(f"# model loaded in {t_load:.2f}s; infill took {result.seconds * 1000:.0f} ms "
          f"({result.forward_passes} forward passes, {result.mode} mode)")
    if result.best is None:
        print("# the model proposed no completion: every candidate was empty after "
              "post-processing.")
        _bundled_model_hint(model["checkpoint"])
        return EXIT_OK
    best = result.best
    expected = Path(f"{name}.expected")
    same = ""
    if expected.is_file():  # the sample's removed text, to say whether the model found it
        want = expected.read_text(encoding="utf-8").strip()
        same = f", equals the removed text: {best.text.strip() == want}"
    shown = "an editor shows it" if best.score >= floor else \
        f"an editor would not show it: under minConfidence {floor:.2f}"
    if best.unknown and settings.withholds_unknown_names:
        shown = f"an editor would not show it: it names {', '.join(best.unknown)}, defined " \
                f"nowhere in the file"
    print(f"# completion (parses: {best.parses}{same}; score {best.score:.2f}, {shown}):")
    print(best.text)
    if best.parses is False:
        _bundled_model_hint(model["checkpoint"])
    print("# file with the completion:")
    sys.stdout.write(apply(clean, best))
    return EXIT_OK


def _bundled_model_hint(checkpoint: str) -> None:
    """What to read, or try, when the bundled model's demo answer is empty or broken."""
    if Path(checkpoint).name == "diffill-small":
        print("# The bundled diffill-small is undertrained (2.6 hours on two CPU cores); "
              "see model/checkpoints/diffill-small/README.md, or run any checkpoint of "
              "the README's table with --model.")



# ---------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    p, sub = base_parser()

    q = sub.add_parser("infill", help="fill a gap, rewrite or refine a selection")
    q.add_argument("file", nargs="?", help="source file, or - for stdin (default: stdin)")
    q.add_argument("--at", metavar="LINE:COL", help="complete at this position (1-based)")
    q.add_argument("--select", metavar="L:C-L:C", help="selection to rewrite (end exclusive)")
    q.add_argument("--rewrite", action="store_true", help="regenerate the selection")
    q.add_argument("--refine", action="store_true", help="re-do only its doubtful tokens")
    q.add_argument("--instruction", metavar="TEXT",
                   help="with --rewrite: what to do to the selection (chat models: "
                        "DiffusionGemma)")
    q.add_argument("--jsonl", metavar="IN", help="batch: one JSON request per line (- = stdin)")
    q.add_argument("--output", "-o", help="with --jsonl: write results here")
    q.add_argument("--language", help="language id (python enables syntax checks)")
    q.add_argument("--json", action="store_true", help="print a JSON result")
    q.add_argument("--full", action="store_true", help="print the whole file with the fill")
    q.add_argument("--candidates", type=int, default=3, help="candidates in JSON output")
    q.add_argument("--stats", action="store_true", help="print timing to stderr")
    q.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    q.add_argument("--no-daemon", action="store_true",
                   help="run in-process even when a daemon is running")
    q.add_argument("--socket", help="daemon socket (default: per user)")
    add_model_options(q)
    add_sampler_options(q)
    q.set_defaults(func=cmd_infill)

    d = sub.add_parser("demo", help="infill a sample file with the bundled model")
    d.add_argument("file", nargs="?", default=str(SAMPLES / "demo.py"))
    add_model_options(d, engines=("local",))
    add_sampler_options(d)
    d.set_defaults(func=cmd_demo)

    lsp_commands.register(sub)  # the editor-facing commands
    for name, help_text in WORKSHOP.items():  # listed in --help; parsed by the workshop
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if command_of(argv) in WORKSHOP:
        from diffill.workshop.commands import main as workshop_main
        return workshop_main(argv)
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
