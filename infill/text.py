"""Documents as text: positions, offsets and decoding, with clear errors for bad input."""

from __future__ import annotations

import bisect
import re


MAX_DOCUMENT_CHARS = 8_000_000
"""Larger documents are refused: the window only ever reads a few thousand characters around
the cursor, but a multi-megabyte buffer usually means a generated or binary file."""


class InputError(ValueError):
    """Input that diffill cannot work on; the message says what and where."""


class PositionError(InputError):
    """A line/column outside the document."""


def decode_source(data: bytes, name: str = "input") -> str:
    """UTF-8 text of a file (a BOM is dropped); anything else is refused, never guessed."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"{name}: not UTF-8 text (invalid byte 0x{data[exc.start]:02x} on line "
                         f"{line})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    check_size(text, name)
    return text


def check_size(text: str, name: str = "input") -> None:
    if len(text) > MAX_DOCUMENT_CHARS:
        raise InputError(f"{name}: {len(text):,} characters is over the {MAX_DOCUMENT_CHARS:,} "
                         "character limit")
    if "\x00" in text[:8192]:
        raise InputError(f"{name}: looks like a binary file (NUL bytes)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON's "\ud800" decodes to a lone surrogate
        line = text.count("\n", 0, exc.start) + 1
        raise InputError(f"{name}: a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X}) on "
                         f"line {line} is not text") from None


def line_starts(text: str) -> list[int]:
    starts = [0]
    pos = text.find("\n")
    while pos >= 0:
        starts.append(pos + 1)
        pos = text.find("\n", pos + 1)
    return starts


def line_bounds(text: str, line: int, starts: list[int] | None = None) -> tuple[int, str]:
    """Offset where 0-based ``line`` begins, and its content without the line end; a line
    past the end of the document, or a negative one, is a :class:`PositionError`."""
    starts = starts or line_starts(text)
    if line < 0:
        raise PositionError(f"line {line + 1} is negative")
    if line >= len(starts):
        raise PositionError(f"line {line + 1} is past the end of the document "
                            f"({len(starts)} lines)")
    begin = starts[line]
    end = starts[line + 1] - 1 if line + 1 < len(starts) else len(text)
    content = text[begin:end]
    return begin, content[:-1] if content.endswith("\r") else content


def past_line_end(line: int, column: int, length: int) -> PositionError:
    return PositionError(f"column {column + 1} is past the end of line {line + 1} "
                         f"({length} characters)")


def offset_at(text: str, line: int, column: int, *, starts: list[int] | None = None) -> int:
    """Character offset of a 0-based (line, column), the column in code points (Python
    indices; the LSP server converts its client's units first). A column past the end of its
    line, or a line past the end of the document, is a :class:`PositionError`, never silently
    clamped."""
    if column < 0:
        raise PositionError(f"position {line + 1}:{column + 1} is negative")
    begin, content = line_bounds(text, line, starts)
    if column > len(content):
        raise past_line_end(line, column, len(content))
    return begin + column


def position_of(text: str, offset: int, *, starts: list[int] | None = None) -> tuple[int, int]:
    """0-based (line, column) of a character offset, the column in code points."""
    starts = starts or line_starts(text)
    if not 0 <= offset <= len(text):
        raise PositionError(f"offset {offset} is outside the document")
    line = bisect.bisect_right(starts, offset) - 1
    return line, offset - starts[line]


def parse_position(spec: str) -> tuple[int, int]:
    """``LINE:COL`` (1-based, as editors show them) -> 0-based (line, column)."""
    try:
        line_s, col_s = spec.split(":")
        line, col = int(line_s), int(col_s)
    except ValueError:
        raise InputError(f"position {spec!r} is not LINE:COL") from None
    if line < 1 or col < 1:
        raise PositionError(f"position {spec!r}: lines and columns start at 1")
    return line - 1, col - 1


def parse_range(spec: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``L:C-L:C`` (1-based, end exclusive) -> two 0-based positions."""
    try:
        a, b = spec.split("-")
    except ValueError:
        raise InputError(f"selection {spec!r} is not L:C-L:C") from None
    return parse_position(a), parse_position(b)


_FIRST_WORD = re.compile(r"[^\w\n]*\w+|\s*[^\w\s]+")


def first_word(ghost: str) -> str:
    """What accept-word takes of a ghost: any leading non-word characters and the word after
    them (``.groups`` of ``.groups()``), else the leading punctuation."""
    m = _FIRST_WORD.match(ghost)
    return m.group(0) if m else ""


def typed_through(typed: str, ghost: str) -> bool:
    """Whether ``typed``, typed along a shown ``ghost`` (which it begins), has gone through the
    ghost's first word: only then is the rest worth showing again unasked. Inside that word
    the person passed over a word they could have taken in one key, which says more often
    that it was wrong than right (on the typing eval, 8 of 91 such re-shown rests were taken),
    and the next keystroke's own request sees the letters typed since."""
    return ghost.startswith(typed) and len(typed) >= len(first_word(ghost))


def passed_over(typed: str, ghost: str) -> str | None:
    """The rest of ``ghost`` when ``typed`` went along it but stopped inside its first word:
    the person typed letters they could have taken in one key, so that rest is not offered
    again while they type on in the word. None when ``typed`` left the ghost or went through
    its first word."""
    if not typed or not ghost.startswith(typed) or typed_through(typed, ghost):
        return None
    return ghost[len(typed):]
