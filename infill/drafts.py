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
from typing import Callable, Iterable, Sequence

from . import post

MAX_TAIL_TOKENS = 8
"""Longest tail of the typed line that is looked up."""
MAX_DRAFTS = 4
"""Drafts offered per request: each costs the verifier a row per token."""
MAX_DRAFT_CHARS = 160
"""A continuation is cut at its line's end, or here."""
MAX_HITS = 6
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
             after: str | None = None, lines: int = 1) -> list[Found]:
    """:func:`lookup_drafts` with their support; ``after``: the line after the cursor's (by
    default ``text``'s own); ``lines``: see :func:`_continuations`."""
    line_start = text.rfind("\n", 0, cursor) + 1
    line_end = _line_end(text, cursor)
    after = _next_line(text, line_end) if after is None else after
    before = _prev_line(text, line_start) if text[line_start:cursor].strip() else ""
    out: list[Found] = []
    in_text, in_others = _in_document(text, cursor), _in_texts(others)
    for key, tail in _keys(text, line_start, text[line_start:cursor]):
        places = in_text(key) + in_others(key)
        out += _continuations(places, tail, after, before, lines,
                              post.indentation(text[line_start:cursor]),
                              strip=key != tail and cursor > line_start)
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


def line_below(text: str, cursor: int) -> str:
    """The line right after the cursor's, when the cursor's goes on no further and that line
    has code ('' otherwise): what :func:`_backwards` reads."""
    line_end = _line_end(text, cursor)
    if text[cursor:line_end].strip() or line_end >= len(text):
        return ""
    below = text[line_end + 1:_line_end(text, line_end + 1)]
    return below if below.strip() else ""


Places = Callable[[str], Iterable[tuple[str, int]]]
"""``key -> (text, offset just after a match of key)`` for each place a key is found."""


def _backwards(below: str, typed_line: str, places_of: Places, limit: int) -> list[Found]:
    """Drafts read the other way, from the code after the gap: the line after the cursor's
    (``below``; its first 1-8 code tokens, longest first, at its own indentation) found
    elsewhere (``places_of``), and the line just before it there, when that line begins with
    what is typed on the cursor's line (``typed_line``) and sits at its indentation (any,
    when nothing is typed yet: the fill's indentation is the syntax's then). A decorator
    above a class, the field before a field, the ``try:`` before an ``except``: lines the
    code before the gap does not announce. The support counts the code tokens of the head
    and of the typed text the place agrees with."""
    if not below.strip():
        return []
    typed = typed_line.lstrip(" \t")
    indent = post.indentation(typed_line) if typed_line else None
    out: list[Found] = []
    for head in heads(below):
        key = "\n" + post.indentation(below) + head
        for src, h in places_of(key):
            at = h - len(key)  # the line break ending the line before the match
            if h < len(src) and _word_char(src[h]) and _word_char(head[-1]):
                continue  # the head ends inside a longer word there
            prev = src[src.rfind("\n", 0, at) + 1:at].rstrip()
            body = prev.lstrip(" \t")
            if not body.startswith(typed) or len(body) <= len(typed) or \
                    (indent is not None and post.indentation(prev) != indent):
                continue
            out.append((body[len(typed):][:MAX_DRAFT_CHARS],
                        support_of(head) + support_of(typed)))
        if len(_distinct(out, limit)) >= limit:
            break
    return _distinct(out, limit)


def _in_document(text: str, cursor: int) -> Places:
    """The places of a key in ``text`` that end before the line break opening the cursor's
    line (a key that ends in one must not meet this line's own), nearest first, then those
    that begin after the line break closing it (a key that begins with one would find the
    next line's own start)."""
    line_start = text.rfind("\n", 0, cursor) + 1
    line_end = _line_end(text, cursor)

    def places(key: str) -> list[tuple[str, int]]:
        return [(text, h) for h in _hits(text, key, True, 0, max(0, line_start - 1))] + \
            [(text, h) for h in _hits(text, key, False, line_end + 1)]
    return places


def _word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _in_texts(texts: Sequence[str]) -> Places:
    """The places of a key in each of ``texts``, in order, first to last in each."""
    def places(key: str) -> list[tuple[str, int]]:
        return [(t, h) for t in texts for h in _hits(t, key, False)]
    return places


def _both_ways(forwards: list[Found], backwards: list[Found]) -> list[Found]:
    """The lookups of both directions, those found both ways first (read from the code before
    the gap and from the code after it: on the typing eval four in five of those are the rest
    of the line as typed, where one in five of the others is), with both supports; then the
    rest of each, forwards first."""
    back = dict(_distinct(backwards, len(backwards)))
    firsts = [(d, n, d.split("\n", 1)[0]) for d, n in forwards]  # a block's: its first line
    both = [(d, n + back[first]) for d, n, first in firsts if first in back]
    done = {d for d, _ in both} | {first for _, _, first in firsts if first in back}
    return both + [f for f in forwards + backwards if f[0] not in done]


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


def reindent(text: str, to: str) -> str:
    """``text`` (lines of code) moved from its first line's indentation to ``to``: the
    lines after it keep their depth relative to it."""
    own = post.indentation(text)
    return "\n".join(to + x[len(own):] if x.startswith(own) else x for x in text.split("\n"))


def _continuations(places: Iterable[tuple[str, int]], tail: str,
                   after: str = "", before: str = "", lines: int = 1,
                   indent: str = "", strip: bool = False) -> list[Found]:
    """What follows each place (a text and an offset just after a match of ``tail``) up to
    its line's end (at most :data:`MAX_DRAFT_CHARS`), when that is not blank; with ``lines``
    over 1 (a block gap), up to the end of the statement that line begins
    (:func:`_statement_end`), its further lines as deep under the cursor's line (at
    ``indent``) as they were under the place's. ``strip``: the tail ends in the indentation
    typed on the cursor's line, so a deeper line there brings more of it, which is not this
    line's: left out. ``after`` and ``before``: the lines around the cursor's;
    places whose own lines around are the same come first, both before one (the code around
    the gap agrees with them too)."""
    found = []
    for src, h in places:
        end = _line_end(src, h)
        rest = src[h:min(end, h + MAX_DRAFT_CHARS)].rstrip()
        if strip:
            rest = rest.lstrip(" \t")
        if lines > 1:
            own = post.indentation(src[src.rfind("\n", 0, h) + 1:end])
            block = own + rest.lstrip(" \t") + src[end:_statement_end(src, end, lines)]
            rest = reindent(block.rstrip(), indent + post.indentation(rest))[len(indent):]
        if rest.strip():
            agree = int(bool(after) and _next_line(src, end) == after)
            if before:  # the place's line starts where its tail does, or earlier
                agree += _prev_line(src, src.rfind("\n", 0, h - len(tail)) + 1) == before
            found.append((-agree, rest))
    found.sort(key=lambda f: f[0])  # stable: nearest first among equals
    return [(rest, support_of(tail)) for _, rest in found]


def _statement_end(src: str, end: int, lines: int) -> int:
    """Where the statement that the line ending at ``end`` begins ends, within ``lines``
    lines: through the lines of a bracket it leaves open, and after a line ending in ``:``
    through the lines indented deeper than it (its body). A blank line ends it too; so does
    the last line that leaves no bracket open, when the lines run out inside one."""
    begin = src.rfind("\n", 0, end) + 1
    base = len(post.indentation(src[begin:end]))
    depth = post.bracket_depth(src[begin:end])
    body = depth <= 0 and post.opens_block(src[begin:end])
    whole = end  # the last end outside brackets
    for _ in range(lines - 1):
        if depth <= 0 and not body or end >= len(src):
            break
        nxt_end = _line_end(src, end + 1)
        nxt = src[end + 1:nxt_end]
        if not nxt.strip() or depth <= 0 and len(post.indentation(nxt)) <= base:
            break
        depth += post.bracket_depth(nxt)
        end = nxt_end
        if depth <= 0:
            whole = end
    return whole


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
                skip: str | None = None, after: str = "", lines: int = 1) -> list[Found]:
        """:meth:`continuations` with their support; places followed by ``after`` (the line
        after the cursor's) first; ``lines``: see :func:`_continuations`."""
        out: list[Found] = []
        for tail in tails(line_before):
            out += _continuations(self.matches(tail, skip, whole_last=False), tail, after,
                                  lines=lines, indent=post.indentation(line_before))
            if len(_distinct(out, limit)) >= limit:
                break
        return _distinct(out, limit)

    def matches(self, key: str, skip: str | None = None, whole_last: bool = True
                ) -> Iterable[tuple[str, int]]:
        """The clean matches of ``key`` (a text, the offset just after it), found from the
        places of its rarest whole word (the first :data:`PLACES` of that word's in each
        text; the last token is no anchor unless ``whole_last``: it may be a partial word)."""
        toks = _CODE_TOKEN.findall(key)
        anchors = [(self.counts[t], k) for k, t in enumerate(toks if whole_last else toks[:-1])
                   if _WORD.fullmatch(t) and t in self.counts]
        if not anchors:
            return
        _, k = min(anchors)
        before = len("".join(toks[:k]))
        for i, at in self.places[toks[k]]:
            start = at - before
            if self.names[i] != skip and start >= 0 and \
                    self.texts[i].startswith(key, start) and \
                    _starts_clean(self.texts[i], start, key):
                yield self.texts[i], start + len(key)

    def befores(self, below: str, typed_line: str, limit: int = MAX_DRAFTS,
                skip: str | None = None) -> list[Found]:
        """:func:`_backwards` in the library's texts."""
        return _backwards(below, typed_line, lambda key: self.matches(key, skip), limit)


def find_drafts(text: str, cursor: int, others: Sequence[str] = (),
                elsewhere: Sequence[str | Found] = (), limit: int = MAX_DRAFTS,
                library: Library | None = None, skip: str | None = None,
                after: str | None = None, below: str | None = None, lines: int = 1
                ) -> list[str]:
    """Every draft for a completion at ``cursor``, distinct, at most ``limit``, in this order:
    lookups in the document (nearest first; those found both from the code before the gap
    and from the line after it first, :func:`_both_ways`), ``elsewhere`` (drafts the
    editor's side found: the line as the last ghost would have made it, the other open
    documents, the workspace), lookups in ``others``, then in the ``library`` (``skip``: its
    copy of this document), then the partial word's completions from the same texts in the
    same order (``elsewhere``'s, support 0, after the document's own). No lookup inside a
    line that goes on after the cursor: a line fill there must meet the code after it,
    which a lookup does not know. Among the places of one tail, those
    whose next line is the line after the cursor's (``after``; by default ``text``'s own)
    come first, and in the document those whose previous line is the cursor's previous line
    too (:func:`_continuations`). ``below``: the line right after the cursor's, which the
    lookups read backwards from (by default ``text``'s own, :func:`line_below`). ``lines``:
    how many lines a lookup's continuation may run to, to finish the statement it begins (a
    block gap's; 1: to the line's end)."""
    return [d for d, _ in found_drafts(text, cursor, others, elsewhere, limit, library, skip,
                                       after, below, lines)]


def line_drafts(text: str, cursor: int, others: Sequence[str] = (),
                library: Library | None = None, skip: str | None = None) -> list[Found]:
    """:func:`found_drafts` from beyond the document (``others``, the ``library``): the
    cursor's line alone stands for the document, whose own drafts the daemon finds."""
    line_start = text.rfind("\n", 0, cursor) + 1
    line_end = _line_end(text, cursor)
    return found_drafts(text[line_start:line_end], cursor - line_start, others,
                        library=library, skip=skip, after=_next_line(text, line_end),
                        below=line_below(text, cursor))


def found_drafts(text: str, cursor: int, others: Sequence[str] = (),
                 elsewhere: Sequence[str | Found] = (), limit: int = MAX_DRAFTS,
                 library: Library | None = None, skip: str | None = None,
                 after: str | None = None, below: str | None = None, lines: int = 1
                 ) -> list[Found]:
    """:func:`find_drafts` with each draft's support (``elsewhere``'s: given with them, or 1)."""
    line_start = text.rfind("\n", 0, cursor) + 1
    line_end = _line_end(text, cursor)
    line_before = text[line_start:cursor]
    partial = partial_word(line_before)
    at_end = not text[cursor:line_end].strip()
    after = _next_line(text, line_end) if after is None else after
    below = line_below(text, cursor) if below is None else below
    drafts: list[Found] = []
    if at_end:
        drafts = _both_ways(_lookups(text, cursor, (), limit, after, lines),
                            _backwards(below, line_before, _in_document(text, cursor), limit))
    given = [(d, 1) if isinstance(d, str) else d for d in elsewhere]
    drafts += [d for d in given if d[0].strip() and d[1] > 0]

    def short() -> bool:
        return len(_distinct(drafts, limit)) < limit
    if at_end and others and short():
        drafts += _both_ways(_lookups(line_before, len(line_before), others, limit, after,
                                      lines),
                             _backwards(below, line_before, _in_texts(others), limit))
    if at_end and library is not None and short():
        drafts += _both_ways(library.lookups(line_before, limit, skip, after, lines),
                             library.befores(below, line_before, limit, skip))
    if short():
        drafts += [(w, 0) for w in word_drafts(partial, text, line_start, line_end, others,
                                               limit)]
    # Words completed from elsewhere (the workspace's most used) after the document's nearest.
    drafts += [d for d in given if d[0].strip() and d[1] <= 0]
    if library is not None and short():
        drafts += [(w, 0) for w in library.completions(partial, limit)]
    return _distinct(drafts, limit)


def request_fields(found: Sequence[Found]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Drafts found beyond the document as a request carries them: ``drafts`` and
    ``draft_support`` (``InfillRequest``)."""
    return tuple(d for d, _ in found), tuple(n for _, n in found)


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
