"""What several commands share: the model and sampler options, engine loading, reading a
file or stdin into a request, and the JSON shape of a result.

Its own module so every import points one way: ``cli`` (the parser) imports the command
modules, and they import this, never ``cli``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from diffill.infill.api import (CACHES, FILLER_ORDERS, ORDERS, PASS_POSITIONS, REFRESHES, SCHEDULES,
                                InfillRequest, InfillSettings, with_overrides)
from diffill.infill.context import ContextBudget
from diffill.infill.post import MODES
from diffill.infill.text import decode_source, offset_at, parse_position, parse_range, position_of

from .errors import BadInput, DiffillError, UsageError, classify

if TYPE_CHECKING:  # the engines import torch; the commands that need one load it
    from diffill.infill.engines import InfillEngine

MARKER = "<|fill|>"
log = logging.getLogger("diffill")


def add_model_options(p: argparse.ArgumentParser,
                      engines: Sequence[str] = ("local", "openai")) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="checkpoint folder, bundled name or hub id "
                                   "(default: the bundled diffill-small)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    g.add_argument("--dtype", help="float32 | bfloat16 | float16 (default: bf16 on cuda)")
    g.add_argument("--family", help="force the checkpoint family (dream, llada, diffill ...)")
    if len(engines) == 1:  # a command that runs the model in this process only
        p.set_defaults(engine=engines[0], engine_url=None, engine_api_key_file=None,
                       engine_allow_plain_http=False)
        return
    g.add_argument("--engine", choices=engines, default="local",
                   help="where the model runs: local (this machine), openai (an "
                        "OpenAI-compatible server at --engine-url, --model naming the served "
                        "model)" + (", vllm (start vLLM's server with --model and use it)"
                                    if "vllm" in engines else ""))
    g.add_argument("--engine-url", metavar="URL",
                   help="the server of --engine openai, e.g. https://gpu-box:8000/v1")
    g.add_argument("--engine-api-key-file", metavar="FILE",
                   help="file whose first line is that server's API key (default: "
                        "$DIFFILL_ENGINE_API_KEY)")
    g.add_argument("--engine-allow-plain-http", action="store_true",
                   help="allow http:// to a host other than loopback (code and key in "
                        "clear text)")


def model_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The model spec (the daemon's ``params.model``) the model options give."""
    key_file = args.engine_api_key_file
    return {"engine": args.engine, "checkpoint": args.model, "device": args.device,
            "dtype": args.dtype, "family": args.family, "url": args.engine_url,
            # absolute: a daemon reads it from a folder of its own
            "key_file": os.path.abspath(os.path.expanduser(key_file)) if key_file else None,
            "allow_plain_http": args.engine_allow_plain_http}


def add_sampler_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampler")
    g.add_argument("--steps", type=int, help="forward passes for fixed/blocks schedules")
    g.add_argument("--max-tokens", type=int, help="most tokens a completion may take")
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--threshold", type=float, help="commit probability for --schedule threshold")
    g.add_argument("--order", choices=ORDERS)
    g.add_argument("--block-size", type=int,
                   help="block length of the blocks schedule and the dual cache (default: the "
                        "checkpoint's, else 32); given with --schedule threshold, that schedule "
                        "decodes block after block too (Fast-dLLM's way)")
    g.add_argument("--filler-order", choices=FILLER_ORDERS,
                   help="where a fill may end: left (filler only behind the written part), "
                        "any (wherever the model is surest); auto asks the checkpoint")
    g.add_argument("--cache", choices=CACHES,
                   help="dual: reuse the context's keys/values between passes; auto (the "
                        "default): what the checkpoint records")
    g.add_argument("--pass-positions", choices=PASS_POSITIONS,
                   help="with the dual cache, what a pass runs: block (all of it; the default) "
                        "or open (masked positions and those committed by the last pass: faster "
                        "on long spans, slightly less often right)")
    g.add_argument("--refresh", choices=REFRESHES,
                   help="with the dual cache, when the whole window runs again: at every block "
                        "or once per fill (faster when a fill spans blocks); auto (the "
                        "default): what the checkpoint records")
    g.add_argument("--no-prefix-reuse", dest="reuse_prefix", action="store_false",
                   default=None,
                   help="never reuse a document's last window (the cold reference for "
                        "diffill eval --typing)")
    g.add_argument("--faithful", action="store_true", default=None,
                   help="decode as the checkpoint's authors do (a paper's setting): none of "
                        "diffill's own rules for a fill (no empty-fill ban, no left filler "
                        "order, no drafts, no token healing, no post-processing: the decode "
                        "up to its first EOS), the fixed schedule with one token per step "
                        "unless --schedule/--steps say otherwise; add the paper's --order")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--mode", choices=MODES)
    g.add_argument("--ensemble", type=int, help="mask counts tried at once (length ensemble)")
    g.add_argument("--lengths", help="explicit mask counts, comma-separated")
    g.add_argument("--prefix-tokens", type=int, help="context budget before the cursor")
    g.add_argument("--suffix-tokens", type=int, help="context budget after the cursor")
    g.add_argument("--min-confidence", type=float, metavar="P",
                   help="show no completion scored below P (0-1; default: the model's "
                        "calibrated value)")
    g.add_argument("--no-name-check", dest="check_names", action="store_false", default=None,
                   help="do not rank down (or hide) candidates that use names defined "
                        "nowhere")
    g.add_argument("--no-drafts", dest="drafts", action="store_false", default=None,
                   help="do not verify drafts from the code at hand (the typed line's tail "
                        "found elsewhere, the partial word's completions); the model alone")
    g.add_argument("--show-unknown-names", dest="hide_unknown_names", action="store_false",
                   default=None,
                   help="show a completion even when it uses a name defined nowhere (in the "
                        "file, the extra context, builtins or keywords); ranked last still")
    g.add_argument("--no-token-healing", dest="token_healing", action="store_false",
                   default=None,
                   help="keep a partial word before the cursor in the context as it is "
                        "tokenized, instead of having the fill write it again")


def settings_from_args(args: argparse.Namespace):
    lengths = None
    if getattr(args, "lengths", None):
        try:
            lengths = tuple(int(x) for x in args.lengths.split(","))
        except ValueError:
            raise UsageError(f"--lengths {args.lengths!r} is not a comma-separated list") from None
    try:
        s = with_overrides(
            InfillSettings(), max_tokens=args.max_tokens, mode=args.mode, ensemble=args.ensemble,
            lengths=lengths, steps=args.steps, schedule=args.schedule, threshold=args.threshold,
            order=args.order, block_size=args.block_size, cache=args.cache,
            filler_order=args.filler_order, min_confidence=args.min_confidence,
            pass_positions=getattr(args, "pass_positions", None),
            refresh=getattr(args, "refresh", None),
            check_names=args.check_names, reuse_prefix=getattr(args, "reuse_prefix", None),
            hide_unknown_names=getattr(args, "hide_unknown_names", None),
            token_healing=getattr(args, "token_healing", None),
            drafts=getattr(args, "drafts", None),
            temperature=args.temperature, top_p=args.top_p, seed=args.seed,
            faithful=getattr(args, "faithful", None))
        if s.sampler.faithful:  # the authors' decoders take a fixed number of steps
            s = replace(s, sampler=replace(s.sampler, schedule=args.schedule or "fixed"))
        if args.prefix_tokens is not None or args.suffix_tokens is not None:
            b = s.budget
            s = replace(s, budget=ContextBudget(
                args.prefix_tokens if args.prefix_tokens is not None else b.prefix_tokens,
                args.suffix_tokens if args.suffix_tokens is not None else b.suffix_tokens,
                b.extra_tokens))
    except (ValueError, TypeError) as exc:
        raise UsageError(_as_flags(str(exc))) from None
    return s


_SETTING_NAME = re.compile(r"\b(max_tokens|min_confidence|ensemble|steps|threshold|block_size|"
                           r"top_p|temperature|prefix_tokens|suffix_tokens|lengths)\b")


def _as_flags(message: str) -> str:
    """A settings error in the words of the command line: ``min_confidence`` is
    ``--min-confidence`` there."""
    return _SETTING_NAME.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)


def load_engine(args: argparse.Namespace) -> InfillEngine:
    if args.engine == "openai":  # the model is on a server: no torch here
        from diffill.infill.remote import OpenAIEngine, spec_from
        engine = OpenAIEngine.connect(spec_from(model_spec(args)))
        log.info("model %s", json.dumps(engine.model.describe()))
        return engine
    # torch: only for a command that runs a model in this process
    from diffill.infill import make_engine
    from diffill.model import load_model
    model = load_model(args.model, device=args.device, dtype=args.dtype, family=args.family)
    log.info("model %s", json.dumps(model.describe()))
    return make_engine(model)


def read_input(path: str | None, stdin=None) -> tuple[str, str]:
    """(text, name) of a file or of stdin ('-' or no path)."""
    if path in (None, "-"):
        stream = stdin if stdin is not None else sys.stdin.buffer
        return decode_source(stream.read(), "stdin"), "stdin"
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{path}: no such file")
    if p.is_dir():
        raise BadInput(f"{path}: is a directory")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})") from None
    return decode_source(data, path), path


def build_request(text: str, name: str, *, at: str | None = None, select: str | None = None,
                  action: str | None = None, language: str | None = None,
                  instruction: str | None = None):
    """An :class:`InfillRequest` from CLI-style specs (1-based positions) or the marker."""
    path = None if name == "stdin" else name
    if at and select:
        raise UsageError("give --at or --select, not both")
    if at:
        line, col = parse_position(at)
        return InfillRequest(text, offset_at(text, line, col), action="complete",
                             language=language, path=path), text
    if select:
        (l0, c0), (l1, c1) = parse_range(select)
        start, end = offset_at(text, l0, c0), offset_at(text, l1, c1)
        if end <= start:
            raise BadInput(f"selection {select} is empty or reversed")
        return InfillRequest(text, start, end, action=action or "rewrite", language=language,
                             path=path, instruction=instruction), text
    if instruction:
        raise UsageError("--instruction goes with --select and --rewrite")
    count = text.count(MARKER)
    if count != 1:
        raise BadInput(f"{name}: expected exactly one {MARKER} marker, found {count} "
                       "(or give --at LINE:COL)")
    cursor = text.index(MARKER)
    clean = text[:cursor] + text[cursor + len(MARKER):]
    return InfillRequest(clean, cursor, action="complete", language=language, path=path), clean


def result_json(result, text: str, request_id: Any = None, candidates: int = 3) -> dict:
    def pos(offset: int) -> dict:
        line, col = position_of(text, offset)
        return {"line": line + 1, "column": col + 1}

    best = result.best
    out: dict[str, Any] = {}
    if request_id is not None:
        out["id"] = request_id
    out.update({
        "text": best.text if best else None,
        "range": {"start": pos(best.start), "end": pos(best.end)} if best else None,
        "mode": result.mode,
        "candidates": [{"text": c.text, "score": round(c.score, 4), "parses": c.parses}
                       for c in result.items[:candidates]],
        "forward_passes": result.forward_passes,
        "seconds": round(result.seconds, 4),
        "score": round(best.score, 4) if best else None,
        "withheld": result.withheld,
        "withheld_by": result.withheld_by,
    })
    if result.mode == "refine":
        out["remasked"] = result.remasked
    return out


def apply(text: str, completion) -> str:
    return text[:completion.start] + completion.text + text[completion.end:]


# ---------------------------------------------------------------- running a command

WORKSHOP = {
    "train": "train the bundled model (resumable runs)",
    "corpus": "unpack permissively licensed wheels into a corpus folder",
    "eval": "held-out infill exact match, parse rate and the typing eval",
    "bench": "speed ratios against the plain sampler, same process",
}
"""Developer tools: ``server/cli.py`` names them and hands them whole to
``diffill.workshop.commands``, which the runtime (``lsp``, ``serve``, ``infill``) never
imports."""


def base_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    p = argparse.ArgumentParser(prog="diffill", description="Code infilling with a "
                                "masked-diffusion language model.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr")
    return p, p.add_subparsers(dest="command", metavar="COMMAND")


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (the first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def run(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """Parse ``argv`` and run its command: logging on stderr, one line per error, the exit
    codes of ``server/errors.py``."""
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.command != "train":
        # libgomp's threads spin while they wait for work; on a busy machine the spinning
        # threads take the cores the next matrix product needs (an infill measured 13-30x
        # slower under load). Inference waits passively; training, which owns the machine,
        # keeps the default. Read once, when torch loads, which has not happened yet.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("diffill: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if os.environ.get("DIFFILL_DEBUG"):
            raise
        err = classify(exc)
        if not isinstance(exc, DiffillError):
            log.debug("error", exc_info=exc)
        print(f"diffill: error: {err}", file=sys.stderr)
        return err.exit_code
