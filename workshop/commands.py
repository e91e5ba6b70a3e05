"""The developer tools' subcommands: ``diffill train``, ``corpus``, ``eval``, ``bench``
(``server/cli.py`` hands these over whole). Each imports what it needs when it runs, so that
asking for one tool's help does not load torch."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence
from pathlib import Path

from diffill.infill.api import CACHES, FILLER_ORDERS, REFRESHES
from diffill.server.errors import EXIT_OK, BadInput, UsageError
from diffill.server.options import add_model_options, add_sampler_options, base_parser, run

def build_parser() -> argparse.ArgumentParser:
    p, sub = base_parser()
    register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), list(sys.argv[1:] if argv is None else argv))


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train the bundled model (resumable runs)")
    t.add_argument("run_dir", help="run folder (tokenizer, token stream, state.pt)")
    t.add_argument("--minutes", type=float, help="train this long, save, stop")
    t.add_argument("--steps", type=int, help="train this many more steps, save, stop")
    t.add_argument("--threads", type=int, help="CPU threads (default: all)")
    t.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    t.add_argument("--export", metavar="DIR", help="write the run's model as a checkpoint folder")
    t.add_argument("--card", help="model card (markdown) to write beside an export")
    t.add_argument("--max-fill", type=int, metavar="N",
                   help="record in the export the most masks its fills do well with (caps "
                        "max_tokens; measure it with diffill eval --lengths)")
    t.add_argument("--min-confidence", type=confidence_floors, metavar="P",
                   help="record in the export the calibrated score under which completions "
                        "are not shown (diffill eval --calibrate): one score, or one per "
                        "mode as line=P,block=P")
    t.add_argument("--cache", choices=[c for c in CACHES if c != "auto"],
                   help="record in the export the cache its held-out eval was measured with "
                        "(what cache: auto uses)")
    t.add_argument("--cache-blocks", type=int, metavar="N",
                   help="record in the export the dual cache's block length its held-out eval "
                        "was measured with (what block_size 0 uses)")
    t.add_argument("--refresh", choices=[r for r in REFRESHES if r != "auto"],
                   help="record in the export when the dual cache is refreshed: every block, "
                        "or once per fill where its eval showed that keeps the answers")
    t.add_argument("--cpu-bf16", action="store_true",
                   help="record in the export that its answers hold in bf16: CPUs with native "
                        "bf16 then run it in bf16 by default")
    t.add_argument("--filler-order", choices=[f for f in FILLER_ORDERS if f != "auto"],
                   help="record in the export the filler order its fills do best with")
    t.add_argument("--bf16-weights", action="store_true",
                   help="export the weights in bf16 (half the size; loads as any dtype)")
    t.add_argument("--shard-mb", type=float, metavar="MB",
                   help="export the weights in shards of at most MB megabytes each")
    t.add_argument("--compile", action="store_true",
                   help="run the transformer through torch.compile (about a minute to "
                        "compile, then faster steps)")
    t.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="bf16 autocast: auto uses it on CUDA and on CPUs with native bf16")
    t.add_argument("--save-every", type=float, metavar="MIN",
                   help="also write state.pt every MIN minutes of a run")
    t.add_argument("--prefetch", type=int, metavar="N",
                   help="make batches N steps ahead in a background thread (default: 4 on "
                        "CUDA, 0 on a CPU)")
    t.add_argument("--corpus", metavar="DIR",
                   help="for a new run: also train on the wheels unpacked in DIR "
                        "(see diffill corpus)")
    t.add_argument("--config", help="JSON of TrainConfig fields for a new run")
    t.add_argument("--recipe", metavar="NAME",
                   help="for a new run: a named recipe (gpu-base: the bundled model's GPU "
                        "recipe, fitted to a time budget; cpu-tiny); --config fields go over it")
    t.add_argument("--budget-minutes", type=float, metavar="MIN",
                   help="for a new run: training time in all; the schedule is fitted to it "
                        "from the speed measured at the start (the recipe's own otherwise)")
    t.add_argument("--init-from", metavar="CKPT",
                   help="start a new run from this checkpoint's weights and tokenizer "
                        "(e.g. model/checkpoints/diffill-small) instead of from scratch")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("corpus", help="unpack permissively licensed wheels into a corpus "
                                      "folder for diffill train --corpus")
    c.add_argument("wheels", help="folder of .whl files (pip download --no-deps "
                                  "--only-binary=:all: -d WHEELS -r workshop/corpus-packages.txt)")
    c.add_argument("out", help="corpus folder to write")
    c.set_defaults(func=cmd_corpus)

    e = sub.add_parser("eval", help="held-out infill exact match and parse rate")
    e.add_argument("--n", type=int, default=200, help="spans per mode")
    e.add_argument("--sample-seed", type=int, default=0, help="seed for choosing spans")
    e.add_argument("--modes", default="line,block", help="comma-separated: line, block")
    e.add_argument("--json", action="store_true")
    e.add_argument("--calibrate", action="store_true",
                   help="also print coverage and precision over a range of min-confidence "
                        "values (what --min-confidence to record in an export)")
    e.add_argument("--typing", action="store_true",
                   help="ask each span as while typing: the previous keystroke's request runs "
                        "first on the same document (prefix reuse applies; --no-prefix-reuse "
                        "for the cold reference)")
    e.add_argument("--asked", action="store_true",
                   help="ask each span as the CLI and an invoked completion do (explicit: "
                        "drafts whole, the syntax guard off), not as a ghost that appears by "
                        "itself")
    e.add_argument("--keystrokes", action="store_true",
                   help="the typing eval instead: type --n held-out lines back one key at a "
                        "time, a ghost asked after every key (taken whole, or its first word, "
                        "when the line goes on with it), for diffill, the buffer's words and "
                        "the drafts alone on the same keys; keys saved, ghosts shown and taken, "
                        "tokens per pass, latency")
    e.add_argument("--seeds", type=seed_list, metavar="S,S,...",
                   help="with --keystrokes: the lines of each of these sample seeds (--n each), "
                        "typed as one sample: pooled figures (a 40-line sample moves the share "
                        "of ghosts taken by about three points; choose floors on several)")
    e.add_argument("--lsp", action="store_true",
                   help="with --keystrokes: diffill answers through a real diffill lsp process "
                        "(every key a didChange and an automatic inline completion), with the "
                        "server's default settings (the sampler options do not apply)")
    e.add_argument("--workspace", action="store_true",
                   help="each line's or span's held-out package (its other files) is the "
                        "workspace, as an editor's open folder: its drafts go with every "
                        "request (and, with --keystrokes, to the drafts alone)")
    e.add_argument("--files", nargs="*", help="evaluate on these files instead of the held-out "
                                              "packages")
    add_model_options(e)  # a served model too (engine openai): the same evals, its answers
    add_sampler_options(e)
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="speed ratios against the plain sampler, same process")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--context", type=int, default=1024, help="context tokens around the gap")
    b.add_argument("--span", type=int, default=32, help="masked tokens")
    b.add_argument("--write", metavar="MD", help="append the table to this markdown file")
    b.add_argument("--random-config", help="benchmark a random-weight model of this shape "
                                           "instead of --model: a preset (open-dcoder-0.5b, "
                                           "dream-7b, diffusiongemma-tiny, "
                                           "diffusiongemma-26b-a4b) or config.json fields "
                                           "as JSON")
    b.add_argument("--canvases", type=int, default=1,
                   help="block-diffusion models: canvases per answer")
    b.add_argument("--steps", type=int, default=0,
                   help="block-diffusion models: at most this many denoising steps per canvas "
                        "(default: the checkpoint's budget)")
    b.add_argument("--no-ar", action="store_true",
                   help="skip the autoregressive baseline (transformers' decoder of the same "
                        "shape: the same weights for mask models, random for block models)")
    b.add_argument("--e2e", action="store_true",
                   help="time the whole editor path instead: diffill lsp over stdio, a fresh "
                        "daemon, invoked completions and scripted typing (see workshop/bench_e2e.py)")
    b.add_argument("--places", type=int, default=40, help="--e2e: invoked completions")
    b.add_argument("--lines", type=int, default=8, help="--e2e: lines retyped")
    b.add_argument("--keystroke-ms", type=float, default=120,
                   help="--e2e: time between two typed characters")
    b.add_argument("--editor-settings", type=json.loads, metavar="JSON",
                   help="--e2e: the editor's settings for the server, as JSON "
                        "(e.g. '{\"ensemble\": 1}')")
    add_model_options(b, engines=("local",))
    b.set_defaults(func=cmd_bench)



def seed_list(raw: str) -> list[int]:
    """``--seeds``: sample seeds, comma-separated (``0,1,2,3``)."""
    try:
        seeds = [int(p) for p in raw.split(",") if p.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"{raw!r}: seeds as whole numbers, e.g. 0,1,2,3")
    return seeds


def confidence_floors(raw: str) -> "float | dict[str, float]":
    """``--min-confidence`` of an export: ``0.6`` for every mode, or ``line=0.6,block=0.8``;
    checked as the profile checks config.json's value."""
    from diffill.model.profile import ProfileError, parse_floors
    try:
        value = float(raw) if "=" not in raw else \
            {k.strip(): float(v) for k, v in (p.split("=", 1) for p in raw.split(","))}
        return parse_floors(value)
    except (ValueError, ProfileError):
        raise argparse.ArgumentTypeError(
            f"{raw!r}: a score in 0..1, or line=P,block=P") from None


def cmd_train(args: argparse.Namespace) -> int:
    import logging

    from diffill.workshop.train import (RECIPES, teacher, TrainConfig, continued_config, export,
                             load_train_config, prepare_run, train)
    logging.getLogger("diffill").setLevel(logging.INFO)
    run = Path(args.run_dir)
    if args.export:
        if not (run / "state.pt").is_file():
            raise BadInput(f"{run}: no trained state.pt to export")
        card = Path(args.card).read_text(encoding="utf-8") if args.card else None
        import torch
        out = export(run, Path(args.export), card, max_fill=args.max_fill,
                     filler_order=args.filler_order, min_confidence=args.min_confidence,
                     cache=args.cache, block_size=args.cache_blocks, refresh=args.refresh,
                     cpu_bf16=args.cpu_bf16,
                     max_shard_bytes=int(args.shard_mb * 2**20) if args.shard_mb else None,
                     dtype=torch.bfloat16 if args.bf16_weights else torch.float32)
        print(f"exported {out}")
        return EXIT_OK
    init = Path(args.init_from) if args.init_from else None
    if not (run / "tokens.npy").is_file():
        overrides = json.loads(args.config) if args.config else {}
        tokenizer = init
        if args.recipe:
            if args.recipe not in RECIPES:
                raise UsageError(f"--recipe: one of {', '.join(RECIPES)}")
            overrides = {**RECIPES[args.recipe], **overrides}
            if overrides.get("vocab_size", TrainConfig.vocab_size) == TrainConfig.vocab_size:
                from diffill.model.loader import BUNDLED_DIR, DEFAULT_CHECKPOINT
                tokenizer = tokenizer or BUNDLED_DIR / DEFAULT_CHECKPOINT  # the bundled one
        if args.budget_minutes is not None:
            overrides["budget_minutes"] = args.budget_minutes
        if init is not None:  # the checkpoint's shape and schedule, unless --config says otherwise
            overrides = continued_config(init, overrides)
            if overrides.get("self_distill") and not overrides.get("teacher"):
                overrides["teacher"] = str(init.resolve())
        try:
            cfg = TrainConfig(**overrides)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--config: {exc}") from None
        corpus = None
        if args.corpus:
            from diffill.workshop.corpus import build_corpus
            if not (Path(args.corpus) / "packages.json").is_file():
                raise BadInput(f"{args.corpus}: not a corpus folder (run diffill corpus)")
            corpus = build_corpus(extra=Path(args.corpus))
        prepare_run(run, cfg, corpus=corpus, tokenizer_from=tokenizer)
    if args.minutes is None and args.steps is None:
        raise UsageError("give --minutes or --steps (or --export DIR)")
    fill = None
    cfg = load_train_config(run)
    if cfg.self_distill > 0:  # the teacher writes the middles of self-distilled rows
        from diffill.model import load_model
        fill = teacher(load_model(cfg.teacher, device=args.device))
    state = train(run, minutes=args.minutes, steps=args.steps, threads=args.threads,
                  init_from=init, device=args.device, compile_model=args.compile,
                  precision=args.precision, save_every_minutes=args.save_every,
                  prefetch=args.prefetch, fill=fill)
    last = state.history[-1] if state.history else {}
    print(json.dumps({"step": state.step, "tokens_seen": state.tokens_seen,
                      "seconds": round(state.seconds, 1), "loss": last.get("loss")}))
    return EXIT_OK


def cmd_corpus(args: argparse.Namespace) -> int:
    from diffill.workshop.corpus import unpack_wheels
    if not Path(args.wheels).is_dir():
        raise BadInput(f"{args.wheels}: no such folder")
    taken = unpack_wheels(Path(args.wheels), Path(args.out))
    kept = [t for t in taken if not t.get("skipped")]
    print(f"{len(kept)} packages unpacked into {args.out}, {len(taken) - len(kept)} skipped "
          f"(licence); record: {Path(args.out) / 'packages.json'}")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import run_eval
    return run_eval(args)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.e2e:
        from .bench_e2e import run_e2e
        return run_e2e(args.model, n=args.places, lines=args.lines,
                       keystroke_ms=args.keystroke_ms, write_to=args.write,
                       settings=args.editor_settings)
    from .bench import run_bench
    from .bench_block import check_args, is_block_preset, run_block_bench
    if is_block_preset(args.random_config) or (not args.random_config and _is_block(args.model)):
        check_args(args)
        return run_block_bench(args)
    return run_bench(args)


def _is_block(checkpoint: str | None) -> bool:
    from diffill.model.block_diffusion import is_block_diffusion
    from diffill.model.loader import read_config, resolve_checkpoint
    return is_block_diffusion(read_config(resolve_checkpoint(checkpoint)))
