"""Held-out infilling eval: exact match and "still parses" on spans cut from code the model
has not seen (whole held-out packages, see ``workshop/corpus.py``).

Spans are cut the way an editor meets them:
- ``line``: the cursor somewhere after a line's indentation, the rest of the line missing;
- ``block``: the cursor after the indentation of a line, 1-4 whole lines missing.
A fill matches when it equals the missing text up to trailing whitespace on each line; it
parses when it is not empty and the file with it still parses.
"""

from __future__ import annotations

import difflib
import random
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from diffill.infill.api import DocumentKey, InfillRequest, InfillSettings, Submission
from diffill.infill.engine import Engine
from .keystrokes import WorkspaceDrafts, parseable_sources
from diffill.infill.post import parses


@dataclass
class Span:
    path: str
    text: str
    """The document with the span removed."""
    cursor: int
    target: str
    mode: str


@dataclass
class ModeReport:
    mode: str
    n: int = 0
    exact: int = 0
    parsed: int = 0
    empty: int = 0
    seconds: list[float] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    """Per span, the tokens of the best candidate (what the fill committed and shows)."""
    similarity: list[float] = field(default_factory=list)
    candidates: list[list[tuple[float, bool, bool]]] = field(default_factory=list)
    """Per span, every candidate's (score, exact, names something defined nowhere) in ranked
    order, before ``min_confidence``."""
    min_confidence: float = 0.0
    hide_unknown: bool = True
    """Whether the engine's ``hide_unknown_names`` would withhold those naming the unknown."""

    def shown_at(self, floor: float) -> tuple[int, int]:
        """(spans that would show a completion, how many of those are exact) at ``floor``:
        each span shows its best-ranked candidate scored at least ``floor`` (and naming
        nothing defined nowhere, with ``hide_unknown``)."""
        shown = exact = 0
        for cands in self.candidates:
            pick = next((ex for score, ex, unknown in cands
                         if score >= floor and not (unknown and self.hide_unknown)), None)
            if pick is not None:
                shown += 1
                exact += pick
        return shown, exact

    def calibration(self, floors=(0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> list[dict]:
        n = max(self.n, 1)
        rows = []
        for f in floors:
            shown, exact = self.shown_at(f)
            rows.append({"min_confidence": f, "coverage": round(shown / n, 4),
                         "precision": round(exact / shown, 4) if shown else None})
        return rows

    def as_dict(self) -> dict:
        n = max(self.n, 1)
        shown, exact = self.shown_at(self.min_confidence)
        return {"mode": self.mode, "spans": self.n, "exact_match": round(self.exact / n, 4),
                "parses": round(self.parsed / n, 4), "empty": round(self.empty / n, 4),
                "edit_similarity": round(statistics.mean(self.similarity), 4)
                if self.similarity else 0,
                "mean_ms": round(1000 * statistics.mean(self.seconds), 1) if self.seconds else 0,
                "p50_ms": round(1000 * statistics.median(self.seconds), 1)
                if self.seconds else 0,
                "mean_forward_passes": round(statistics.mean(self.passes), 2)
                if self.passes else 0,
                # Work against what it gives: a verified draft commits many tokens in one pass.
                "tokens_per_pass": round(sum(self.tokens) / sum(self.passes), 2)
                if sum(self.passes) else None,
                "min_confidence": self.min_confidence, "coverage": round(shown / n, 4),
                "precision": round(exact / shown, 4) if shown else None}


def _norm(s: str) -> str:
    return "\n".join(line.rstrip() for line in s.strip("\n").split("\n")).strip()


def cut_spans(files: Iterable[Path], n: int, mode: str, seed: int = 0) -> list[Span]:
    """``n`` spans of ``mode`` from parseable Python files, chosen by ``seed``."""
    rng = random.Random(f"{seed}-{mode}")
    docs = parseable_sources(files)
    spans: list[Span] = []
    tries = 0
    while len(spans) < n and docs and tries < n * 200:
        tries += 1
        path, text = rng.choice(docs)
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        line = lines[i]
        body = line.strip()
        if len(body) < 8 or body.startswith(("#", '"""', "'''")):
            continue
        indent = len(line) - len(body) - (len(line) - len(line.rstrip()))
        line_start = sum(len(x) + 1 for x in lines[:i])
        if mode == "line":
            col = rng.randint(indent + 1, len(line.rstrip()) - 2)
            cursor = line_start + col
            target = line.rstrip()[col:]
            doc = text[:cursor] + text[line_start + len(line.rstrip()):]
        else:
            count = rng.randint(1, 4)
            chunk = lines[i:i + count]
            if any(len(x) - len(x.lstrip()) < indent for x in chunk if x.strip()):
                continue
            cursor = line_start + indent
            end = line_start + sum(len(x) + 1 for x in chunk) - 1
            target = text[cursor:end]
            doc = text[:cursor] + text[end:]
        if not target.strip() or len(target) > 400:
            continue
        spans.append(Span(str(path), doc, cursor, target, mode))
    return spans


def similarity(span: Span, fill: str) -> float:
    """Edit similarity of the fill to the removed text (difflib's ratio, 0-1): partial credit
    that moves before exact match does, as code-completion evals report beside it."""
    return difflib.SequenceMatcher(None, _norm(fill), _norm(span.target), autojunk=False).ratio()


def is_exact(span: Span, fill: str) -> bool:
    """The fill is the removed text, up to trailing whitespace on each line."""
    return _norm(fill) == _norm(span.target)


def score(span: Span, fill: str) -> tuple[bool, bool, bool]:
    """(exact, parses, empty) of one fill. An empty fill never counts as parsing: the file
    without the span often parses, and an editor gains nothing from it."""
    empty = not fill.strip()
    exact = is_exact(span, fill)
    ok = not empty and parses("python", span.text[:span.cursor] + fill + span.text[span.cursor:])
    return exact, ok, empty


def previous_keystroke(sp: Span) -> InfillRequest:
    """The request of the keystroke before ``sp``'s: the cursor line one character shorter
    (the same request when nothing is typed on the line yet)."""
    line_start = sp.text.rfind("\n", 0, sp.cursor) + 1
    if sp.cursor == line_start:
        return InfillRequest(sp.text, sp.cursor, language="python", path=sp.path)
    return InfillRequest(sp.text[:sp.cursor - 1] + sp.text[sp.cursor:], sp.cursor - 1,
                         language="python", path=sp.path)


def evaluate(engine: Engine, spans: list[Span], settings: InfillSettings,
             progress: Callable[[int], None] | None = None,
             typing: bool = False, workspace: WorkspaceDrafts | None = None) -> ModeReport:
    """Exact match, parse rate and speed of the best candidate (as if every completion were
    shown), and what ``min_confidence`` would show (coverage, precision). ``typing``: each
    span is asked as an editor asks it while the user types: the previous keystroke's request
    runs first on the same document (untimed), so prefix reuse applies to the timed one.
    ``workspace``: each request carries the drafts its
    package's other files give, as the LSP server sends a workspace's."""
    report = ModeReport(spans[0].mode if spans else "none",
                        min_confidence=engine.min_confidence(
                            settings, settings.mode if settings.mode != "auto" or not spans
                            else spans[0].mode),
                        hide_unknown=settings.withholds_unknown_names)
    for k, sp in enumerate(spans):
        s = replace(settings, min_confidence=0.0, hide_unknown_names=False,
                    mode=sp.mode if settings.mode == "auto" else settings.mode)
        request = InfillRequest(sp.text, sp.cursor, language="python", path=sp.path)
        if workspace is not None:
            workspace.open(sp.path)
            request = workspace.lend(request)
        doc = DocumentKey("eval", f"span-{k}") if typing else None
        if typing:
            before = previous_keystroke(sp)
            if workspace is not None:
                before = workspace.lend(before)
            engine.run_batch([Submission(before, document=doc)], s)
        t0 = time.perf_counter()
        (result,) = engine.run_batch([Submission(request, document=doc)], s)
        if isinstance(result, BaseException):
            raise result
        report.seconds.append(time.perf_counter() - t0)
        report.passes.append(result.forward_passes)
        report.tokens.append(result.best.tokens if result.best else 0)
        report.n += 1
        # Only exactness per candidate: parsing the whole file again for each is not needed.
        report.candidates.append([(it.score, is_exact(sp, it.text), bool(it.unknown))
                                  for it in result.items])
        exact, parsed, empty = score(sp, result.best.text if result.best else "")
        report.similarity.append(similarity(sp, result.best.text if result.best else ""))
        report.exact += exact
        report.parsed += parsed
        report.empty += empty
        if progress:
            progress(k + 1)
    return report
