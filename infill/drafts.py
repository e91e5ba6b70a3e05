"""Drafts from the code at hand: continuations of the cursor's line that the document and the
other texts the editor has already hold, found without a model.

Two kinds, both cheap enough to run on every keystroke:

- **lookup** (prompt lookup, Saxena 2023): the last 1-8 code tokens before the cursor found
  elsewhere (the nearest earlier place in the document first, then later, then other texts),
  and what followed them there up to that line's end;
- **words** (Vim's Ctrl-N, Emacs dabbrev): the rest of every word that completes the partial
  word at the cursor, the nearest earlier one first.

The model then verifies them (``sampler.verify_drafts``); alone they are the no-model
completer the typing eval measures the model against. Both are ``str.find``/``rfind``
over the text (C speed), nearest first, stopping as soon as enough is found: no index to keep
up to date while the text changes.
"""

from __future__ import annotations

import bisect
import heapq
import re
from typing import Iterable, Sequence

MAX_TAIL_TOKENS = 8
"""Longest tail of the typed line that is looked up."""
MAX_DRAFTS = 4
"""Drafts offered per request: each costs the verifier a row per token."""
MAX_DRAFT_CHARS = 160
"""A continuation is cut at its line's end, or here."""
MAX_HITS = 6
BACKWARDS = True
"""Places of one tail looked at (each may give another continuation)."""

_CODE_TOKEN = re.compile(r"[^\W\d]\w*|\d\w*|\s+|[^\w\s]", re.UNICODE)
_WORD = re.compile(r"[^\W\d]\w*")
_PARTIAL = re.compile(r"[^\W\d]\w*$")


def partial_word(line_before: str) -> str:
    """The identifier the cursor is in the middle (or at the end) of, '' when none."""
    m = _PARTIAL.search(line_before)
    return m.group(0) if m else ""


def _line_end(text: str, at: int) -> int:
    end = text.find("\n", at)
    return len(text) if end < 0 else end


MAX_SCAN = 4000
"""Occurrences of a partial word looked at per text before giving up on more words."""


def _words_from(text: str, partial: str, lo: int, hi: int, backwards: bool,
                limit: int) -> list[str]:
    """Distinct words of ``text[lo:hi]`` that begin with ``partial`` and are longer, nearest
    to ``hi`` first when ``backwards`` (else to ``lo``): ``str.rfind``/``find`` for the
    partial, a word-boundary check, and the word read on from there."""
    out: list[str] = []
    for _ in range(MAX_SCAN):
        at = text.rfind(partial, lo, hi) if backwards else text.find(partial, lo, hi)
        if at < 0:
            break
        if backwards:
            hi = at + len(partial) - 1
        else:
            lo = at + 1
        if at > 0 and (text[at - 1].isalnum() or text[at - 1] == "_"):
            continue
        m = _WORD.match(text, at)
        if m and len(m.group(0)) > len(partial) and m.group(0) not in out:
            out.append(m.group(0))
            if len(out) == limit:
                break
    return out


def word_drafts(partial: str, text: str, line_start: int, line_end: int,
                others: Sequence[str] = (), limit: int = MAX_DRAFTS) -> list[str]:
    """The rest of each word that completes ``partial``: from the text before the cursor's
    line (``text[:line_start]``) nearest the cursor first, then after the line nearest first,
    then ``others`` in order."""
    if not partial:
        return []
    words = _words_from(text, partial, 0, line_start, True, limit)
    words += _words_from(text, partial, line_end, len(text), False, limit)
    for other in others:
        words += _words_from(other, partial, 0, len(other), False, limit)
    return [w for w, _ in _distinct(((w[len(partial):], 0) for w in words), limit)]


def tails(line_before: str, most: int = MAX_TAIL_TOKENS) -> list[str]:
    """Tails of the typed line made of its last 1..``most`` code tokens, longest first; only
    those with two or more characters of code (a lone ``(`` or ``x`` is everywhere)."""
    toks = _CODE_TOKEN.findall(line_before)
    out = []
    for n in range(min(most, len(toks)), 0, -1):
        tail = "".join(toks[-n:])
        if len(tail.strip()) >= 2 and tail not in out:
            out.append(tail)
    return out


def _starts_clean(text: str, at: int, tail: str) -> bool:
    """A match of ``tail`` at ``at`` does not begin inside a word (``x = f`` in ``max = f``)."""
    return at == 0 or not (tail[0].isalnum() or tail[0] == "_") or \
        not (text[at - 1].isalnum() or text[at - 1] == "_")


def _hits(text: str, tail: str, backwards: bool, lo: int = 0, hi: int | None = None
          ) -> Iterable[int]:
    """Offsets just after each clean match of ``tail`` in ``text[lo:hi]``, nearest to ``hi``
    first when ``backwards``, else nearest to ``lo`` first; at most :data:`MAX_HITS`."""
    hi = len(text) if hi is None else hi
    found = 0
    while found < MAX_HITS:
        at = text.rfind(tail, lo, hi) if backwards else text.find(tail, lo, hi)
        if at < 0:
            return
        if _starts_clean(text, at, tail):
            found += 1
            yield at + len(tail)
        if backwards:
            hi = at + len(tail) - 1
        else:
            lo = at + 1


Found = tuple[str, int]
"""A draft and its support: the code tokens (spaces between them included) of the typed
line's tail it was found after; 1 for a draft found by the editor's side, 0 for a partial
word's completion."""


_LEADING_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])")


def first_tokens(text: str, n: int) -> str:
    """``text`` up to the end of its first ``n`` code tokens (a word, or one punctuation
    character, each with the spaces before it)."""
    end = 0
    for _ in range(n):
        m = _LEADING_TOKEN.match(text, end)
        if not m:
            break
        end = m.end()
    return text[:end]


def support_of(tail: str) -> int:
    return len(_CODE_TOKEN.findall(tail.strip()))


def _keys(text: str, line_start: int, line_before: str) -> list[tuple[str, str]]:
    """``(key, tail)`` pairs to look up, longest first: the typed line's tails; or, when only
    indentation is typed, the previous line's tails with the line break and that indentation
    after them (what followed the same line elsewhere is a draft of this whole line). The
    support counts the tail's tokens."""
    if line_before.strip():
        return [(t, t) for t in tails(line_before)]
    if line_start == 0:
        return []
    prev = text[text.rfind("\n", 0, line_start - 1) + 1:line_start - 1]
    return [(t + "\n" + line_before, t) for t in tails(prev)] if prev.strip() else []


def _lookups(text: str, cursor: int, others: Sequence[str], limit: int,
             after: str | None = None) -> list[Found]:
    """:func:`lookup_drafts` with their support; ``after``: the line after the cursor's (by
    default ``text``'s own)."""
    line_start = text.rfind("\n", 0, cursor) + 1
    line_end = _line_end(text, cursor)
    after = _next_line(text, line_end) if after is None else after
    before = _prev_line(text, line_start) if text[line_start:cursor].strip() else ""
    out: list[Found] = []
    for key, tail in _keys(text, line_start, text[line_start:cursor]):
        # Before the line: a key that ends in the line break must not meet this line's own.
        places = [(text, h) for h in _hits(text, key, True, 0, max(0, line_start - 1))]
        places += [(text, h) for h in _hits(text, key, False, line_end)]
        for other in others:
            places += [(other, h) for h in _hits(other, key, False)]
        out += _continuations(places, tail, after, before)
        if len(_distinct(out, limit)) >= limit:
            break
    return _distinct(out, limit)


def heads(line: str, most: int = MAX_TAIL_TOKENS) -> list[str]:
    """Heads of a line's code (after its indentation): its first 1..``most`` code tokens,
    longest first; only those with two or more characters of code."""
    toks = _CODE_TOKEN.findall(line.lstrip(" \t"))
    out = []
    for n in range(min(most, len(toks)), 0, -1):
        head = "".join(toks[:n]).rstrip()
        if len(head) >= 2 and head not in out:
            out.append(head)
    return out


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip(" \t"))]


def _backwards(text: str, cursor: int, others: Sequence[str], limit: int) -> list[Found]:
    """Drafts read the other way, from the code after the gap: the line after the cursor's
    (its first 1-8 code tokens, longest first, at its own indentation) found elsewhere, and
    the line just before it there, when that line begins with what is typed on the cursor's
    line and sits at its indentation (any, when nothing is typed yet: the fill's indentation
    is the syntax's then). A decorator above a class, the field before a field, the ``try:``
    before an ``except``: lines the code before the gap does not announce. The support
    counts the code tokens of the head and of the typed text the place agrees with."""
    line_start = text.rfind("\n", 0, cursor) + 1
    line_end = _line_end(text, cursor)
    if text[cursor:line_end].strip() or line_end >= len(text):
        return []
    following = text[line_end + 1:_line_end(text, line_end + 1)]
    if not following.strip():
        return []
    typed_line = text[line_start:cursor]
    typed = typed_line.lstrip(" \t")
    indent = _indent(typed_line) if typed_line else None
    out: list[Found] = []
    for head in heads(following):
        key = "\n" + _indent(following) + head
        places = [(text, h) for h in _hits(text, key, True, 0, max(0, line_start - 1))]
        places += [(text, h) for h in _hits(text, key, False, line_end + 1)]
        for other in others:
            places += [(other, h) for h in _hits(other, key, False)]
        for src, h in places:
            at = h - len(key)  # the line break ending the line before the match
            if h < len(src) and (src[h].isalnum() or src[h] == "_") and head[-1:].isalnum():
                continue  # the head ends inside a longer word there
            prev = src[src.rfind("\n", 0, at) + 1:at].rstrip()
            body = prev.lstrip(" \t")
            if not body.startswith(typed) or len(body) <= len(typed) or \
                    (indent is not None and _indent(prev) != indent):
                continue
            out.append((body[len(typed):][:MAX_DRAFT_CHARS],
                        support_of(head) + support_of(typed)))
        if len(_distinct(out, limit)) >= limit:
            break
    return _distinct(out, limit)


def _next_line(text: str, at: int, most: int = 4) -> str:
    """The first non-blank line after the line that ends at ``at`` (within ``most`` lines),
    stripped; '' when none."""
    for _ in range(most):
        if at >= len(text):
            return ""
        end = _line_end(text, at + 1)
        line = text[at + 1:end].strip()
        if line:
            return line
        at = end
    return ""


def _continuations(places: Iterable[tuple[str, int]], tail: str,
                   after: str = "", before: str = "") -> list[Found]:
    """What follows each place (a text and an offset just after a match of ``tail``) up to
    its line's end (at most :data:`MAX_DRAFT_CHARS`), when that is not blank. ``after`` and
    ``before``: the lines around the cursor's; places whose own lines around are the same
    come first, both before one (the code around the gap agrees with them too)."""
    found = []
    for src, h in places:
        end = _line_end(src, h)
        rest = src[h:min(end, h + MAX_DRAFT_CHARS)].rstrip()
        if rest.strip():
            agree = int(bool(after) and _next_line(src, end) == after)
            if before:  # the place's line starts where its tail does, or earlier
                agree += _prev_line(src, src.rfind("\n", 0, h - len(tail)) + 1) == before
            found.append((-agree, rest))
    found.sort(key=lambda f: f[0])  # stable: nearest first among equals
    return [(rest, support_of(tail)) for _, rest in found]


def _prev_line(text: str, start: int, most: int = 4) -> str:
    """The last non-blank line before the line that starts at ``start`` (within ``most``
    lines), stripped; '' when none."""
    for _ in range(most):
        if start <= 0:
            return ""
        begin = text.rfind("\n", 0, start - 1) + 1
        line = text[begin:start - 1].strip()
        if line:
            return line
        start = begin
    return ""


def lookup_drafts(text: str, cursor: int, others: Sequence[str] = (),
                  limit: int = MAX_DRAFTS) -> list[str]:
    """Continuations of the cursor's line: each tail of the typed line (longest first) found
    before the cursor's line (nearest first), after it, then in ``others``, and what followed
    it there up to that line's end. Distinct, non-empty, at most ``limit``."""
    return [d for d, _ in _lookups(text, cursor, others, limit)]


class Library:
    """Texts too many to scan on every keystroke (a workspace's files: thousands, tens of
    megabytes), indexed once by word. A lookup starts from the places of the tail's rarest
    whole word instead of a ``find`` over every text; a partial word is completed from the
    sorted words by bisection, the most used first.

    Built in one pass (about 4 s for 50 MB on one core); read-only after, so threads may
    share it. ``skip``: a text to leave out of a lookup (the disk copy of the document being
    edited, whose live text the document's own lookup already has).
    """

    PLACES = 16
    """Places kept per word: the first ones met, texts in the order given (most recent first)."""

    def __init__(self, texts: Sequence[tuple[str, str]]) -> None:
        self.names = [name for name, _ in texts]
        self.texts = [text for _, text in texts]
        self.places: dict[str, list[tuple[int, int]]] = {}
        self.counts: dict[str, int] = {}
        for i, text in enumerate(self.texts):
            for m in _WORD.finditer(text):
                w = m.group()
                seen = self.counts.get(w, 0)
                self.counts[w] = seen + 1
                if seen < self.PLACES:
                    self.places.setdefault(w, []).append((i, m.start()))
        self.words = sorted(self.counts)
        self.chars = sum(map(len, self.texts))

    def __len__(self) -> int:
        return len(self.texts)

    def completions(self, partial: str, limit: int = MAX_DRAFTS) -> list[str]:
        """The rest of the words that begin with ``partial`` (and are longer), most used first."""
        if not partial:
            return []
        lo = bisect.bisect_right(self.words, partial)
        hi = bisect.bisect_left(self.words, partial[:-1] + chr(ord(partial[-1]) + 1))
        # Ties keep their alphabetical order (nlargest is a stable sort's first ``limit``).
        found = heapq.nlargest(limit, self.words[lo:hi], key=self.counts.__getitem__)
        return [w[len(partial):] for w in found]

    def continuations(self, line_before: str, limit: int = MAX_DRAFTS,
                      skip: str | None = None) -> list[str]:
        """What followed the typed line's tails (longest first) in the texts, up to each
        line's end: the places of the tail's rarest whole word (not the word being typed)
        are checked for the whole tail."""
        return [d for d, _ in self.lookups(line_before, limit, skip)]

    def lookups(self, line_before: str, limit: int = MAX_DRAFTS,
                skip: str | None = None, after: str = "") -> list[Found]:
        """:meth:`continuations` with their support; places followed by ``after`` (the line
        after the cursor's) first."""
        out: list[Found] = []
        for tail in tails(line_before):
            toks = _CODE_TOKEN.findall(tail)
            anchors = [(self.counts.get(t, 0), k) for k, t in enumerate(toks[:-1])
                       if _WORD.fullmatch(t) and t in self.counts]
            if not anchors:
                continue
            _, k = min(anchors)
            before = len("".join(toks[:k]))
            starts = ((self.texts[i], at - before) for i, at in self.places[toks[k]]
                      if self.names[i] != skip)
            out += _continuations(((text, start + len(tail)) for text, start in starts
                                   if start >= 0 and text.startswith(tail, start) and
                                   _starts_clean(text, start, tail)), tail, after)
            if len(_distinct(out, limit)) >= limit:
                break
        return _distinct(out, limit)


def find_drafts(text: str, cursor: int, others: Sequence[str] = (),
                elsewhere: Sequence[str] = (), limit: int = MAX_DRAFTS,
                library: Library | None = None, skip: str | None = None,
                after: str | None = None) -> list[str]:
    """Every draft for a completion at ``cursor``, distinct, at most ``limit``, in this order:
    lookups in the document (nearest first), ``elsewhere`` (drafts the editor's side found:
    the line as the last ghost would have made it, the other open documents, the
    workspace), lookups in ``others``, then in the ``library`` (``skip``: its copy of this
    document), then the partial word's completions from the same texts in the same order.
    No lookup inside a line that goes on after the cursor: a line fill there must meet the
    code after it, which a lookup does not know. Among the places of one tail, those whose
    next line is the line after the cursor's (``after``; by default ``text``'s own) come
    first, and in the document those whose previous line is the cursor's previous line too
    (:func:`_continuations`)."""
    return [d for d, _ in found_drafts(text, cursor, others, elsewhere, limit, library, skip,
                                       after)]


def line_drafts(text: str, cursor: int, others: Sequence[str] = (),
                library: Library | None = None, skip: str | None = None) -> list[str]:
    """:func:`find_drafts` from beyond the document (``others``, the ``library``): the
    cursor's line alone stands for the document, whose own drafts the daemon finds."""
    line_start = text.rfind("\n", 0, cursor) + 1
    line_end = _line_end(text, cursor)
    return find_drafts(text[line_start:line_end], cursor - line_start, others,
                       library=library, skip=skip, after=_next_line(text, line_end))


def found_drafts(text: str, cursor: int, others: Sequence[str] = (),
                 elsewhere: Sequence[str] = (), limit: int = MAX_DRAFTS,
                 library: Library | None = None, skip: str | None = None,
                 after: str | None = None) -> list[Found]:
    """:func:`find_drafts` with each draft's support."""
    line_start = text.rfind("\n", 0, cursor) + 1
    line_end = _line_end(text, cursor)
    line_before = text[line_start:cursor]
    partial = partial_word(line_before)
    at_end = not text[cursor:line_end].strip()
    after = _next_line(text, line_end) if after is None else after
    drafts = _lookups(text, cursor, (), limit, after) if at_end else []
    if at_end and BACKWARDS:
        drafts += _backwards(text, cursor, (), limit)
    drafts += [(d, 1) for d in elsewhere if d.strip()]

    def short() -> bool:
        return len(_distinct(drafts, limit)) < limit
    if at_end and others and short():
        drafts += _lookups(line_before, len(line_before), others, limit, after)
    if at_end and library is not None and short():
        drafts += library.lookups(line_before, limit, skip, after)
    if short():
        drafts += [(w, 0) for w in word_drafts(partial, text, line_start, line_end, others,
                                               limit)]
    if library is not None and short():
        drafts += [(w, 0) for w in library.completions(partial, limit)]
    return _distinct(drafts, limit)


def _distinct(items: Iterable[Found], limit: int) -> list[Found]:
    """The first of each draft text (the strongest support: tails come longest first)."""
    out: list[Found] = []
    seen: set[str] = set()
    for it in items:
        if it[0] not in seen:
            seen.add(it[0])
            out.append(it)
            if len(out) == limit:
                break
    return out
