"""The typing eval: does a ghost save a person keystrokes?

Lines of held-out code are typed back one key at a time with the rest of the file as
context. After every key the completer is asked (as an editor asks automatically) and its
ghost is taken the way a person would: the whole ghost (one key, Tab) when the rest of the
line begins with it, else its first word (one key, accept-word) when the line goes on with
that, else the person types the next character (one key). Keys saved are the characters of
the lines minus the keys pressed, over the characters.

Every completer meets the same lines, so their figures compare: the buffer's words
(Vim's Ctrl-N as a ghost), the drafts alone (lookup, else the buffer word: the best completer
without a model), and diffill itself.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from diffill.infill import drafts as drafting
from diffill.infill.text import first_word, passed_over, typed_through

Completer = Callable[[str, int], "str | None"]
"""``(document, cursor) -> the ghost shown there`` (None: nothing shown). One with a
``begin(line)`` method is told each :class:`TypedLine` before its first key (an editor
opening the file)."""

@dataclass
class TypedLine:
    path: str
    document: str
    """The file with the line's text after its indentation removed."""
    cursor: int
    """Where the line's text goes (after its indentation)."""
    target: str


@dataclass
class TypingReport:
    name: str
    lines: int = 0
    chars: int = 0
    keys: int = 0
    requests: int = 0
    shown: int = 0
    accepted: int = 0
    """LastGhost ghosts taken whole or by their first word."""
    whole: int = 0
    seconds: list[float] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    """Per model call: forward passes, and the tokens of the ghost it showed (0: none)."""

    def as_dict(self) -> dict:
        calls = [(p, t) for p, t in zip(self.passes, self.tokens) if p]
        return {
            "completer": self.name, "lines": self.lines, "chars": self.chars,
            "keys": self.keys,
            "keys_saved": round(1 - self.keys / self.chars, 4) if self.chars else 0.0,
            "ghosts_shown": round(self.shown / self.requests, 4) if self.requests else 0.0,
            "shown_accepted": round(self.accepted / self.shown, 4) if self.shown else None,
            "taken_whole": round(self.whole / self.shown, 4) if self.shown else None,
            "p50_ms": round(1000 * statistics.median(self.seconds), 1) if self.seconds else 0,
            "p95_ms": round(1000 * sorted(self.seconds)[int(0.95 * (len(self.seconds) - 1))], 1)
            if self.seconds else 0,
            "tokens_per_pass": round(sum(t for _, t in calls) / sum(p for p, _ in calls), 3)
            if calls else None,
        }


def parseable_sources(files: Iterable[Path], shortest: int = 400) -> list[tuple[Path, str]]:
    """(path, text) of the files that read as UTF-8, parse as Python and are longer than
    ``shortest`` characters, sorted by path: what the evals cut their samples from."""
    import ast
    docs = []
    for f in sorted(files):
        try:
            text = f.read_text(encoding="utf-8")
            ast.parse(text)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        if len(text) > shortest:
            docs.append((f, text))
    return docs


def pick_lines(files: Iterable[Path], n: int, seed: int = 0) -> list[TypedLine]:
    """``n`` lines of code (8-120 characters after the indentation, not comments or
    docstrings) from parseable files, chosen by ``seed``."""
    rng = random.Random(f"typing-{seed}")
    docs = parseable_sources(files)
    out: list[TypedLine] = []
    tries = 0
    while len(out) < n and docs and tries < n * 200:
        tries += 1
        path, text = rng.choice(docs)
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        body = lines[i].strip()
        if not 8 <= len(body) <= 120 or body.startswith(("#", '"""', "'''")):
            continue
        line_start = sum(len(x) + 1 for x in lines[:i])
        indent = len(lines[i]) - len(lines[i].lstrip())
        cursor = line_start + indent
        end = line_start + len(lines[i].rstrip())
        out.append(TypedLine(str(path), text[:cursor] + text[end:], cursor, text[cursor:end]))
    return out


def type_line(line: TypedLine, complete: Completer, report: TypingReport) -> None:
    """Type ``line`` back against ``complete``, adding to ``report``."""
    typed = 0
    target = line.target
    while typed < len(target):
        doc = line.document[:line.cursor] + target[:typed] + line.document[line.cursor:]
        ghost = complete(doc, line.cursor + typed)
        report.requests += 1
        rest = target[typed:]
        ghost = (ghost or "").split("\n", 1)[0]
        report.keys += 1
        if ghost.strip():
            report.shown += 1
            word = first_word(ghost)
            if rest.startswith(ghost):
                report.accepted += 1
                report.whole += 1
                typed += len(ghost)
                continue
            if word and rest.startswith(word):
                report.accepted += 1
                typed += len(word)
                continue
        typed += 1
    report.lines += 1
    report.chars += len(target)


def buffer_word(doc: str, cursor: int) -> str | None:
    """The nearest earlier word of the document that completes the partial word (then the
    nearest later one): dabbrev as a ghost."""
    line_start = doc.rfind("\n", 0, cursor) + 1
    line_end = doc.find("\n", cursor)
    line_end = len(doc) if line_end < 0 else line_end
    words = drafting.word_drafts(drafting.partial_word(doc[line_start:cursor]), doc,
                                 line_start, line_end, limit=1)
    return words[0] if words else None


def drafts_alone(doc: str, cursor: int) -> str | None:
    """The first draft (a lookup of the typed line's tail, else the buffer word): the
    completer with no model in it."""
    found = drafting.find_drafts(doc, cursor, limit=1)
    return found[0] if found else None


class WorkspaceDrafts:
    """:func:`drafts_alone` with a workspace: each line's package's other files (a
    ``Library`` from ``read(root)``, kept per root) lend drafts after the document's own,
    the line's own file left out as the LSP server leaves out the disk copy of the document
    being edited."""

    def __init__(self, root_of: Callable[[str], "Path | None"],
                 read: Callable[[Path], drafting.Library]) -> None:
        self.root_of, self.read = root_of, read
        self.libraries: dict[Path, drafting.Library] = {}
        self.library: drafting.Library | None = None
        self.path: str | None = None

    def begin(self, line: TypedLine) -> None:
        self.open(line.path)

    def open(self, path: str) -> None:
        """The document at ``path`` is the one being edited now."""
        root = self.root_of(path)
        if root is not None and root not in self.libraries:
            self.libraries[root] = self.read(root)
        self.library = self.libraries.get(root) if root is not None else None
        self.path = path

    def __call__(self, doc: str, cursor: int) -> str | None:
        found = drafting.find_drafts(doc, cursor, limit=1, library=self.library,
                                     skip=self.path)
        return found[0] if found else None

    def elsewhere(self, doc: str, cursor: int) -> list[drafting.Found]:
        """What the LSP server would send as a request's drafts: the workspace's for the
        cursor's line, with their support."""
        if self.library is None:
            return []
        return drafting.line_drafts(doc, cursor, library=self.library, skip=self.path)

    def lend(self, req):
        """``req`` (an ``InfillRequest``) with the drafts and their support the LSP server
        would send with it."""
        from dataclasses import replace
        drafts, support = drafting.request_fields(self.elsewhere(req.text, req.start))
        return replace(req, drafts=drafts, draft_support=support)


def engine_completer(engine, settings, report: TypingReport, language: str = "python",
                     workspace: WorkspaceDrafts | None = None) -> Completer:
    """diffill's ghost: an automatic request to ``engine``; what an editor shows (the best
    item, after ``min_confidence`` and the names check). The document key lets a request
    reuse its line's last window, as the daemon does per document. ``workspace``: its
    drafts go with each request, as the LSP server sends them."""
    from diffill.infill.api import DocumentKey, InfillRequest, Submission

    def complete(doc: str, cursor: int) -> str | None:
        line_start = doc.rfind("\n", 0, cursor) + 1
        key = f"{len(doc) - cursor}:{line_start}"
        t0 = time.perf_counter()
        request = InfillRequest(doc, cursor, language=language)
        (result,) = engine.run_batch([Submission(
            workspace.lend(request) if workspace is not None else request,
            document=DocumentKey("typing", key))], settings)
        if isinstance(result, BaseException):
            raise result
        report.seconds.append(time.perf_counter() - t0)
        report.passes.append(result.forward_passes)
        report.tokens.append(result.best.tokens if result.best else 0)
        return result.best.text if result.best else None
    if workspace is not None:
        complete.begin = workspace.begin  # type: ignore[attr-defined]
    return complete


def typed_ahead(complete: Completer) -> Completer:
    """An editor's typed-ahead reuse around ``complete`` (the LSP server's ``LastGhost``): once the
    person has typed through the first word of what the last ghost says, its rest is shown
    again with no call (:func:`infill.text.typed_through`); while they type inside that word
    instead of taking it, the same rest is not offered again (:func:`infill.text.passed_over`)."""
    last: list = [None]
    begin = getattr(complete, "begin", None)

    def wrapped(doc: str, cursor: int) -> str | None:
        prev = last[0]
        passed = None
        if prev is not None:
            before, after, ghost = prev
            typed = doc[len(before):cursor]
            if doc.startswith(before) and doc[cursor:] == after and 0 < len(typed) < \
                    len(ghost):
                if typed_through(typed, ghost):
                    return ghost[len(typed):]
                passed = passed_over(typed, ghost)
        ghost = complete(doc, cursor)
        if passed is not None and ghost == passed:
            return None  # the one just passed over: the last ghost stays the reference
        last[0] = (doc[:cursor], doc[cursor:], ghost) if ghost else None
        return ghost
    if begin is not None:
        wrapped.begin = begin  # type: ignore[attr-defined]
    return wrapped


def run_typing(lines: list[TypedLine], completers: dict[str, Completer],
               reports: dict[str, TypingReport] | None = None,
               progress: Callable[[int], None] | None = None) -> list[TypingReport]:
    """Type every line against every completer; one report each."""
    reports = reports or {}
    out = []
    for name, complete in completers.items():
        rep = reports.get(name) or TypingReport(name)
        begin = getattr(complete, "begin", None)
        for k, line in enumerate(lines):
            if begin is not None:
                begin(line)
            type_line(line, complete, rep)
            if progress:
                progress(k + 1)
        out.append(rep)
    return out


# ---------------------------------------------------------------- calibration by replay

Offered = list[tuple[str, float, bool]]
"""What a request offers before the display rules: its ranked completions as (text, score,
names something defined nowhere)."""


def record_line(engine, settings, line: TypedLine, language: str = "python"
                ) -> list[Offered]:
    """What ``engine`` offers at every position of ``line`` with nothing withheld by the floor
    or the names check (``settings`` with those off): the floor and the names check only
    choose among these, so any floor can be replayed on them exactly."""
    from dataclasses import replace

    from diffill.infill.api import DocumentKey, InfillRequest, Submission
    s = replace(settings, min_confidence=0.0, hide_unknown_names=False, explicit=False)
    out = []
    for k in range(len(line.target)):
        doc = line.document[:line.cursor] + line.target[:k] + line.document[line.cursor:]
        (result,) = engine.run_batch([Submission(
            InfillRequest(doc, line.cursor + k, language=language),
            document=DocumentKey("typing", f"{line.path}:{line.cursor}"))], s)
        if isinstance(result, BaseException):
            raise result
        out.append([(it.text, it.score, bool(it.unknown)) for it in result.items])
    return out


def replay(lines: list[TypedLine], offered: list[list[Offered]], floor: float,
           hide_unknown: bool = True) -> TypingReport:
    """The typing eval of recorded offers under ``floor``: each position shows its best offer
    scored at least ``floor`` (naming nothing unknown, with ``hide_unknown``)."""
    rep = TypingReport(f"floor {floor:g}")
    for line, table in zip(lines, offered):
        def complete(doc: str, cursor: int, line=line, table=table) -> str | None:
            return next((text for text, score, unknown in table[cursor - line.cursor]
                         if score >= floor and not (unknown and hide_unknown)), None)
        type_line(line, typed_ahead(complete), rep)
    return rep


def best_floor(reports: dict[float, TypingReport], taken: float = 0.5) -> float | None:
    """The floor that saves the most keys while at least ``taken`` of the shown ghosts are
    taken (issue 24's rule for the default floors); None when no floor gets there."""
    ok = [(r.as_dict()["keys_saved"], f) for f, r in reports.items()
          if (r.as_dict()["shown_accepted"] or 0) >= taken]
    return max(ok)[1] if ok else None
