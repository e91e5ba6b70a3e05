"""``diffill eval``: held-out figures for the model card."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import replace
from pathlib import Path

from diffill.server.errors import BadInput, UsageError


def held_out_files() -> tuple[list[Path], list[str]]:
    from diffill.workshop.corpus import build_corpus
    corpus = build_corpus()
    files = corpus.files("held-out", max_bytes_per_package=10**9)
    return files, [p.name for p in corpus.held_out]


def versions(packages: list[str]) -> dict[str, str]:
    """Each held-out package's installed version (the standard library's: Python's): the
    spans and lines are cut from the installed files, so a figure holds for these versions."""
    from importlib import metadata
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = f"Python {platform.python_version()}" if name in sys.stdlib_module_names \
                else "?"
    return out


def _named(versions: dict[str, str]) -> str:
    return ", ".join(f"{name} {v}" for name, v in versions.items())


def run_eval(args: argparse.Namespace) -> int:
    from diffill.server.options import load_engine
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("line", "block") for m in modes):
        raise UsageError("--modes takes line and/or block")
    if args.files:
        files, packages = [Path(f) for f in args.files], ["(given files)"]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise BadInput(f"no such file: {', '.join(missing)}")
    else:
        files, packages = held_out_files()
    if args.lsp and args.engine != "local":
        raise UsageError("--lsp types through a diffill lsp whose daemon runs the model here; "
                         "with --engine openai the eval asks the engine in this process")
    engine = load_engine(args)
    try:
        return _run(args, engine, files, packages, modes)
    finally:
        engine.close()


def _run(args: argparse.Namespace, engine, files: list[Path], packages: list[str],
         modes: list[str]) -> int:
    from tqdm import tqdm

    from diffill.workshop.spans import cut_spans, evaluate

    from diffill.server.options import settings_from_args
    settings = settings_from_args(args)
    if getattr(args, "keystrokes", False):
        return run_keystrokes(args, engine, settings, files, packages)
    if args.asked:
        settings = replace(settings, explicit=True)
    reports = []
    workspace = None
    if args.workspace:
        from diffill.server.workspace import build_library
        from diffill.workshop.keystrokes import WorkspaceDrafts
        workspace = WorkspaceDrafts(package_root(packages),
                                    lambda root: build_library([root], ".py"))
    for mode in modes:
        spans = cut_spans(files, args.n, mode, args.sample_seed)
        bar = tqdm(total=len(spans), desc=f"eval {mode}", file=sys.stderr, leave=False)
        rep = evaluate(engine, spans, settings, progress=lambda k: bar.update(1),
                       typing=args.typing, workspace=workspace)
        bar.close()
        reports.append({**rep.as_dict(), "calibration": rep.calibration()})
    meta = {"model": engine.model.describe(), "packages": packages, "files": len(files),
            "versions": versions(packages),
            "python": platform.python_version(), "seed": args.sample_seed,
            "asked": args.asked, "workspace": bool(args.workspace),
            "autoregressive_baseline": None}
    if args.json:
        print(json.dumps({"meta": meta, "results": reports}, indent=1))
        return 0
    print(f"held-out packages: {_named(meta['versions'])} ({len(files)} files, Python "
          f"{meta['python']}); model {Path(meta['model']['checkpoint']).name}")
    print(f"{'mode':<6} {'spans':>5} {'exact':>7} {'sim':>5} {'parses':>7} {'empty':>6} {'ms':>7} "
          f"{'p50 ms':>7} {'passes':>6} {'tok/pass':>8} | {'min conf':>8} {'coverage':>8} "
          f"{'precision':>9}")
    for r in reports:
        prec = f"{r['precision']:>9.1%}" if r["precision"] is not None else f"{'-':>9}"
        print(f"{r['mode']:<6} {r['spans']:>5} {r['exact_match']:>7.1%} "
              f"{r['edit_similarity']:>5.2f} {r['parses']:>7.1%} "
              f"{r['empty']:>6.1%} {r['mean_ms']:>7.1f} {r['p50_ms']:>7.1f} "
              f"{r['mean_forward_passes']:>6.2f} {r['tokens_per_pass'] or 0:>8.2f} | "
              f"{r['min_confidence']:>8.2f} "
              f"{r['coverage']:>8.1%} {prec}")
    if args.calibrate:
        for r in reports:
            print(f"calibration, {r['mode']}: " + "  ".join(
                f"{c['min_confidence']:.1f}: {c['coverage']:.0%} shown"
                + (f", {c['precision']:.0%} exact" if c["precision"] is not None else "")
                for c in r["calibration"]))
    print("autoregressive baseline: none of the same size is available offline")
    return 0


def run_keystrokes(args: argparse.Namespace, engine, settings, files: list[Path],
                   packages: list[str]) -> int:
    """``diffill eval --keystrokes``: the typing eval (``workshop.keystrokes``), diffill as an
    editor asks it while the user types (automatic requests: ``fastTyping``), beside the
    completers without a model, on the same lines."""

    from tqdm import tqdm

    from diffill.workshop import keystrokes as K

    from .typing_lsp import LspTyping
    from diffill.server.workspace import build_library
    seeds = getattr(args, "seeds", None) or [args.sample_seed]
    lines = [line for seed in seeds for line in K.pick_lines(files, args.n, seed)]
    settings = replace(settings, quick_lines=True)
    if args.calibrate:
        return calibrate_keystrokes(args, engine, settings, lines, packages, seeds)
    model_report = K.TypingReport("diffill")
    root_of = package_root(packages) if args.workspace else (lambda path: None)
    if args.workspace:  # each package read once, as its LSP server would
        lines.sort(key=lambda line: str(root_of(line.path)))
    drafts = K.WorkspaceDrafts(root_of, lambda root: build_library([root], ".py")) \
        if args.workspace else K.drafts_alone
    completers = {"buffer words": K.typed_ahead(K.buffer_word),
                  "drafts alone": K.typed_ahead(drafts)}
    lsp = None
    if args.lsp:
        # The product's own settings: those of the sampler options are the server's to choose.
        lsp = LspTyping(str(engine.model.path), None if settings.drafts else {"drafts": False},
                        root_of)
        completers["diffill"] = lsp
    else:
        completers["diffill"] = K.typed_ahead(K.engine_completer(
            engine, settings, model_report,
            workspace=drafts if args.workspace else None))
    bar = tqdm(total=len(lines) * len(completers), desc="typing", file=sys.stderr, leave=False)
    try:
        reports = K.run_typing(lines, completers, {"diffill": model_report},
                               progress=lambda k: bar.update(1))
    finally:
        counters = lsp.close() if lsp is not None else {}
    bar.close()
    if lsp is not None:
        model_report.seconds = lsp.seconds
        model_report.passes = [counters.get("forward_passes", 0)]
        model_report.tokens = [counters.get("tokens_shown", 0)]
    rows = [r.as_dict() for r in reports]
    meta = {"model": engine.model.describe(), "packages": packages, "files": len(files),
            "versions": versions(packages), "lines": len(lines), "seed": seeds[0],
            "seeds": seeds,
            "cpu": platform.processor() or platform.machine(),
            "through": "diffill lsp" if lsp else "the engine in process",
            "workspace": bool(args.workspace)}
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=1))
        return 0
    print(f"typing eval: {len(lines)} held-out lines ({_named(meta['versions'])}), model "
          f"{Path(meta['model']['checkpoint']).name}, diffill through {meta['through']}"
          + (", the package's other files as the workspace" if args.workspace else ""))
    print(f"{'completer':<14} {'keys saved':>10} {'shown':>7} {'taken':>7} {'whole':>7} "
          f"{'tok/pass':>8} {'p50 ms':>7} {'p95 ms':>7}")
    for r in rows:
        def pct(v):
            return f"{v:>7.1%}" if v is not None else f"{'-':>7}"
        tpp = f"{r['tokens_per_pass']:>8.2f}" if r["tokens_per_pass"] is not None else \
            f"{'-':>8}"
        print(f"{r['completer']:<14} {r['keys_saved']:>10.1%} {pct(r['ghosts_shown'])} "
              f"{pct(r['shown_accepted'])} {pct(r['taken_whole'])} {tpp} "
              f"{r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f}")
    return 0


def package_root(packages: list[str]):
    """``path -> the folder of the held-out package it belongs to`` (the outermost folder
    named like one), None when none."""
    def root_of(path: str) -> Path | None:
        found = [p for p in Path(path).parents if p.name in packages]
        return found[-1] if found else None
    return root_of


FLOORS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def calibrate_keystrokes(args: argparse.Namespace, engine, settings, lines, packages,
                         seeds: list[int]) -> int:
    """``diffill eval --keystrokes --calibrate``: what diffill offers at every position of
    the lines is recorded once, and the typing eval is replayed on it for each floor (the
    floor only chooses among the offers); the floor that saves the most keys with at least
    half of the shown ghosts taken is the one to record (``--min-confidence line=P``)."""
    from tqdm import tqdm

    from diffill.workshop import keystrokes as K
    bar = tqdm(total=len(lines), desc="recording", file=sys.stderr, leave=False)
    offered = []
    for line in lines:
        offered.append(K.record_line(engine, settings, line))
        bar.update(1)
    bar.close()
    hide = settings.hide_unknown_names and settings.check_names
    reports = {f: K.replay(lines, offered, f, hide) for f in FLOORS}
    best = K.best_floor(reports)
    rows = {f"{f:g}": r.as_dict() for f, r in reports.items()}
    if args.json:
        print(json.dumps({"lines": len(lines), "seed": seeds[0], "seeds": seeds,
                          "packages": packages,
                          "versions": versions(packages), "hide_unknown_names": hide,
                          "floors": rows, "best": best,
                          "offered": offered if getattr(args, "record", None) else None},
                         indent=1))
        return 0
    print(f"keystroke calibration: {len(lines)} held-out lines, "
          f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}")
    print(f"{'floor':>6} {'keys saved':>10} {'shown':>7} {'taken':>7} {'whole':>7}")
    for f, r in rows.items():
        taken = f"{r['shown_accepted']:>7.1%}" if r["shown_accepted"] is not None else \
            f"{'-':>7}"
        print(f"{f:>6} {r['keys_saved']:>10.1%} {r['ghosts_shown']:>7.1%} {taken} "
              f"{(r['taken_whole'] or 0):>7.1%}")
    print(f"best floor with at least half of the shown ghosts taken: {best}")
    return 0
