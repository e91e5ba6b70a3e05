"""Post-processing of raw fills: what an editor should actually show.

- mode: code after the cursor on its line -> single-line fill; an empty line or the end of a
  line that opens a block -> multi-line block;
- single-line fills stop at the first newline; blocks stop where the code leaves the cursor's
  indentation scope;
- text that only repeats the start of the suffix (auto-closed brackets, the next line) is cut;
- among several candidates, ones that leave the document parseable are preferred.
"""

from __future__ import annotations

import ast
import builtins
import functools
import keyword
import re
import warnings
from collections.abc import Set as AbstractSet

MODES = ("auto", "line", "block")
BLOCK_OPENERS = (":", "{", "(", "[", "=>", "->", "do", "then")
BRACKETS_BACK = 2000
"""Characters above a line read to tell whether it continues an open bracket."""


def detect_mode(line_before: str, line_after: str) -> str:
    """``line`` or ``block`` from the cursor's line, split at the cursor."""
    if line_after.strip():
        return "line"
    if not line_before.strip():
        return "block"
    if line_before.rstrip().endswith(BLOCK_OPENERS):
        return "block"
    return "line"


def indentation(line: str) -> str:
    """The spaces and tabs a line begins with."""
    return line[:len(line) - len(line.lstrip(" \t"))]


def _indent(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def missing_indent(text: str, cursor: int) -> str:
    """The indentation a whole-line gap at ``cursor`` needs (Python), when the cursor is at
    the start of an empty line: :func:`line_indent`. '' when the line has indentation already
    (typed, or put there by the editor)."""
    line_start = text.rfind("\n", 0, cursor) + 1
    line_end = text.find("\n", cursor)
    if cursor > line_start or text[cursor:len(text) if line_end < 0 else line_end].strip():
        return ""  # indentation typed (or put there by the editor) is the person's choice
    return line_indent(text, line_start) or ""


def line_indent(text: str, line_start: int) -> str | None:
    """The indentation the syntax gives the line that starts at ``line_start`` (Python): one
    level deeper than the line above when that line opens a block (ends with ``:``), else
    as deep as it, unless the code below claims the line (:func:`_joins_below`) or two
    blank lines set it apart (a new top-level statement, as PEP 8 spaces them). None where
    no rule says: inside a bracket, or no line above has code."""
    if inside_brackets(text[max(0, line_start - BRACKETS_BACK):line_start]):
        return None  # an expression's next line (or its closing bracket): no rule says
    blank = 0
    for _, line in _lines_back(text, line_start - 1) if line_start else ():
        code = line.split("#", 1)[0].rstrip()
        if not code.strip():
            blank += not line.strip()
            continue
        indent = indentation(line)
        if code.endswith(":"):
            indent += "\t" if indent.startswith("\t") or "\n\t" in text[:4096] else "    "
            return indent
        return "" if blank >= 2 else _joins_below(text, line_start, indent)
    return None


def _joins_below(text: str, line_start: int, indent: str) -> str:
    """A whole-line gap set apart from the code above by a blank line and right on top of a
    line indented less (a decorator over a class after a method's last line): it belongs to
    the code below, at that line's indentation. Otherwise ``indent``, the code above's."""
    line_end = text.find("\n", line_start)
    if line_end < 0 or line_start < 2 or text[text.rfind("\n", 0, line_start - 1) + 1:
                                              line_start - 1].strip():
        return indent
    below_end = text.find("\n", line_end + 1)
    below = text[line_end + 1:below_end if below_end >= 0 else len(text)]
    if not below.strip() or below.lstrip().startswith("#"):
        return indent
    own = indentation(below)
    return own if _indent(own) < _indent(indent) else indent


def limit_scope(fill: str, line_before: str) -> str:
    """Cut a block at the first line that dedents out of the cursor's scope.

    The scope is the indentation of the block's first non-blank line (its body, when the cursor
    line opens one); a later line indented less than that belongs to the code that follows.
    """
    lines = fill.split("\n")
    first_indent = None
    if line_before.strip():
        # The first fill line continues the cursor line; its scope is the cursor line's.
        first_indent = _indent(line_before)
        if line_before.rstrip().endswith(BLOCK_OPENERS):
            first_indent += 1
    out = [lines[0]]
    for line in lines[1:]:
        if not line.strip():
            out.append(line)
            continue
        ind = _indent(line)
        if first_indent is None:
            first_indent = ind
        elif ind < first_indent:
            break
        out.append(line)
    return "\n".join(out)


def strip_suffix_overlap(fill: str, suffix: str, mode: str) -> str:
    """Drop a tail of ``fill`` that the suffix already holds.

    Single line: the longest end of the fill that equals the start of the rest of the line
    (``foo(x)`` before an auto-closed ``)``). Block: trailing lines equal to the first
    non-blank lines after the cursor.
    """
    if not fill:
        return fill
    if mode == "line":
        rest = suffix.split("\n", 1)[0]
        for k in range(min(len(fill), len(rest)), 0, -1):
            if fill.endswith(rest[:k]):
                return fill[:-k]
        return fill
    after = [ln for ln in suffix.split("\n") if ln.strip()][:8]
    lines = fill.rstrip("\n").split("\n")
    # Find the first fill line from which the fill repeats the suffix's first lines.
    for i in range(len(lines)):
        tail = [ln for ln in lines[i:] if ln.strip()]
        if tail and len(tail) <= len(after) and [t.rstrip() for t in tail] == \
                [a.rstrip() for a in after[:len(tail)]]:
            if i == 0:
                return ""
            return "\n".join(lines[:i]).rstrip() + ("\n" if fill.endswith("\n") else "")
    return fill


def clean(fill: str, *, mode: str, line_before: str, suffix: str) -> str:
    """The text to show for one raw fill."""
    fill = fill.replace("\r\n", "\n")
    if mode == "line":
        at_line_start = not line_before.strip()
        first, newline, _ = (fill.lstrip("\n") if at_line_start else fill).partition("\n")
        fill = first
        if at_line_start and newline and first.strip() and suffix.split("\n", 1)[0].strip():
            # A whole line written in front of code (cursor at the start of a line that goes
            # on): the line keeps its end, and the code after it keeps its indentation.
            return first.rstrip() + "\n" + line_before
    else:
        if not line_before.strip() and line_before and fill.startswith(line_before):
            # The model re-typed the cursor line's indentation.
            fill = fill[len(line_before):]
        fill = limit_scope(fill, line_before)
        fill = re.sub(r"[ \t]+\n", "\n", fill).rstrip()
        if suffix.startswith("\n") or not suffix:
            fill = fill.rstrip("\n")
    fill = strip_suffix_overlap(fill, suffix, mode)
    return fill.rstrip() if mode == "line" and not suffix.split("\n", 1)[0].strip() else fill


def whole_chars(fill: str, document: str) -> str:
    """The fill up to its first U+FFFD, unless the document holds that character itself. A
    byte-level tokenizer's tokens may end inside a multi-byte character (box drawing, CJK,
    emoji); a fill whose masks ran out there decodes to the replacement character, which is
    never what was meant."""
    cut = fill.find("\ufffd")
    return fill if cut < 0 or "\ufffd" in document else fill[:cut]


_STUTTER = re.compile(r"(.{2,40}?)\1+", re.S)
_SEPARATORS = " \t\n.,;:+-*/%|&^=<>!@([{"


def unstutter(fill: str, document: str) -> str:
    """Cut a fill at its first stutter: a piece written again and again (at least two and a
    half times in a row: ``name.name.name``, or two copies and the start of a third where the
    masks ran out; three times for a piece of digits and punctuation, ``0.0.0.``), which the
    document itself never holds. Parallel
    decoding of an unsure model does this (neighbouring masks each guess the likeliest token);
    no one writes it. The fill keeps what came before and one copy of the piece, without the
    separator it ends with (``name``)."""
    for m in _STUTTER.finditer(fill):
        piece = m.group(1)
        tail = fill[m.end():m.end() + len(piece)]
        partial = next((k for k in range(len(tail), -1, -1) if piece.startswith(tail[:k])), 0)
        run = m.group(0) + tail[:partial]
        worded = re.search(r"[^\W\d]", piece) is not None
        # Digits and punctuation (``0.0.0.``) stutter too; without a letter a piece must come
        # three times, mix characters and hold no space (``))))``, ``----`` and
        # ``[0, 0, 0, 0]`` are code).
        if len(run) * 2 < len(piece) * 5 or run in document or \
                (not worded and (len(run) < 3 * len(piece) or len(set(piece)) < 2 or
                                 any(ch.isspace() for ch in piece))):
            continue
        return (fill[:m.start()] + piece).rstrip(_SEPARATORS)
    return fill


# ---------------------------------------------------------------- names

_IDENT = re.compile(r"[^\W\d]\w*")
"""A Python identifier: a letter or underscore (any script's, as Python allows), then word
characters."""
_FREE_IDENT = re.compile(r"(?<![\w.])[^\W\d]\w*")
"""An identifier that is not an attribute (after a dot) nor the tail of a number (``1e5``)."""
_DOT_SPACE = re.compile(r"\.\s+")
_STRING_OR_COMMENT = re.compile(r"#[^\n]*|(?:[rbfuRBFU]{0,2})(?:'[^'\n]*'|\"[^\"\n]*\")")
_BINDERS = re.compile(
    r"\b(?:def|class|as|import|global|nonlocal)\s+([^\W\d]\w*)"
    r"|\bfor\s+([\w\s,()]+?)\s+in\b"
    r"|\blambda\s*([\w\s,*=]*):"
    r"|^\s*([\w\s,*]+?)\s*(?:[-+*/%&|^@]|//|\*\*|>>|<<)?=(?!=)", re.M)


def python_names() -> frozenset[str]:
    """Keywords, soft keywords and builtins: names any Python file may use."""
    return frozenset(keyword.kwlist) | frozenset(getattr(keyword, "softkwlist", ())) | \
        frozenset(dir(builtins)) | {"self", "cls"}


def identifiers(text: str) -> set[str]:
    """Every identifier-shaped word of a text (its definitions, imports and uses alike)."""
    return set(_IDENT.findall(text))


_WORD_END = re.compile(r"\w+$")


def word_before(text: str, offset: int) -> str:
    """The identifier characters right before ``offset`` (the part of a word the cursor is
    in), at most 100; with the dot before them when they follow one (an attribute, which a
    names check must not take for a free name: ``x.cl`` + ``ear()`` is ``.clear()``)."""
    m = _WORD_END.search(text, max(0, offset - 100), offset)
    word = m.group(0) if m else ""
    at = offset - len(word)
    return ("." + word) if at > 0 and text[at - 1] == "." else word


def in_string_or_comment(text: str, offset: int) -> bool:
    """Whether ``offset`` of Python source is inside a comment or a string literal (a
    docstring included), judged from the text before it: an odd number of triple quotes of
    either kind before it, or the cursor's line read up to it ending inside quotes or after a
    ``#``. A heuristic (an f-string's braces count as string), cheap enough to run per
    request; a fill there is prose or data, not code."""
    for triple in ('"""', "'''"):
        if text.count(triple, 0, offset) % 2:
            return True
    quote = ""
    i, line = 0, text[text.rfind("\n", 0, offset) + 1:offset]
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1
            elif line.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
        elif c == "#":
            return True
        elif c in "\"'":
            quote = line[i:i + 3] if line.startswith(c * 3, i) else c
            i += len(quote) - 1
        i += 1
    return bool(quote)


def free_names(fill: str, known: AbstractSet[str] | None = None) -> list[str]:
    """Names the fill uses without defining them, in order, once each: not attributes (after
    a dot), not in strings or comments, not bound by the fill itself (assignment and ``for``
    targets, ``def``/``class``/``as``/``import``, parameters, keyword arguments), not in
    ``known`` (keywords and builtins by default)."""
    code = _STRING_OR_COMMENT.sub(" ", fill)
    bound = bound_names(code)
    known = known if known is not None else python_names()
    out: list[str] = []
    for name in _FREE_IDENT.findall(_DOT_SPACE.sub(".", code)):
        if name not in known and name not in bound and name not in out:
            out.append(name)
    return out


def bound_names(code: str) -> set[str]:
    """Names a piece of code defines: assignment, ``for`` and ``with``/``except``/``import``
    ``as`` targets, ``def``/``class`` names and their parameters, lambda parameters, keyword
    arguments (they name the callee's parameters)."""
    code = _STRING_OR_COMMENT.sub(" ", code)
    bound: set[str] = set()
    for m in _BINDERS.finditer(code):
        for group in m.groups():
            if group:
                bound.update(_IDENT.findall(group))
    bound.update(re.findall(r"[(,]\s*([^\W\d]\w*)\s*=(?!=)", code))
    for params in re.findall(r"\bdef\s+\w+\s*\(([^)]*)", code):
        for param in params.split(","):  # the name, not its annotation or default
            m = re.match(r"\s*\**\s*([^\W\d]\w*)", param)
            if m:
                bound.add(m.group(1))
    return bound


# ---------------------------------------------------------------- syntax

LANGUAGE_ALIASES = {"py": "python", "python3": "python", "pyi": "python"}


def language_of(language_id: str | None, path: str | None = None) -> str | None:
    if language_id:
        return LANGUAGE_ALIASES.get(language_id.lower(), language_id.lower())
    if path and path.endswith((".py", ".pyi")):
        return "python"
    return None


def parses(language: str | None, document: str) -> bool | None:
    """Whether ``document`` parses in ``language``; None when diffill has no parser for it."""
    if language != "python":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(document)
        return True
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False


_HEADER = re.compile(r"[ \t]*(?:async[ \t]+def|def|class)\b")


def _lines_back(document: str, offset: int):
    """(start, line) of the line holding ``offset``, then of each line before it."""
    start = document.rfind("\n", 0, offset) + 1
    while True:
        end = document.find("\n", start)
        yield start, document[start:end if end >= 0 else len(document)]
        if start == 0:
            return
        start = document.rfind("\n", 0, start - 1) + 1


def _unit_header(lines) -> tuple[int, str] | None:
    """(start, indentation) of the nearest ``def`` or ``class`` header above, read from
    ``lines`` (walking back), that is shallower than every code line passed on the way; None
    when module-level code comes first."""
    body_indent: int | None = None  # least indentation of the code lines below a candidate
    for start, line in lines:
        code = line.lstrip(" \t")
        if not code or code.startswith("#"):
            continue
        indent = len(line) - len(code)
        if _HEADER.match(line) and (body_indent is None or indent < body_indent):
            return start, line[:indent]
        body_indent = indent if body_indent is None else min(body_indent, indent)
        if body_indent == 0:
            return None
    return None


def _unit_end(document: str, after: int, indent: str) -> int:
    """Where a unit whose header has ``indent`` ends: at the newline before the next code
    line, from ``after`` on, indented no deeper than the header (-1: the document's end)."""
    end = document.find("\n", after)
    while end >= 0:
        nxt = document.find("\n", end + 1)
        line = document[end + 1:nxt if nxt >= 0 else len(document)]
        code = line.lstrip(" \t")
        if code and not code.startswith("#") and len(line) - len(code) <= len(indent):
            return end
        end = nxt
    return end


def python_unit(document: str, lo: int, hi: int) -> str | None:
    """The innermost ``def`` or ``class`` (with its decorators) whose header or body holds
    ``document[lo:hi]``, dedented to stand alone; None at module level or where the lines do
    not all share the header's indentation (a string or a bracket running out of it)."""
    lines = _lines_back(document, lo)
    header = _unit_header(lines)
    if header is None:
        return None
    first, prefix = header
    for start, line in lines:  # decorators right above the header
        if not line.startswith(prefix + "@"):
            break
        first = start
    end = _unit_end(document, hi - 1 if hi > lo else hi, prefix)  # a fill's last newline counts
    unit = document[first:end if end >= 0 else len(document)].split("\n")
    if any(x.strip() and not x.startswith(prefix) for x in unit):
        return None
    return "\n".join(x[len(prefix):] for x in unit)


_INCOMPLETE = ("was never closed", "unexpected EOF", "expected an indented block",
               "unterminated triple-quoted")
"""Parser messages of code that is only unfinished: more typing can still make it parse."""


_CLAUSES = frozenset({"else", "elif", "except", "finally", "case"})


def _line_state(code: str) -> str:
    """``ok`` (parses), ``open`` (unfinished: an open bracket, a block with no body yet) or
    ``bad`` (no continuation makes it parse) for a line or lines of Python standing alone."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(code)
        return "ok"
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        msg = getattr(exc, "msg", "") or ""
        return "open" if any(k in msg for k in _INCOMPLETE) else "bad"


def _standalone(line_before: str, middle: str, line_after: str) -> str:
    """The cursor's line with ``middle`` in place, and any lines ``middle`` adds, dedented by
    the line's own indentation so it stands alone."""
    indent = indentation(line_before)
    lines = (line_before + middle + line_after).split("\n")
    return "\n".join(x[len(indent):] if x.startswith(indent) else x for x in lines)


def bracket_depth(code: str) -> int:
    """Brackets ``code`` opens and leaves open (negative: closes more than it opens), strings
    and comments left out."""
    code = _STRING_OR_COMMENT.sub(" ", code)
    return sum(map(code.count, "([{")) - sum(map(code.count, ")]}"))


def opens_block(line: str) -> bool:
    """Whether a line of code ends in ``:`` (its comment and strings left out): a body
    follows."""
    return _STRING_OR_COMMENT.sub(" ", line).rstrip().endswith(":")


@functools.lru_cache(maxsize=64)
def inside_brackets(code_before: str) -> bool:
    """Whether code ending here (the lines before a line) leaves a bracket open, read back
    from its end with strings and comments left out: the next line continues an expression."""
    depth = 0
    for line in reversed(code_before.split("\n")):
        for ch in reversed(_STRING_OR_COMMENT.sub(" ", line)):
            if ch in ")]}":
                depth += 1
            elif ch in "([{":
                if depth == 0:
                    return True
                depth -= 1
    return False


def breaks_line(line_before: str, fill: str, line_after: str, code_before: str = "") -> bool:
    """Whether ``fill`` turns the cursor's line (Python) from one that parses or is only
    unfinished (``x =``: typing more makes it parse) into one no further typing can fix:
    ``(v - 1.0.0.0.)``, ``return value value``.
    The line without the fill is read both as it is and with a name in the gap (``(v - _)``
    is fine, ``(v - )`` only has a hole); a line that is already broken alone (a
    continuation line, an ``else:``) is not judged, nor one that continues a bracket
    ``code_before`` (the lines above it) leaves open. The candidates of one request share
    everything but the fill, so the checks of the line without it are cached."""
    head = re.match(r"\s*(\w+)", line_before + fill)
    if head and head.group(1) in _CLAUSES or inside_brackets(code_before):
        return False  # a clause of a statement above, or an expression's next line
    if not any(_completable(_standalone(line_before, gap, line_after)) for gap in ("", "_")):
        return False
    return not _completable(_standalone(line_before, fill, line_after))


_ENDINGS = ("", "_", " _", "_)", " _)", "_]", "_}", ":\n pass", " _:\n pass",
            "():\n pass", "\ndef _(): pass")
"""What more typing might add to a line, to tell one only unfinished (``x =``, ``import``,
``for x in``, ``def name`` before its parameters, a decorator waiting for its ``def``) from
one nothing can mend."""


@functools.lru_cache(maxsize=256)
def _completable(code: str) -> bool:
    """Whether some continuation of ``code`` (one of :data:`_ENDINGS`) parses or is only
    unfinished."""
    return any(_line_state(code + end) != "bad" for end in _ENDINGS)


def parses_near(language: str | None, document: str, lo: int, hi: int,
                whole_limit: int | None = None) -> bool | None:
    """Whether ``document`` parses around ``document[lo:hi]`` (a fill in place): the innermost
    def or class holding it, parsed alone, or else the whole document. The unit costs a
    fraction of a big file's parse, and it still answers when the file is broken elsewhere
    (mid-edit), where the whole file's parse fails for every candidate. A unit that does not
    parse is checked again as the whole document (a unit cut wrong must not count against the
    fill), unless the document is over ``whole_limit`` characters: then None (not checked)."""
    if language != "python":
        return None
    unit = python_unit(document, lo, hi)
    if unit is not None and parses(language, unit):
        return True
    if whole_limit is not None and len(document) > whole_limit:
        return None
    return parses(language, document)


def parsing_lines(language: str | None, document: str, start: int, fill: str,
                  whole_limit: int | None = None) -> str:
    """``fill`` (several lines, put at ``start``) cut back to its longest run of whole first
    lines that leaves the code around it parsing, when the whole of it does not: a block whose
    third line is nonsense still shows its first two. ``fill`` unchanged when it parses, when
    nothing shorter does, or where no parser answers (see :func:`parses_near`)."""
    lines = fill.split("\n")
    if len(lines) < 2 or language != "python":
        return fill

    def ok(piece: str) -> bool | None:
        return parses_near(language, document[:start] + piece + document[start:], start,
                           start + len(piece), whole_limit)

    if ok(fill) is not False:
        return fill
    for keep in range(len(lines) - 1, 0, -1):
        piece = "\n".join(lines[:keep])
        if piece.strip() and ok(piece):
            return piece
    return fill
