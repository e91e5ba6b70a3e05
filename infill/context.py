"""Context windows: the prefix and suffix a request sends to the model, within token budgets.

Budgets count tokens, not lines, and cuts fall on line boundaries so the model never starts
mid-token or mid-line (the cursor's own line is always kept whole up to the cursor). Extra
chunks (other open files, recently edited regions) go ahead of the prefix in their own budget.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Sequence

from .post import identifiers

CHARS_PER_TOKEN_BOUND = 12
"""Generous upper bound of characters per token, to read only what a budget can use."""


@dataclass(frozen=True)
class ContextBudget:
    prefix_tokens: int = 1536
    """Tokens of text before the cursor."""
    suffix_tokens: int = 512
    """Tokens of text after the cursor (or the selection)."""
    extra_tokens: int = 0
    """Tokens of extra chunks (other files) placed ahead of the prefix."""


@dataclass
class Window:
    prefix_ids: list[int]
    suffix_ids: list[int]
    prefix_start: int
    """Character offset where the prefix window begins."""
    suffix_end: int
    """Character offset where the suffix window ends."""
    extra_ids: list[int] = field(default_factory=list)

    @property
    def context_ids(self) -> list[int]:
        return self.extra_ids + self.prefix_ids

    def start_mark(self, text: str) -> tuple[int, str]:
        """Where this window begins in ``text``, and the start of the line found there: what
        :func:`prefix_window` needs to begin the document's next window at the same place."""
        line = text[self.prefix_start:self.prefix_start + 80].split("\n", 1)[0]
        return self.prefix_start, line


def _count(tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens of each of ``texts`` (consecutive lines): one tokenisation of the lines
    together, each token counted in the line where it begins, which is also closer to the
    window's real count than tokenising each line alone (a newline joins the next line's
    indentation). A tokenizer without offsets tokenises each line."""
    if not texts:
        return []
    try:
        offsets = tokenizer("".join(texts), add_special_tokens=False,
                            return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError, KeyError):
        return [len(e) for e in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    ends = list(accumulate(len(t) for t in texts))
    counts = [0] * len(texts)
    for begin, _ in offsets:
        counts[min(bisect_right(ends, begin), len(texts) - 1)] += 1
    return counts


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


class _Remembering:
    """A tokenizer that keeps the ids of each whole text it encodes, for one window's build:
    the text a budget check tokenised is the window's own, and is not tokenised again."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.seen: dict[str, dict] = {}

    def __call__(self, text, **kw):
        if not isinstance(text, str) or kw != {"add_special_tokens": False}:
            return self.tokenizer(text, **kw)
        if text not in self.seen:
            self.seen[text] = self.tokenizer(text, **kw)
        return self.seen[text]

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)


def _fit_lines(tokenizer, lines: list[str], budget: int, from_end: bool) -> int:
    """How many whole lines (from the end or the start) fit in ``budget`` tokens."""
    counts = _count(tokenizer, lines)
    order = range(len(lines) - 1, -1, -1) if from_end else range(len(lines))
    total, n = 0, 0
    for i in order:
        if total + counts[i] > budget:
            break
        total += counts[i]
        n += 1
    return n


STICKY_SLACK = 64
"""Tokens left free when a document's window start must move: room for the next keystrokes,
so the start stays put (and the window's keys and values can be reused) while the user types."""


def prefix_window(tokenizer, text: str, cursor: int, budget: int,
                  keep: tuple[int, str] | None = None) -> tuple[str, int]:
    """The prefix text (cut at a line start) and where it begins.

    ``keep`` is where the document's last window began (its offset and the text found
    there): while that line is still there and the text from it to the cursor fits the
    budget, the window begins there again, so consecutive requests share their first
    positions. When it no longer fits, the new start leaves ``STICKY_SLACK`` tokens free.
    """
    if budget <= 0:
        return "", cursor
    if keep is not None:
        start, mark = keep
        if 0 <= start <= cursor and text.startswith(mark, start) and \
                (start == 0 or text[start - 1] == "\n"):
            kept = text[start:cursor]
            if len(encode(tokenizer, kept)) <= budget:
                return kept, start
        budget = max(1, budget - STICKY_SLACK)
    lo = max(0, cursor - budget * CHARS_PER_TOKEN_BOUND)
    chunk = text[lo:cursor]
    nl = chunk.find("\n")
    if lo > 0 and nl >= 0:  # never start inside a line we only partly read
        chunk = chunk[nl + 1:]
    lines = chunk.splitlines(keepends=True)
    while True:
        keep = _fit_lines(tokenizer, lines, budget, from_end=True)
        kept = "".join(lines[len(lines) - keep:]) if keep else ""
        if not kept and lines:
            # The cursor line alone is over budget: keep its tail, cut at a token boundary.
            ids = encode(tokenizer, lines[-1])[-budget:]
            kept = tokenizer.decode(ids)
        # Whole-text tokenisation can differ slightly from the per-line count.
        if len(encode(tokenizer, kept)) <= budget or keep <= 1:
            return kept, cursor - len(kept)
        lines = lines[len(lines) - keep + 1:]


def suffix_window(tokenizer, text: str, cursor: int, budget: int) -> tuple[str, int]:
    """The suffix text (cut at a line end) and where it ends."""
    if budget <= 0:
        return "", cursor
    hi = min(len(text), cursor + budget * CHARS_PER_TOKEN_BOUND)
    chunk = text[cursor:hi]
    nl = chunk.rfind("\n")
    if hi < len(text) and nl >= 0:  # never end inside a line we only partly read
        chunk = chunk[:nl + 1]
    lines = chunk.splitlines(keepends=True)
    while True:
        keep = _fit_lines(tokenizer, lines, budget, from_end=False)
        kept = "".join(lines[:keep])
        if not kept and lines:
            ids = encode(tokenizer, lines[0])[:budget]
            kept = tokenizer.decode(ids)
        if len(encode(tokenizer, kept)) <= budget or keep <= 1:
            return kept, cursor + len(kept)
        lines = lines[:keep - 1]


def related_snippet(text: str, query: str, lines: int = 40, max_chars: int = 3000) -> str:
    """The stretch of ``lines`` lines of another file that shares the most identifiers with
    ``query`` (the lines before the cursor): Jaccard similarity of identifier sets over windows
    moved half a window at a time, the first best one kept, then cut to ``max_chars`` at a
    line end. The choice behind Copilot's "neighboring tabs": what the cursor is about is
    likely defined or used in the same words elsewhere."""
    rows = text.splitlines(keepends=True)
    want = identifiers(query)
    best, best_score = 0, -1.0
    step = max(1, lines // 2)
    for start in range(0, max(1, len(rows) - lines + step), step):
        seen = identifiers("".join(rows[start:start + lines]))
        union = seen | want
        score = len(seen & want) / len(union) if union else 0.0
        if score > best_score:
            best, best_score = start, score
    out = ""
    for row in rows[best:best + lines]:
        if len(out) + len(row) > max_chars:
            break
        out += row
    return out


def format_extra(chunks: Sequence[tuple[str, str]]) -> str:
    """Extra chunks as comment-headed blocks: ``# <name>`` then the text."""
    parts = []
    for name, body in chunks:
        body = body if body.endswith("\n") else body + "\n"
        parts.append(f"# {name}\n{body}\n")
    return "".join(parts)


def build_window(tokenizer, text: str, start: int, end: int | None = None,
                 budget: ContextBudget = ContextBudget(),
                 extra: Sequence[tuple[str, str]] = (),
                 keep: tuple[int, str] | None = None) -> Window:
    """The window around ``text[start:end]`` (a cursor when ``end`` is None); ``keep``: see
    :func:`prefix_window`."""
    end = start if end is None else end
    tokenizer = _Remembering(tokenizer)
    prefix, p0 = prefix_window(tokenizer, text, start, budget.prefix_tokens, keep)
    suffix, s1 = suffix_window(tokenizer, text, end, budget.suffix_tokens)
    extra_ids: list[int] = []
    if extra and budget.extra_tokens > 0:
        extra_text = format_extra(extra)
        extra_ids = encode(tokenizer, extra_text)[-budget.extra_tokens:]
    return Window(prefix_ids=encode(tokenizer, prefix), suffix_ids=encode(tokenizer, suffix),
                  prefix_start=p0, suffix_end=s1, extra_ids=extra_ids)
